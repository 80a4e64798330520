"""mosaic commit: a writable mount's upper frozen into a signed config fragment. Every change a
system makes (new, modified, chmod'ed, chown'ed and deleted files, a replaced directory,
symlinks, hard links, xattrs) is made through a real mount in both writable modes, committed,
and the fragments plus the committed one are mounted read-only and compared with the live view,
entry by entry. Every mount is taken down in a finally and its daemon must be gone."""

import contextlib
import json
import os
import stat
import subprocess
from types import SimpleNamespace

import pytest

from conftest import (MOSAIC, assert_same_tree, create, mosaic_mounted, object_path, run,
                      tree_snapshot, walk_tree, write_file)

EPOCH = "1700000000"


# ---- fragments ---------------------------------------------------------------------------------

def build_base(root):
    write_file(root / "etc/config", "config v0\n", mtime=1_400_000_000)
    write_file(root / "etc/keep", "keep\n")
    write_file(root / "etc/gone", "gone\n")
    write_file(root / "etc/rename-me", "renamed\n")
    write_file(root / "etc/chmod", "chmod\n")
    write_file(root / "etc/chown", "chown\n", uid=5, gid=6)
    write_file(root / "etc/attrs", "attrs\n", mode=0o640, uid=1001, gid=1002,
               xattrs={"user.x": b"lower", "user.drop": b"dropped"})
    os.symlink("config", root / "etc/link")
    write_file(root / "rebuild/old", "old\n")
    write_file(root / "rebuild/sub/deep", "deep\n")
    write_file(root / "usr/share/doc/pkg/README", "readme\n")
    write_file(root / "usr/bin/tool", "#!/bin/sh\n", mode=0o755)
    write_file(root / "hl/one", "linked\n", mode=0o600, uid=7, gid=8)
    os.link(root / "hl/one", root / "hl/two")
    os.mknod(root / "dev-null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for d in ("etc", "rebuild", "usr", "hl"):
        os.utime(root / d, (1_400_000_000, 1_400_000_000))


def build_top(root):
    write_file(root / "etc/config", "config v1\n", mtime=1_400_000_001)
    write_file(root / "opt/two/file", "from the second fragment\n")
    write_file(root / "opt/two/stays", "stays\n")


@pytest.fixture(scope="module")
def layers(signer, tmp_path_factory):
    base = tmp_path_factory.mktemp("commit")
    store = base / "store"
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"))
    env.pop("SOURCE_DATE_EPOCH", None)
    env.pop("MOSAIC_SIGN_KEY", None)
    digests = []
    for name, build in (("base", build_base), ("top", build_top)):
        src = base / name
        src.mkdir()
        build(src)
        digests.append(create(store, src, env, "--sign", signer.fingerprint, "--name", name,
                              "--version", "1", "--kind", "base", "--source-date-epoch",
                              EPOCH))
    return SimpleNamespace(store=store, env=env, keyring=signer.keyring, digests=digests,
                           signer=signer)


# ---- mounts ------------------------------------------------------------------------------------

@contextlib.contextmanager
def mounted(layers, mnt, digests, *opts):
    """mosaic mount of digests at mnt; mosaic umount afterwards, which must end the daemon."""
    with mosaic_mounted(["-s", layers.store, "--keyring", layers.keyring, *digests, *opts],
                        mnt, layers.env) as m:
        yield m.mnt


def commit(layers, mnt, *extra, check=True):
    p = run([MOSAIC, "commit", mnt, "-o", layers.store, "--sign", layers.signer.fingerprint,
             *extra], env=layers.env, check=check)
    return p.stdout.split()[0] if check else p


def change_everything(r):
    """What configuring a system does to it, through the mount."""
    write_file(r / "etc/new", "new file\n", mode=0o640, xattrs={"user.x": b"new"})
    write_file(r / "newdir/sub/file", "deep new\n", uid=1000, gid=1000)
    os.mkdir(r / "newdir/empty", 0o700)
    with open(r / "etc/config", "a") as f:
        f.write("appended\n")
    os.chmod(r / "etc/chmod", 0o600)
    os.chown(r / "etc/chown", 123, 456)
    os.utime(r / "usr/bin/tool", (1_234_567_890, 1_234_567_890))
    os.setxattr(r / "etc/keep", "user.x", b"added")
    os.setxattr(r / "etc/attrs", "user.x", b"changed")
    os.removexattr(r / "etc/attrs", "user.drop")
    os.unlink(r / "etc/gone")                       # a whiteout
    os.unlink(r / "opt/two/file")                   # from the second fragment
    os.rename(r / "etc/rename-me", r / "etc/renamed")
    subprocess.run(["rm", "-r", str(r / "rebuild")], check=True)
    os.mkdir(r / "rebuild")                         # over a whiteout: opaque
    write_file(r / "rebuild/fresh", "fresh\n")
    subprocess.run(["rm", "-r", str(r / "usr/share/doc")], check=True)
    os.symlink("../etc/new", r / "usr/newlink")
    os.unlink(r / "etc/link")
    os.symlink("/etc/renamed", r / "etc/link")      # a symlink replaced
    os.link(r / "etc/new", r / "etc/new-hardlink")  # a hard link in the upper
    os.mkfifo(r / "etc/fifo", 0o600)
    os.link(r / "hl/one", r / "hl/three")          # copies up a hard-linked lower file


# ---- tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["overlay", "fuse"])
def test_commit_shows_the_same_tree_without_the_upper(layers, tmp_path, mode):
    upper = tmp_path / "upper"
    with mounted(layers, tmp_path / "mnt", layers.digests, "--upper", upper,
                 f"--writable={mode}") as r:
        status = json.loads(run([MOSAIC, "status", r, "--json"], env=layers.env).stdout)
        assert status["mode"] == mode
        change_everything(r)
        live = tree_snapshot(r, whole_seconds=True)
        p = run([MOSAIC, "commit", r, "-o", layers.store, "--sign",
                 layers.signer.fingerprint, "--source-date-epoch", EPOCH, "--json"],
                env=layers.env)
        info = json.loads(p.stdout)
        digest = info["digest"]
        assert (info["name"], info["kind"], info["mode"]) == ("config", "config", mode)
        # the same upper and epoch give the same bytes
        assert commit(layers, r, "--source-date-epoch", EPOCH) == digest
        # the mount is still there and writable after a commit, and did not change
        assert_same_tree(tree_snapshot(r, whole_seconds=True), live, "the live view after commit")
        write_file(r / "etc/after-commit", "later\n")
        assert (r / "etc/after-commit").read_text() == "later\n"
        os.unlink(r / "etc/after-commit")

    # signed, of kind config, and verifiable like any fragment
    run([MOSAIC, "fragment", "verify", digest, "-s", layers.store, "--keyring", layers.keyring],
        env=layers.env)
    desc = json.loads(object_path(layers.store, digest, ".json").read_text())
    assert (desc["name"], desc["kind"], desc["created"]) == ("config", "config", int(EPOCH))
    assert desc["source"]["type"] == "upper"

    with mounted(layers, tmp_path / "mnt2", [*layers.digests, digest], "--read-only") as r2:
        frozen = tree_snapshot(r2, whole_seconds=True)
    assert_same_tree(frozen, live, f"fragments + config vs fragments + upper ({mode})")
    # the spot checks that the comparison covers what it should
    assert "etc/gone" not in live and "opt/two/file" not in live
    assert sorted(p for p in live if p.startswith("rebuild")) == ["rebuild", "rebuild/fresh"]
    assert live["etc/new-hardlink"]["nlink"] == 2
    assert live["etc/attrs"]["xattrs"] == {"user.x": b"changed"}
    assert live["etc/link"]["link"] == "/etc/renamed"


@pytest.mark.parametrize("mode", ["overlay", "fuse"])
def test_image_holds_whiteouts_and_opaque_dirs_but_no_bookkeeping(layers, tmp_path, mode):
    upper = tmp_path / "upper"
    with mounted(layers, tmp_path / "mnt", layers.digests, "--upper", upper,
                 f"--writable={mode}") as r:
        change_everything(r)
        digest = commit(layers, r)
    sqfs = tmp_path / "sqfs"
    sqfs.mkdir()
    # read the image as the kernel does, xattrs and all
    run(["mount", "-t", "squashfs", "-o", "ro,loop", object_path(layers.store, digest), sqfs])
    try:
        for gone in ("etc/gone", "etc/rename-me", "opt/two/file", "usr/share/doc"):
            st = os.lstat(sqfs / gone)
            assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, f"{gone} is no whiteout"
        assert os.getxattr(sqfs / "rebuild", "trusted.overlay.opaque") == b"y"
        assert os.listdir(sqfs / "rebuild") == ["fresh"]
        names = set()
        for rel, p in walk_tree(sqfs):
            names.update(os.listxattr(p, follow_symlinks=False))
        assert not {n for n in names if n.startswith("trusted.overlay.")} - {
            "trusted.overlay.opaque"}, names
        # whiteouts are not hard links of one another, whatever overlayfs shares
        assert os.lstat(sqfs / "etc/gone").st_nlink == 1
        assert os.lstat(sqfs / "etc/new-hardlink").st_nlink == 2
        assert os.lstat(sqfs / "etc/new").st_ino == os.lstat(sqfs / "etc/new-hardlink").st_ino
    finally:
        subprocess.run(["umount", str(sqfs)], capture_output=True)
    assert not os.path.ismount(sqfs)


def test_default_epoch_is_zero_and_name_is_a_ref(layers, tmp_path):
    with mounted(layers, tmp_path / "mnt", layers.digests, "--upper", tmp_path / "upper",
                 "--writable=fuse") as r:
        write_file(r / "etc/hostname", "box\n")
        digest = commit(layers, r, "--name", "box-config")
        env = dict(layers.env, SOURCE_DATE_EPOCH=EPOCH)
        p = run([MOSAIC, "commit", r, "-o", layers.store, "--sign", layers.signer.fingerprint],
                env=env)
        with_env = p.stdout.split()[0]
    desc = json.loads(object_path(layers.store, digest, ".json").read_text())
    assert (desc["name"], desc["created"]) == ("box-config", 0)
    desc = json.loads(object_path(layers.store, with_env, ".json").read_text())
    assert (desc["name"], desc["created"]) == ("config", int(EPOCH))
    assert with_env != digest  # the image's times differ
    assert (layers.store / "refs" / "box-config").read_text().strip() == digest


@pytest.mark.parametrize("xattr, words", [
    ("trusted.overlay.redirect", ["redirect_dir", "trusted.overlay.redirect"]),
    ("trusted.overlay.metacopy", ["metacopy", "lower layer"]),
])
def test_redirect_and_metacopy_uppers_are_refused(layers, tmp_path, xattr, words):
    upper = tmp_path / "upper"
    write_file(upper / "etc/moved/file", "f\n")
    os.setxattr(upper / "etc/moved", xattr, b"/etc/elsewhere" if "redirect" in xattr else b"")
    before = sorted((layers.store / "sha256").rglob("*.sqfs"))
    with mounted(layers, tmp_path / "mnt", layers.digests, "--upper", upper,
                 "--writable=fuse") as r:
        p = commit(layers, r, check=False)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "etc/moved" in p.stderr and all(w in p.stderr for w in words), p.stderr
    assert p.stdout == ""
    assert sorted((layers.store / "sha256").rglob("*.sqfs")) == before
    assert not list((layers.store / "tmp").iterdir()), "a refused commit left a temp file"


def test_a_mount_without_upper_and_a_plain_directory_are_refused(layers, tmp_path):
    with mounted(layers, tmp_path / "mnt", layers.digests, "--read-only") as r:
        p = commit(layers, r, check=False)
    assert p.returncode == 2 and "no upper" in p.stderr, (p.returncode, p.stderr)
    (tmp_path / "plain").mkdir()
    p = commit(layers, tmp_path / "plain", check=False)
    assert p.returncode == 2 and "not mounted by mosaic" in p.stderr, p.stderr
    p = run([MOSAIC, "commit", tmp_path / "plain", "-o", layers.store], env=layers.env,
            check=False)
    assert p.returncode == 2 and "--sign" in p.stderr, p.stderr
