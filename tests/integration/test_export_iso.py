"""mosaic export --format iso: a hybrid live ISO (xorriso) with the view as
/live/filesystem.squashfs written straight from the composition by libsquashfs, the view's
kernel and initramfs as /live/vmlinuz and /live/initrd.img, and GRUB booting it by BIOS and UEFI.
Also --format qcow2 (the raw disk converted by qemu-img).

Everything is read back without a kernel mount: the ISO's tree with `xorriso -find`/`-lsl`, its
boot records with `-report_el_torito plain`, files extracted with `-osirrox`; the squashfs
mounted with squashfuse under tmp (always unmounted) and compared with the mounted view entry by
entry (paths, types, modes, owners, sizes, content hashes, symlink targets, devices, xattrs and
the capability, hard links, clamped mtimes). Also: byte-identical exports, one by `nobody`
without /usr/sbin in PATH and without a loop device; the refusals (no kernel, no live-boot); and
a qcow2 compared with the raw disk by `qemu-img compare`. The small signed fragments are
test_export_tar.py's, the fake kernel test_export_raw.py's."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import (MOSAIC, file_sha256, run, squashfuse_mount,
                      squashfuse_xattr_names, write_file)
from test_export_raw import config_layer, kernel_layer, mosaic_view  # noqa: F401
from test_export_tar import (CAP_NET_RAW, EPOCH, layers,  # noqa: F401
                             view_snapshot)

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

LIVE_SCRIPT = "usr/share/initramfs-tools/scripts/live"
KERNEL = b"MZ fake kernel\n" * 1000  # test_export_raw's kernel_layer


def export_iso(layers, inputs, out, *extra, fmt="iso", env=None, check=True, user=None):
    return run([MOSAIC, "export", *inputs, "--format", fmt, "-o", out, "-s", layers.store,
                "--keyring", layers.keyring, "--source-date-epoch", str(EPOCH), *extra],
               env=env or layers.env, check=check, user=user)


def iso_find(iso):
    """{path: 'd' or 'f'} of every node of the ISO's Rock Ridge tree."""
    out = run(["xorriso", "-indev", iso, "-find", "/", "-exec", "lsdl", "--"]).stdout
    tree = {}
    for line in out.splitlines():
        m = re.match(r"^([-dl])\S+\s+\d+\s+\S+\s+\S+\s+\d+\s+\S+\s+\d+\s+[\d:]+\s+'(.*)'$", line)
        if m:
            tree[m.group(2)] = "f" if m.group(1) == "-" else m.group(1)
    return tree


def iso_extract(iso, path, dest):
    run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", path, dest])
    return Path(dest)


def el_torito(iso):
    """xorriso's report of the boot records (the summary goes to stderr, the entries to
    stdout)."""
    p = run(["xorriso", "-indev", iso, "-report_el_torito", "plain"])
    return p.stderr + p.stdout


@pytest.fixture(scope="module")
def live_layer(layers, signer):
    """live-boot's initramfs script (a stand-in: only its presence is checked)."""
    src = layers.base / "live"
    write_file(src / LIVE_SCRIPT, "#!/bin/sh\n# live-boot stand-in\n", mode=0o755)
    for d in ("", "usr", "usr/share", "usr/share/initramfs-tools",
              "usr/share/initramfs-tools/scripts"):
        os.chmod(src / d, 0o755)
    return config_layer(layers, signer, src, "live")


def check_squashfs_against_view(sqfs, want, want_links, tmp):
    """The squashfs, mounted by squashfuse, against a view_snapshot."""
    with squashfuse_mount(sqfs, Path(tmp) / "sqfs") as m:
        got, _ = view_snapshot(m)
        # squashfuse numbers each name's inode itself: a hard link shows by its link count
        nlinks = {p: os.lstat(m / p).st_nlink for g in want_links for p in g}
    squashfuse_xattr_names(got)
    diff = [f"/{p}: squashfs {got.get(p)}\n   view {want.get(p)}"
            for p in sorted(set(got) | set(want)) if got.get(p) != want.get(p)]
    assert not diff, f"{len(diff)} differ\n" + "\n".join(diff[:20])
    assert want_links and nlinks == {p: len(g) for g in want_links for p in g}


# ---- tests -------------------------------------------------------------------------------------

