"""--writable=fuse: the daemon's own copy-up into an upper directory in kernel overlayfs's format.
Small signed fragments are made at test time; every write operation is done through the mount
and checked, then the upper is checked under a fuse remount, an overlay remount and plain kernel
overlayfs over the loop-mounted fragments. Every mount is taken down in a finally, and every test
checks that the daemon it started is gone."""

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import (MOSAIC, assert_same_tree, create, file_sha256, kernel_mount,
                      mosaic_mounted, object_path, pid_alive, run, tree_snapshot, view_xattrs,
                      wait_gone, write_file)

EPOCH = "1700000000"
libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100


def renameat2(old, new, flags):
    r = libc.renameat2(AT_FDCWD, os.fsencode(str(old)), AT_FDCWD, os.fsencode(str(new)),
                       ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))



def whiteout(path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))




# ---- fragments ---------------------------------------------------------------------------------

def build_base(root):
    """The lower fragment: every kind of entry, with attributes copy-up has to keep."""
    write_file(root / "etc/config", "config v0\n", mtime=1_400_000_000)
    write_file(root / "etc/keep", "keep\n")
    write_file(root / "etc/hidden", "hidden by the top fragment\n")
    write_file(root / "etc/sub/deep", "deep\n")
    os.symlink("config", root / "etc/link")
    write_file(root / "etc/gone", "gone\n")
    write_file(root / "etc/rename-me", "renamed\n")
    write_file(root / "etc/swap", "swap lower\n")
    write_file(root / "etc/trunc", "0123456789abcdef\n")
    write_file(root / "etc/append", "line 1\n", mode=0o640, uid=12, gid=34, mtime=1_300_000_000)
    write_file(root / "etc/chmod", "chmod\n")
    write_file(root / "etc/chown", "chown\n")
    write_file(root / "etc/utime", "utime\n")
    write_file(root / "etc/attrs", "attrs\n" * 50, mode=0o640, uid=1001, gid=1002, mtime=1_300_000_000,
        xattrs={"user.keep": b"kept", "user.drop": b"dropped"})
    write_file(root / "etc/tolink", "link me\n")
    write_file(root / "hl/one", "linked\n", mode=0o600, uid=7, gid=8)
    os.link(root / "hl/one", root / "hl/two")
    write_file(root / "hl2/a", "a-linked\n")
    os.link(root / "hl2/a", root / "hl2/c")
    write_file(root / "bin/suid", "#!/bin/sh\n", mode=0o4755)
    (root / "share/setgid").mkdir(parents=True)
    os.chown(root / "share/setgid", 0, 50)
    os.chmod(root / "share/setgid", 0o2777)
    write_file(root / "emptyme/a", "a\n")
    write_file(root / "emptyme/b", "b\n")
    write_file(root / "rebuild/old", "old\n")
    write_file(root / "notempty/x", "x\n")
    write_file(root / "victim/sub/f", "f\n")
    write_file(root / "opq/old", "old\n")
    os.mkfifo(root / "dev-fifo", 0o600)
    os.mknod(root / "dev-null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(root / "etc", 0o755)


def build_top(root):
    """The upper fragment: replaces, adds, deletes and hides below the base."""
    write_file(root / "etc/config", "config v1\n", mtime=1_400_000_001)
    write_file(root / "etc/extra", "extra\n")
    write_file(root / "etc/sub/deep2", "deep2\n")
    whiteout(root / "etc/hidden")
    (root / "opq").mkdir()
    os.setxattr(root / "opq", "trusted.overlay.opaque", b"y")
    write_file(root / "opq/new", "new\n")


@pytest.fixture(scope="module")
def layers(signer, tmp_path_factory):
    base = tmp_path_factory.mktemp("fusew")
    store = base / "store"
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"))
    digests = []
    for name, build in (("base", build_base), ("top", build_top)):
        src = base / name
        src.mkdir()
        build(src)
        digests.append(create(store, src, env, "--sign", signer.fingerprint, "--name", name,
                              "--version", "1", "--kind", "config", "--source-date-epoch",
                              EPOCH))
    return SimpleNamespace(store=store, env=env, keyring=signer.keyring, digests=digests,
                           images=[object_path(store, d) for d in digests], base=base)


# ---- mounts ------------------------------------------------------------------------------------

def status(mnt, env):
    return json.loads(run([MOSAIC, "status", mnt, "--json"], env=env).stdout)


@contextlib.contextmanager
def mosaic(layers, mnt, upper, mode="fuse", digests=None, env=None, extra=()):
    """mosaic mount (daemonised) with an upper; yields the daemon's pid and what mount said;
    then mosaic umount, which must end the daemon. Cleans up even when the test failed."""
    opts = [f"--writable={mode}"] if mode else []
    with mosaic_mounted(["-s", layers.store, "--keyring", layers.keyring,
                         *(digests or layers.digests), "--upper", upper, *opts, *extra],
                        mnt, env or layers.env) as m:
        yield m


@contextlib.contextmanager
def kernel_overlay(layers, upper, tmp):
    """Plain kernel overlayfs: the fragments loop-mounted as lowers (top first), a copy of the
    upper as upperdir, a fresh workdir."""
    tmp = Path(tmp)
    copy = tmp / "upper-copy"
    run(["cp", "-a", "--preserve=all", upper, copy])
    work = tmp / "kwork"
    work.mkdir()
    target = tmp / "kview"
    target.mkdir()
    with contextlib.ExitStack() as stack:
        lowers = [stack.enter_context(kernel_mount(img, tmp / f"loop{i}"))
                  for i, img in enumerate(layers.images)]
        opts = (f"lowerdir={':'.join(str(d) for d in reversed(lowers))},upperdir={copy},"
                f"workdir={work}")
        run(["mount", "-t", "overlay", "overlay", "-o", opts, target])
        stack.callback(subprocess.run, ["umount", "-l", str(target)], capture_output=True)
        yield target



def assert_dir_nlinks(root):
    bad = []
    for dirpath, dirnames, _ in os.walk(root):
        n = os.lstat(dirpath).st_nlink
        if n != 2 + len(dirnames):
            bad.append(f"{dirpath}: {n} links, {len(dirnames)} subdirectories")
    assert not bad, "\n".join(bad[:20])


def upper_xattr_names(upper):
    names = set()
    for dirpath, dirnames, filenames in os.walk(upper):
        for n in dirnames + filenames + ["."]:
            with contextlib.suppress(OSError):
                names.update(os.listxattr(os.path.join(dirpath, n), follow_symlinks=False))
    return names


# ---- the merged view ---------------------------------------------------------------------------

def test_merged_view_of_a_hand_made_upper(layers, tmp_path):
    """An upper written by someone else (kernel overlayfs, or by hand): its files replace the
    index's, its whiteouts hide, its opaque directories hide what lies below."""
    upper = tmp_path / "upper"
    write_file(upper / "etc/config", "config from the upper\n", mode=0o600, mtime=1_500_000_000)
    whiteout(upper / "etc/keep")
    (upper / "etc/sub").mkdir()
    os.setxattr(upper / "etc/sub", "trusted.overlay.opaque", b"y")
    write_file(upper / "etc/sub/only", "only\n")
    whiteout(upper / "victim")
    write_file(upper / "newdir/file", "new\n")
    with mosaic(layers, tmp_path / "mnt", upper) as m:
        r = m.mnt
        assert "copy-up" in m.stdout and m.status["mode"] == "fuse", (m.stdout, m.status)
        assert (r / "etc/config").read_text() == "config from the upper\n"
        assert stat.S_IMODE(os.lstat(r / "etc/config").st_mode) == 0o600
        assert not os.path.lexists(r / "etc/keep")
        assert sorted(os.listdir(r / "etc/sub")) == ["only"]
        assert not os.path.lexists(r / "victim")
        assert (r / "newdir/file").read_text() == "new\n"
        assert (r / "etc/extra").read_text() == "extra\n"  # the index still shows through
        assert not os.path.lexists(r / "etc/hidden")  # the top fragment's whiteout
        assert sorted(os.listdir(r / "opq")) == ["new"]  # the top fragment's opaque dir
        assert "trusted.overlay.opaque" not in os.listxattr(r / "etc/sub")
        assert "keep" not in os.listdir(r / "etc") and "config" in os.listdir(r / "etc")
        assert_dir_nlinks(r)
        live = tree_snapshot(r)
    with kernel_overlay(layers, upper, tmp_path) as k:
        assert_same_tree(live, tree_snapshot(k), "mosaic --writable=fuse vs kernel overlayfs")


def test_copy_up_happens_on_write_and_keeps_attributes(layers, tmp_path):
    upper = tmp_path / "upper"
    with mosaic(layers, tmp_path / "mnt", upper) as m:
        r = m.mnt
        before = os.lstat(r / "etc/append")
        ino = before.st_ino
        with open(r / "etc/append", "rb") as f:
            assert f.read() == b"line 1\n"
        assert not (upper / "etc").exists(), "a read-only open copied up"
        with open(r / "etc/append", "ab") as f:
            assert (upper / "etc/append").exists(), "no copy-up on a write open"
            f.write(b"line 2\n")
        assert (r / "etc/append").read_bytes() == b"line 1\nline 2\n"
        st = os.lstat(r / "etc/append")
        assert st.st_ino == ino, "a copied-up file changed its inode number"
        assert (st.st_mode, st.st_uid, st.st_gid) == (before.st_mode, 12, 34)
        up = os.lstat(upper / "etc/append")
        assert (up.st_mode, up.st_uid, up.st_gid) == (before.st_mode, 12, 34)
        # the parent came up with the lower's attributes, and its mtime was kept
        assert os.lstat(upper / "etc").st_mtime == os.lstat(r / "etc").st_mtime
        # a metadata change copies up too, keeping the content, setuid and the other xattrs
        os.utime(r / "bin/suid", ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))
        st = os.lstat(r / "bin/suid")
        assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_mtime_ns == 1_100_000_000_000_000_000
        assert stat.S_IMODE(os.lstat(upper / "bin/suid").st_mode) == 0o4755
        os.removexattr(r / "etc/attrs", "user.drop")
        assert view_xattrs(r / "etc/attrs") == {"user.keep": b"kept"}
        st = os.lstat(upper / "etc/attrs")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (
            0o640, 1001, 1002, 1_300_000_000)
        assert (upper / "etc/attrs").read_bytes() == b"attrs\n" * 50
        # no overlayfs bookkeeping but the markers of the format
        assert not upper_xattr_names(upper) & {"trusted.overlay.origin",
                                               "trusted.overlay.redirect",
                                               "trusted.overlay.metacopy"}
        # O_TRUNC: nothing of the old content is copied
        with open(r / "etc/trunc", "wb") as f:
            f.write(b"new\n")
        assert (r / "etc/trunc").read_bytes() == b"new\n"


