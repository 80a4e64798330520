"""merged /usr: a manifest with `merged_usr: true` builds a generated base fragment holding /bin,
/sbin, /lib, ... as symlinks into /usr (debootstrap's list for the architecture), and package
fragments unpack through those links as dpkg does, so a package's /bin/foo shows at
/usr/bin/foo with /bin still the link. Without it, /bin is a directory as before."""

import json
import os
import stat

import pytest

from conftest import MOSAIC, mosaic_mounted, object_path, run
from test_build import build, deb_repo, rpm_repo, write_manifest

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

# debootstrap's setup_merged_usr on amd64.
AMD64_LINKS = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"]


def lock_of(tmp_path):
    return json.loads((tmp_path / "t.lock").read_text())


def mount_args(m, store, signer):
    return [m, "-s", store, "--keyring", signer.keyring]


def test_packages_unpack_through_the_links(repos, tmp_path, env, signer):
    m = write_manifest(tmp_path, deb_repo(repos), ["unmerged-tool", "app"],
                       extra="merged_usr: true\n")
    store = tmp_path / "store"
    p = build(m, env, store, signer)
    assert "merged /usr: " in p.stderr and " made in " in p.stderr
    lock = lock_of(tmp_path)
    roles = [f["role"] for f in lock["fragments"]]
    assert roles == ["merged-usr", "database"]
    merged = lock["fragments"][0]
    assert merged["source"] == "amd64"
    desc = json.loads(object_path(store, merged["digest"], ".json").read_text())
    assert (desc["name"], desc["kind"], desc["arch"]) == ("merged-usr", "base", "amd64")
    # The build's root keeps the generated fragment alive like the others.
    assert merged["digest"] in (store / "roots" / "manifest-t").read_text().split()

    with mosaic_mounted(mount_args(m, store, signer), tmp_path / "mnt", env) as mt:
        mnt = mt.mnt
        for d in AMD64_LINKS:
            assert os.readlink(mnt / d) == f"usr/{d}", d
            st = os.lstat(mnt / "usr" / d)
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755, d
            assert (st.st_uid, st.st_gid) == (0, 0), d
        foo = mnt / "usr/bin/unmerged-foo"
        assert stat.S_ISREG(os.lstat(foo).st_mode)
        assert foo.read_text() == "#!/bin/sh\necho foo\n"
        assert (mnt / "bin/unmerged-foo").read_text() == foo.read_text()
        assert (mnt / "usr/lib/unmerged/x").read_text() == "x\n"
        assert (mnt / "lib/unmerged/x").read_text() == "x\n"
        assert (mnt / "usr/share/doc/app/marker").read_text() == "app 1.0\n"
        # What dpkg's list says the package holds is there, through the links.
        listed = (mnt / "var/lib/dpkg/info/unmerged-tool.list").read_text().split("\n")
        assert "/bin/unmerged-foo" in listed and "/lib/unmerged/x" in listed
        for path in filter(None, listed):
            assert os.path.lexists(str(mnt) + path), path
        # mosaic origin names the package for the real path.
        o = json.loads(run([MOSAIC, "origin", mnt, "/usr/bin/unmerged-foo", "--json"],
                           env=env).stdout)
        assert "unmerged-tool" in json.dumps(o)


def test_without_merged_usr_bin_is_a_directory(repos, tmp_path, env, signer):
    m = write_manifest(tmp_path, deb_repo(repos), ["unmerged-tool"])
    store = tmp_path / "store"
    p = build(m, env, store, signer)
    assert "merged /usr" not in p.stderr
    assert [f["role"] for f in lock_of(tmp_path)["fragments"]] == ["database"]
    with mosaic_mounted(mount_args(m, store, signer), tmp_path / "mnt", env) as mt:
        assert stat.S_ISDIR(os.lstat(mt.mnt / "bin").st_mode)
        assert (mt.mnt / "bin/unmerged-foo").read_text() == "#!/bin/sh\necho foo\n"
        assert not os.path.lexists(mt.mnt / "usr/bin/unmerged-foo")


def test_the_fragment_is_reproducible_and_cached(repos, tmp_path, env, signer):
    m = write_manifest(tmp_path, deb_repo(repos), ["app"], extra="merged_usr: true\n")
    build(m, env, tmp_path / "store", signer)
    first = lock_of(tmp_path)["fragments"][0]["digest"]
    p = build(m, env, tmp_path / "store", signer)
    assert "merged /usr: " + first[:12] + " already in the store" in p.stderr
    # Another store and another cache: the same bytes.
    other = dict(env, MOSAIC_CACHE_DIR=str(tmp_path / "cache2"))
    p = build(m, other, tmp_path / "store2", signer)
    assert " made in " in p.stderr.split("merged /usr: ", 1)[1].split("\n", 1)[0]
    assert lock_of(tmp_path)["fragments"][0]["digest"] == first
    listing = run([MOSAIC, "fragment", "inspect", object_path(tmp_path / "store", first)],
                  env=env).stdout
    for d in AMD64_LINKS:
        assert f"-> usr/{d}" in listing, listing


def test_other_architectures(repos, tmp_path, env, signer):
    # RPM's x86_64 links lib64 beside bin, sbin and lib, as Fedora's filesystem package does;
    # an rpm package's /usr/share files are where they were.
    m = write_manifest(tmp_path, rpm_repo(repos), ["rapp"], arch="x86_64",
                       extra="merged_usr: true\n")
    store = tmp_path / "store"
    build(m, env, store, signer)
    assert [f["role"] for f in lock_of(tmp_path)["fragments"]] == ["merged-usr", "rpm-database"]
    with mosaic_mounted(mount_args(m, store, signer), tmp_path / "mnt", env) as mt:
        links = sorted(p.name for p in mt.mnt.iterdir() if p.is_symlink())
        assert links == ["bin", "lib", "lib64", "sbin"]
        assert (mt.mnt / "usr/share/rapp/marker").exists()


def test_mount_refuses_a_lock_built_without_it(repos, tmp_path, env, signer):
    m = write_manifest(tmp_path, deb_repo(repos), ["unmerged-tool"])
    store = tmp_path / "store"
    build(m, env, store, signer)
    m.write_text(m.read_text() + "merged_usr: true\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([MOSAIC, "mount", *mount_args(m, store, signer), mnt], env=env, check=False)
    assert p.returncode == 1
    assert "built without merged /usr" in p.stderr and "mosaic build" in p.stderr
    assert not os.path.ismount(mnt)
