"""mosaic export --format raw of the real thing: manifests/examples/debian-bootable.yaml, built
from the host's apt sources and configured (store, lock and key are test_boot.py's, cached in
/var/cache/mosaic-tests/boot), read back without mounting and compared with its mount.

The disk's layout comes from `sfdisk -J` (GPT, the ESP then the x86-64 root of the Discoverable
Partitions Specification, 1 MiB aligned) and must agree with OUT.manifest.json. The ESP is read
with mtools: the loader entry boots the view's kernel and initramfs with root=PARTUUID= of
partition 2, and systemd-boot, kernel and initramfs are the view's files. The root partition is
read in place (e2fsprogs' `IMAGE?offset=N`): e2fsck -fn, then debugfs `stat` of every path of the
mounted view (type, mode, owner, size, mtime, device, xattrs, hard links) and an rdump whose tree
walk must hold exactly the view's paths (and lost+found) with the view's contents and symlink
targets. The same export made by nobody, traced (no loop device, no mount), is byte-identical
to root's for the same --source-date-epoch, and its root is the view with mtimes clamped."""

import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import MOSAIC, file_sha256, mosaic_mounted, run, walk_tree
from test_boot import MANIFEST, bootable_build
from test_export_raw import (ESP_TYPE, MIB, MTOOLS_ENV, ROOT_TYPE, debugfs, debugfs_entries,
                             entry_diffs, layout)
from test_export_tar import view_snapshot

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

EPOCH = 1_700_000_000
NOBODY = 65534
SD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"


@pytest.fixture(scope="module")
def bootable():
    """debian-bootable as test_boot.py builds it (same store, lock and key, so the build is
    cached), without its need for qemu."""
    with bootable_build() as b:
        roles = [f["role"] for f in json.loads(b.lock.read_text()).get("fragments", [])]
        assert "config" in roles, roles
        yield b


@pytest.fixture(scope="module")
def view(bootable, tmp_path_factory):
    """view_snapshot of the configured composition's read-only mount, mtimes not clamped, and
    its os-release."""
    mnt = tmp_path_factory.mktemp("bootable-view") / "mnt"
    t0 = time.monotonic()
    with mosaic_mounted([MANIFEST, "--lock", bootable.lock, "-s", bootable.store, "--keyring",
                         bootable.keyring, "--read-only"], mnt, bootable.env) as m:
        want, links = view_snapshot(m.mnt, epoch=None)
        os_release = (m.mnt / "usr/lib/os-release").read_text()
    print(f"\nmount + snapshot of the view: {len(want)} entries, {len(links)} hard link groups, "
          f"{time.monotonic() - t0:.1f} s")
    return SimpleNamespace(entries=want, links=links, os_release=os_release)


def export_raw(bootable, out, *extra, env=None, user=None):
    t0 = time.monotonic()
    p = run([MOSAIC, "export", MANIFEST, "--lock", bootable.lock, "-s", bootable.store,
             "--keyring", bootable.keyring, "--format", "raw", "-o", out, *extra],
            env=env or bootable.env, check=False, user=user)
    assert p.returncode == 0, p.stderr
    print(f"export raw{' as uid %d' % user if user is not None else ''}: "
          f"{time.monotonic() - t0:.1f} s")
    return p


@pytest.fixture(scope="module")
def raw(bootable, tmp_path_factory):
    """The disk exported as root without --source-date-epoch: mtimes as in the view."""
    out = tmp_path_factory.mktemp("bootable-raw") / "debian-bootable.raw"
    export_raw(bootable, out)
    yield out
    for f in out.parent.iterdir():  # 1 GiB, kept by pytest for three runs otherwise
        f.unlink()


def partition_offset(img, number):
    return layout(img)["partitions"][number - 1]["start"] * 512


def loop_backing_files():
    """{loopN: its backing file} for every attached loop device."""
    out = {}
    for d in Path("/sys/block").glob("loop*"):
        try:
            out[d.name] = (d / "loop" / "backing_file").read_text().strip()
        except OSError:
            pass  # not attached
    return out