def test_every_operation_then_remounts_and_kernel_overlayfs(layers, tmp_path):
    upper = tmp_path / "upper"
    with mosaic(layers, tmp_path / "mnt", upper) as m:
        r = m.mnt
        # create + write + fsync + flush + release
        with open(r / "etc/created", "wb") as f:
            f.write(b"hello\n")
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(r / "etc", os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
        # overwrite in the middle of a lower file; truncate a lower file
        with open(r / "etc/swap", "r+b") as f:
            f.seek(5)
            f.write(b"LOW")
        os.truncate(r / "etc/trunc", 4)
        with open(r / "etc/grown", "wb") as f:
            f.truncate(1 << 20)
        # rename: a lower file (whiteout behind it), NOREPLACE, EXCHANGE, over an existing file
        os.rename(r / "etc/rename-me", r / "etc/renamed")
        (r / "etc/a").write_bytes(b"A")
        (r / "etc/b").write_bytes(b"B")
        with pytest.raises(OSError) as e:
            renameat2(r / "etc/a", r / "etc/b", RENAME_NOREPLACE)
        assert e.value.errno == errno.EEXIST
        with pytest.raises(OSError) as e:
            renameat2(r / "etc/a", r / "etc/keep", RENAME_NOREPLACE)  # a lower name exists
        assert e.value.errno == errno.EEXIST
        renameat2(r / "etc/a", r / "etc/c", RENAME_NOREPLACE)
        renameat2(r / "etc/swap", r / "etc/b", RENAME_EXCHANGE)  # lower file <-> upper file
        (r / "etc/over").write_bytes(b"over")
        os.rename(r / "etc/over", r / "etc/extra")  # over a lower file of the top fragment
        # a lower directory cannot move (no redirect_dir): EXDEV, and it is copied instead
        with pytest.raises(OSError) as e:
            os.rename(r / "victim", r / "moved")
        assert e.value.errno == errno.EXDEV
        shutil.copytree(r / "victim", r / "moved", symlinks=True)
        shutil.rmtree(r / "victim")
        # a new directory moves, and into a merged directory it turns opaque
        os.makedirs(r / "fresh/inner")
        (r / "fresh/inner/f").write_bytes(b"f")
        os.rename(r / "fresh", r / "etc/fresh")
        # unlink: a lower file (whiteout), a new file (gone for good)
        os.unlink(r / "etc/gone")
        (r / "etc/tmp").write_bytes(b"tmp")
        os.unlink(r / "etc/tmp")
        # mkdir, rmdir
        os.mkdir(r / "etc/newdir", 0o711)
        os.mkdir(r / "etc/tmpdir")
        os.rmdir(r / "etc/tmpdir")
        with pytest.raises(OSError) as e:
            os.rmdir(r / "notempty")
        assert e.value.errno == errno.ENOTEMPTY
        for k in ("a", "b"):
            os.unlink(r / "emptyme" / k)
        os.rmdir(r / "emptyme")  # a lower dir emptied then removed: a whiteout
        shutil.rmtree(r / "rebuild")
        os.mkdir(r / "rebuild")  # anew over its whiteout: opaque
        (r / "rebuild/fresh").write_bytes(b"fresh\n")
        # symlink, readlink, link (to a new file, to a lower file)
        os.symlink("created", r / "etc/symlink")
        assert os.readlink(r / "etc/symlink") == "created"
        assert os.readlink(r / "etc/link") == "config"
        os.link(r / "etc/created", r / "etc/hard")
        os.link(r / "etc/tolink", r / "etc/tolink2")
        # write to one of a lower hard link pair: the link breaks, as under overlayfs
        one, two = os.lstat(r / "hl/one"), os.lstat(r / "hl/two")
        assert one.st_ino == two.st_ino and one.st_nlink == 2
        with open(r / "hl/two", "ab") as f:
            f.write(b"two\n")
        assert os.lstat(r / "hl/two").st_ino != os.lstat(r / "hl/one").st_ino
        # rename one of a lower pair, then write through the new name: the other stays
        os.rename(r / "hl2/a", r / "hl2/b")
        with open(r / "hl2/b", "ab") as f:
            f.write(b"more\n")
        # chmod, chown, utimens, setxattr, removexattr
        os.chmod(r / "etc/chmod", 0o600)
        os.chown(r / "etc/chown", 1234, 5678)
        os.utime(r / "etc/utime", ns=(1_500_000_000_111_111_111, 1_600_000_000_222_222_222))
        os.setxattr(r / "etc/config", "user.new", b"on a lower file")
        os.setxattr(r / "etc/created", "user.new", b"on a new file")
        os.removexattr(r / "etc/attrs", "user.drop")
        # mknod: a fifo and a device; a whiteout is refused, as overlayfs refuses it
        os.mkfifo(r / "etc/fifo", 0o640)
        os.mknod(r / "etc/null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        with pytest.raises(OSError) as e:
            os.mknod(r / "etc/wh", stat.S_IFCHR | 0o600, os.makedev(0, 0))
        assert e.value.errno == errno.EPERM
        # statfs is the upper's
        sv, su = os.statvfs(r), os.statvfs(upper)
        assert (sv.f_bsize, sv.f_blocks) == (su.f_bsize, su.f_blocks)

        def check(r, what, kernel=False):
            assert (r / "etc/created").read_bytes() == b"hello\n", what
            assert (r / "etc/b").read_bytes() == b"swap LOWer\n", what
            assert (r / "etc/swap").read_bytes() == b"B", what
            assert (r / "etc/trunc").read_bytes() == b"0123", what
            assert (r / "etc/grown").read_bytes() == bytes(1 << 20), what
            assert (r / "etc/renamed").read_bytes() == b"renamed\n", what
            assert not os.path.lexists(r / "etc/rename-me"), what
            assert (r / "etc/c").read_bytes() == b"A" and not os.path.lexists(r / "etc/a")
            assert (r / "etc/extra").read_bytes() == b"over", what
            assert sorted(os.listdir(r / "moved/sub")) == ["f"], what
            assert not os.path.lexists(r / "victim"), what
            assert (r / "etc/fresh/inner/f").read_bytes() == b"f", what
            assert not os.path.lexists(r / "fresh"), what
            assert not os.path.lexists(r / "etc/gone") and not os.path.lexists(r / "etc/tmp")
            assert stat.S_IMODE(os.lstat(r / "etc/newdir").st_mode) == 0o711, what
            assert not os.path.lexists(r / "etc/tmpdir"), what
            assert os.listdir(r / "notempty") == ["x"], what
            assert not os.path.lexists(r / "emptyme"), what
            assert os.listdir(r / "rebuild") == ["fresh"], what
            assert os.readlink(r / "etc/symlink") == "created", what
            h1, h2 = os.lstat(r / "etc/created"), os.lstat(r / "etc/hard")
            assert h1.st_ino == h2.st_ino and h1.st_nlink == 2, what
            l1, l2 = os.lstat(r / "etc/tolink"), os.lstat(r / "etc/tolink2")
            assert l1.st_nlink == l2.st_nlink == 2, what
            if not kernel:  # overlayfs gives a copied-up file the lower's number
                assert l1.st_ino == l2.st_ino, what
            assert (r / "hl/two").read_bytes() == b"linked\ntwo\n", what
            assert (r / "hl/one").read_bytes() == b"linked\n", what
            assert os.lstat(r / "hl/one").st_nlink == 2, what  # the lower's count, as overlayfs
            assert (r / "hl2/b").read_bytes() == b"a-linked\nmore\n", what
            assert (r / "hl2/c").read_bytes() == b"a-linked\n", what
            assert not os.path.lexists(r / "hl2/a"), what
            assert os.lstat(r / "hl2/b").st_ino != os.lstat(r / "hl2/c").st_ino, what
            assert stat.S_IMODE(os.lstat(r / "etc/chmod").st_mode) == 0o600, what
            st = os.lstat(r / "etc/chown")
            assert (st.st_uid, st.st_gid) == (1234, 5678), what
            assert os.lstat(r / "etc/utime").st_mtime_ns == 1_600_000_000_222_222_222, what
            assert os.getxattr(r / "etc/config", "user.new") == b"on a lower file", what
            assert (r / "etc/config").read_bytes() == b"config v1\n", what
            assert os.getxattr(r / "etc/created", "user.new") == b"on a new file", what
            assert view_xattrs(r / "etc/attrs") == {"user.keep": b"kept"}, what
            assert stat.S_ISFIFO(os.lstat(r / "etc/fifo").st_mode), what
            st = os.lstat(r / "etc/null")
            assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3), what
            assert stat.S_ISCHR(os.lstat(r / "dev-null").st_mode), what
            assert stat.S_IMODE(os.lstat(r / "bin/suid").st_mode) == 0o4755, what

        check(r, "live")
        assert_dir_nlinks(r)
        live = tree_snapshot(r)

    # the upper is in the kernel's format
    for p in ("etc/gone", "emptyme", "etc/rename-me", "victim"):
        st = os.lstat(upper / p)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, f"no whiteout at {p}"
    for p in ("rebuild", "etc/fresh", "etc/newdir"):
        assert os.getxattr(upper / p, "trusted.overlay.opaque") == b"y", f"{p} is not opaque"
    assert not list(Path(upper).rglob(".wh.*"))
    assert not os.path.lexists(upper / "etc/tmp") and not os.path.lexists(upper / "etc/tmpdir")
    assert not upper_xattr_names(upper) & {"trusted.overlay.origin", "trusted.overlay.redirect",
                                           "trusted.overlay.metacopy"}
    assert os.listdir(tmp_path / ".upper.work" / "work") == []

    with mosaic(layers, tmp_path / "mnt", upper) as m:
        check(m.mnt, "fuse remount")
        assert_same_tree(tree_snapshot(m.mnt), live, "fuse remount vs live")
    with mosaic(layers, tmp_path / "mnt", upper, mode="overlay") as m:
        assert "kernel overlayfs" in m.stdout and m.status["mode"] == "overlay"
        check(m.mnt, "overlay remount", kernel=True)
        assert_same_tree(tree_snapshot(m.mnt), live, "overlay remount vs live")
    with kernel_overlay(layers, upper, tmp_path) as k:
        check(k, "kernel overlayfs", kernel=True)
        assert_same_tree(tree_snapshot(k), live, "kernel overlayfs over the fragments vs live")
    # and back: what overlay mode wrote, fuse mode reads
    with mosaic(layers, tmp_path / "mnt", upper, mode="overlay") as m:
        (m.mnt / "etc/by-overlay").write_bytes(b"overlay\n")
        os.unlink(m.mnt / "etc/config")
        live = tree_snapshot(m.mnt)
    with mosaic(layers, tmp_path / "mnt", upper) as m:
        assert (m.mnt / "etc/by-overlay").read_bytes() == b"overlay\n"
        assert not os.path.lexists(m.mnt / "etc/config")
        assert_same_tree(tree_snapshot(m.mnt), live, "fuse after overlay")


def test_inode_numbers_stable_and_unique(layers, tmp_path):
    upper = tmp_path / "upper"
    with mosaic(layers, tmp_path / "mnt", upper) as m:
        r = m.mnt
        (r / "etc/new1").write_bytes(b"1")
        (r / "etc/new2").write_bytes(b"2")
        os.mkdir(r / "newdir")
        with open(r / "etc/keep", "ab") as f:
            f.write(b"more\n")

        def inodes():
            out = {}
            for dirpath, dirnames, filenames in os.walk(r):
                for n in dirnames + filenames:
                    p = os.path.join(dirpath, n)
                    out[os.path.relpath(p, r)] = os.lstat(p).st_ino
            return out

        first = inodes()
        links = {("hl/one", "hl/two"), ("hl2/a", "hl2/c")}
        seen = {}
        for p, ino in first.items():
            seen.setdefault(ino, []).append(p)
        shared = [ps for ps in seen.values() if len(ps) > 1 and tuple(sorted(ps)) not in links]
        assert not shared, f"distinct files share an inode number: {shared}"
        Path("/proc/sys/vm/drop_caches").write_text("2")
        assert inodes() == first, "inode numbers changed when the kernel forgot the inodes"


def test_owner_umask_setgid_and_setuid_kill(layers, tmp_path, shared_tmp):
    upper = tmp_path / "upper"
    with mosaic(layers, shared_tmp / "mnt", upper) as m:  # a path other users can reach
        r = m.mnt
        d = r / "share/setgid"
        run(["sh", "-c", f"umask 027; touch {d}/by-user; mkdir {d}/dir-by-user"], user=1234)
        st = os.lstat(d / "by-user")
        assert (st.st_uid, st.st_gid) == (1234, 50), "not the caller's uid and the setgid gid"
        assert stat.S_IMODE(st.st_mode) == 0o640, "the caller's umask was not applied"
        st = os.lstat(d / "dir-by-user")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 50, 0o2750)
        # a write by someone else clears setuid (the kernel asks; the daemon writes as root)
        f = r / "share/setgid/suid"
        f.write_bytes(b"x")
        os.chmod(f, 0o4777)
        run(["sh", "-c", f"echo more >> {f}"], user=1234)
        assert stat.S_IMODE(os.lstat(f).st_mode) & 0o4000 == 0, "setuid survived a write"
        # permission checks are the kernel's: default_permissions
        p = run(["sh", "-c", f"echo x > {r}/etc/keep"], user=1234, check=False)
        assert p.returncode != 0 and "Permission denied" in p.stderr
        assert (r / "etc/keep").read_bytes() == b"keep\n"
        assert not (upper / "etc/keep").exists()


