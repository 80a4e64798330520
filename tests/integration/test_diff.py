"""mosaic diff, mosaic origin and the upper in mosaic status, on real writable mounts in both
modes (kernel overlayfs over the view, and the daemon's own copy-up). Three small signed fragments
are made at test time (a base directory, a .deb built with dpkg-deb, a config directory); every
change is made through the mount, then read back from the upper by diff and origin. Every mount
is taken down in a finally and its daemon must be gone."""

import contextlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import MOSAIC, create, mosaic_mounted, object_path, run, write_file

EPOCH = "1700000000"
PACKAGE = "hello-mosaic"


def build_base(root):
    write_file(root / "etc/config", "config v0\n")
    write_file(root / "etc/keep", "keep\n")
    write_file(root / "etc/chmod", "chmod\n", mode=0o644)
    write_file(root / "etc/gone", "gone\n")
    write_file(root / "etc/same", "same content\n" * 100)
    write_file(root / "etc/xattr", "xattr\n", xattrs={"user.one": b"1"})
    os.symlink("config", root / "etc/link")
    write_file(root / "rebuild/old1", "old one\n")
    write_file(root / "rebuild/old2", "old two\n")
    write_file(root / "rebuild/sub/x", "x\n")
    write_file(root / "deldir/a", "a\n")
    write_file(root / "etc/todir", "a file, then a directory\n")
    write_file(root / "tofile/inner", "a directory, then a file\n")
    for d in ("", "etc", "rebuild", "rebuild/sub", "deldir", "tofile"):
        os.chmod(root / d, 0o755)


def build_deb(tmp):
    """A real .deb (dpkg-deb): the package fragment."""
    root = tmp / "deb-root"
    write_file(root / "usr/bin/hello", "#!/bin/sh\necho hello\n", mode=0o755)
    write_file(root / f"usr/share/doc/{PACKAGE}/copyright", "public domain\n")
    write_file(root / "DEBIAN/control",
               f"Package: {PACKAGE}\nVersion: 1.0-1\nArchitecture: all\n"
               "Maintainer: mosaic tests <tests@mosaic.invalid>\nDescription: diff test\n")
    deb = tmp / f"{PACKAGE}_1.0-1_all.deb"
    run(["dpkg-deb", "--root-owner-group", "--build", root, deb])
    return deb


def build_top(root):
    write_file(root / "etc/motd", "from the top\n")
    os.chmod(root / "etc", 0o755)
    os.chmod(root, 0o755)


@pytest.fixture(scope="module")
def layers(signer, tmp_path_factory):
    base = tmp_path_factory.mktemp("diff")
    store = base / "store"
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"))
    sign = ["--sign", signer.fingerprint, "--source-date-epoch", EPOCH]
    digests = []
    src = base / "base"
    src.mkdir()
    build_base(src)
    digests.append(create(store, src, env, *sign, "--name", "base", "--version", "1",
                          "--kind", "base"))
    digests.append(create(store, build_deb(base), env, *sign))
    src = base / "top"
    src.mkdir()
    build_top(src)
    digests.append(create(store, src, env, *sign, "--name", "top", "--version", "2",
                          "--kind", "config"))
    return SimpleNamespace(store=store, env=env, keyring=signer.keyring, digests=digests)


@contextlib.contextmanager
def mounted(layers, tmp, mode):
    """mosaic mount with an upper (mode overlay or fuse; None: read-only); always unmounted."""
    extra, upper = [], None
    if mode:
        upper = Path(tmp) / "upper"
        upper.mkdir(mode=0o755)
        extra = ["--upper", upper, f"--writable={mode}"]
    with mosaic_mounted(["-s", layers.store, "--keyring", layers.keyring, *layers.digests,
                         *extra], Path(tmp) / "mnt", layers.env) as m:
        yield SimpleNamespace(mnt=m.mnt, upper=upper, pid=m.pid)


def change_everything(mnt):
    """Every kind of change, made through the mount."""
    write_file(mnt / "etc/new", "new\n")
    write_file(mnt / "newdir/f", "f\n")
    (mnt / "etc/config").write_text("config v1\n")
    os.chmod(mnt / "etc/chmod", 0o600)
    os.unlink(mnt / "etc/gone")
    os.unlink(mnt / "etc/link")
    os.symlink("keep", mnt / "etc/link")
    os.setxattr(mnt / "etc/xattr", "user.two", b"2")
    # a copy-up that changes nothing: opened for writing, nothing written
    with open(mnt / "etc/same", "ab"):
        pass
    # a directory deleted and made again: opaque; old2 comes back with its old content
    run(["rm", "-rf", mnt / "rebuild"])
    (mnt / "rebuild").mkdir()
    os.chmod(mnt / "rebuild", 0o755)
    (mnt / "rebuild/old1").write_text("old one, rewritten\n")
    (mnt / "rebuild/old2").write_text("old two\n")
    (mnt / "rebuild/new").write_text("new\n")
    run(["rm", "-rf", mnt / "deldir"])
    # type changes: what was below a directory turned file is deleted
    os.unlink(mnt / "etc/todir")
    write_file(mnt / "etc/todir/x", "x\n")
    run(["rm", "-rf", mnt / "tofile"])
    write_file(mnt / "tofile", "now a file\n")
    with open(mnt / "usr/bin/hello", "a") as f:
        f.write("echo again\n")


