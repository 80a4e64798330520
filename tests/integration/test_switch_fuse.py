"""mosaic switch and rollback of a --writable=fuse mount whose upper holds changes: the lower
composition changes under the upper, which keeps shadowing what it shadowed (a copied-up file,
a whiteout, opaque directories, new files), so the view after a switch is exactly "the new lower
plus the same upper" (a fresh mount of the new composition over a copy of the upper), and after
rollback the view it was. --writable=overlay refuses to switch."""

import os
from types import SimpleNamespace

import pytest

from conftest import (MOSAIC, assert_same_tree, create, mosaic_mounted, run, tree_listing,
                      tree_snapshot, write_file)
from livemount import status
from test_fuse_writable import build_base, build_top, whiteout

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

EPOCH = "1700000000"


def build_next(root):
    """What replaces the top fragment: changes files the upper shadows and files it does not,
    adds below directories the upper made opaque, and leaves out what top added or hid."""
    write_file(root / "etc/config", "config v2, shadowed by the upper\n")   # copied up
    write_file(root / "etc/gone", "gone v2, whited out by the upper\n")     # whiteout
    write_file(root / "etc/newfile", "the lower's newfile\n")               # upper's new file
    write_file(root / "victim/sub/g", "below an opaque directory\n")       # remade: opaque
    write_file(root / "newdir/from-lower", "below a new directory\n")     # new dir: opaque
    write_file(root / "etc/keep", "keep v2\n")                             # not shadowed
    write_file(root / "etc/sub/deep", "deep v2\n")                         # not shadowed
    write_file(root / "etc/only-next", "only in next\n")                   # new in the lower
    whiteout(root / "etc/tolink")                                          # gone from the lower


@pytest.fixture(scope="module")
def layers(signer, tmp_path_factory):
    base = tmp_path_factory.mktemp("switchfuse")
    store = base / "store"
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"))
    d = {}
    for name, build in (("base", build_base), ("top", build_top), ("next", build_next)):
        src = base / name
        src.mkdir()
        build(src)
        d[name] = create(store, src, env, "--sign", signer.fingerprint, "--name", name,
                         "--version", "1", "--kind", "config", "--source-date-epoch", EPOCH)
    return SimpleNamespace(store=store, env=env, keyring=signer.keyring, d=d)


def mount_args(layers, names, upper, mode="fuse"):
    return ["-s", layers.store, "--keyring", layers.keyring, *(layers.d[n] for n in names),
            "--upper", upper, f"--writable={mode}"]


def fresh_view(layers, names, upper, tmp_path, tag):
    """A fresh --writable=fuse mount of names over a copy (cp -a, xattrs kept) of upper."""
    copy = tmp_path / f"upper-{tag}"
    run(["cp", "-a", "--preserve=all", upper, copy])
    with mosaic_mounted(mount_args(layers, names, copy), tmp_path / f"mnt-{tag}",
                        layers.env) as f:
        return tree_snapshot(f.mnt)


def test_switch_keeps_the_upper_shadowing_and_rollback_restores(layers, tmp_path):
    upper = tmp_path / "upper"
    with mosaic_mounted(mount_args(layers, ["base", "top"], upper), tmp_path / "mnt",
                        layers.env) as m:
        r = m.mnt
        with open(r / "etc/config", "ab") as f:  # a modified lower file: copied up
            f.write(b"changed in the upper\n")
        os.unlink(r / "etc/gone")  # a whiteout
        run(["rm", "-r", r / "victim"])
        (r / "victim/sub").mkdir(parents=True)  # made again: opaque over the lower's
        (r / "victim/sub/mine").write_text("mine\n")
        (r / "newdir").mkdir()  # new in a merged directory: opaque
        (r / "newdir/file").write_text("new\n")
        (r / "etc/newfile").write_text("the upper's newfile\n")  # a new file
        assert os.getxattr(upper / "victim", "trusted.overlay.opaque") == b"y"
        assert os.getxattr(upper / "newdir", "trusted.overlay.opaque") == b"y"
        original = tree_snapshot(r)
        upper_before = tree_listing(upper)

        run([MOSAIC, "switch", r, "-s", layers.store, "--keyring", layers.keyring,
             "--replace", f"top={layers.d['next']}"], env=layers.env)
        switched = tree_snapshot(r)
        assert tree_listing(upper) == upper_before, "the switch changed the upper"
        # spot checks of what the comparison below covers as a whole
        assert (r / "etc/config").read_text() == "config v1\nchanged in the upper\n"
        assert not os.path.lexists(r / "etc/gone")
        assert sorted(os.listdir(r / "victim/sub")) == ["mine"]
        assert os.listdir(r / "newdir") == ["file"]
        assert (r / "etc/newfile").read_text() == "the upper's newfile\n"
        assert (r / "etc/keep").read_text() == "keep v2\n"
        assert (r / "etc/only-next").read_text() == "only in next\n"
        assert not os.path.lexists(r / "etc/tolink") and not os.path.lexists(r / "etc/extra")
        assert (r / "etc/hidden").exists(), "top's whiteout left with top"
        st = status(r, layers.env)
        assert st["mode"] == "fuse" and len(st["history"]) == 1, st
        want = fresh_view(layers, ["base", "next"], upper, tmp_path, "next")
        assert_same_tree(switched, want, "after the switch vs new lower + the same upper")

        run([MOSAIC, "rollback", r], env=layers.env)
        assert_same_tree(tree_snapshot(r), original, "after rollback vs before the switch")
        assert tree_listing(upper) == upper_before, "the rollback changed the upper"

        # and the mount stays writable over the switched lower: a copy-up of a file only the
        # new composition has, then back again
        run([MOSAIC, "switch", r, "-s", layers.store, "--keyring", layers.keyring,
             "--replace", f"top={layers.d['next']}"], env=layers.env)
        with open(r / "etc/only-next", "ab") as f:
            f.write(b"appended after the switch\n")
        assert (upper / "etc/only-next").read_text() == "only in next\nappended after the switch\n"
        run([MOSAIC, "rollback", r], env=layers.env)
        # the upper's copy stays and now shows over the old lower, which never had the file
        assert (r / "etc/only-next").read_text() == "only in next\nappended after the switch\n"
        final = tree_snapshot(r)
    want = fresh_view(layers, ["base", "top"], upper, tmp_path, "top")
    assert_same_tree(final, want, "after switch, write, rollback vs a fresh mount")


def test_overlay_mode_refuses_to_switch(layers, tmp_path):
    upper = tmp_path / "upper"
    with mosaic_mounted(mount_args(layers, ["base", "top"], upper, mode="overlay"),
                        tmp_path / "mnt", layers.env) as m:
        before = tree_snapshot(m.mnt)
        p = run([MOSAIC, "switch", m.mnt, "-s", layers.store, "--keyring", layers.keyring,
                 "--replace", f"top={layers.d['next']}"], env=layers.env, check=False)
        assert p.returncode != 0 and "--writable=fuse" in p.stderr, (p.returncode, p.stderr)
        assert_same_tree(tree_snapshot(m.mnt), before, "after a refused switch")
        assert "history" not in status(m.mnt, layers.env)
