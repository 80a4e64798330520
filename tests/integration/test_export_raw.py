"""mosaic export --format raw: a GPT disk (libfdisk) with an EFI system partition (FAT32 by
mkfs.vfat + mtools) and an ext4 root written by libext2fs straight from the composition.

Everything is read back without mounting: the layout with `sfdisk -J`, the root by extracting
partition 2 with dd and reading it with e2fsck -fn, debugfs (stat, ea_get, rdump), and the ESP
with mtools. The root is compared with the mounted view entry by entry (paths, types, modes,
owners, sizes, content hashes, symlink targets, devices, xattrs and the capability, hard links,
clamped mtimes). Also: reproducibility, an export as an unprivileged user without loop devices,
a too small --size, the loader entry for a composition with a (fake) kernel, and the error for a
composition without one. The small signed fragments are test_export_tar.py's."""

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from conftest import MOSAIC, create, file_sha256, run, write_file
from test_export_tar import (CAP_NET_RAW, EPOCH, FRAGMENT_EPOCH, layers, mounted,  # noqa: F401
                             view_snapshot)

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
MIB = 1 << 20
SD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


def export_raw(layers, inputs, out, *extra, env=None, check=True, user=None):
    return run([MOSAIC, "export", *inputs, "--format", "raw", "-o", out, "-s", layers.store,
                "--keyring", layers.keyring, "--source-date-epoch", str(EPOCH), *extra],
               env=env or layers.env, check=check, user=user)


def layout(img):
    return json.loads(run(["sfdisk", "-J", img]).stdout)["partitiontable"]


def extract(img, part, dest):
    """Partition part of the disk into its own file (sparse), by its sfdisk start and size."""
    p = layout(img)["partitions"][part - 1]
    run(["dd", f"if={img}", f"of={dest}", "bs=512", f"skip={p['start']}", f"count={p['size']}",
         "conv=sparse", "status=none"])
    return dest


def debugfs(fs, commands, tmp):
    cmdfile = Path(tmp) / "debugfs.cmd"
    cmdfile.write_text("".join(c + "\n" for c in commands))
    return run(["debugfs", "-f", cmdfile, fs]).stdout


def debugfs_entries(fs, paths, tmp):
    """{path: (attributes from stat, {xattr name: bytes})} for every path, in two debugfs runs:
    `stat` on each, then `ea_get -f` on each xattr stat listed."""
    out = debugfs(fs, [f'stat "/{p}"' for p in paths], tmp)
    chunks = re.split(r"^debugfs: stat \"/(.*)\"\n", out, flags=re.M)[1:]
    stats = dict(zip(chunks[0::2], chunks[1::2]))
    assert sorted(stats) == sorted(paths)
    attrs, gets = {}, []
    for path, text in stats.items():
        m = re.search(r"Type: (.+?)\s+Mode:\s+(\d+)", text)
        u = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+).*?Size: (\d+)", text)
        links = int(re.search(r"Links: (\d+)", text).group(1))
        mtime = int(re.search(r"^ mtime: (0x[0-9a-f]+)", text, re.M).group(1), 16)
        e = dict(type=m.group(1), mode=int(m.group(2), 8), uid=int(u.group(1)),
                 gid=int(u.group(2)), size=int(u.group(3)), links=links, mtime=mtime)
        dev = re.search(r"Device major/minor number: (\d+):(\d+)", text)
        if dev:
            e["rdev"] = (int(dev.group(1)), int(dev.group(2)))
        fast = re.search(r'Fast link dest: "(.*)"', text)
        if fast:
            e["link"] = fast.group(1)
        names = re.findall(r"^  (\S+) \(\d+\)", text.split("Extended attributes:")[1], re.M) \
            if "Extended attributes:" in text else []
        attrs[path] = [e, {}]
        for n in names:
            gets.append((path, n, Path(tmp) / f"xattr-{len(gets)}"))
    if gets:
        debugfs(fs, [f'ea_get -f {f} "/{p}" {n}' for p, n, f in gets], tmp)
        for p, n, f in gets:
            attrs[p][1][n] = f.read_bytes()
    return attrs