EXPECTED = [
    ("D", "/deldir", "dir"),
    ("D", "/deldir/a", "file"),
    ("M", "/etc/chmod", "file"),
    ("M", "/etc/config", "file"),
    ("D", "/etc/gone", "file"),
    ("M", "/etc/link", "symlink"),
    ("A", "/etc/new", "file"),
    ("M", "/etc/todir", "dir"),
    ("A", "/etc/todir/x", "file"),
    ("M", "/etc/xattr", "file"),
    ("A", "/newdir", "dir"),
    ("A", "/newdir/f", "file"),
    ("A", "/rebuild/new", "file"),
    ("M", "/rebuild/old1", "file"),
    ("D", "/rebuild/sub", "dir"),
    ("D", "/rebuild/sub/x", "file"),
    ("M", "/tofile", "file"),
    ("D", "/tofile/inner", "file"),
    ("M", "/usr/bin/hello", "file"),
]
WHAT = {"/etc/chmod": ["mode"], "/etc/config": ["content"], "/etc/link": ["target"],
        "/etc/xattr": ["xattrs"], "/etc/todir": ["type"], "/tofile": ["type"], "/rebuild/old1": ["content"], "/usr/bin/hello": ["content"]}
WORDS = {"A": "added", "M": "modified", "D": "deleted", "=": "unchanged"}


def diff(layers, mnt, *extra, check=True):
    return run([MOSAIC, "diff", mnt, *extra], env=layers.env, check=check)


def origin(layers, mnt, path, check=True):
    p = run([MOSAIC, "origin", mnt, path, "--json"], env=layers.env, check=check)
    return json.loads(p.stdout) if check else p


@pytest.mark.parametrize("mode", ["overlay", "fuse"])
def test_diff_lists_what_the_upper_changes(layers, tmp_path, mode):
    with mounted(layers, tmp_path, mode) as m:
        assert diff(layers, m.mnt).stdout == "", "a fresh upper changes nothing"
        change_everything(m.mnt)

        text = diff(layers, m.mnt).stdout
        assert text == "".join(f"{c}  {p}\n" for c, p, _ in EXPECTED)

        got = json.loads(diff(layers, m.mnt, "--json").stdout)
        want = [dict(path=p, change=WORDS[c], type=t, **({"what": WHAT[p]} if c == "M" else {}))
                for c, p, t in EXPECTED]
        assert got == want

        # --all adds the copy-ups that change nothing: the file opened for writing, the
        # re-added old2, and the directories copied up on the way (but not the untouched)
        lines = diff(layers, m.mnt, "--all").stdout.splitlines()
        unchanged = [ln[3:] for ln in lines if ln.startswith("=  ")]
        assert "/etc/same" in unchanged and "/rebuild/old2" in unchanged
        assert "/etc" in unchanged and "/rebuild" in unchanged
        assert "/etc/keep" not in unchanged and "/etc/motd" not in unchanged
        assert [ln for ln in lines if not ln.startswith("=  ")] == text.splitlines()
        assert lines == sorted(lines, key=lambda ln: ln[3:])
        j = json.loads(diff(layers, m.mnt, "--all", "--json").stdout)
        assert {"path": "/etc/same", "change": "unchanged", "type": "file"} in j

        # the mount still shows what diff says
        assert (m.mnt / "etc/same").read_text() == "same content\n" * 100
        assert not (m.mnt / "rebuild/sub").exists()
        assert os.readlink(m.mnt / "etc/link") == "keep"


