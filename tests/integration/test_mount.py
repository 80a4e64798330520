"""mosaic compose + mosaic mount: the composed view against kernel overlayfs over the same
fragments loop-mounted, laziness, inode numbers, overlay rules, the writable upper in both modes,
lifecycle errors and concurrent use. Every mount is taken down in a finally, and every test checks
that no mount and no mosaic process is left behind."""

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import MOSAIC, view_xattrs, write_file, file_sha256, object_path, pid_alive, run

STRESS_SECONDS = float(os.environ.get("MOSAIC_STRESS_SECONDS", "30"))
EPOCH = "1700000000"
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "LC_ALL": "C", "HOME": "/root"}
WRITABLE_MODES = ["overlay", "fuse"]


# ---- mounts and processes, and leaving none behind ------------------------------------------

def _unescape(s):
    return s.encode().decode("unicode_escape") if "\\" in s else s


def mountinfo():
    """[{id, dev, point, fstype, source}] of this mount namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            a, b = pre.split(), post.split()
            out.append(dict(id=int(a[0]), dev=a[2], point=_unescape(a[4]), fstype=b[0],
                            source=_unescape(b[1]) if len(b) > 1 else ""))
    return out


def mounts_at(path):
    path = os.path.realpath(path)
    return [m for m in mountinfo() if m["point"] == path]


def mosaic_pids():
    """Pids of running mosaic processes (the daemons among them)."""
    want = os.path.realpath(MOSAIC)
    pids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{d}/exe")
        except OSError:
            continue
        if exe.removesuffix(" (deleted)") == want:
            pids.add(int(d))
    return pids



def wait_gone(pids, timeout=10.0):
    deadline = time.monotonic() + timeout
    pids = set(pids)
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if pid_alive(p)}
        if pids:
            time.sleep(0.05)
    return pids


def _abort_fuse(dev):
    minor = dev.split(":")[1]
    with contextlib.suppress(OSError):
        Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")


_BASETEMP = None


@pytest.fixture(autouse=True, scope="module")
def _basetemp(tmp_path_factory):
    """Where this run's mounts live (pytest's base temporary directory), for no_leftovers."""
    global _BASETEMP
    _BASETEMP = tmp_path_factory.getbasetemp().resolve()


@contextlib.contextmanager
def no_leftovers():
    """Whatever mounts and mosaic processes appear inside the block are gone after it: unmounted
    lazily and killed if they outlive it. If the block itself succeeded, anything that had to
    be cleaned up here fails the test."""
    before = {m["id"] for m in mountinfo()}
    before_pids = mosaic_pids()
    try:
        yield
    finally:
        # Only this run's mounts: another test run on the machine may mount beside it.
        new = [m for m in mountinfo() if m["id"] not in before and
               m["point"].startswith(str(_BASETEMP) + "/")]
        for m in sorted(new, key=lambda m: m["id"], reverse=True):
            subprocess.run(["umount", "-l", m["point"]], capture_output=True)
        pids = mosaic_pids() - before_pids
        stuck = wait_gone(pids, 10)
        if stuck:
            for m in new:
                if m["fstype"].startswith("fuse"):
                    _abort_fuse(m["dev"])
            for p in stuck:
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
            wait_gone(stuck, 5)
    left = [f"{m['fstype']} on {m['point']}" for m in new]
    if left or stuck:
        raise AssertionError(f"left behind after the test: mounts {left}, mosaic pids "
                             f"{sorted(stuck)}")


def mosaic_status(mnt, env):
    p = run([MOSAIC, "status", mnt, "--json"], env=env)
    return json.loads(p.stdout)


def short(cmd):
    """A command for a message: long fragment lists elided."""
    cmd = [str(c) for c in cmd]
    return " ".join(cmd if len(cmd) <= 8 else cmd[:4] + [f"... ({len(cmd) - 7} more)"] + cmd[-3:])


def mosaic(*args, env, check=True, cwd=None):
    """Runs mosaic; a failure message shows the command with long fragment lists elided."""
    cmd = [MOSAIC, *args]
    p = run(cmd, env=env, check=False, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{short(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\n"
                             f"stderr:\n{p.stderr}")
    return p


class Mounted(SimpleNamespace):
    def status(self):
        return mosaic_status(self.mnt, self.env)


@contextlib.contextmanager
def mosaic_mount(sources, mnt, env, *opts, store=None):
    """`mosaic mount SOURCES... MNT [-s STORE] OPTS` (daemonised; it returns once mounted),
    yields a Mounted; then `mosaic umount`, which must take every layer down and let the daemon
    exit. Cleans up whatever is left even when the test failed."""
    mnt = Path(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = [MOSAIC, "mount", *sources, mnt, *(["-s", store] if store else []), *opts]
    with no_leftovers():
        before = mosaic_pids()
        p = mosaic(*cmd[1:], env=env, check=False)
        assert p.returncode == 0, f"{short(cmd)} exited {p.returncode}: {p.stderr.strip()}"
        assert os.path.ismount(mnt), f"mosaic mount returned 0 but {mnt} is not mounted"
        st = mosaic_status(mnt, env)
        pid = st.get("pid")
        pids = {pid} if pid else mosaic_pids() - before
        m = Mounted(mnt=mnt, env=env, stdout=p.stdout, stderr=p.stderr, pids=pids,
                    first_status=st)
        yield m
        u = run([MOSAIC, "umount", mnt], env=env, check=False)
        assert u.returncode == 0, f"mosaic umount {mnt} exited {u.returncode}: {u.stderr}"
        assert not os.path.ismount(mnt), f"{mnt} still mounted after mosaic umount"
        assert not wait_gone(m.pids), f"daemon {m.pids} still running after mosaic umount"


@contextlib.contextmanager
def loop_mounts(images):
    """Loop-mounts each image read-only at a short path (/tmp/mrXXXX/NN, lowest first)."""
    base = Path(tempfile.mkdtemp(prefix="mr", dir="/tmp"))
    dirs = []
    try:
        for i, image in enumerate(images):
            d = base / f"{i:02d}"
            d.mkdir()
            dirs.append(d)
            run(["mount", "-t", "squashfs", "-o", "loop,ro", image, d])
        yield dirs
    finally:
        for d in reversed(dirs):
            subprocess.run(["umount", "-l", str(d)], capture_output=True)
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()


@contextlib.contextmanager
def kernel_overlay(lowers, tops=(), options=()):
    """Read-only kernel overlayfs over lowers (lowest first), with tops (directories such as an
    upper layer, highest first) above them. overlayfs takes lowerdir top first; the lowers are
    named relative to their common parent (mount runs there) to stay under the option length
    limit with ~100 layers."""
    lowers = [Path(d) for d in lowers]
    cwd = lowers[0].parent
    assert all(d.parent == cwd for d in lowers)
    target = Path(tempfile.mkdtemp(prefix="mo", dir="/tmp"))
    layers = [str(Path(t).resolve()) for t in tops] + [d.name for d in reversed(lowers)]
    opts = ",".join(["lowerdir=" + ":".join(layers), *options])
    try:
        run(["mount", "-t", "overlay", "overlay", "-o", opts, target], cwd=cwd)
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
        with contextlib.suppress(OSError):
            target.rmdir()


# ---- tree snapshots -----------------------------------------------------------------------------



def snapshot(root, content=True):
    """{relative path: entry} for every entry under root ('' is root itself). Directories carry
    'nlink' and 'subdirs' under 'dir' so comparisons can leave them out."""
    root = Path(root)
    out = {}

    def visit(path, rel):
        st = os.lstat(path)
        e = dict(type=stat.S_IFMT(st.st_mode), mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                 gid=st.st_gid, xattrs=view_xattrs(path))
        if stat.S_ISDIR(st.st_mode):
            children = sorted(os.listdir(path))
            subdirs = 0
            for name in children:
                child_rel = f"{rel}/{name}" if rel else name
                if visit(path / name, child_rel):
                    subdirs += 1
            e["dir"] = (st.st_nlink, subdirs)
        else:
            e["nlink"] = st.st_nlink
            e["size"] = st.st_size
            e["mtime_ns"] = st.st_mtime_ns
            if stat.S_ISREG(st.st_mode) and content:
                e["sha256"] = file_sha256(path)
            elif stat.S_ISLNK(st.st_mode):
                e["link"] = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        out[rel] = e
        return stat.S_ISDIR(st.st_mode)

    visit(root, "")
    return out


def without_dir_counts(tree):
    return {p: {k: v for k, v in e.items() if k != "dir"} for p, e in tree.items()}


def assert_same_tree(got, want, what, limit=25):
    got, want = without_dir_counts(got), without_dir_counts(want)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = []
    for p in sorted(set(got) & set(want)):
        if got[p] != want[p]:
            keys = sorted(k for k in set(got[p]) | set(want[p]) if got[p].get(k) != want[p].get(k))
            differ.append(f"  /{p}: " + "; ".join(f"{k}: got {got[p].get(k)!r} want "
                                                  f"{want[p].get(k)!r}" for k in keys))
    if missing or extra or differ:
        msg = [f"{what}: {len(missing)} missing, {len(extra)} extra, {len(differ)} differ"]
        if missing:
            msg.append("missing: " + " ".join("/" + p for p in missing[:limit]))
        if extra:
            msg.append("extra: " + " ".join("/" + p for p in extra[:limit]))
        msg += differ[:limit]
        raise AssertionError("\n".join(msg))


def assert_dir_nlinks(tree, what):
    """mosaic reports 2 + subdirectories for every directory (overlayfs reports 1 when merged)."""
    bad = [f"/{p}: nlink {e['dir'][0]}, {e['dir'][1]} subdirs" for p, e in tree.items()
           if "dir" in e and e["dir"][0] != 2 + e["dir"][1]]
    assert not bad, f"{what}: directory link counts are not 2 + subdirs:\n" + "\n".join(bad[:25])


# ---- small synthetic fragments --------------------------------------------------------------

def make_fragment(store, src, signer, env, name, kind="config"):
    """A signed fragment from a directory or tar; returns its digest."""
    out = run([MOSAIC, "fragment", "create", src, "-o", store, "--name", name, "--version", "1",
               "--kind", kind, "--sign", signer.fingerprint, "--source-date-epoch", EPOCH],
              env=env).stdout
    return out.split()[0]



def whiteout(path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


@pytest.fixture(scope="module")
def small(signer, tmp_path_factory):
    """A store for the small synthetic fragments of this module, and an env that trusts them."""
    base = tmp_path_factory.mktemp("small")
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"), MOSAIC_KEYRING=signer.keyring)
    ns = SimpleNamespace(store=base / "store", env=env, signer=signer, base=base,
                         keyring=signer.keyring)
    ns.make = lambda src, name, kind="config": make_fragment(ns.store, src, signer, env, name,
                                                              kind)
    ns.image = lambda digest: object_path(ns.store, digest)
    return ns


def build_layers(root):
    """Three directory layers (lowest first) exercising every overlay rule the kernel applies
    to lower layers: replace, merge, chr 0/0 whiteouts (files and dirs), opaque directories
    (trusted.overlay.opaque=y), type changes, hard links, special files and mode bits."""
    l0, l1, l2 = (root / n for n in ("l0", "l1", "l2"))
    # l0: the base
    write_file(l0 / "a/file1", "l0 file1\n")
    write_file(l0 / "a/file2", "l0 file2\n")
    write_file(l0 / "a/sub/deep", "deep\n")
    whiteout(l0 / "a/ghost")  # a whiteout in the lowest layer hides nothing and is not shown
    write_file(l0 / "b/keep", "keep\n")
    write_file(l0 / "b/gone", "gone\n")
    write_file(l0 / "b/gonedir/x", "x\n")
    write_file(l0 / "c/old1", "old1\n")
    write_file(l0 / "c/olddir/y", "y\n")
    write_file(l0 / "e/dir2file/inner", "inner\n")
    write_file(l0 / "e/file2dir", "file\n")
    write_file(l0 / "e/file2link", "file\n")
    write_file(l0 / "hl/one", "linked\n", mode=0o640, uid=7, gid=8)
    os.link(l0 / "hl/one", l0 / "hl/two")
    write_file(l0 / "hl/three", "three\n")
    write_file(l0 / "hl/four", "linked\n")  # same content, not a link
    write_file(l0 / "modes/suid", "suid\n", mode=0o4755, uid=0, gid=0)
    write_file(l0 / "modes/sgid", "sgid\n", mode=0o2755, uid=0, gid=50)
    (l0 / "modes/sticky").mkdir(parents=True)
    os.chmod(l0 / "modes/sticky", 0o1777)
    (l0 / "modes/sgiddir").mkdir()
    os.chown(l0 / "modes/sgiddir", 0, 50)
    os.chmod(l0 / "modes/sgiddir", 0o2775)
    os.mkfifo(l0 / "modes/fifo", 0o600)
    os.mknod(l0 / "modes/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(l0 / "modes/loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(l0 / "modes/sock"))
    s.close()
    os.symlink("../a/file1", l0 / "modes/link")
    write_file(l0 / "perm/secret", "secret\n", mode=0o600)
    write_file(l0 / "perm/public", "public\n", mode=0o644)
    write_file(l0 / "perm/private/inner", "inner\n")
    os.chmod(l0 / "perm/private", 0o700)
    write_file(l0 / "x/attrs", "attrs\n", xattrs={"user.one": b"1", "user.two": b"\x00\xffbin"})
    write_file(l0 / "x/only-below", "below\n", xattrs={"user.below": b"\x00\xffbin"})
    os.setxattr(l0 / "x", "user.dir", b"l0")
    # l1: replaces, merges, deletes, hides
    write_file(l1 / "a/file1", "l1 file1, longer than before\n", mode=0o600, uid=3, gid=4)
    write_file(l1 / "a/new", "l1 new\n")
    whiteout(l1 / "b/gone")
    whiteout(l1 / "b/gonedir")
    write_file(l1 / "c/new1", "new1\n")
    os.setxattr(l1 / "c", "trusted.overlay.opaque", b"y")
    write_file(l1 / "e/dir2file", "now a file\n")
    write_file(l1 / "e/file2dir/inside", "now a dir\n")
    (l1 / "e").mkdir(exist_ok=True)
    os.symlink("dir2file", l1 / "e/file2link")
    write_file(l1 / "x/attrs", "attrs replaced\n", xattrs={"user.three": b"3"})
    os.setxattr(l1 / "x", "user.dir", b"l1")  # a merged dir shows the highest dir's attributes
    # l2: on top of the whiteouts and the opaque dir
    write_file(l2 / "a/sub/deep2", "deep2\n")
    os.symlink("file1", l2 / "a/file2")
    write_file(l2 / "b/gone", "back again\n")  # above its whiteout: visible again
    write_file(l2 / "c/new2", "new2\n")
    (l2 / "b/gonedir").mkdir(parents=True)  # a plain dir above a whiteout: empty but present
    return [l0, l1, l2]


def expected_rules(tree):
    """The rules, spelled out (what both views must show, beside being equal)."""
    p = lambda path: tree.get(path)  # noqa: E731
    assert p("a/file1")["sha256"] == hashlib.sha256(b"l1 file1, longer than before\n").hexdigest()
    assert p("a/file1")["mode"] == 0o600 and (p("a/file1")["uid"], p("a/file1")["gid"]) == (3, 4)
    assert p("a/file2")["link"] == "file1"
    assert {"a/new", "a/sub/deep", "a/sub/deep2"} <= set(tree)
    assert "a/ghost" not in tree
    assert p("b/gone")["sha256"] == hashlib.sha256(b"back again\n").hexdigest()
    assert p("b/gonedir")["type"] == stat.S_IFDIR and "b/gonedir/x" not in tree
    assert "b/keep" in tree
    assert sorted(k for k in tree if k.startswith("c/")) == ["c/new1", "c/new2"]
    assert p("e/dir2file")["type"] == stat.S_IFREG and "e/dir2file/inner" not in tree
    assert p("e/file2dir")["type"] == stat.S_IFDIR and "e/file2dir/inside" in tree
    assert p("e/file2link")["link"] == "dir2file"
    assert p("hl/one")["nlink"] == 2 and p("hl/three")["nlink"] == 1
    assert p("modes/suid")["mode"] == 0o4755 and p("modes/sgid")["mode"] == 0o2755
    assert p("modes/sticky")["mode"] == 0o1777 and p("modes/sgiddir")["mode"] == 0o2775
    assert p("modes/fifo")["type"] == stat.S_IFIFO
    assert p("modes/null")["rdev"] == (1, 3) and p("modes/loop9")["rdev"] == (7, 9)
    assert p("modes/loop9")["type"] == stat.S_IFBLK
    assert p("modes/sock")["type"] == stat.S_IFSOCK
    assert p("x/attrs")["xattrs"] == {"user.three": b"3"}
    assert p("x")["xattrs"] == {"user.dir": b"l1"}
    assert p("x/only-below")["xattrs"] == {"user.below": b"\x00\xffbin"}


@pytest.fixture(scope="module")
def layers(small):
    digests = [small.make(d, f"layer{i}") for i, d in enumerate(build_layers(small.base / "src"))]
    return digests


def test_overlay_rules_match_kernel_overlayfs(small, layers, tmp_path):
    images = [small.image(d) for d in layers]
    with loop_mounts(images) as lowers, kernel_overlay(lowers) as ref:
        want = snapshot(ref)
        expected_rules(want)  # the kernel itself agrees with the rules as written
        # .sqfs paths as the fragment arguments
        with mosaic_mount([str(i) for i in images], tmp_path / "mnt", small.env,
                          "--keyring", small.keyring) as m:
            got = snapshot(m.mnt)
    assert_same_tree(got, want, "mosaic vs kernel overlayfs (synthetic layers)")
    expected_rules(got)
    assert_dir_nlinks(got, "mosaic")


def test_hard_links_and_inodes_in_small_composition(small, layers, tmp_path):
    with mosaic_mount(layers, tmp_path / "mnt", small.env, store=small.store) as m:
        one, two = os.lstat(m.mnt / "hl/one"), os.lstat(m.mnt / "hl/two")
        three, four = os.lstat(m.mnt / "hl/three"), os.lstat(m.mnt / "hl/four")
        assert (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)
        assert one.st_nlink == two.st_nlink == 2
        assert three.st_nlink == four.st_nlink == 1
        inos = {(s.st_dev, s.st_ino) for s in (one, three, four)}
        assert len(inos) == 3
        # every distinct entry of the view has its own inode number
        seen = {}
        for dirpath, dirnames, filenames in os.walk(m.mnt):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                st = os.lstat(p)
                seen.setdefault((st.st_dev, st.st_ino), []).append(str(p.relative_to(m.mnt)))
        shared = sorted(sorted(v) for v in seen.values() if len(v) > 1)
        assert shared == [["hl/one", "hl/two"]], shared


def test_same_inode_numbers_in_two_fragments_stay_distinct(small, tmp_path):
    """Two fragments built alike number their inodes alike; the view must not (DESIGN.md)."""
    digests = []
    for n in ("p", "q"):
        src = tmp_path / n
        write_file(src / f"lib{n}/libx.so", f"library {n}\n")
        write_file(src / f"lib{n}/liby.so", f"other {n}\n")
        digests.append(small.make(src, f"twin-{n}"))
    with mosaic_mount(digests, tmp_path / "mnt", small.env, store=small.store) as m:
        sts = [os.lstat(m.mnt / f"lib{n}/lib{x}.so") for n in "pq" for x in "xy"]
        assert len({(s.st_dev, s.st_ino) for s in sts}) == 4
        assert (m.mnt / "libp/libx.so").read_text() == "library p\n"
        assert (m.mnt / "libq/libx.so").read_text() == "library q\n"


def test_oci_whiteouts_from_layer_tars(small, tmp_path):
    """`.wh.NAME` and `.wh..wh..opq` in a fragment made from an OCI-style layer tar delete and
    hide what lies below (the kernel does not read these names, so the tree is spelled out)."""
    base = tmp_path / "base"
    write_file(base / "etc/keep", "keep\n")
    write_file(base / "etc/remove-me", "bye\n")
    write_file(base / "etc/dir-remove/x", "x\n")
    write_file(base / "opq/old", "old\n")
    write_file(base / "opq/olddir/y", "y\n")
    write_file(base / "other/z", "z\n")
    layer = tmp_path / "layer"
    write_file(layer / "etc/.wh.remove-me")
    write_file(layer / "etc/.wh.dir-remove")
    write_file(layer / "opq/.wh..wh..opq")
    write_file(layer / "opq/fresh", "fresh\n")
    write_file(layer / "other/.wh.not-there")  # whiteout of nothing: no effect
    tar = tmp_path / "layer.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted(layer.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(layer)), recursive=False)
    d_base = small.make(base, "oci-base")
    d_layer = small.make(tar, "oci-layer")
    with mosaic_mount([d_base, d_layer], tmp_path / "mnt", small.env, store=small.store) as m:
        got = {p for p in snapshot(m.mnt) if p}
        assert (m.mnt / "opq/fresh").read_text() == "fresh\n"
        assert (m.mnt / "etc/keep").read_text() == "keep\n"
    assert got == {"etc", "etc/keep", "opq", "opq/fresh", "other", "other/z"}, got


def test_compose_conflicts_and_strict(small, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write_file(one / "usr/share/thing/conf", "from one\n")
    write_file(two / "usr/share/thing/conf", "from two\n")
    write_file(one / "usr/share/same", "identical\n")
    write_file(two / "usr/share/same", "identical\n")
    write_file(one / "usr/share/only-one", "1\n")
    digests = [small.make(one, "pkg-one", kind="package"),
               small.make(two, "pkg-two", kind="package")]
    refs = ["pkg-one", "pkg-two"]  # store refs (names), lowest first
    env, store = small.env, small.store

    p = run([MOSAIC, "compose", "--conflicts", *refs, "-s", store], env=env, check=False)
    assert p.returncode in (0, 1), p.stderr
    assert "usr/share/thing/conf" in p.stdout, p.stdout
    assert "usr/share/same" not in p.stdout and "only-one" not in p.stdout, p.stdout

    strict = run([MOSAIC, "compose", *refs, "-s", store, "-o", tmp_path / "strict.index",
                  "--strict"], env=env, check=False)
    assert strict.returncode == 1, (strict.returncode, strict.stderr)
    assert "usr/share/thing/conf" in strict.stderr, strict.stderr
    assert not (tmp_path / "strict.index").exists()

    index = tmp_path / "loose.index"
    run([MOSAIC, "compose", *refs, "-s", store, "-o", index], env=env)
    listing = run([MOSAIC, "compose", "--list", index], env=env).stdout
    at = [listing.find(d[:12]) for d in digests]
    assert -1 not in at and at == sorted(at), f"compose --list, want both fragments in order:" \
                                              f"\n{listing}"
    with mosaic_mount([index], tmp_path / "mnt", env, store=store) as m:
        assert (m.mnt / "usr/share/thing/conf").read_text() == "from two\n"  # higher wins
        assert (m.mnt / "usr/share/only-one").read_text() == "1\n"


def test_permissions_match_kernel(small, layers, tmp_path):
    """With default_permissions the kernel checks modes as on any filesystem; other users see
    the view (it is a root filesystem) but not what the modes deny."""
    images = [small.image(d) for d in layers]
    cmds = [["cat", "perm/public"], ["cat", "perm/secret"], ["ls", "perm/private"],
            ["cat", "perm/private/inner"], ["cat", "a/file1"], ["ls", "a"]]

    def outcomes(root):
        return [run(c[:-1] + [Path(root) / c[-1]], user=65534, check=False).returncode == 0
                for c in cmds]

    shared = Path(tempfile.mkdtemp(prefix="mosaic-perm-"))  # pytest's tmp_path is 0700
    shared.chmod(0o755)
    try:
        with loop_mounts(images) as lowers, kernel_overlay(lowers) as ref:
            want = outcomes(ref)
            with mosaic_mount(layers, shared / "mnt", small.env, store=small.store) as m:
                got = outcomes(m.mnt)
    finally:
        with contextlib.suppress(OSError):
            (shared / "mnt").rmdir()
            shared.rmdir()
    assert want == [True, False, False, False, False, True]
    assert got == want, dict(zip([" ".join(c) for c in cmds], got))


def test_read_only_mount_refuses_writes(small, layers, tmp_path):
    with mosaic_mount(layers, tmp_path / "mnt", small.env, "--read-only",
                      store=small.store) as m:
        for op in (lambda: (m.mnt / "new").write_text("x"),
                   lambda: (m.mnt / "a/file1").write_text("x"),
                   lambda: os.mkdir(m.mnt / "d"),
                   lambda: os.unlink(m.mnt / "a/new"),
                   lambda: os.chmod(m.mnt / "a/new", 0o777)):
            with pytest.raises(OSError) as e:
                op()
            assert e.value.errno == errno.EROFS, e.value


# ---- lifecycle errors -------------------------------------------------------------------------

def mount_fails(args, env, must_name=()):
    """Runs a mosaic mount that must fail: exit 1 or 2 (never a signal), a message naming each
    of must_name, and nothing left mounted or running."""
    with no_leftovers():
        p = mosaic("mount", *args, env=env, check=False)
    assert p.returncode in (1, 2), f"exit {p.returncode} (want 1 or 2): {p.stderr}"
    msg = p.stderr + p.stdout
    assert msg.strip(), "no error message"
    for s in must_name:
        assert str(s) in msg, f"the message does not name {s}: {msg.strip()}"
    return msg


def test_mount_missing_mountpoint(small, layers, tmp_path):
    mnt = tmp_path / "does-not-exist"
    mount_fails([*layers, mnt, "-s", small.store], small.env, [mnt])
    assert not mnt.exists()


def test_mount_busy_mountpoint(small, layers, tmp_path):
    with mosaic_mount(layers, tmp_path / "mnt", small.env, store=small.store) as m:
        msg = mount_fails_inside([*layers, m.mnt, "-s", small.store], small.env)
        assert str(m.mnt) in msg, msg
        assert len(mounts_at(m.mnt)) == 1, mounts_at(m.mnt)
        assert (m.mnt / "a/new").read_text() == "l1 new\n"  # the first mount still serves


def mount_fails_inside(args, env):
    """Like mount_fails, for use inside a live mount (mounts of the outer block are allowed)."""
    p = mosaic("mount", *args, env=env, check=False)
    assert p.returncode in (1, 2), f"exit {p.returncode} (want 1 or 2): {p.stderr}"
    assert (p.stderr + p.stdout).strip(), "no error message"
    return p.stderr + p.stdout


def test_mount_fragment_missing_from_store(small, layers, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(small.store, store, symlinks=True)
    object_path(store, layers[1]).unlink()
    (tmp_path / "mnt").mkdir()
    msg = mount_fails([*layers, tmp_path / "mnt", "-s", store], small.env)
    assert layers[1][:12] in msg, f"the message does not name fragment {layers[1]}: {msg}"
    mount_fails(["no-such-fragment", layers[0], tmp_path / "mnt", "-s", store], small.env,
                ["no-such-fragment"])


def test_mount_untrusted_fragment(small, outsider, tmp_path):
    """An unsigned fragment, or one signed by a key outside the keyring, is not mounted."""
    src = tmp_path / "src"
    write_file(src / "f", "f\n")
    unsigned = run([MOSAIC, "fragment", "create", src, "-o", small.store, "--name", "unsigned",
                    "--version", "1", "--kind", "config", "--source-date-epoch", EPOCH],
                   env=small.env).stdout.split()[0]
    write_file(src / "g", "g\n")
    foreign = run([MOSAIC, "fragment", "create", src, "-o", small.store, "--name", "foreign",
                   "--version", "1", "--kind", "config", "--sign", outsider.fingerprint,
                   "--source-date-epoch", EPOCH], env=outsider.env).stdout.split()[0]
    (tmp_path / "mnt").mkdir()
    for digest in (unsigned, foreign):
        msg = mount_fails([digest, tmp_path / "mnt", "-s", small.store, "--keyring",
                           small.keyring], small.env)
        assert digest[:12] in msg, msg
    msg = mount_fails([foreign, tmp_path / "mnt", "-s", small.store, "--keyring",
                       small.keyring], small.env)
    assert outsider.keyid[-8:].upper() in msg.upper(), f"the key is not named: {msg}"


def corruptions(data):
    n = len(data)
    yield "empty", b""
    yield "16 bytes", data[:16]
    yield "half", data[: n // 2]
    yield "all but the last byte", data[:-1]
    for off in sorted({0, 4, 8, 12, 24, 40, 64, n // 3, n // 2, n - 64, n - 8, n - 1}):
        if 0 <= off < n:
            b = bytearray(data)
            b[off] ^= 0xFF
            yield f"byte {off} flipped", bytes(b)
    rnd = random.Random(3)
    yield "garbage", bytes(rnd.getrandbits(8) for _ in range(n))
    b = bytearray(data)
    for _ in range(32):
        b[rnd.randrange(64, n)] = rnd.getrandbits(8)
    yield "32 bytes scrambled past the header", bytes(b)


def test_corrupt_index_gives_clear_error(small, layers, tmp_path):
    index = tmp_path / "good.index"
    run([MOSAIC, "compose", *layers, "-s", small.store, "-o", index], env=small.env)
    data = index.read_bytes()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    bad = tmp_path / "bad.index"
    for what, corrupt in corruptions(data):
        bad.write_bytes(corrupt)
        lst = run([MOSAIC, "compose", "--list", bad], env=small.env, check=False)
        assert lst.returncode in (1, 2) and lst.stderr.strip(), \
            f"compose --list on index with {what}: exit {lst.returncode} {lst.stderr}"
        msg = mount_fails([bad, mnt, "-s", small.store], small.env)
        assert "bad.index" in msg, f"index with {what}: message does not name it: {msg}"


def test_umount_not_mounted(small, tmp_path):
    (tmp_path / "mnt").mkdir()
    p = run([MOSAIC, "umount", tmp_path / "mnt"], env=small.env, check=False)
    assert p.returncode in (1, 2) and str(tmp_path / "mnt") in p.stderr, p.stderr


def test_mount_with_relative_paths(small, layers, tmp_path):
    """Store, upper and mountpoint named relative to the caller's directory: the daemon runs
    elsewhere, so it must have made them absolute before it started."""
    shutil.copytree(small.store, tmp_path / "store", symlinks=True)
    (tmp_path / "mnt").mkdir()
    for opts in ([], ["--upper", "upper"]):
        with no_leftovers():
            mosaic("mount", *layers, "mnt", "-s", "store", *opts, env=small.env, cwd=tmp_path)
            try:
                assert (tmp_path / "mnt/a/new").read_text() == "l1 new\n"
                if opts:
                    (tmp_path / "mnt/written").write_text("w\n")
            finally:
                mosaic("umount", "mnt", env=small.env, cwd=tmp_path, check=False)
        if opts:
            assert (tmp_path / "upper/written").read_text() == "w\n"


@pytest.mark.parametrize("mode", ["read-only", *WRITABLE_MODES])
def test_sigterm_unmounts_and_exits_0(small, layers, tmp_path, mode):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = [] if mode == "read-only" else ["--upper", tmp_path / "upper", f"--writable={mode}"]
    (tmp_path / "upper").mkdir()
    with no_leftovers():
        # foreground: the exit status is ours to see
        proc = subprocess.Popen([MOSAIC, "mount", "-f", *layers, mnt, "-s", small.store,
                                 *map(str, opts)], env=small.env, stderr=subprocess.PIPE,
                                text=True)
        try:
            deadline = time.monotonic() + 20
            while not (os.path.ismount(mnt) and
                       run([MOSAIC, "status", mnt, "--json"], env=small.env,
                           check=False).returncode == 0):
                assert proc.poll() is None, f"mosaic mount -f exited {proc.returncode}: " \
                                            f"{proc.stderr.read()}"
                assert time.monotonic() < deadline, "mount -f did not come up in 20 s"
                time.sleep(0.05)
            if mode != "read-only":
                (mnt / "written").write_text("before SIGTERM\n")
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert rc == 0, f"daemon exited {rc} on SIGTERM: {proc.stderr.read()}"
        assert not os.path.ismount(mnt)
        # daemonised: its pid from mosaic status
        with mosaic_mount(layers, mnt, small.env, *opts, store=small.store) as m:
            if mode != "read-only":
                assert (mnt / "written").read_text() == "before SIGTERM\n"
            pid = m.first_status.get("pid")
            assert isinstance(pid, int) and pid_alive(pid), m.first_status
            os.kill(pid, signal.SIGTERM)
            assert not wait_gone({pid}, 20), "daemon still running 20 s after SIGTERM"
            assert not mounts_at(mnt), f"still mounted after SIGTERM: {mounts_at(mnt)}"
            mnt.mkdir(exist_ok=True)
            # mosaic_mount's own umount now has nothing to do; remount so it has
            run([MOSAIC, "mount", *layers, mnt, "-s", small.store, *opts], env=small.env)
            m.pids = {mosaic_status(mnt, small.env).get("pid")} - {None}


# ---- the minbase composition ----------------------------------------------------------------

@pytest.fixture(scope="module")
def minbase(minbase_store):
    store, digests, keyring, env = minbase_store
    images = [object_path(store, d) for d in digests]
    names = [json.loads(object_path(store, d, ".json").read_text())["name"] for d in digests]
    return SimpleNamespace(store=store, digests=digests, keyring=keyring, env=env,
                           images=images, names=names)


@pytest.fixture(scope="module")
def reference(minbase):
    """The minbase fragments loop-mounted and stacked under kernel overlayfs, for the module."""
    with loop_mounts(minbase.images) as lowers, kernel_overlay(lowers) as root:
        yield SimpleNamespace(root=root, lowers=lowers)


@pytest.fixture(scope="module")
def reference_tree(reference):
    return snapshot(reference.root)


@pytest.fixture(scope="module")
def origins(reference):
    """{path: (layer index, inode in that layer)} for every non-directory of the composition:
    which fragment's file the view shows (the highest layer that has the path)."""
    out = {}
    for i, lower in enumerate(reference.lowers):
        for dirpath, dirnames, filenames in os.walk(lower):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                rel = str(p.relative_to(lower))
                st = os.lstat(p)
                if stat.S_ISDIR(st.st_mode):
                    out.pop(rel, None)
                else:
                    out[rel] = (i, st.st_ino)
    return out