def test_concurrent_copy_up_of_one_file(layers, tmp_path):
    """Eight threads open the same lower file for writing at once (eight copy-ups racing), each
    writes its own block: one upper file, the lower content whole, every block there."""
    upper = tmp_path / "upper"
    with mosaic(layers, tmp_path / "mnt", upper) as m:
        for name in ("etc/attrs", "etc/config", "etc/extra", "etc/sub/deep", "etc/keep"):
            path = m.mnt / name
            orig = path.read_bytes()
            barrier = threading.Barrier(8)
            errors = []

            def worker(i):
                try:
                    barrier.wait()
                    fd = os.open(path, os.O_RDWR)
                    try:
                        assert os.pread(fd, len(orig), 0) == orig
                        os.pwrite(fd, bytes([65 + i]) * 4, 4096 + i * 4)
                    finally:
                        os.close(fd)
                except BaseException as e:  # noqa: B902 - reported below
                    errors.append(repr(e))

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            want = bytearray(orig.ljust(4096 + 32, b"\0"))
            for i in range(8):
                want[4096 + i * 4:4096 + i * 4 + 4] = bytes([65 + i]) * 4
            assert path.read_bytes() == bytes(want), f"{name} after racing copy-ups"
            assert (upper / name).read_bytes() == bytes(want), name
        assert os.listdir(tmp_path / ".upper.work" / "work") == []


