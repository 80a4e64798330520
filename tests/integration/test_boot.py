"""mosaic boot: an exported image run in qemu (KVM when /dev/kvm is usable, else TCG) with OVMF,
its serial console watched.

Fast tests: clear errors for a missing file and for files that are not images; a raw disk without
a bootloader (a small signed composition exported with --no-bootloader) fails fast with the
firmware's reason; the image is never written (snapshot mode); no qemu process and no temp
directory is left, also when mosaic itself is killed.

The slow test builds manifests/examples/debian-bootable.yaml from the host's apt sources (store
and key cached in /var/cache/mosaic-tests/boot), exports it as a raw disk, boots it under UEFI
and waits for the marker line its mosaic-marker.service prints with the root device, which must
be partition 2 of the disk."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import (CACHE, MOSAIC, REPO, cached_key, create, file_sha256, host_build, run,
                      write_file)

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

MARKER = "MOSAIC-BOOT-MARKER"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")


def need_qemu():
    if shutil.which("qemu-system-x86_64") is None or not OVMF_CODE.exists():
        pytest.skip("qemu-system-x86_64 or OVMF missing (tools/setup.sh: qemu-system-x86, ovmf)")


def qemu_pids(image):
    """The pids of processes whose command line names image (qemu's -drive ...,file=IMAGE)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and str(image).encode() in cmdline:
            pids.append(int(d.name))
    return pids


def wait_no_qemu(image, timeout=10.0):
    deadline = time.monotonic() + timeout
    while qemu_pids(image) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemu_pids(image) == [], f"a qemu process outlived mosaic boot of {image}"


def boot(image, *extra, env=None, timeout=None):
    """mosaic boot, always followed by the check that no qemu is left."""
    try:
        return subprocess.run([MOSAIC, "boot", str(image), *map(str, extra)], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    finally:
        wait_no_qemu(image)


# ---- fast: errors and a disk without a bootloader ----------------------------------------------

def test_missing_image(tmp_path):
    p = run([MOSAIC, "boot", tmp_path / "nope.raw"], check=False)
    assert p.returncode == 1
    assert "nope.raw: No such file or directory" in p.stderr


def test_not_an_image(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("not a disk\n" * 100)
    p = run([MOSAIC, "boot", f], check=False)
    assert p.returncode == 2
    assert "not a disk image (no MBR or GPT partition table)" in p.stderr
    p = run([MOSAIC, "boot", f, "--iso"], check=False)
    assert p.returncode == 2
    assert "not an ISO 9660 image" in p.stderr
    p = run([MOSAIC, "boot", tmp_path], check=False)
    assert p.returncode == 2 and "not an image file" in p.stderr


def test_bad_usage(tmp_path):
    for args in (["--timeout", "soon", "x"], ["--timeout", "0", "x"], ["--memory", "lots", "x"],
                 [], ["a", "b"], ["--expect", "", "x"]):
        p = run([MOSAIC, "boot", *args], check=False)
        assert p.returncode == 2, (args, p.stderr)


@pytest.fixture(scope="module")
def empty_disk(signer, tmp_path_factory):
    """A raw disk of a small signed composition, exported with --no-bootloader: an empty ESP."""
    base = tmp_path_factory.mktemp("boot")
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"))
    src = base / "root"
    write_file(src / "etc/hostname", "nothing-to-boot\n")
    write_file(src / "usr/bin/hello", b"#!/bin/sh\necho hello\n", mode=0o755)
    store = base / "store"
    digest = create(store, src, env, "--sign", signer.fingerprint, "--name", "root", "--version",
                    "1", "--kind", "base")
    out = base / "empty.raw"
    run([MOSAIC, "export", digest, "-s", store, "--keyring", signer.keyring, "--format", "raw",
         "-o", out, "--no-bootloader", "--free-space", "8M"], env=env)
    return out


def test_no_bootloader_fails_fast(empty_disk, tmp_path):
    need_qemu()
    before = file_sha256(empty_disk)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    t0 = time.monotonic()
    p = boot(empty_disk, "--timeout", 240, "--expect", MARKER, env=env, timeout=300)
    took = time.monotonic() - t0
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 1, err
    # OVMF tries every boot option, then starts its built-in shell: caught at once
    assert re.search(r"(EFI shell|no bootable option|no bootable device)", err), err
    assert took < 200, f"took {took:.0f} s: not failing fast"
    assert b"BdsDxe" in p.stdout  # the firmware's console reached the output
    assert file_sha256(empty_disk) == before, "the image was written to"
    assert list(tmp.iterdir()) == [], "the temp directory (OVMF_VARS copy, snapshot) stayed"


def test_timeout_stops_qemu(empty_disk, tmp_path):
    """--bios: SeaBIOS finds no boot code in the protective MBR and waits; --timeout ends it."""
    need_qemu()
    if not Path("/usr/share/seabios/bios-256k.bin").exists():
        pytest.skip("no SeaBIOS (package seabios)")
    t0 = time.monotonic()
    p = boot(empty_disk, "--bios", "--timeout", 5, timeout=60)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 1, err
    assert "still running after 5 s; stopped qemu" in err
    assert time.monotonic() - t0 < 20
    assert b"SeaBIOS" in p.stdout  # graphics=off: SeaBIOS's serial console


def test_killed_mosaic_takes_qemu_along(empty_disk, tmp_path):
    """PR_SET_PDEATHSIG: a SIGKILLed mosaic boot does not leave its qemu running."""
    need_qemu()
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([MOSAIC, "boot", str(empty_disk), "--bios", "--timeout", "120"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not qemu_pids(empty_disk) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert qemu_pids(empty_disk), "qemu did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        wait_no_qemu(empty_disk)


# ---- slow: debian-bootable, built from the host's apt sources, booted from its raw export ------

MANIFEST = REPO / "manifests" / "examples" / "debian-bootable.yaml"
WORK = CACHE / "boot"


@contextlib.contextmanager
def bootable_build():
    """debian-bootable built from the host's apt sources (store, lock and key cached in WORK);
    yields what it was built into: lock, store, keyring, env."""
    import minbase
    if minbase.host_release() != "bookworm":
        pytest.skip("the host is not Debian bookworm")
    WORK.mkdir(parents=True, exist_ok=True)
    key = cached_key(WORK, "mosaic boot")
    try:
        env = dict(os.environ, GNUPGHOME=str(key.home),
                   MOSAIC_CACHE_DIR=str(CACHE / "mosaic-cache"))
        env.pop("SOURCE_DATE_EPOCH", None)
        lock, store = WORK / "debian-bootable.lock", WORK / "store"
        host_build([MANIFEST, "--lock", lock, "-s", store, "--sign", key.fingerprint,
                    "--keyring", key.keyring], env)
        yield SimpleNamespace(lock=lock, store=store, keyring=key.keyring, env=env)
    finally:
        key.close()  # its gpg-agent


@pytest.fixture(scope="module")
def bootable(tmp_path_factory):
    """yields export(FORMAT, *OPTIONS) -> the path of debian-bootable exported so."""
    need_qemu()
    with bootable_build() as b:
        made = {}

        def export(fmt, *extra):
            if (fmt, extra) not in made:
                out = tmp_path_factory.mktemp(f"boot-{fmt}") / f"debian-bootable.{fmt}"
                run([MOSAIC, "export", MANIFEST, "--lock", b.lock, "-s", b.store, "--keyring",
                     b.keyring, "--format", fmt, "-o", out, *extra], env=b.env)
                made[fmt, extra] = out
            return made[fmt, extra]
        yield export


@pytest.fixture(scope="module")
def bootable_raw(bootable):
    return bootable("raw")


def boot_to_marker(image, tmp_path, *opts):
    """mosaic boot IMAGE OPTS --expect MARKER; returns the marker's root device."""
    before = file_sha256(image)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    t0 = time.monotonic()
    p = boot(image, *opts, "--expect", MARKER, "--timeout", 300, env=env, timeout=400)
    took = time.monotonic() - t0
    console = p.stdout.decode(errors="replace")
    (tmp_path / "console.log").write_text(console)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 0, f"{err}\nlast console lines:\n{console[-4000:]}"
    m = re.search(MARKER + r" root=(\S+?)\r?$", console, re.M)
    assert m, console[-4000:]
    assert "Kernel panic" not in console
    assert file_sha256(image) == before, "the image was written to"
    print(f"booted to the marker in {took:.0f} s ({'KVM' if 'KVM' in err else 'TCG'}): "
          f"{m.group(0)}")
    return m.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("firmware", ["uefi", "bios"])
def test_debian_bootable_iso_boots_as_a_cd(bootable, tmp_path, firmware):
    """The live ISO (Debian's live-boot: /live/filesystem.squashfs) by UEFI and by BIOS."""
    iso = bootable("iso")
    root = boot_to_marker(iso, tmp_path, "--iso", *(["--bios"] if firmware == "bios" else []))
    # live-boot's root is an overlay over the squashfs from the CD
    assert root.startswith(("overlay", "/dev/", "tmpfs")), root


@pytest.mark.slow
def test_debian_bootable_raw_boots_with_root_on_partition_2(bootable_raw, tmp_path):
    root = boot_to_marker(bootable_raw, tmp_path)
    assert re.fullmatch(r"/dev/[vs]da2", root), root


@pytest.mark.slow
def test_debian_bootable_read_only_root_with_grub_swap_and_var(bootable, tmp_path):
    """The other disk layout: GRUB instead of systemd-boot, the root a read-only squashfs on
    partition 2, swap on partition 3 and a writable /var (ext4) on partition 4, mounted by the
    /etc/fstab export writes."""
    disk = bootable("raw", "--filesystem", "squashfs", "--bootloader", "grub",
                    "--partition", "swap:64M")
    root = boot_to_marker(disk, tmp_path)
    assert re.fullmatch(r"/dev/[vs]da2", root), root
    console = (tmp_path / "console.log").read_text()
    assert re.search(r"Adding \d+k swap on /dev/[vs]da3", console), console[-4000:]
    assert "Mounted \x1b[0;1;39mvar.mount" in console or "Mounted var.mount" in console, \
        console[-4000:]
    # GRUB is the only loader on that ESP: it booted the disk
    man = json.loads(Path(f"{disk}.manifest.json").read_text())
    assert man["boot"]["loader"] == "grub"
    assert [p["filesystem"] for p in man["partitions"]] == ["vfat", "squashfs", "swap", "ext4"]
