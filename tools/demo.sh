#!/usr/bin/env bash
# The main job, the whole journey on manifests/examples/debian-bootable.yaml: build it from the
# Debian archive the host's apt sources name (resolve with libsolv, download and verify every
# package, one signed fragment each, then configure it in a chroot on the live mount: package
# scripts, the initramfs, users, a service, and freeze that into a signed config fragment),
# mount the configured system and run commands inside it with chroot, unmount, export it as a
# bootable raw disk image (GPT, systemd-boot, ext4; no loop device), and print the mosaic boot
# command that starts it in qemu. Run as root on Debian bookworm.
# State lives in $MOSAIC_DEMO_DIR (default /var/lib/mosaic-demo): a demo signing key, the
# keyring that trusts it, the lock, the store and mosaic's download cache. A second run
# downloads nothing, makes no fragment and runs no package script.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/setup.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
mosaic=$PWD/build/tools/mosaic
manifest=manifests/examples/debian-bootable.yaml

work=${MOSAIC_DEMO_DIR:-/var/lib/mosaic-demo}
export GNUPGHOME=$work/gnupg MOSAIC_CACHE_DIR=$work/cache
mkdir -p "$work"
trap 'gpgconf --kill all >/dev/null 2>&1 || true' EXIT

if [ ! -d "$GNUPGHOME" ]; then
	mkdir -m 700 "$GNUPGHOME"
	gpg --batch --quiet --passphrase '' --quick-gen-key 'mosaic demo <demo@mosaic.invalid>' \
		ed25519 sign never
fi
key=$(gpg --list-keys --with-colons | awk -F: '/^fpr:/ { print $10; exit }')
gpg --export "$key" >"$work/keyring.gpg"

echo "== the manifest ($manifest, merged with its include)"
"$mosaic" manifest show "$manifest"
echo "== building and configuring it from the host's apt sources"
"$mosaic" build "$manifest" --lock "$work/debian-bootable.lock" -s "$work/store" --sign "$key" \
	--keyring "$work/keyring.gpg" >"$work/build.log"
tail -n 8 "$work/build.log"

echo "== mounting it (read-only, nothing unpacked, configured)"
mnt=$work/mnt
mkdir -p "$mnt"
"$mosaic" mount "$manifest" "$mnt" --lock "$work/debian-bootable.lock" -s "$work/store" \
	--keyring "$work/keyring.gpg"
trap '"$mosaic" umount "$mnt" 2>/dev/null || true; gpgconf --kill all >/dev/null 2>&1 || true' EXIT
echo "fragments: $(ls "$work"/store/sha256/*/*.sqfs | wc -l) in the store, fragment opens after mounting: $("$mosaic" status "$mnt" --json | sed -n 's/.*"fragment_opens": *\([0-9]*\).*/\1/p')"
echo "== inside, with chroot"
chroot "$mnt" /bin/bash -c '. /etc/os-release; echo "$PRETTY_NAME: $(ls /usr/bin | wc -l) programs in /usr/bin, $(dpkg-query -W -f "\${db:Status-Abbrev}\n" | grep -c "^ii") of $(dpkg-query -W | wc -l) packages installed (dpkg: ii)"; /usr/bin/apt-get --version | head -1; echo "user: $(getent passwd mosaic)"; echo "kernel: $(ls /boot | tr "\n" " ")"; echo "mosaic-marker.service: $(systemctl is-enabled mosaic-marker.service)"'
echo "fragment opens after running bash, dpkg-query, apt-get and systemctl from it: $("$mosaic" status "$mnt" --json | sed -n 's/.*"fragment_opens": *\([0-9]*\).*/\1/p')"
"$mosaic" umount "$mnt"
trap 'gpgconf --kill all >/dev/null 2>&1 || true' EXIT
echo "== unmounted"

echo "== exporting a bootable raw disk image (read from the composition; nothing mounted)"
"$mosaic" export "$manifest" --lock "$work/debian-bootable.lock" -s "$work/store" \
	--keyring "$work/keyring.gpg" --format raw -o "$work/debian-bootable.raw"
sfdisk --dump "$work/debian-bootable.raw" | sed -n '/^\//p'
echo "SBOM: $work/debian-bootable.raw.spdx.json, layout: $work/debian-bootable.raw.manifest.json"
echo "== start it (UEFI in qemu, serial console; Ctrl-A X quits):"
echo "   $mosaic boot $work/debian-bootable.raw"