@pytest.fixture
def minbase_ro(minbase, tmp_path):
    with mosaic_mount(minbase.digests, tmp_path / "mnt", minbase.env, "--keyring",
                      minbase.keyring, store=minbase.store) as m:
        yield m


@pytest.mark.slow
@pytest.mark.parametrize("source", ["digests", "index"])
def test_minbase_tree_matches_kernel_overlayfs(minbase, reference_tree, tmp_path, source):
    assert len(minbase.digests) >= 50
    if source == "index":
        index = tmp_path / "minbase.index"
        mosaic("compose", *minbase.digests, "-s", minbase.store, "-o", index, env=minbase.env)
        listing = run([MOSAIC, "compose", "--list", index], env=minbase.env).stdout
        at = [listing.find(d[:12]) for d in minbase.digests]
        assert -1 not in at, "compose --list does not name every fragment"
        assert at == sorted(at), "compose --list does not keep the fragment order"
        sources = [index]
    else:
        sources = minbase.digests
    with mosaic_mount(sources, tmp_path / "mnt", minbase.env, store=minbase.store) as m:
        got = snapshot(m.mnt)
        st = m.status()
    assert_same_tree(got, reference_tree, "mosaic vs kernel overlayfs (minbase)")
    assert_dir_nlinks(got, "mosaic (minbase)")
    assert len(st["fragments"]) == len(minbase.digests), st["fragments"]