def test_iso_without_bootloader_holds_the_view_as_squashfs(layers, tmp_path):
    out = tmp_path / "live.iso"
    p = export_iso(layers, layers.digests, out, "--no-bootloader", "--lock", layers.lock)
    assert p.stdout.startswith(f"{out} ")
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    assert man["format"] == "iso" and man["size"] == out.stat().st_size
    assert man["sha256"] == file_sha256(out)
    assert man["boot"]["el_torito"] == [] and man["boot"]["kernel"] is None
    marker = f"/.disk/mosaic-{man['id_uuid']}"
    assert iso_find(out) == {"/": "d", "/.disk": "d", marker: "f", "/live": "d",
                             "/live/filesystem.squashfs": "f"}
    report = el_torito(out)
    assert "No El Torito" in report and "El Torito boot img" not in report, report
    sqfs = iso_extract(out, "/live/filesystem.squashfs", tmp_path / "filesystem.squashfs")
    assert file_sha256(sqfs) == man["squashfs"]["sha256"]
    assert sqfs.stat().st_size == man["squashfs"]["size"]
    # unsquashfs reads it too: zstd, owners and devices as numbers
    listing = run(["unsquashfs", "-lln", "-d", "", sqfs]).stdout
    assert re.search(r"^c\S+ 0/0\s+1,\s+3 .* /dev/null$", listing, re.M), listing
    assert "zstd" in run(["unsquashfs", "-s", sqfs]).stdout
    with mosaic_view(layers, layers.digests, tmp_path) as (want, want_links):
        pass
    check_squashfs_against_view(sqfs, want, want_links, tmp_path)
    assert want["usr/bin/ping"]["xattrs"]["security.capability"] == CAP_NET_RAW
    # the SBOM names the ISO, the packages and the fragments
    doc = json.loads(Path(f"{out}.spdx.json").read_text())
    image = next(q for q in doc["packages"] if q["SPDXID"] == "SPDXRef-Image")
    assert image["checksums"][0]["checksumValue"] == man["sha256"]
    assert any(q["name"] == "hello-export" for q in doc["packages"])


def test_live_iso_layout_and_boot_records(layers, kernel_layer, live_layer, tmp_path):
    inputs = [*layers.digests, kernel_layer, live_layer]
    out = tmp_path / "live.iso"
    export_iso(layers, inputs, out, "--kernel-cmdline", "console=ttyS0 quiet")
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    assert man["boot"] == {"loader": "grub", "el_torito": ["bios", "uefi"],
                           "kernel": "/live/vmlinuz", "initrd": "/live/initrd.img",
                           "kernel_from": "/boot/vmlinuz-6.1.0-10-amd64",
                           "initrd_from": "/boot/initrd.img-6.1.0-10-amd64",
                           "cmdline": "boot=live console=ttyS0 quiet"}
    assert man["volume_id"] == "DEBIAN_LIVE"
    tree = iso_find(out)
    for f in ("/live/vmlinuz", "/live/initrd.img", "/live/filesystem.squashfs",
              "/boot/grub/grub.cfg", "/boot/grub/efi.img", "/boot/grub/i386-pc/eltorito.img",
              f"/.disk/mosaic-{man['id_uuid']}"):
        assert tree.get(f) == "f", (f, tree)
    # the kernel and initramfs are the view's newest
    assert iso_extract(out, "/live/vmlinuz", tmp_path / "vmlinuz").read_bytes() == KERNEL
    with mosaic_view(layers, inputs, tmp_path) as (want, want_links):
        pass
    assert file_sha256(iso_extract(out, "/live/initrd.img", tmp_path / "initrd")) == \
        want["boot/initrd.img-6.1.0-10-amd64"]["sha256"]
    cfg = iso_extract(out, "/boot/grub/grub.cfg", tmp_path / "grub.cfg").read_text()
    assert "linux /live/vmlinuz boot=live console=ttyS0 quiet\n" in cfg
    assert "initrd /live/initrd.img\n" in cfg and "Mosaic Test GNU/Linux (live)" in cfg
    # El Torito: a BIOS entry (GRUB's cdboot core) and a UEFI one (the FAT image)
    report = el_torito(out)
    assert re.search(r"El Torito boot img :\s+1\s+BIOS\s+y\s+none", report), report
    assert re.search(r"El Torito boot img :\s+2\s+UEFI\s+y\s+none", report), report
    assert "/boot/grub/i386-pc/eltorito.img" in report and "/boot/grub/efi.img" in report
    assert re.search(r"Boot record\s+: El Torito , MBR protective-msdos-label grub2-mbr", report)
    assert "grub2-boot-info" in report
    # as a disk: an MBR boot signature and an EFI system partition holding GRUB's EFI binary
    data = out.read_bytes()
    assert data[510:512] == b"\x55\xaa"
    parts = json.loads(run(["sfdisk", "-J", out]).stdout)["partitiontable"]["partitions"]
    esp = [q for q in parts if q["type"].upper() in ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                                                     "EF")]
    assert len(esp) == 1, parts
    efi_img = iso_extract(out, "/boot/grub/efi.img", tmp_path / "efi.img")
    assert data[esp[0]["start"] * 512:][:efi_img.stat().st_size] == efi_img.read_bytes()
    mt = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    listing = run(["mdir", "-/", "-b", "-i", efi_img, "::/"], env=mt).stdout.split()
    assert listing == ["::/EFI/", "::/EFI/BOOT/", "::/EFI/BOOT/BOOTX64.EFI"]
    run(["mcopy", "-n", "-i", efi_img, "::/EFI/BOOT/BOOTX64.EFI", tmp_path / "BOOTX64.EFI"],
        env=mt)
    assert (tmp_path / "BOOTX64.EFI").read_bytes()[:2] == b"MZ"
    # the squashfs is the whole view
    sqfs = iso_extract(out, "/live/filesystem.squashfs", tmp_path / "filesystem.squashfs")
    check_squashfs_against_view(sqfs, want, want_links, tmp_path)