@pytest.mark.parametrize("mode", ["overlay", "fuse"])
def test_origin_names_fragment_package_and_upper(layers, tmp_path, mode):
    base, deb, top = layers.digests
    with mounted(layers, tmp_path, mode) as m:
        change_everything(m.mnt)

        o = origin(layers, m.mnt, "/etc/keep")
        assert o["fragment"]["digest"] == base and o["fragment"]["name"] == "base"
        assert o["fragment"]["kind"] == "base" and o["fragment"]["version"] == "1"
        assert o["fragment"]["image"] == str(object_path(layers.store, base))
        assert o["package"] is None and o["upper"] == "untouched" and o["type"] == "file"

        o = origin(layers, m.mnt, f"usr/share/doc/{PACKAGE}/copyright")
        assert o["path"] == f"/usr/share/doc/{PACKAGE}/copyright"
        assert o["fragment"]["digest"] == deb and o["fragment"]["kind"] == "package"
        assert o["fragment"]["version"] == "1.0-1"
        assert o["package"] == PACKAGE and o["upper"] == "untouched"

        o = origin(layers, m.mnt, "/usr/bin/hello")
        assert o["fragment"]["digest"] == deb and o["package"] == PACKAGE
        assert o["upper"] == "modified" and o["what"] == ["content"]

        o = origin(layers, m.mnt, "/etc/motd")
        assert o["fragment"]["digest"] == top and o["fragment"]["kind"] == "config"
        assert o["package"] is None and o["upper"] == "untouched"

        o = origin(layers, m.mnt, "/etc/new")
        assert o["fragment"] is None and o["package"] is None and o["upper"] == "added"
        o = origin(layers, m.mnt, "/etc/todir/x")
        assert o["fragment"] is None and o["upper"] == "added"
        o = origin(layers, m.mnt, "/newdir/f")
        assert o["fragment"] is None and o["upper"] == "added"

        for path, upper in (("/etc/gone", "deleted"), ("/deldir/a", "deleted"),
                            ("/rebuild/sub/x", "deleted"), ("/rebuild/old1", "modified"),
                            ("/rebuild/old2", "unchanged"), ("/etc/same", "unchanged"),
                            ("/etc/chmod", "modified"), ("/etc/link", "modified"),
                            ("/tofile/inner", "deleted"), ("/etc/todir", "modified")):
            o = origin(layers, m.mnt, path)
            assert o["upper"] == upper, path
            assert o["fragment"]["digest"] == base, path
        assert origin(layers, m.mnt, "/etc/link")["type"] == "symlink"

        text = run([MOSAIC, "origin", m.mnt, "/usr/bin/hello"], env=layers.env).stdout
        assert deb in text and f"package:   {PACKAGE}" in text
        assert "upper:     modified (content)" in text

        p = origin(layers, m.mnt, "/no/such/file", check=False)
        assert p.returncode == 1 and "/no/such/file" in p.stderr
        p = origin(layers, m.mnt, "/etc/../etc/keep", check=False)
        assert p.returncode == 2


@pytest.mark.parametrize("mode", ["overlay", "fuse"])
def test_status_shows_the_upper_and_its_size(layers, tmp_path, mode):
    with mounted(layers, tmp_path, mode) as m:
        before = json.loads(run([MOSAIC, "status", m.mnt, "--json"], env=layers.env).stdout)
        assert before["upper"] == str(m.upper)
        assert before["upper_entries"] == 0
        (m.mnt / "big").write_bytes(os.urandom(1 << 20))
        st = json.loads(run([MOSAIC, "status", m.mnt, "--json"], env=layers.env).stdout)
        assert st["upper"] == str(m.upper) and st["mode"] == mode
        assert st["upper_size"] >= 1 << 20 and st["upper_entries"] == 1
        text = run([MOSAIC, "status", m.mnt], env=layers.env).stdout
        assert f"upper:          {m.upper} (" in text and "MiB in 1 entries)" in text
        # a hard link is one more entry, not more bytes
        os.link(m.mnt / "big", m.mnt / "big2")
        linked = json.loads(run([MOSAIC, "status", m.mnt, "--json"], env=layers.env).stdout)
        assert linked["upper_entries"] == 2 and linked["upper_size"] == st["upper_size"]


def test_read_only_mount_has_no_changes(layers, tmp_path):
    with mounted(layers, tmp_path, None) as m:
        p = diff(layers, m.mnt)
        assert p.stdout == "" and "read-only" in p.stderr
        assert json.loads(diff(layers, m.mnt, "--json").stdout) == []
        o = origin(layers, m.mnt, "/etc/config")
        assert o["upper"] == "untouched" and o["fragment"]["digest"] == layers.digests[0]
        st = json.loads(run([MOSAIC, "status", m.mnt, "--json"], env=layers.env).stdout)
        assert st["upper"] is None and "upper_size" not in st


def test_diff_of_something_not_mounted(layers, tmp_path):
    p = diff(layers, tmp_path, check=False)
    assert p.returncode == 2 and "not mounted by mosaic" in p.stderr


@pytest.mark.parametrize("args", [["diff"], ["diff", "a", "b"], ["diff", "--bogus", "a"],
                                  ["origin"], ["origin", "a"], ["origin", "a", "b", "c"]])
def test_bad_usage_exits_2(args):
    p = run([MOSAIC, *args], check=False)
    assert p.returncode == 2 and p.stderr.startswith("mosaic: ")


@pytest.mark.parametrize("cmd", ["diff", "origin"])
def test_help(cmd):
    p = run([MOSAIC, cmd, "--help"])
    assert p.stdout.startswith(f"Usage: mosaic {cmd}") and p.stderr == ""