def test_concurrent_copy_ups_of_many_files(layers, tmp_path):
    """Many threads copy up, append to and read lower files and create their own at once."""
    upper = tmp_path / "upper"
    names = ["etc/keep", "etc/config", "etc/extra", "etc/sub/deep", "etc/sub/deep2", "opq/new",
             "notempty/x", "rebuild/old", "victim/sub/f", "etc/trunc"]
    with mosaic(layers, tmp_path / "mnt", upper) as m:
        orig = {n: (m.mnt / n).read_bytes() for n in names}
        errors = []

        def worker(i):
            try:
                for n in names:
                    with open(m.mnt / n, "ab") as f:
                        f.write(f"{i}\n".encode())
                    (m.mnt / f"{n}.{i}").write_bytes(b"x" * i)
                    assert (m.mnt / f"{n}.{i}").read_bytes() == b"x" * i
            except BaseException as e:  # noqa: B902 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        for n in names:
            data = (m.mnt / n).read_bytes()
            assert data.startswith(orig[n]), n
            assert sorted(data[len(orig[n]):].split()) == [str(i).encode() for i in range(8)], n
        live = tree_snapshot(m.mnt)
    with mosaic(layers, tmp_path / "mnt", upper) as m:
        assert_same_tree(tree_snapshot(m.mnt), live, "after remount")