def read_back(img, want, links, tmp):
    """The root partition of img, read in place without mounting, against a view_snapshot:
    returns how many entries were compared."""
    t0 = time.monotonic()
    fs = f"{img}?offset={partition_offset(img, 2)}"
    p = run(["e2fsck", "-fn", fs], check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    t_fsck = time.monotonic() - t0
    paths = sorted(want)
    got = debugfs_entries(fs, paths, tmp)
    t_stat = time.monotonic() - t0 - t_fsck
    in_group = {p: len(g) for g in links for p in g}
    diff = entry_diffs(want, got, in_group)
    assert not diff, f"{len(diff)} differ\n" + "\n".join(diff[:20])
    # each hard link group is one inode (debugfs stat: "Inode: N   Type: ...")
    if links:
        out = debugfs(fs, [f'stat "/{p}"' for g in links for p in g], tmp)
        inodes = iter(re.findall(r"^Inode: (\d+)\s", out, re.M))
        for group in links:
            assert len({next(inodes) for _ in group}) == 1, group
    # every path, contents and symlink targets: rdump (as root it keeps owners) walked as a tree
    dump = Path(tmp) / "dump"
    dump.mkdir()
    debugfs(fs, [f"rdump / {dump}"], tmp)
    t_dump = time.monotonic() - t0 - t_fsck - t_stat
    names = {rel for rel, _ in walk_tree(dump)}
    assert names - set(want) == {"lost+found"}, sorted(names - set(want))[:20]
    assert set(want) - names == set(), sorted(set(want) - names)[:20]
    hashed = 0
    for path in paths:
        w = want[path]
        if w["type"] == stat.S_IFREG:
            assert file_sha256(dump / path) == w["sha256"], f"/{path}: content differs"
            hashed += w["size"]
        elif w["type"] == stat.S_IFLNK:
            assert os.readlink(dump / path) == w["link"], f"/{path}: symlink target differs"
    shutil.rmtree(dump)
    print(f"read back {len(paths)} entries ({hashed / MIB:.0f} MiB hashed, "
          f"{sum(map(len, links))} hard links, "
          f"{sum(1 for w in want.values() if w['xattrs'])} with xattrs): e2fsck {t_fsck:.1f} s, "
          f"debugfs stat {t_stat:.1f} s, rdump {t_dump:.1f} s, "
          f"compare {time.monotonic() - t0 - t_fsck - t_stat - t_dump:.1f} s")
    return len(paths)


# ---- tests -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bootable_raw_layout_and_esp(bootable, view, raw, tmp_path):
    man = json.loads(Path(f"{raw}.manifest.json").read_text())
    assert man["format"] == "raw" and man["size"] == raw.stat().st_size
    assert man["sha256"] == file_sha256(raw)
    # GPT: the ESP then the x86-64 root, 1 MiB aligned, as the manifest says
    t = layout(raw)
    assert t["label"] == "gpt" and t["id"].lower() == man["disk_uuid"]
    assert [q["type"] for q in t["partitions"]] == [ESP_TYPE, ROOT_TYPE]
    assert len(man["partitions"]) == 2
    for n, (q, m) in enumerate(zip(t["partitions"], man["partitions"]), 1):
        assert m["number"] == n and q["type"] == m["type"] and q["name"] == m["name"]
        assert q["start"] * 512 == m["start"] and q["size"] * 512 == m["size"]
        assert q["start"] % 2048 == 0 and q["size"] % 2048 == 0
        assert q["uuid"].lower() == m["uuid"]
    assert t["partitions"][0]["start"] == 2048
    assert t["partitions"][1]["start"] == t["partitions"][0]["start"] + t["partitions"][0]["size"]
    assert raw.stat().st_size == (t["partitions"][1]["start"] + t["partitions"][1]["size"]) * 512 \
        + MIB
    assert [m["filesystem"] for m in man["partitions"]] == ["vfat", "ext4"]
    root = f"{raw}?offset={man['partitions'][1]['start']}"
    info = run(["dumpe2fs", "-h", root], check=False).stdout
    assert re.search(rf"^Filesystem UUID:\s+{man['partitions'][1]['fs_uuid']}$", info, re.M), info

    # the ESP: systemd-boot, the view's newest kernel and its initramfs (made by configure)
    kernel, initrd = man["boot"]["kernel"], man["boot"]["initrd"]
    kver = re.fullmatch(r"/boot/vmlinuz-(.+)", kernel).group(1)
    assert initrd == f"/boot/initrd.img-{kver}"
    want = view.entries
    kernels = [p for p in want if re.fullmatch(r"boot/vmlinuz-.+", p)]
    assert f"boot/vmlinuz-{kver}" in kernels, kernels
    esp = f"{raw}@@{man['partitions'][0]['start']}"
    assert man["partitions"][0]["fs_uuid"] in run(["mdir", "-i", esp, "::/"], env=MTOOLS_ENV).stdout
    title = re.search(r'^PRETTY_NAME="?(.*?)"?$', view.os_release, re.M).group(1)
    entry = run(["mtype", "-i", esp, "::/loader/entries/mosaic.conf"], env=MTOOLS_ENV).stdout
    assert entry == (f"title {title}\nversion {kver}\n"
                     f"linux /mosaic/vmlinuz-{kver}\ninitrd /mosaic/initrd.img-{kver}\n"
                     f"options root=PARTUUID={t['partitions'][1]['uuid'].lower()} ro "
                     "console=ttyS0,115200 rw\n"), entry
    assert "default mosaic.conf" in run(["mtype", "-i", esp, "::/loader/loader.conf"],
                                        env=MTOOLS_ENV).stdout
    for src, dst in ((SD_BOOT, "::/EFI/BOOT/BOOTX64.EFI"),
                     (kernel[1:], f"::/mosaic/vmlinuz-{kver}"),
                     (initrd[1:], f"::/mosaic/initrd.img-{kver}")):
        copy = tmp_path / "copy"
        run(["mcopy", "-n", "-i", esp, dst, copy], env=MTOOLS_ENV)
        assert want[src]["type"] == stat.S_IFREG and file_sha256(copy) == want[src]["sha256"], \
            f"{dst} is not the view's /{src}"
        copy.unlink()
    print(f"layout: {json.dumps([(q['name'], q['start'], q['size']) for q in t['partitions']])}; "
          f"kernel {kver}")


@pytest.mark.slow
def test_bootable_raw_root_reads_back_as_the_view(view, raw, tmp_path):
    n = read_back(raw, view.entries, view.links, tmp_path)
    assert n > 10000  # the whole system, not a stub


@pytest.mark.slow
def test_bootable_raw_as_nobody_without_loop_devices(bootable, view, tmp_path):
    """Made by an unprivileged user (traced: no loop device opened, nothing mounted), the disk
    is byte for byte root's for the same --source-date-epoch."""
    a = tmp_path / "a.raw"
    export_raw(bootable, a, "--source-date-epoch", str(EPOCH))
    # nobody reads the store, the lock, the keyring and the manifest, and writes only here
    for d, _, files in os.walk(bootable.store):
        os.chmod(d, os.stat(d).st_mode | 0o555)
        for f in files:
            os.chmod(Path(d) / f, os.stat(Path(d) / f).st_mode | 0o444)
    for f in (bootable.lock, bootable.keyring, MANIFEST):
        assert os.stat(f).st_mode & 0o004, f"{f} is not world-readable"
    shared = Path(tempfile.mkdtemp(prefix="mosaic-readback-"))
    try:
        shared.chmod(0o777)
        b = shared / "b.raw"
        env = dict(bootable.env, MOSAIC_CACHE_DIR=str(shared / "cache"), HOME=str(shared),
                   PATH="/usr/local/bin:/usr/bin:/bin")  # a user's PATH: no /usr/sbin
        env.pop("GNUPGHOME", None)
        trace = shared / "trace"
        strace = []
        if shutil.which("strace"):
            # --seccomp-bpf: only the traced calls stop the export (not every read and write)
            strace = ["strace", "-f", "--seccomp-bpf", "-qq", "-o", trace, "-e",
                      "trace=open,openat,openat2,mount,fsmount,move_mount,open_tree"]
        loops_before = loop_backing_files()
        t0 = time.monotonic()
        p = run([*strace, MOSAIC, "export", MANIFEST, "--lock", bootable.lock, "-s",
                 bootable.store, "--keyring", bootable.keyring, "--format", "raw", "-o", b,
                 "--source-date-epoch", str(EPOCH)], env=env, user=NOBODY, check=False)
        took = time.monotonic() - t0
        loops_after = loop_backing_files()
        assert p.returncode == 0, p.stderr
        if strace:
            calls = trace.read_text()
            assert not re.search(r"/dev/loop|^\d+\s+(mount|fsmount|move_mount|open_tree)\(",
                                 calls, re.M), "\n".join(
                l for l in calls.splitlines() if "/dev/loop" in l or "mount(" in l
                or "open_tree(" in l)
        # no loop device came or went for anything of ours; others' tests may use loops
        ours = (str(shared), str(tmp_path), str(bootable.store))
        new = {k: v for k, v in loops_after.items() if loops_before.get(k) != v}
        assert not [v for v in new.values() if v.startswith(ours)], new
        assert not [v for v in loops_after.values() if v.startswith(ours)], loops_after
        print(f"export raw as nobody{' (traced)' if strace else ''}, cold cache: {took:.1f} s; "
              f"loop devices attached before {len(loops_before)}, after {len(loops_after)}")
        assert b.stat().st_uid == NOBODY
        assert [x.name for x in shared.iterdir() if ".tmp" in x.name] == []
        assert file_sha256(a) == file_sha256(b), "nobody's disk differs from root's"
        for suffix in (".spdx.json", ".manifest.json"):
            assert Path(f"{a}{suffix}").read_text().replace("a.raw", "X") == \
                Path(f"{b}{suffix}").read_text().replace("b.raw", "X"), suffix
        # and it is the view, mtimes clamped: owners, devices and modes from the composition
        clamped = {p: dict(e, mtime=min(e["mtime"], EPOCH)) for p, e in view.entries.items()}
        assert any(e["mtime"] > EPOCH for e in view.entries.values())  # the clamp is tested
        read_back(b, clamped, view.links, tmp_path)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert [x.name for x in tmp_path.iterdir() if ".tmp" in x.name] == []
    a.unlink()
