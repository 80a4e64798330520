#!/usr/bin/env bash
# Installs every Debian package mosaic needs to build, test and benchmark.
# Idempotent: run it as root on Debian bookworm as often as you like.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "setup.sh: run as root (it calls apt-get)" >&2
	exit 2
fi

packages=(
	# build
	meson ninja-build pkg-config gcc clang libclang-rt-14-dev clang-format
	libfuse3-dev libsquashfuse-dev libsquashfs-dev libarchive-dev libjson-c-dev
	libgpgme-dev libyaml-dev libsolv-dev libsolvext-dev librpm-dev libsqlite3-dev libcurl4-openssl-dev
	libzstd-dev libfdisk-dev libext2fs-dev
	# run (export raw: mkfs.vfat, mtools, the host's systemd-boot when the composition has none)
	fuse3 gnupg dosfstools mtools systemd-boot-efi
	# run (export iso: xorriso, GRUB's images for UEFI and BIOS; qcow2/vmdk/vhdx need
	# qemu-img from qemu-utils, listed under mosaic boot)
	xorriso grub-common grub-efi-amd64-bin grub-pc-bin
	# test
	python3 python3-pytest squashfuse squashfs-tools rpm dpkg-dev attr libcap2-bin strace
	util-linux kmod e2fsprogs runc xz-utils zstd bzip2 gzip
	createrepo-c apt-utils fdisk
	# mosaic boot (and its tests): qemu, UEFI firmware, qemu-img
	qemu-system-x86 ovmf qemu-utils
	# benchmark
	hyperfine fuse-overlayfs debootstrap mmdebstrap
)

export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup.sh: all ${#packages[@]} packages present"