TYPES = {stat.S_IFREG: "regular", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
         stat.S_IFCHR: "character special", stat.S_IFBLK: "block special", stat.S_IFIFO: "FIFO",
         stat.S_IFSOCK: "socket"}


def entry_diffs(want, got, link_counts=None):
    """What differs between a view_snapshot and the debugfs_entries of its paths: type, mode,
    owners, mtime, size, device and xattrs, and with link_counts ({path: n} for hard-linked
    paths) every non-directory's link count."""
    diff = []
    for path in sorted(want):
        w, (g, xattrs) = want[path], got[path]
        exp = dict(type=TYPES[w["type"]], mode=w["mode"], uid=w["uid"], gid=w["gid"],
                   mtime=w["mtime"])
        have = {k: g[k] for k in exp}
        if w["type"] in (stat.S_IFREG, stat.S_IFLNK):
            exp["size"] = w["size"] if w["type"] == stat.S_IFREG else len(w["link"].encode())
            have["size"] = g["size"]
        if link_counts is not None and w["type"] != stat.S_IFDIR:
            # a hard link in the image is one in the view, and the other way round
            exp["links"], have["links"] = link_counts.get(path, 1), g["links"]
        if "rdev" in w:
            exp["rdev"], have["rdev"] = w["rdev"], g.get("rdev")
        if xattrs != w["xattrs"]:
            diff.append(f"/{path}: xattrs {xattrs} want {w['xattrs']}")
        if have != exp:
            diff.append(f"/{path}: ext4 {have}\n   view {exp}")
    return diff