def test_iso_is_reproducible_and_builds_as_nobody_without_loop_devices(layers, kernel_layer,
                                                                       live_layer, tmp_path):
    inputs = [*layers.digests, kernel_layer, live_layer]
    a = tmp_path / "a.iso"
    export_iso(layers, inputs, a)
    shared = layers.base / "nobody-iso"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    loops_before = sorted(os.listdir("/sys/block"))
    env = dict(layers.env, MOSAIC_CACHE_DIR=str(shared / "cache"), HOME=str(shared),
               PATH="/usr/local/bin:/usr/bin:/bin", TZ="America/New_York")
    env.pop("GNUPGHOME", None)
    b = shared / "b.iso"
    try:
        p = export_iso(layers, inputs, b, env=env, user=65534, check=False)
        assert p.returncode == 0, p.stderr
        assert b.stat().st_uid == 65534
        assert sorted(os.listdir("/sys/block")) == loops_before
        assert a.read_bytes() == b.read_bytes()
        for suffix in (".spdx.json", ".manifest.json"):
            assert Path(f"{a}{suffix}").read_text().replace("a.iso", "X") == \
                Path(f"{b}{suffix}").read_text().replace("b.iso", "X")
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["a.iso", "a.iso.manifest.json", "a.iso.spdx.json"]


def test_iso_refusals_leave_nothing(layers, kernel_layer, tmp_path):
    out = tmp_path / "x.iso"
    p = export_iso(layers, layers.digests, out, check=False)
    assert p.returncode == 1
    assert "no kernel" in p.stderr and "linux-image-amd64" in p.stderr, p.stderr
    p = export_iso(layers, [*layers.digests, kernel_layer], out, check=False)
    assert p.returncode == 1
    assert "live-boot" in p.stderr and LIVE_SCRIPT in p.stderr, p.stderr
    assert os.listdir(tmp_path) == []
    p = run([MOSAIC, "export", *layers.digests, "-o", out, "--format", "iso", "--size", "1G"],
            check=False)
    assert p.returncode == 2 and "--size" in p.stderr, p.stderr
    p = run([MOSAIC, "export", *layers.digests, "-o", out, "--format", "tar",
             "--no-bootloader"], check=False)
    assert p.returncode == 2 and "--no-bootloader" in p.stderr, p.stderr
    p = run([MOSAIC, "export", *layers.digests, "-o", out, "--format", "vfat"], check=False)
    assert p.returncode == 2 and "qcow2" in p.stderr, p.stderr


def test_qcow2_is_the_raw_disk(layers, tmp_path):
    raw, q1, q2 = tmp_path / "disk.raw", tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    common = ("--no-bootloader", "--free-space", "8M")
    export_iso(layers, layers.digests, raw, *common, fmt="raw")
    export_iso(layers, layers.digests, q1, *common, fmt="qcow2")
    export_iso(layers, layers.digests, q2, *common, fmt="qcow2")
    info = json.loads(run(["qemu-img", "info", "--output=json", q1]).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == raw.stat().st_size
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, q1])
    assert q1.read_bytes() == q2.read_bytes()
    man, rman = (json.loads(Path(f"{x}.manifest.json").read_text()) for x in (q1, raw))
    assert man["format"] == "qcow2" and man["sha256"] == file_sha256(q1)
    assert man["size"] == q1.stat().st_size and man["virtual_size"] == raw.stat().st_size
    assert man["partitions"] == rman["partitions"] and man["disk_uuid"] == rman["disk_uuid"]
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []
