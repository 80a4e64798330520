"""The dpkg database of a composition (compose/dpkg-db.c): `mosaic build` of a Debian manifest
makes one more fragment holding /var/lib/dpkg/{status,available,arch,...} for its packages, and
dpkg's own tools read the mounted composition as a set of unpacked, not yet configured packages,
exactly as `dpkg --unpack` of the same packages would have left them."""

import json
import os

import pytest

from conftest import MOSAIC, run
from test_build import build, deb_repo, write_manifest

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

BASE = "base:\n  set: required\n"


def lock_of(manifest):
    return json.loads((manifest.parent / "t.lock").read_text())


def database(lock):
    (db,) = [f for f in lock["fragments"] if f["role"] == "database"]
    return db


class Mounted:
    def __init__(self, manifest, store, env, signer, mnt):
        self.args = [MOSAIC, "mount", manifest, mnt, "-s", store, "--keyring", signer.keyring]
        self.env, self.mnt = env, mnt

    def __enter__(self):
        self.mnt.mkdir(exist_ok=True)
        run(self.args, env=self.env)
        return self.mnt

    def __exit__(self, *exc):
        run([MOSAIC, "umount", self.mnt], env=self.env)


def dpkg_unpack_reference(repos, lock, root):
    """What dpkg itself writes: dpkg --unpack of the lock's .debs into an empty root (the test
    packages have no maintainer scripts, so nothing runs)."""
    admin = root / "var/lib/dpkg"
    for d in ("info", "updates", "triggers"):
        (admin / d).mkdir(parents=True)
    (admin / "status").touch()
    debs = [repos.deb.path(p["name"], p["version"]) for p in lock["packages"]]
    run(["dpkg", f"--root={root}", "--force-depends", "--unpack", *debs])
    return (admin / "status").read_text()


def test_mounted_database_lists_the_unpacked_packages(repos, tmp_path, env, signer):
    m = write_manifest(tmp_path, deb_repo(repos), ["app"], extra=BASE)
    store = tmp_path / "store"
    p = build(m, env, store, signer)
    assert "dpkg database:" in p.stderr and " made " in p.stderr
    lock = lock_of(m)
    pkgs = {p["name"]: p["version"] for p in lock["packages"]}
    assert set(pkgs) == {"mini-base", "mini-libc", "mini-tools", "libfoo", "app"}
    db = database(lock)
    assert len(db["digest"]) == 64
    assert db["digest"] in (store / "roots" / "manifest-t").read_text().split()
    desc = json.loads((store / "sha256" / db["digest"][:2] / f"{db['digest']}.json").read_text())
    assert (desc["name"], desc["kind"]) == ("dpkg-database", "config")
    reference = dpkg_unpack_reference(repos, lock, tmp_path / "ref")

    with Mounted(m, store, env, signer, tmp_path / "mnt") as mnt:
        admin = mnt / "var/lib/dpkg"
        status = (admin / "status").read_text()
        assert status == reference, "status differs from what dpkg --unpack writes"

        q = run(["dpkg-query", f"--admindir={admin}", "-W",
                 "-f", "${Package} ${Version} ${Status}\n"])
        assert sorted(q.stdout.splitlines()) == \
            sorted(f"{n} {v} install ok unpacked" for n, v in pkgs.items())

        listing = run(["dpkg", f"--admindir={admin}", "-l"]).stdout
        rows = [line.split() for line in listing.splitlines() if line[:2] in ("iU", "ii")]
        assert sorted((r[0], r[1], r[2]) for r in rows) == \
            sorted(("iU", n, v) for n, v in pkgs.items())

        audit = run(["dpkg", f"--root={mnt}", "--audit"], check=False)
        assert "unpacked but not yet configured" in audit.stdout, audit
        named = {line.split()[0] for line in audit.stdout.splitlines()
                 if line.startswith(" ") and line.strip()}
        assert named == set(pkgs), audit.stdout

        files = run(["dpkg", f"--admindir={admin}", "-L", "app"]).stdout.splitlines()
        assert "/usr/share/doc/app/marker" in files
        assert (mnt / "usr/share/doc/app/marker").read_text() == "app 1.0\n"
        owner = run(["dpkg", f"--admindir={admin}", "-S", "/usr/share/doc/libfoo/marker"])
        assert owner.stdout.startswith("libfoo:")

        # As dpkg: arch only after dpkg --add-architecture, statoverride once first used.
        assert not (admin / "arch").exists()
        assert (admin / "info/format").read_text() == "1\n"
        assert (admin / "diversions").read_text() == ""
        assert not (admin / "statoverride").exists()
        assert (admin / "updates").is_dir() and (admin / "triggers").is_dir()
        available = (admin / "available").read_text()
        assert available == "".join(line + "\n" for line in status.splitlines()
                                    if not line.startswith("Status: "))
        st = os.lstat(admin / "status")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o644)


def test_database_is_reproducible_cached_and_follows_the_packages(repos, tmp_path, env,
                                                                  signer):
    m = write_manifest(tmp_path, deb_repo(repos), ["app"], extra=BASE)
    store = tmp_path / "store"
    build(m, env, store, signer)
    first = database(lock_of(m))

    # A second build makes nothing, the database included.
    p = build(m, env, store, signer)
    assert "fragments: 0 made" in p.stderr
    assert "already in the store" in p.stderr
    assert database(lock_of(m)) == first

    # Made again from nothing (new cache, new store): the same bytes.
    env2 = dict(env, MOSAIC_CACHE_DIR=str(tmp_path / "cache2"))
    p = build(m, env2, tmp_path / "store2", signer)
    assert " made " in p.stderr.split("dpkg database:")[1].splitlines()[0]
    assert database(lock_of(m))["digest"] == first["digest"]

    # Another package set: another database.
    m = write_manifest(tmp_path, deb_repo(repos), ["app", "mail-reader"], extra=BASE)
    build(m, env, store, signer)
    second = database(lock_of(m))
    assert second["digest"] != first["digest"]
    with Mounted(m, store, env, signer, tmp_path / "mnt") as mnt:
        q = run(["dpkg-query", f"--admindir={mnt / 'var/lib/dpkg'}", "-W", "-f",
                 "${Package}\n"])
        assert {"mail-reader", "tiny-mta", "app"} <= set(q.stdout.split())


def test_stale_database_is_refused(repos, tmp_path, env, signer):
    # resolve alone keeps the lock's fragments; a package set that changed since the database
    # was made must not mount with a database that lists other packages.
    m = write_manifest(tmp_path, deb_repo(repos), ["app", "mail-reader"])
    store = tmp_path / "store"
    build(m, env, store, signer)
    m = write_manifest(tmp_path, deb_repo(repos), ["app"])
    run([MOSAIC, "resolve", m], env=env)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([MOSAIC, "mount", m, mnt, "-s", store, "--keyring", signer.keyring], env=env,
            check=False)
    assert p.returncode == 1
    assert "dpkg database is not the one of its packages" in p.stderr
    assert "mosaic build" in p.stderr
    build(m, env, store, signer)
    with Mounted(m, store, env, signer, mnt) as mnt:
        q = run(["dpkg-query", f"--admindir={mnt / 'var/lib/dpkg'}", "-W", "-f",
                 "${Package}\n"])
        assert sorted(q.stdout.split()) == ["app", "libfoo"]


def test_rpm_builds_have_no_dpkg_database(repos, tmp_path, env, signer):
    m = tmp_path / "t.yaml"
    m.write_text(f"name: t\narch: x86_64\nrepositories:\n  - name: local\n    type: rpm\n"
                 f"    baseurl: {repos.rpm_url}\n    keyring: {repos.key.keyring}\n"
                 f"packages:\n  - rapp\n")
    p = build(m, env, tmp_path / "store", signer)
    assert "dpkg database" not in p.stderr
    assert [f for f in lock_of(m)["fragments"] if f["role"] == "database"] == []