def elf_interpreter(path):
    """PT_INTERP of an ELF executable (the dynamic loader it names)."""
    data = Path(path).read_bytes()
    assert data[:4] == b"\x7fELF", path
    wide, end = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        phoff, = struct.unpack_from(end + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
    else:
        phoff, = struct.unpack_from(end + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x2A)
    for i in range(phnum):
        off = phoff + i * phentsize
        if struct.unpack_from(end + "I", data, off)[0] == 3:  # PT_INTERP
            if wide:
                offset, = struct.unpack_from(end + "Q", data, off + 8)
                size, = struct.unpack_from(end + "Q", data, off + 32)
            else:
                offset, = struct.unpack_from(end + "I", data, off + 4)
                size, = struct.unpack_from(end + "I", data, off + 16)
            return data[offset:offset + size].rstrip(b"\0").decode()
    raise AssertionError(f"{path} has no PT_INTERP")


def in_chroot(root, *cmd):
    return run(["chroot", root, *cmd], env=CHROOT_ENV, check=False)


@pytest.mark.slow
def test_minbase_programs_run_from_the_mount(minbase, reference, minbase_ro):
    mnt, ref = minbase_ro.mnt, reference.root
    count = "ls /usr/bin | wc -l"
    want = in_chroot(ref, "/bin/sh", "-c", count)
    assert want.returncode == 0 and int(want.stdout) > 10, want
    got = in_chroot(mnt, "/bin/sh", "-c", count)
    assert (got.returncode, got.stdout) == (0, want.stdout), got

    p = in_chroot(mnt, "/usr/bin/env", "true")
    assert p.returncode == 0, p

    ls = "bin/ls" if (ref / "bin/ls").exists() else "usr/bin/ls"
    interp = elf_interpreter(ref / ls)
    want = in_chroot(ref, interp, "/" + ls, "-1", "/usr/bin", "/usr/share/doc")
    got = in_chroot(mnt, interp, "/" + ls, "-1", "/usr/bin", "/usr/share/doc")
    assert want.returncode == 0, want
    assert (got.returncode, got.stdout) == (0, want.stdout), got.stderr
    # and the loader's own view of its libraries resolves inside the mount
    got = in_chroot(mnt, interp, "--list", "/" + ls)
    assert got.returncode == 0 and "libc.so" in got.stdout, got

    # mmap of a library, page by page, against the reference bytes
    import mmap
    libc = next(p for p in [*ref.glob("lib/*/libc.so.6"), *ref.glob("usr/lib/*/libc.so.6")])
    rel = libc.relative_to(ref)
    with open(mnt / rel, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert hashlib.sha256(mm[:]).hexdigest() == file_sha256(libc)
        assert mm[4096:8192] == libc.read_bytes()[4096:8192]

    # exec from the mount directly (host loader, the mount's binary)
    p = run([mnt / ls, "-d", "/"], check=False)
    assert p.returncode == 0 and p.stdout.strip() == "/", p


@pytest.mark.slow
def test_minbase_metadata_opens_no_fragment(minbase, origins, minbase_ro):
    mnt = minbase_ro.mnt
    assert minbase_ro.status()["fragment_opens"] == 0
    run(["find", mnt, "-xdev"])
    run(["find", mnt, "-xdev", "-printf", "%m %u %g %s %n %y %l\n"])
    os.statvfs(mnt)
    entries = 0
    for dirpath, dirnames, filenames in os.walk(mnt):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                os.readlink(p)
            for x in os.listxattr(p, follow_symlinks=False):
                os.getxattr(p, x, follow_symlinks=False)
            entries += 1
    assert entries > 1000
    st = minbase_ro.status()
    assert st["fragment_opens"] == 0, f"metadata walk opened {st['fragment_opens']} fragments"

    # read files of two fragments: exactly one open per fragment
    by_layer = {}
    for path, (layer, _) in origins.items():
        full = mnt / path
        s = os.lstat(full)
        if stat.S_ISREG(s.st_mode) and s.st_size > 0:
            by_layer.setdefault(layer, []).append(path)
    a, b = sorted((l for l, ps in by_layer.items() if len(ps) >= 2),
                  key=lambda l: -len(by_layer[l]))[:2]
    (mnt / by_layer[a][0]).read_bytes()
    assert minbase_ro.status()["fragment_opens"] == 1
    (mnt / by_layer[a][1]).read_bytes()
    assert minbase_ro.status()["fragment_opens"] == 1
    (mnt / by_layer[b][0]).read_bytes()
    assert minbase_ro.status()["fragment_opens"] == 2


def drop_caches():
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


@pytest.mark.slow
def test_minbase_inode_numbers(minbase, origins, minbase_ro):
    """Two different files never share (st_dev, st_ino); hard links do; a path keeps its inode
    number for the life of the mount, also after the kernel forgot it."""
    mnt = minbase_ro.mnt

    def inodes():
        out = {}
        for dirpath, dirnames, filenames in os.walk(mnt):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                out[os.path.relpath(p, mnt)] = (st.st_dev, st.st_ino)
        return out

    first = inodes()
    groups = {}
    for path, ino in first.items():
        # what the path is: a directory is itself; a file is the fragment's inode behind it
        identity = origins.get(path, ("dir", path))
        groups.setdefault(ino, set()).add(identity)
    shared = {ino: ids for ino, ids in groups.items() if len(ids) > 1}
    assert not shared, f"different files share an inode: {list(shared.items())[:10]}"
    by_identity = {}
    for path, ino in first.items():
        by_identity.setdefault(origins.get(path, ("dir", path)), set()).add(ino)
    split = {k: v for k, v in by_identity.items() if len(v) > 1}
    assert not split, f"hard links with different inodes: {list(split.items())[:10]}"
    assert inodes() == first
    drop_caches()
    assert inodes() == first, "inode numbers changed after the kernel dropped its caches"


# ---- writable ---------------------------------------------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old, new, flags):
    r = libc.renameat2(-100, os.fsencode(str(old)), -100, os.fsencode(str(new)),
                       ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


@pytest.fixture(scope="module")
def extra(small):
    """A small fragment stacked on minbase for the write tests: a file with xattrs, an odd
    owner and mode, and a hard link pair, so copy-up has attributes to keep."""
    src = small.base / "extra-src"
    write_file(src / "opt/extra/attrs", "attributes\n" * 100, mode=0o640, uid=1001, gid=1002,
          xattrs={"user.keep": b"kept", "user.drop": b"dropped"})
    os.utime(src / "opt/extra/attrs", (1_300_000_000, 1_300_000_000))
    write_file(src / "opt/extra/linked", "linked\n")
    os.link(src / "opt/extra/linked", src / "opt/extra/linked2")
    write_file(src / "opt/extra/victim/a", "a\n")
    write_file(src / "opt/extra/victim/b", "b\n")
    digest = make_fragment(small.store, src, small.signer, small.env, "extra")
    return SimpleNamespace(digest=digest, image=object_path(small.store, digest),
                           store=small.store)


@pytest.fixture(scope="module")
def writable_base(minbase, extra, reference):
    """minbase + extra: the sources to mount (all .sqfs paths, as they live in two stores)
    and the loop-mounted lowers for the kernel overlayfs comparison."""
    with loop_mounts([extra.image]) as (extra_lower,):
        yield SimpleNamespace(sources=[str(i) for i in minbase.images] + [str(extra.image)],
                              kernel_tops=[extra_lower], lowers=reference.lowers,
                              env=dict(minbase.env, MOSAIC_KEYRING=minbase.keyring))


@contextlib.contextmanager
def writable_mount(base, mnt, upper, mode):
    with mosaic_mount(base.sources, mnt, base.env, "--upper", upper, f"--writable={mode}") as m:
        st = m.status()
        assert mode in json.dumps(st.get("mode")), f"status mode {st.get('mode')!r}, want {mode}"
        yield m


@contextlib.contextmanager
def kernel_view_of_upper(base, upper):
    """The upper directory stacked (read-only, as the top layer) over the same lowers under
    kernel overlayfs, following redirects and metacopy if the upper has any."""
    marks = set()
    for dirpath, dirnames, filenames in os.walk(upper):
        for n in dirnames + filenames:
            for x in xattrs_raw(os.path.join(dirpath, n)):
                marks.add(x)
    opts = []
    if "trusted.overlay.metacopy" in marks:
        opts += ["redirect_dir=follow", "metacopy=on"]
    with kernel_overlay(base.lowers, [upper, *reversed(base.kernel_tops)], opts) as root:
        yield root


def xattrs_raw(path):
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []


def doc_dirs(root, n):
    """n package doc dirs whose entries are all plain files with one link, each with a
    copyright file: targets for the write operations."""
    out = []
    for d in sorted((root / "usr/share/doc").iterdir()):
        if d.is_symlink() or not d.is_dir():
            continue
        kids = list(d.iterdir())
        if not (d / "copyright").exists() or not kids:
            continue
        if all(k.is_file() and not k.is_symlink() and os.lstat(k).st_nlink == 1 for k in kids):
            out.append(d.relative_to(root))
        if len(out) == n:
            return out
    raise AssertionError(f"only {len(out)} usable doc dirs under {root}/usr/share/doc")


def apply_writes(r):
    """Every write operation of the issue on the view at r; returns what check_writes expects."""
    d = doc_dirs(r, 14)
    cp = [r / x / "copyright" for x in d]
    orig = {i: p.read_bytes() for i, p in enumerate(cp)}
    new = r / "new"
    os.mkdir(new, 0o755)
    with open(new / "file.txt", "wb") as f:  # create + write + fsync
        f.write(b"hello\n")
        f.flush()
        os.fsync(f.fileno())
    dfd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    with open(cp[0], "ab") as f:  # append to a lower file: copy-up
        f.write(b"appended\n")
    with open(cp[1], "r+b") as f:  # overwrite in the middle
        f.seek(10)
        f.write(b"XYZ")
    os.truncate(cp[2], 7)  # truncate a lower file
    with open(new / "sparse", "wb") as f:
        f.truncate(1 << 20)  # grow a new one
    os.rename(cp[3], cp[3].with_name("copyright.moved"))
    os.rename(new / "file.txt", new / "renamed.txt")
    (new / "a").write_bytes(b"A")
    (new / "b").write_bytes(b"B")
    with pytest.raises(OSError) as e:
        renameat2(new / "a", new / "b", RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    renameat2(new / "a", new / "c", RENAME_NOREPLACE)
    renameat2(cp[4], new / "b", RENAME_EXCHANGE)  # a lower file and an upper one trade places
    os.unlink(cp[5])  # unlink a lower file: a whiteout
    os.mkdir(new / "tmpdir")
    os.rmdir(new / "tmpdir")
    os.mkdir(new / "keepdir", 0o711)
    os.chmod(new / "keepdir", 0o711)
    for k in (r / d[6]).iterdir():  # empty a lower dir, then remove it
        os.unlink(k)
    os.rmdir(r / d[6])
    for k in (r / d[7]).iterdir():  # remove a lower dir and make it anew: opaque
        os.unlink(k)
    os.rmdir(r / d[7])
    os.mkdir(r / d[7])
    (r / d[7] / "fresh").write_bytes(b"fresh\n")
    os.symlink("renamed.txt", new / "link")
    os.link(new / "renamed.txt", new / "hard")
    os.link(cp[8], cp[8].with_name("copyright.link"))  # a link to a lower file
    os.chmod(cp[9], 0o600)
    os.chown(cp[10], 1234, 5678)
    times = (1_500_000_000_111_111_111, 1_600_000_000_222_222_222)
    os.utime(cp[11], ns=times)
    os.setxattr(cp[12], "user.mosaic", b"on a lower file")
    os.setxattr(new / "renamed.txt", "user.mosaic", b"on a new file")
    os.setxattr(cp[13], "user.tmp", b"x")
    os.removexattr(cp[13], "user.tmp")
    attrs = r / "opt/extra/attrs"
    attrs_st = os.lstat(attrs)
    os.removexattr(attrs, "user.drop")  # copy-up by a metadata change: the rest must stay
    os.mkfifo(new / "fifo", 0o640)
    os.mknod(new / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    # a lower dir renamed (kernel overlayfs may say EXDEV without redirect_dir; then as mv does)
    try:
        os.rename(r / "opt/extra/victim", r / "opt/extra/moved")
    except OSError as e:
        assert e.errno == errno.EXDEV, e
        shutil.copytree(r / "opt/extra/victim", r / "opt/extra/moved", symlinks=True)
        shutil.rmtree(r / "opt/extra/victim")
    return SimpleNamespace(d=d, orig=orig, times=times, attrs_st=attrs_st)


def check_writes(r, x, what, kernel=False):
    """kernel: r is kernel overlayfs (alone or stacked by --writable=overlay), which gives a
    copied-up lower file the lower's st_dev/st_ino, so a new link to it shows another number."""
    d, orig = x.d, x.orig
    cp = [r / p / "copyright" for p in d]
    new = r / "new"
    assert (new / "renamed.txt").read_bytes() == b"hello\n", what
    assert not (new / "file.txt").exists(), what
    assert cp[0].read_bytes() == orig[0] + b"appended\n", what
    assert cp[1].read_bytes() == orig[1][:10] + b"XYZ" + orig[1][13:], what
    assert cp[2].read_bytes() == orig[2][:7], what
    assert os.path.getsize(new / "sparse") == 1 << 20
    assert (new / "sparse").read_bytes() == bytes(1 << 20), what
    assert not cp[3].exists() and cp[3].with_name("copyright.moved").read_bytes() == orig[3]
    assert not (new / "a").exists() and (new / "c").read_bytes() == b"A", what
    assert cp[4].read_bytes() == b"B" and (new / "b").read_bytes() == orig[4], what
    assert not os.path.lexists(cp[5]), what
    assert not os.path.lexists(new / "tmpdir"), what
    assert stat.S_IMODE(os.lstat(new / "keepdir").st_mode) == 0o711, what
    assert not os.path.lexists(r / d[6]), what
    assert sorted(os.listdir(r / d[7])) == ["fresh"], what
    assert os.readlink(new / "link") == "renamed.txt", what
    h1, h2 = os.lstat(new / "renamed.txt"), os.lstat(new / "hard")
    assert h1.st_ino == h2.st_ino and h1.st_nlink == 2, what
    l1, l2 = os.lstat(cp[8]), os.lstat(cp[8].with_name("copyright.link"))
    assert l1.st_nlink == l2.st_nlink == 2 and cp[8].read_bytes() == orig[8], what
    if not kernel:
        assert (l1.st_dev, l1.st_ino) == (l2.st_dev, l2.st_ino), what
    assert stat.S_IMODE(os.lstat(cp[9]).st_mode) == 0o600, what
    st = os.lstat(cp[10])
    assert (st.st_uid, st.st_gid) == (1234, 5678), what
    assert os.lstat(cp[11]).st_mtime_ns == x.times[1], what  # (reads move atime: relatime)
    assert os.getxattr(cp[12], "user.mosaic") == b"on a lower file", what
    assert os.getxattr(new / "renamed.txt", "user.mosaic") == b"on a new file", what
    assert "user.tmp" not in os.listxattr(cp[13]), what
    attrs = r / "opt/extra/attrs"
    st = os.lstat(attrs)
    assert view_xattrs(attrs) == {"user.keep": b"kept"}, what
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns) == (
        x.attrs_st.st_mode, x.attrs_st.st_uid, x.attrs_st.st_gid, x.attrs_st.st_size,
        x.attrs_st.st_mtime_ns), what
    assert stat.S_ISFIFO(os.lstat(new / "fifo").st_mode), what
    st = os.lstat(new / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3), what
    assert not os.path.lexists(r / "opt/extra/victim"), what
    assert sorted(os.listdir(r / "opt/extra/moved")) == ["a", "b"], what
    assert (r / "opt/extra/moved/a").read_bytes() == b"a\n", what


def check_upper_format(upper, x):
    """The upper is in the kernel's format: chr 0/0 whiteouts, the opaque xattr, no .wh.*."""
    wh = [p for p in Path(upper).rglob(".wh.*")]
    assert not wh, f"the upper has OCI-style whiteout files kernel overlayfs would show: {wh}"
    st = os.lstat(Path(upper) / x.d[5] / "copyright")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, "no chr 0/0 whiteout for a deletion"
    st = os.lstat(Path(upper) / x.d[6])
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, "no whiteout for a removed dir"
    assert os.getxattr(Path(upper) / x.d[7], "trusted.overlay.opaque") == b"y", \
        "a dir made anew over a removed lower dir is not opaque"


@pytest.mark.slow
@pytest.mark.parametrize("mode", WRITABLE_MODES)
def test_writable_operations_persist(writable_base, tmp_path, mode):
    upper, mnt = tmp_path / "upper", tmp_path / "mnt"
    upper.mkdir()
    with writable_mount(writable_base, mnt, upper, mode):
        x = apply_writes(mnt)
        check_writes(mnt, x, f"{mode}: live", kernel=mode == "overlay")
        live = snapshot(mnt)
    check_upper_format(upper, x)
    with writable_mount(writable_base, mnt, upper, mode):
        check_writes(mnt, x, f"{mode}: after remount", kernel=mode == "overlay")
        again = snapshot(mnt)
    assert_same_tree(again, live, f"{mode}: after remount vs before")
    with kernel_view_of_upper(writable_base, upper) as root:
        check_writes(root, x, f"{mode}: upper under kernel overlayfs", kernel=True)
        kernel = snapshot(root)
    assert_same_tree(live, kernel, f"{mode}: mosaic view vs its upper under kernel overlayfs")


@pytest.mark.slow
@pytest.mark.parametrize("first,second", [("overlay", "fuse"), ("fuse", "overlay")])
def test_writable_upper_survives_a_mode_switch(writable_base, tmp_path, first, second):
    upper, mnt = tmp_path / "upper", tmp_path / "mnt"
    upper.mkdir()
    with writable_mount(writable_base, mnt, upper, first):
        x = apply_writes(mnt)
        live = snapshot(mnt)
    with writable_mount(writable_base, mnt, upper, second):
        check_writes(mnt, x, f"{first} then {second}", kernel=second == "overlay")
        assert_same_tree(snapshot(mnt), live, f"{first} then {second}")


@pytest.mark.slow
def test_writable_mode_is_picked_and_said(writable_base, tmp_path):
    upper, mnt = tmp_path / "upper", tmp_path / "mnt"
    upper.mkdir()
    with mosaic_mount(writable_base.sources, mnt, writable_base.env, "--upper", upper) as m:
        mode = m.status().get("mode")
        assert mode is not None and any(w in json.dumps(mode) for w in WRITABLE_MODES), mode
        said = m.stdout + m.stderr
        assert any(w in said for w in WRITABLE_MODES), f"mosaic mount did not say which " \
                                                       f"writable mode it picked: {said!r}"
        (mnt / "probe").write_text("x")
    assert (upper / "probe").read_text() == "x"


@pytest.mark.slow
@pytest.mark.parametrize("mode", WRITABLE_MODES)
def test_sigkill_leaves_upper_consistent(writable_base, tmp_path, mode):
    """A daemon killed with SIGKILL while copying up: after a remount every fsynced file is
    whole, every copied-up file is whole and no temporary name shows in the view."""
    upper, mnt = tmp_path / "upper", tmp_path / "mnt"
    upper.mkdir()
    with writable_mount(writable_base, mnt, upper, mode) as m:
        ids = {mm["id"] for mm in mountinfo()}
        (mnt / "safe").mkdir()
        for i in range(20):
            with open(mnt / "safe" / f"f{i}", "wb") as f:
                f.write(bytes([i]) * 100_000)
                os.fsync(f.fileno())
        targets = sorted((mnt / "usr/bin").iterdir())[:200]
        stop = threading.Event()

        def churn():  # metadata and data copy-ups of lower files while the daemon dies
            for p in targets:
                if stop.is_set():
                    return
                with contextlib.suppress(OSError):
                    if p.is_file() and not p.is_symlink():
                        os.chmod(p, 0o700)
                        with open(p, "ab"):
                            pass
        t = threading.Thread(target=churn)
        t.start()
        time.sleep(0.2)
        for pid in m.pids:
            os.kill(pid, signal.SIGKILL)
        stop.set()
        t.join(30)
        assert not t.is_alive(), "a process hung on the mount of a killed daemon"
        assert not wait_gone(m.pids, 10)
        # the killed daemon's mounts (all of it: the test killed it) go, lazily
        for mm in sorted(mountinfo(), key=lambda mm: -mm["id"]):
            if mm["id"] not in ids or mm["point"] == str(mnt.resolve()):
                subprocess.run(["umount", "-l", mm["point"]], capture_output=True)
        for mm in mountinfo():
            if mm["fstype"].startswith("fuse") and mm["id"] not in ids:
                _abort_fuse(mm["dev"])
        assert not os.path.ismount(mnt)
        # mount again with the same upper; mosaic_mount's own umount then takes it down
        mosaic("mount", *writable_base.sources, mnt, "--upper", upper, f"--writable={mode}",
               env=writable_base.env)
        m.pids = {mosaic_status(mnt, writable_base.env).get("pid")} - {None}
        for i in range(20):
            assert (mnt / "safe" / f"f{i}").read_bytes() == bytes([i]) * 100_000
        with kernel_overlay(writable_base.lowers, reversed(writable_base.kernel_tops)) as ref:
            assert sorted(os.listdir(mnt)) == sorted(os.listdir(ref) + ["safe"])
            assert sorted(os.listdir(mnt / "usr/bin")) == sorted(os.listdir(ref / "usr/bin"))
            for p in targets:
                q = ref / "usr/bin" / p.name
                if p.is_file() and not p.is_symlink():
                    assert file_sha256(p) == file_sha256(q), f"{p} is not whole after SIGKILL"


# ---- concurrency ------------------------------------------------------------------------------

def stress(mnt, reference_root, files, writable, seconds):
    """8 threads for `seconds`: readers check content against the reference (whole files and
    random ranges); in a writable view half of them write, rename, append and copy up, and
    check what they wrote. Returns the list of failures."""
    errors = []
    deadline = time.monotonic() + seconds
    writers = 4 if writable else 0
    rnd_files = [f for f in files if f[1] < (8 << 20)]
    copyup = [f for f in rnd_files if f[0].startswith("usr/share/doc/")]

    def reader(n):
        rnd = random.Random(n)
        checked = 0
        while time.monotonic() < deadline:
            path, size, digest = rnd.choice(rnd_files)
            if writable and path in owned:
                continue
            if rnd.random() < 0.3:
                assert file_sha256(mnt / path) == digest, f"content of {path}"
            else:
                off = rnd.randrange(0, max(size, 1))
                ln = rnd.randrange(1, 256 << 10)
                with open(mnt / path, "rb") as a, open(reference_root / path, "rb") as b:
                    assert os.pread(a.fileno(), ln, off) == os.pread(b.fileno(), ln, off), \
                        f"{path} at {off}+{ln}"
            checked += 1
        assert checked > 0

    owned = set()
    mine = [copyup[i::writers] if writers else [] for i in range(writers)]
    for m in mine:
        owned.update(p for p, _, _ in m[:40])

    def writer(n):
        rnd = random.Random(100 + n)
        home = mnt / "stress" / f"w{n}"
        home.mkdir(parents=True)
        expect, appended, i = {}, {}, 0
        targets = mine[n][:40]
        while time.monotonic() < deadline:
            i += 1
            name = f"f{i % 50}"
            data = rnd.randbytes(rnd.randrange(0, 300_000))
            with open(home / "tmp", "wb") as f:
                f.write(data)
                if i % 5 == 0:
                    os.fsync(f.fileno())
            os.rename(home / "tmp", home / name)
            expect[name] = data
            assert (home / name).read_bytes() == data, f"{home / name} after write"
            if i % 7 == 0 and expect:
                victim = rnd.choice(sorted(expect))
                os.unlink(home / victim)
                del expect[victim]
            if targets:
                path, _, _ = targets[i % len(targets)]
                tag = f"w{n}.{i}\n".encode()
                with open(mnt / path, "ab") as f:
                    f.write(tag)
                appended[path] = appended.get(path, b"") + tag
                base = (reference_root / path).read_bytes()
                assert (mnt / path).read_bytes() == base + appended[path], f"{path} copy-up"
        assert sorted(os.listdir(home)) == sorted(expect), f"{home} listing"
        for name, data in expect.items():
            assert (home / name).read_bytes() == data, f"{home / name} at the end"

    def guard(fn, n):
        try:
            fn(n)
        except BaseException:  # noqa: B902 - every failure of a worker is reported
            errors.append(f"{fn.__name__} {n}:\n{traceback.format_exc()}")

    threads = [threading.Thread(target=guard, args=(writer if n < writers else reader, n))
               for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    hung = [t.name for t in threads if t.is_alive()]
    if hung:
        errors.append(f"threads still running {seconds + 120} s after the deadline: {hung}")
    return errors


@pytest.fixture(scope="module")
def reference_files(reference_tree):
    return [(p, e["size"], e["sha256"]) for p, e in sorted(reference_tree.items())
            if e["type"] == stat.S_IFREG and e["size"] > 0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["read-only", *WRITABLE_MODES])
def test_concurrent_readers_and_writers(minbase, writable_base, reference, reference_files,
                                        tmp_path, mode):
    mnt, upper = tmp_path / "mnt", tmp_path / "upper"
    upper.mkdir()
    if mode == "read-only":
        ctx = mosaic_mount(minbase.digests, mnt, minbase.env, store=minbase.store)
    else:
        ctx = writable_mount(writable_base, mnt, upper, mode)
    with ctx:
        errors = stress(mnt, reference.root, reference_files, mode != "read-only",
                        STRESS_SECONDS)
    assert not errors, "\n".join(errors[:8])
