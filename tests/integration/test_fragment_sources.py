"""Fragments from tar archives and directories: every file type, owner, mode bit, hard link
and xattr comes from the source as it is, without root; paths that could escape are refused."""

import io
import json
import os
import stat
import struct
import tarfile
from pathlib import Path

import pytest

from conftest import (MOSAIC, create, kernel_mount, object_path, run, squashfuse_mount,
                      squashfuse_xattr_names, tree_listing)

# A real VFS v2 file capability (cap_net_raw=ep): magic|effective, permitted, inheritable.
CAP_NET_RAW = 13
CAPABILITY = struct.pack("<IIIII", 0x02000000 | 1, 1 << CAP_NET_RAW, 0, 0, 0)


def add(tf, name, type=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, mtime=1600000000,
        **kw):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type, mode, uid, gid, mtime
    for k, v in kw.items():
        setattr(ti, k, v)
    if type == tarfile.REGTYPE:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def make_tar(path, mode="w", extra=None):
    """A rootfs-like tar with every kind of entry a package can carry."""
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tf:
        add(tf, "./", tarfile.DIRTYPE, mode=0o755)
        add(tf, "./usr/", tarfile.DIRTYPE, mode=0o755)
        add(tf, "./usr/bin/", tarfile.DIRTYPE, mode=0o755)
        add(tf, "./usr/bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o755)
        add(tf, "./usr/bin/su", data=b"\x7fELF" + bytes(5000), mode=0o4755)
        add(tf, "./usr/bin/wall", data=b"wall", mode=0o2755, gid=5)
        add(tf, "./usr/bin/ping", data=b"ping" * 1000, mode=0o755,
            pax_headers={"SCHILY.xattr.security.capability": CAPABILITY.decode("latin-1"),
                         "SCHILY.xattr.user.origin": "test"})
        add(tf, "./usr/bin/tool-link", tarfile.LNKTYPE, linkname="./usr/bin/tool")
        add(tf, "./usr/bin/sh", tarfile.SYMTYPE, linkname="dash")
        add(tf, "./tmp/", tarfile.DIRTYPE, mode=0o1777)
        add(tf, "./home/user/", tarfile.DIRTYPE, mode=0o750, uid=1234, gid=5678)
        add(tf, "./home/user/notes", data=os.urandom(300 * 1024), mode=0o600, uid=1234, gid=5678)
        add(tf, "./dev/", tarfile.DIRTYPE, mode=0o755)
        add(tf, "./dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
        add(tf, "./dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, devmajor=7, devminor=0)
        add(tf, "./run/initctl", tarfile.FIFOTYPE, mode=0o600)
        add(tf, "/etc/hostname", data=b"mosaic\n")  # absolute: normalised to etc/hostname
        add(tf, "./empty", data=b"")
        for e in extra or []:
            add(tf, **e)
    return path


def tar_expectations(path):
    want = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            name = m.name.lstrip("/")
            name = "" if name in (".", "./") else os.path.normpath(name.removeprefix("./"))
            want[name] = m
    return want


@pytest.mark.parametrize("compression", ["", "gz", "xz", "zst"])
def test_tar_fragment_as_unprivileged_user(compression, shared_tmp, tmp_path):
    src = make_tar(shared_tmp / "root.tar")
    if compression:
        tool = {"gz": ["gzip", "-k"], "xz": ["xz", "-k"], "zst": ["zstd", "-q"]}[compression]
        run([*tool, src])
        src = Path(f"{src}.{compression}")
    src.chmod(0o644)
    env = {"PATH": os.environ["PATH"], "HOME": str(shared_tmp),
           "MOSAIC_CACHE_DIR": str(shared_tmp / "cache")}
    store = shared_tmp / "store"
    digest = create(store, src, env, "--name", "root", "--version", "1",
                    "--source-date-epoch", "1700000000", user=65534)
    desc = json.loads(object_path(store, digest, ".json").read_text())
    assert (desc["name"], desc["version"], desc["kind"]) == ("root", "1", "base")
    assert desc["source"]["type"] == "tar"
    want = tar_expectations(shared_tmp / "root.tar")
    # + the parents the tar never lists: run/, home/ and etc/
    assert desc["files"] == len([p for p in want if p]) + 3

    for mount in (kernel_mount, squashfuse_mount):
        with mount(object_path(store, digest), tmp_path / mount.__name__) as mnt:
            tree = tree_listing(mnt)
            if mount is squashfuse_mount:
                squashfuse_xattr_names(tree)
            for path, m in want.items():
                got = tree[path]
                if m.islnk():
                    target = tree[os.path.normpath(m.linkname.removeprefix("./"))]
                    assert got == target and got["nlink"] == 2
                    continue
                assert stat.S_IMODE(got["mode"]) == m.mode, path
                assert (got["uid"], got["gid"], got["mtime"]) == (m.uid, m.gid, m.mtime), path
                if m.isreg():
                    assert stat.S_ISREG(got["mode"]) and got["size"] == m.size
                elif m.issym():
                    assert got["link"] == m.linkname
                elif m.ischr() or m.isblk():
                    assert (stat.S_ISCHR(got["mode"]), got["rdev"]) == (m.ischr(), (m.devmajor, m.devminor))
                elif m.isfifo():
                    assert stat.S_ISFIFO(got["mode"])
                elif m.isdir():
                    assert stat.S_ISDIR(got["mode"])
            assert tree["usr/bin/ping"]["xattrs"]["security.capability"] == CAPABILITY
            assert tree["usr/bin/ping"]["xattrs"]["user.origin"] == b"test"
            assert tree["run"]["mode"] == stat.S_IFDIR | 0o755
            if mount is kernel_mount:
                assert "cap_net_raw=ep" in run(["getcap", mnt / "usr/bin/ping"]).stdout


def test_tar_refuses_escaping_paths(shared_tmp, tmp_path, env):
    dotdot = make_tar(tmp_path / "dotdot.tar",
                      extra=[dict(name="./usr/../../etc/passwd", data=b"x")])
    p = create(tmp_path / "s", dotdot, env, check=False)
    assert p.returncode == 2
    assert "usr/../../etc/passwd" in p.stderr and "'..'" in p.stderr

    outside = make_tar(tmp_path / "hl.tar",
                       extra=[dict(name="./evil", type=tarfile.LNKTYPE, linkname="../etc/shadow")])
    p = create(tmp_path / "s", outside, env, check=False)
    assert p.returncode == 2
    assert "evil" in p.stderr and "outside the archive" in p.stderr

    missing = make_tar(tmp_path / "hl2.tar",
                       extra=[dict(name="./evil", type=tarfile.LNKTYPE, linkname="nothere")])
    p = create(tmp_path / "s", missing, env, check=False)
    assert p.returncode == 2 and "not in the archive" in p.stderr
    # Nothing half-made is left behind in the store.
    assert not list((tmp_path / "s" / "tmp").iterdir())
    assert not list((tmp_path / "s" / "sha256").iterdir())


def test_corrupt_tar_is_refused(tmp_path, env):
    good = make_tar(tmp_path / "r.tar", "w:gz")
    data = good.read_bytes()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data[: len(data) // 2])
    p = create(tmp_path / "s", bad, env, check=False)
    assert p.returncode == 1 and "bad.tar.gz" in p.stderr


def test_directory_fragment_with_owner(tmp_path, env):
    src = tmp_path / "cfg"
    (src / "etc/ssh").mkdir(parents=True)
    (src / "etc/hostname").write_text("box\n")
    (src / "etc/ssh/sshd_config.d").mkdir()
    (src / "etc/ssh/key").write_text("secret")
    (src / "etc/ssh/key").chmod(0o600)
    os.link(src / "etc/hostname", src / "etc/hostname.bak")
    os.symlink("hostname", src / "etc/name")
    os.mkfifo(src / "fifo")
    os.setxattr(src / "etc/hostname", "user.note", b"hello")
    os.chown(src / "etc/ssh/key", 42, 43)
    digest = create(tmp_path / "s", src, env, "--kind", "config")
    digest2 = create(tmp_path / "s2", src, env, "--kind", "config", "--owner", "1000:1000")
    with kernel_mount(object_path(tmp_path / "s", digest), tmp_path / "m1") as m1, \
            kernel_mount(object_path(tmp_path / "s2", digest2), tmp_path / "m2") as m2:
        want, got, owned = tree_listing(src), tree_listing(m1), tree_listing(m2)
        assert set(want) == set(got) == set(owned)
        for path, w in want.items():
            g = got[path]
            for k in ("mode", "uid", "gid", "size", "link", "sha256", "xattrs", "mtime"):
                assert g[k] == w[k], (path, k)
            assert owned[path]["uid"] == owned[path]["gid"] == 1000
        assert got["etc/hostname"]["nlink"] == 2
        assert os.lstat(m1 / "etc/hostname").st_ino == os.lstat(m1 / "etc/hostname.bak").st_ino
    desc = json.loads(object_path(tmp_path / "s", digest, ".json").read_text())
    assert (desc["kind"], desc["name"], desc["source"]["type"]) == ("config", "cfg", "dir")


def test_inspect_lists_like_ls(tmp_path, env):
    src = make_tar(tmp_path / "r.tar")
    digest = create(tmp_path / "s", src, env, "--name", "r")
    out = run([MOSAIC, "fragment", "inspect", "-s", tmp_path / "s", "r"], env=env).stdout
    lines = {l.split()[-1] if " -> " not in l else l.split(" -> ")[0].split()[-1]: l
             for l in out.splitlines()}
    assert lines["/usr/bin/su"].startswith("-rwsr-xr-x")
    assert lines["/tmp"].startswith("drwxrwxrwt")
    assert lines["/usr/bin/wall"].startswith("-rwxr-sr-x")
    assert lines["/dev/null"].startswith("crw-rw-rw-") and " 1, 3 " in lines["/dev/null"]
    assert lines["/usr/bin/sh"].endswith("/usr/bin/sh -> dash")
    assert lines["/home/user/notes"].split()[2:4] == ["1234", "5678"]
    entries = json.loads(run([MOSAIC, "fragment", "inspect", "--json",
                              object_path(tmp_path / "s", digest)], env=env).stdout)
    ping = next(e for e in entries if e["path"] == "/usr/bin/ping")
    assert bytes.fromhex(ping["xattrs"]["security.capability"]) == CAPABILITY
    assert {e["path"] for e in entries} >= {"/", "/etc/hostname", "/run/initctl"}
