#!/usr/bin/env bash
# The main job on the default example, as far as mosaic goes today: take real Debian packages
# from the host's apt sources, turn them into signed squashfs fragments in a store, verify them
# against a keyring, list what one holds, then mount all of them as one tree and run a program
# from it with chroot. Run as root on Debian bookworm.
# State lives in $MOSAIC_DEMO_DIR (default /var/lib/mosaic-demo): a demo signing key, the
# keyring that trusts it, the downloaded packages and the store.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/setup.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
mosaic=$PWD/build/tools/mosaic

work=${MOSAIC_DEMO_DIR:-/var/lib/mosaic-demo}
export GNUPGHOME=$work/gnupg MOSAIC_CACHE_DIR=$work/cache
mkdir -p "$work/debs"
trap 'gpgconf --kill all >/dev/null 2>&1 || true' EXIT

if [ ! -d "$GNUPGHOME" ]; then
	mkdir -m 700 "$GNUPGHOME"
	gpg --batch --quiet --passphrase '' --quick-gen-key 'mosaic demo <demo@mosaic.invalid>' \
		ed25519 sign never
fi
key=$(gpg --list-keys --with-colons | awk -F: '/^fpr:/ { print $10; exit }')
gpg --export "$key" >"$work/keyring.gpg"

packages=(busybox-static coreutils iputils-ping tzdata)
echo "== downloading ${packages[*]} through the host's apt sources"
(cd "$work/debs" && apt-get download -q "${packages[@]}" 2>/dev/null ||
	{ apt-get update -qq && apt-get download -q "${packages[@]}"; })

echo "== making signed fragments"
"$mosaic" fragment create "$work"/debs/*.deb -o "$work/store" --sign "$key"
echo "== verifying them against $work/keyring.gpg"
"$mosaic" store verify -s "$work/store" --keyring "$work/keyring.gpg"
echo "== the store"
"$mosaic" store list -s "$work/store"
echo "== what the coreutils fragment holds (first lines)"
"$mosaic" fragment inspect -s "$work/store" coreutils | sed -n 1,12p

echo "== mounting the four fragments as one tree (read-only, nothing unpacked)"
mnt=$work/mnt
mkdir -p "$mnt"
"$mosaic" mount -s "$work/store" --keyring "$work/keyring.gpg" "${packages[@]}" "$mnt"
trap '"$mosaic" umount "$mnt" 2>/dev/null || true; gpgconf --kill all >/dev/null 2>&1 || true' EXIT
echo "fragment opens after mounting: $("$mosaic" status "$mnt" --json | sed -n 's/.*"fragment_opens": *\([0-9]*\).*/\1/p')"
chroot "$mnt" /bin/busybox sh -c \
	'echo "inside the mount: $(busybox ls /bin | busybox wc -l) programs in /bin, $(busybox ls /usr/share/zoneinfo | busybox wc -l) zoneinfo entries"'
echo "fragment opens after running busybox from it: $("$mosaic" status "$mnt" --json | sed -n 's/.*"fragment_opens": *\([0-9]*\).*/\1/p')"
"$mosaic" umount "$mnt"
trap 'gpgconf --kill all >/dev/null 2>&1 || true' EXIT