def check_root_against_view(img, want, want_links, tmp, part=2):
    """The disk's root partition (or another ext4 one), read without mounting, against a
    view_snapshot."""
    fs = extract(img, part, Path(tmp) / f"part{part}.ext4")
    p = run(["e2fsck", "-fn", fs], check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    paths = sorted(want)
    got = debugfs_entries(fs, paths, tmp)
    diff = entry_diffs(want, got)
    assert not diff, f"{len(diff)} differ\n" + "\n".join(diff[:20])
    # contents and symlink targets: rdump (root keeps owners) and compare as files
    dump = Path(tmp) / f"dump{part}"
    dump.mkdir()
    debugfs(fs, [f"rdump / {dump}"], tmp)
    for path in paths:
        w = want[path]
        if w["type"] == stat.S_IFREG:
            assert file_sha256(dump / path) == w["sha256"], path
        elif w["type"] == stat.S_IFLNK:
            assert os.readlink(dump / path) == w["link"], path
    # hard links: one inode for each group, with that many links
    ls = debugfs(fs, [f'stat "/{g[0]}"' for g in want_links] +
                 [f'ls -l "/{os.path.dirname(p)}"' for g in want_links for p in g], tmp)
    for group in want_links:
        inos = set()
        for p in group:
            name = os.path.basename(p)
            m = re.search(r"^\s*(\d+)\s+\d+\s+\([^)]*\)\s+.*\s" + re.escape(name) + r"\s*$", ls,
                          re.M)
            assert m, (p, ls)
            inos.add(m.group(1))
        assert len(inos) == 1, group
        assert got[group[0]][0]["links"] == len(group), group
    return fs


# ---- tests -------------------------------------------------------------------------------------

def test_raw_layout_and_root_match_the_view(layers, tmp_path):
    out = tmp_path / "disk.raw"
    p = export_raw(layers, layers.digests, out, "--no-bootloader", "--free-space", "8M")
    assert p.stdout.startswith(f"{out} ")
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    assert man["format"] == "raw" and man["size"] == out.stat().st_size
    assert man["sha256"] == file_sha256(out)
    # the GPT as asked: ESP then the x86-64 root, 1 MiB aligned, UUIDs as the manifest says
    t = layout(out)
    assert t["label"] == "gpt" and t["id"].lower() == man["disk_uuid"]
    assert [q["type"] for q in t["partitions"]] == [ESP_TYPE, ROOT_TYPE]
    for q, m in zip(t["partitions"], man["partitions"]):
        assert q["start"] * 512 == m["start"] and q["size"] * 512 == m["size"]
        assert q["start"] % 2048 == 0 and q["size"] % 2048 == 0
        assert q["uuid"].lower() == m["uuid"]
    assert t["partitions"][0]["start"] == 2048
    assert t["partitions"][1]["start"] == t["partitions"][0]["start"] + t["partitions"][0]["size"]
    assert out.stat().st_size == (t["partitions"][1]["start"] + t["partitions"][1]["size"]) * 512 \
        + MIB
    assert [m["filesystem"] for m in man["partitions"]] == ["vfat", "ext4"]

    with mounted(layers, tmp_path) as m:
        want, want_links = view_snapshot(m.mnt)
    fs = check_root_against_view(out, want, want_links, tmp_path)
    # lost+found is the only thing the image adds
    listing = debugfs(fs, ["ls -p /"], tmp_path)
    names = {f.split("/")[5] for f in listing.splitlines() if f.startswith("/")} - {".", ".."}
    assert names - {p for p in want if "/" not in p and p} == {"lost+found"}
    info = run(["dumpe2fs", "-h", fs], check=False).stdout
    assert man["partitions"][1]["fs_uuid"] in info
    for feature in ("has_journal", "extent", "64bit", "flex_bg", "metadata_csum", "dir_index"):
        assert feature in info, feature
    # the ESP is an empty FAT32 with the volume id the manifest names
    esp = f"{out}@@{man['partitions'][0]['start']}"
    listing = run(["mdir", "-i", esp, "::/"], env=MTOOLS_ENV).stdout
    assert man["partitions"][0]["fs_uuid"] in listing


def test_raw_is_reproducible_and_builds_as_nobody_without_loop_devices(layers, tmp_path):
    a = tmp_path / "a.raw"
    export_raw(layers, layers.digests, a, "--no-bootloader", "--free-space", "8M")
    shared = layers.base / "nobody-raw"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    loops_before = sorted(os.listdir("/sys/block"))
    env = dict(layers.env, MOSAIC_CACHE_DIR=str(shared / "cache"), HOME=str(shared),
               PATH="/usr/local/bin:/usr/bin:/bin")  # a user's PATH: no /usr/sbin
    env.pop("GNUPGHOME", None)
    b = shared / "b.raw"
    try:
        p = export_raw(layers, layers.digests, b, "--no-bootloader", "--free-space", "8M",
                       env=env, user=65534, check=False)
        assert p.returncode == 0, p.stderr
        assert b.stat().st_uid == 65534
        assert sorted(os.listdir("/sys/block")) == loops_before
        assert a.read_bytes() == b.read_bytes()
        for suffix in (".spdx.json", ".manifest.json"):
            assert Path(f"{a}{suffix}").read_text().replace("a.raw", "X") == \
                Path(f"{b}{suffix}").read_text().replace("b.raw", "X")
        # devices, owners and the capability came from the composition, not from nobody
        fs = extract(b, 2, tmp_path / "root.ext4")
        got = debugfs_entries(fs, ["dev/null", "hl/one", "usr/bin/ping"], tmp_path)
        assert got["dev/null"][0]["rdev"] == (1, 3)
        assert got["hl/one"][0]["uid"] == 1
        assert got["usr/bin/ping"][1]["security.capability"] == CAP_NET_RAW
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_too_small_a_size_leaves_nothing(layers, tmp_path):
    out = tmp_path / "small.raw"
    p = export_raw(layers, layers.digests, out, "--no-bootloader", "--size", "40M", check=False)
    assert p.returncode == 1
    assert "too small" in p.stderr and "--size" in p.stderr, p.stderr
    assert os.listdir(tmp_path) == []
    # the size it names is enough
    need = re.search(r"give --size (\d+)M", p.stderr).group(1)
    export_raw(layers, layers.digests, out, "--no-bootloader", "--size", f"{need}M")
    assert out.stat().st_size == int(need) * MIB
    for bad, words in ((["--size", "lots"], "a size like"),
                       (["--format", "tar", "--size", "1G"], "for --format raw")):
        p = run([MOSAIC, "export", *layers.digests, "-o", tmp_path / "x", "--format", "raw",
                 *bad], check=False)
        assert p.returncode == 2 and words in p.stderr, (bad, p.stderr)


def test_a_composition_without_a_kernel_is_refused(layers, tmp_path):
    out = tmp_path / "disk.raw"
    p = export_raw(layers, layers.digests, out, check=False)
    assert p.returncode == 1
    assert "no kernel" in p.stderr and "linux-image-amd64" in p.stderr, p.stderr
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def kernel_layer(layers, signer):
    """A fragment with a fake kernel and initramfs, os-release and /etc/kernel/cmdline."""
    src = layers.base / "kernel"
    write_file(src / "boot/vmlinuz-6.1.0-9-amd64", b"old kernel\n")
    write_file(src / "boot/vmlinuz-6.1.0-10-amd64", b"MZ fake kernel\n" * 1000)
    write_file(src / "boot/initrd.img-6.1.0-10-amd64", os.urandom(200 * 1024))
    write_file(src / "boot/initrd.img-6.1.0-9-amd64", b"old initrd\n")
    write_file(src / "usr/lib/os-release", 'PRETTY_NAME="Mosaic Test GNU/Linux"\nID=debian\n')
    write_file(src / "etc/kernel/cmdline", "console=ttyS0  quiet\n")
    for d in ("", "boot", "usr", "usr/lib", "etc", "etc/kernel"):
        os.chmod(src / d, 0o755)
    return config_layer(layers, signer, src, "kernel")


def config_layer(layers, signer, src, name):
    """src as a signed config fragment in the layers' store, which stays readable for the
    unprivileged exports; returns its digest."""
    digest = create(layers.store, src, layers.env, "--sign", signer.fingerprint,
                    "--source-date-epoch", FRAGMENT_EPOCH, "--name", name, "--version", "1",
                    "--kind", "config")
    for d, _, files in os.walk(layers.store):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(Path(d) / f, 0o644)
    return digest


@pytest.mark.skipif(not SD_BOOT.exists(), reason="no systemd-boot-efi on this host")
def test_esp_holds_systemd_boot_and_a_loader_entry(layers, kernel_layer, tmp_path):
    out = tmp_path / "boot.raw"
    export_raw(layers, [*layers.digests, kernel_layer], out, "--free-space", "8M")
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    root_uuid = man["partitions"][1]["uuid"]
    assert man["boot"] == {"kernel": "/boot/vmlinuz-6.1.0-10-amd64",
                           "initrd": "/boot/initrd.img-6.1.0-10-amd64", "loader": "systemd-boot"}
    esp = f"{out}@@{man['partitions'][0]['start']}"
    entry = run(["mtype", "-i", esp, "::/loader/entries/mosaic.conf"], env=MTOOLS_ENV).stdout
    assert entry == ("title Mosaic Test GNU/Linux\nversion 6.1.0-10-amd64\n"
                     "linux /mosaic/vmlinuz-6.1.0-10-amd64\n"
                     "initrd /mosaic/initrd.img-6.1.0-10-amd64\n"
                     f"options root=PARTUUID={root_uuid} ro console=ttyS0  quiet\n")
    assert "default mosaic.conf" in run(["mtype", "-i", esp, "::/loader/loader.conf"],
                                        env=MTOOLS_ENV).stdout
    listing = run(["mdir", "-/", "-b", "-i", esp, "::/"], env=MTOOLS_ENV).stdout.split()
    assert sorted(listing) == sorted([
        "::/EFI/", "::/EFI/BOOT/", "::/EFI/BOOT/BOOTX64.EFI", "::/loader/",
        "::/loader/loader.conf", "::/loader/entries/", "::/loader/entries/mosaic.conf",
        "::/mosaic/", "::/mosaic/vmlinuz-6.1.0-10-amd64", "::/mosaic/initrd.img-6.1.0-10-amd64"])
    for src, dst in ((SD_BOOT, "::/EFI/BOOT/BOOTX64.EFI"),
                     (None, "::/mosaic/vmlinuz-6.1.0-10-amd64")):
        copy = tmp_path / "copy"
        run(["mcopy", "-n", "-i", esp, dst, copy], env=MTOOLS_ENV)
        want = src.read_bytes() if src else b"MZ fake kernel\n" * 1000
        assert copy.read_bytes() == want, dst
        copy.unlink()
    # a command line given replaces /etc/kernel/cmdline's
    again = tmp_path / "again.raw"
    export_raw(layers, [*layers.digests, kernel_layer], again, "--free-space", "8M",
               "--kernel-cmdline", "console=tty0")
    esp = f"{again}@@{man['partitions'][0]['start']}"
    entry = run(["mtype", "-i", esp, "::/loader/entries/mosaic.conf"], env=MTOOLS_ENV).stdout
    assert entry.endswith(f"options root=PARTUUID={root_uuid} ro console=tty0\n")
    # and the root partition is still the view
    check = tmp_path / "check"
    check.mkdir()
    with mosaic_view(layers, [*layers.digests, kernel_layer], tmp_path) as want:
        check_root_against_view(out, *want, check)


class mosaic_view:
    """view_snapshot of a read-only mount of these fragments."""
    def __init__(self, layers, digests, tmp):
        from conftest import mosaic_mounted
        self.cm = mosaic_mounted(["-s", layers.store, "--keyring", layers.keyring, *digests],
                                 Path(tmp) / "mnt", layers.env)

    def __enter__(self):
        m = self.cm.__enter__()
        return view_snapshot(m.mnt)

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


# ---- partitions of their own, a read-only root, GRUB -------------------------------------------

USR_TYPE = "8484680C-9521-48C6-9C11-B0720656F69E"
VAR_TYPE = "4D21B016-B534-45C2-A9FB-5C16E091FD2D"
HOME_TYPE = "933AC7E1-2EB4-4F13-B844-0E14E2AEF915"
SWAP_TYPE = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"


def below(want, top):
    """The entries of a view_snapshot below top, relative to it, with top itself as ""."""
    out = {p[len(top) + 1:]: e for p, e in want.items() if p.startswith(top + "/")}
    if top in want:
        out[""] = want[top]
    return out


def fs_cat(fs, path, tmp):
    return debugfs(fs, [f'cat "/{path}"'], tmp)


def test_partitions_of_their_own(layers, tmp_path):
    """/usr and /home on ext4 partitions of their own and a swap partition: the GPT lists them
    with their Discoverable Partitions types, each holds its subtree of the view (the root
    only the empty mount points), and /etc/fstab mounts them by PARTUUID."""
    out = tmp_path / "parts.raw"
    export_raw(layers, layers.digests, out, "--no-bootloader", "--free-space", "4M",
               "--partition", "/usr", "--partition", "/home:16M", "--partition", "swap:8M")
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    t = layout(out)
    assert [q["type"] for q in t["partitions"]] == [ESP_TYPE, ROOT_TYPE, USR_TYPE, HOME_TYPE,
                                                   SWAP_TYPE]
    assert [q["name"] for q in t["partitions"]] == ["esp", "root-x86-64", "usr-x86-64", "home",
                                                   "swap"]
    assert [(m["mountpoint"], m["filesystem"]) for m in man["partitions"]] == [
        (None, "vfat"), ("/", "ext4"), ("/usr", "ext4"), ("/home", "ext4"), (None, "swap")]
    for q, m in zip(t["partitions"], man["partitions"]):
        assert q["start"] * 512 == m["start"] and q["size"] * 512 == m["size"]
        assert q["start"] % 2048 == 0 and q["size"] % 2048 == 0
        assert q["uuid"].lower() == m["uuid"]
    assert t["partitions"][3]["size"] * 512 == 16 * MIB
    assert t["partitions"][4]["size"] * 512 == 8 * MIB
    for a, b in zip(t["partitions"], t["partitions"][1:]):
        assert b["start"] == a["start"] + a["size"]

    with mounted(layers, tmp_path) as m:
        want, want_links = view_snapshot(m.mnt)
    # the root: everything but what is below the mount points, which stay as empty directories
    root_want = {p: e for p, e in want.items()
                 if not p.startswith(("usr/", "home/"))}
    root = check_root_against_view(out, root_want, want_links, tmp_path)
    for d in ("usr", "home"):
        listing = debugfs(root, [f"ls -p /{d}"], tmp_path)
        names = {f.split("/")[5] for f in listing.splitlines() if f.startswith("/")}
        assert names == {".", ".."}, (d, listing)
    fstab = fs_cat(root, "etc/fstab", tmp_path)
    uuid = {m["mountpoint"] or m["filesystem"]: m["uuid"] for m in man["partitions"]}
    assert f"PARTUUID={uuid['/']} / ext4 defaults 0 1" in fstab
    assert f"PARTUUID={uuid['/usr']} /usr ext4 defaults 0 2" in fstab
    assert f"PARTUUID={uuid['/home']} /home ext4 defaults 0 2" in fstab
    assert f"PARTUUID={uuid['swap']} none swap sw 0 0" in fstab
    # /usr and /home: their subtrees, the mount point's own attributes at their roots
    usr = check_root_against_view(out, below(want, "usr"), [], tmp_path, part=3)
    home = check_root_against_view(out, below(want, "home"), [], tmp_path, part=4)
    assert man["partitions"][3]["fs_uuid"] in run(["dumpe2fs", "-h", home], check=False).stdout
    assert "lost+found" in debugfs(usr, ["ls /"], tmp_path)
    # the swap area, with the UUID the manifest names
    swap = extract(out, 5, tmp_path / "swap")
    probe = run(["blkid", "-p", "-o", "export", swap]).stdout
    assert "TYPE=swap" in probe and f"UUID={man['partitions'][4]['fs_uuid']}" in probe, probe
    # the same again: the same bytes
    again = tmp_path / "again.raw"
    export_raw(layers, layers.digests, again, "--no-bootloader", "--free-space", "4M",
               "--partition", "/usr", "--partition", "/home:16M", "--partition", "swap:8M")
    assert file_sha256(again) == file_sha256(out)


def test_partition_errors_leave_nothing(layers, tmp_path):
    out = tmp_path / "bad.raw"
    for args, words in (
            (["--partition", "/nowhere"], "no directory /nowhere"),
            (["--partition", "/etc/config"], "not a directory"),
            (["--partition", "/home:1M"], "too small"),
            (["--filesystem", "erofs"], "erofs")):
        p = export_raw(layers, layers.digests, out, "--no-bootloader", *args, check=False)
        assert p.returncode == 1 and words in p.stderr, (args, p.stderr)
        assert os.listdir(tmp_path) == [], args
    for args, words in ((["--partition", "usr"], "MOUNTPOINT[:SIZE]"),
                        (["--partition", "swap"], "MOUNTPOINT[:SIZE]"),
                        (["--filesystem", "btrfs"], "ext4 or squashfs"),
                        (["--bootloader", "lilo"], "systemd-boot or grub"),
                        (["--partition", "/usr", "--partition", "/usr"], "given twice"),
                        (["--partition", "/boot/efi"], "the ESP's")):
        p = export_raw(layers, layers.digests, out, *args, check=False)
        assert p.returncode == 2 and words in p.stderr, (args, p.stderr)


@pytest.fixture(scope="module")
def var_layer(layers, signer):
    src = layers.base / "var"
    write_file(src / "var/lib/state", "state\n")
    write_file(src / "var/log/.keep", "")
    for d in ("", "var", "var/lib", "var/log"):
        os.chmod(src / d, 0o755)
    return config_layer(layers, signer, src, "var")


def test_read_only_squashfs_root_with_a_writable_var(layers, var_layer, tmp_path):
    out = tmp_path / "ro.raw"
    digests = [*layers.digests, var_layer]
    export_raw(layers, digests, out, "--no-bootloader", "--filesystem", "squashfs",
               "--free-space", "4M")
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    t = layout(out)
    assert [q["type"] for q in t["partitions"]] == [ESP_TYPE, ROOT_TYPE, VAR_TYPE]
    assert [(m["mountpoint"], m["filesystem"]) for m in man["partitions"]] == [
        (None, "vfat"), ("/", "squashfs"), ("/var", "ext4")]
    sq = extract(out, 2, tmp_path / "root.sqfs")
    assert sq.read_bytes()[:4] == b"hsqs"
    dest = tmp_path / "unpacked"
    run(["unsquashfs", "-q", "-n", "-d", dest, sq])
    with mosaic_view(layers, digests, tmp_path) as (want, _links):
        pass
    got = {}
    for d, dirs, files in os.walk(dest):
        for n in dirs + files:
            rel = os.path.relpath(os.path.join(d, n), dest)
            got[rel] = os.lstat(os.path.join(d, n))
    want_root = {p for p in want if p and not p.startswith("var/")} | {"etc/fstab"}
    assert set(got) == want_root, set(got) ^ want_root
    for p, e in want.items():
        if p in got and e["type"] == stat.S_IFREG and p != "etc/fstab":
            assert file_sha256(dest / p) == e["sha256"], p
            assert (stat.S_IMODE(got[p].st_mode), got[p].st_uid) == (e["mode"], e["uid"]), p
    fstab = (dest / "etc/fstab").read_text()
    assert f"PARTUUID={man['partitions'][1]['uuid']} / squashfs ro 0 0" in fstab
    assert f"PARTUUID={man['partitions'][2]['uuid']} /var ext4 defaults 0 2" in fstab
    check_root_against_view(out, below(want, "var"), [], tmp_path, part=3)
    # --size gives what is left to /var
    big = tmp_path / "big.raw"
    export_raw(layers, digests, big, "--no-bootloader", "--filesystem", "squashfs",
               "--size", "200M")
    t = layout(big)
    assert big.stat().st_size == 200 * MIB
    assert (t["partitions"][2]["start"] + t["partitions"][2]["size"]) * 512 == 199 * MIB


@pytest.mark.skipif(not Path("/usr/lib/grub/x86_64-efi/linux.mod").exists(),
                    reason="no grub-efi-amd64-bin on this host")
def test_grub_on_the_esp(layers, kernel_layer, tmp_path):
    out = tmp_path / "grub.raw"
    export_raw(layers, [*layers.digests, kernel_layer], out, "--free-space", "8M",
               "--bootloader", "grub")
    man = json.loads(Path(f"{out}.manifest.json").read_text())
    assert man["boot"]["loader"] == "grub"
    esp = f"{out}@@{man['partitions'][0]['start']}"
    listing = run(["mdir", "-/", "-b", "-i", esp, "::/"], env=MTOOLS_ENV).stdout.split()
    assert sorted(listing) == sorted([
        "::/EFI/", "::/EFI/BOOT/", "::/EFI/BOOT/BOOTX64.EFI", "::/grub/", "::/grub/grub.cfg",
        "::/mosaic/", "::/mosaic/vmlinuz-6.1.0-10-amd64",
        "::/mosaic/initrd.img-6.1.0-10-amd64"])
    cfg = run(["mtype", "-i", esp, "::/grub/grub.cfg"], env=MTOOLS_ENV).stdout
    root_uuid = man["partitions"][1]["uuid"]
    assert "menuentry 'Mosaic Test GNU/Linux' {" in cfg
    assert (f"\tlinux /mosaic/vmlinuz-6.1.0-10-amd64 root=PARTUUID={root_uuid} ro "
            "console=ttyS0  quiet\n") in cfg
    assert "\tinitrd /mosaic/initrd.img-6.1.0-10-amd64\n" in cfg
    copy = tmp_path / "grub.efi"
    run(["mcopy", "-n", "-i", esp, "::/EFI/BOOT/BOOTX64.EFI", copy], env=MTOOLS_ENV)
    efi = copy.read_bytes()
    assert efi[:2] == b"MZ"
    # GRUB finds the ESP by the volume id the manifest names
    assert f"--fs-uuid {man['partitions'][0]['fs_uuid'].lower()}".encode() in efi
    again = tmp_path / "again.raw"
    export_raw(layers, [*layers.digests, kernel_layer], again, "--free-space", "8M",
               "--bootloader", "grub")
    assert file_sha256(again) == file_sha256(out)