@pytest.fixture(scope="module")
def big_layer(layers, signer):
    """A fragment with one large file, for a copy-up slow enough to be killed in the middle."""
    src = layers.base / "big"
    src.mkdir()
    with open(src / "big", "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(192):
            f.write(block[i:] + block[:i])
    digest = create(layers.store, src, layers.env, "--sign", signer.fingerprint, "--name",
                    "big", "--version", "1", "--kind", "config", "--source-date-epoch", EPOCH,
                    "-l", "1")
    return SimpleNamespace(digest=digest, sha256=file_sha256(src / "big"))


def test_sigkill_during_copy_up_leaves_no_partial_file(layers, big_layer, tmp_path):
    upper, mnt = tmp_path / "upper", tmp_path / "mnt"
    digests = layers.digests + [big_layer.digest]
    work = tmp_path / ".upper.work" / "work"
    mnt.mkdir()
    run([MOSAIC, "mount", "-s", layers.store, "--keyring", layers.keyring, *digests, mnt,
         "--upper", upper, "--writable=fuse"], env=layers.env)
    pid = status(mnt, layers.env)["pid"]
    opener = None
    try:
        # the open for writing copies the file up; meanwhile the daemon dies
        opener = subprocess.Popen(["python3", "-c", f"open({str(mnt / 'big')!r}, 'r+b')"],
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        caught = False
        while time.monotonic() < deadline and not caught:
            for e in os.scandir(work):
                with contextlib.suppress(OSError):
                    if e.stat(follow_symlinks=False).st_size > 0:
                        caught = True
            if opener.poll() is not None:
                break
        os.kill(pid, signal.SIGKILL)
        assert caught, "the copy-up finished before it could be interrupted"
        assert wait_gone(pid)
        opener.wait(30)
        assert opener.returncode != 0
    finally:
        if opener and opener.poll() is None:
            opener.kill()
            opener.wait()
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert not os.path.ismount(mnt)
    assert not os.path.lexists(upper / "big"), "a partial copy-up reached the upper"
    with mosaic(layers, mnt, upper, digests=digests) as m:
        assert os.listdir(work) == [], "the work dir was not emptied at mount"
        assert file_sha256(m.mnt / "big") == big_layer.sha256
        assert not [n for n in os.listdir(m.mnt) if n.startswith("#")]
        assert not [p for p in upper.rglob("#*")]
        # and the copy-up, done again, is whole
        with open(m.mnt / "big", "r+b"):
            pass
        assert file_sha256(upper / "big") == big_layer.sha256


def test_fallback_to_fuse_when_overlayfs_is_refused(layers, tmp_path):
    """With no --writable, overlay is tried first; a refusal (EPERM here, through a preloaded
    mount(2) that refuses overlayfs) makes the daemon serve the upper itself, and say so."""
    shim = tmp_path / "no-overlay.c"
    shim.write_text(r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/mount.h>
int mount(const char *src, const char *target, const char *type, unsigned long flags,
          const void *data)
{
	static int (*real)(const char *, const char *, const char *, unsigned long,
	                   const void *);
	if (type && strcmp(type, "overlay") == 0) {
		errno = EPERM;
		return -1;
	}
	if (!real)
		real = dlsym(RTLD_NEXT, "mount");
	return real(src, target, type, flags, data);
}
""")
    lib = tmp_path / "no-overlay.so"
    run(["cc", "-shared", "-fPIC", "-o", lib, shim, "-ldl"])
    env = dict(layers.env, LD_PRELOAD=str(lib), ASAN_OPTIONS="verify_asan_link_order=0")
    upper = tmp_path / "upper"
    with mosaic(layers, tmp_path / "mnt", upper, mode=None, env=env) as m:
        assert "copy-up" in m.stdout, m.stdout
        assert m.status["mode"] == "fuse" and "overlayfs" in m.status.get("fallback", "")
        (m.mnt / "etc/probe").write_bytes(b"x")
    assert (upper / "etc/probe").read_bytes() == b"x"
    # without the shim the same mount picks kernel overlayfs
    with mosaic(layers, tmp_path / "mnt", upper, mode=None) as m:
        assert m.status["mode"] == "overlay" and "kernel overlayfs" in m.stdout
        assert (m.mnt / "etc/probe").read_bytes() == b"x"


def test_work_dir_must_be_on_the_upper_filesystem(layers, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([MOSAIC, "mount", "-s", layers.store, "--keyring", layers.keyring, *layers.digests,
             mnt, "--upper", tmp_path / "upper", "--work", "/dev/shm/mosaic-test-work",
             "--writable=fuse"], env=layers.env, check=False)
    try:
        assert p.returncode != 0 and "filesystem" in p.stderr, p.stderr
        assert not os.path.ismount(mnt)
    finally:
        if os.path.ismount(mnt):
            run([MOSAIC, "umount", mnt], env=layers.env, check=False)
        shutil.rmtree("/dev/shm/mosaic-test-work", ignore_errors=True)
