"""mosaic resolve / build / mount MANIFEST against real signed repositories served over HTTP on
127.0.0.1 (repos.py builds them at test time with dpkg-deb, apt-ftparchive, rpmbuild, rpmsign,
createrepo_c and gpg): libsolv resolution (version constraints, virtual provides, alternatives,
conflicts, priorities, Recommends, base sets), signature and checksum checks, download faults,
the lock, incremental builds and the mounted result."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import MOSAIC, run

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")


def deb_repo(site, name="local", suite="stable", uri=None, keyring=None, priority=None):
    lines = [f"  - name: {name}", "    type: deb", f"    uri: {uri or site.deb_url}",
             f"    suites: [{suite}]", f"    keyring: {keyring or site.key.keyring}"]
    if priority is not None:
        lines.append(f"    priority: {priority}")
    return "\n".join(lines)


def rpm_repo(site, keyring=None):
    return "\n".join(["  - name: local", "    type: rpm", f"    baseurl: {site.rpm_url}",
                      f"    keyring: {keyring or site.key.keyring}"])


def write_manifest(tmp_path, repos_yaml, packages, arch="amd64", extra=""):
    m = tmp_path / "t.yaml"
    pk = "".join(f"\n  - \"{p}\"" for p in packages) if packages else " []"
    m.write_text(f"name: t\narch: {arch}\nrepositories:\n{repos_yaml}\npackages:{pk}\n{extra}")
    return m


def resolve(manifest, env, *extra, check=True):
    p = run([MOSAIC, "resolve", manifest, *extra], env=env, check=check)
    if not check:
        return p
    return json.loads((manifest.parent / "t.lock").read_text())


def names(lock):
    return {p["name"]: p["version"] for p in lock["packages"]}


def build(manifest, env, store, signer, *extra, check=True):
    """mosaic build, without configure unless extra asks for it: the test repository's packages
    are not a system a chroot can run (configure is tested in test_configure*.py)."""
    if "--configure" not in extra:
        extra = ("--no-configure", *extra)
    return run([MOSAIC, "build", manifest, "-s", store, "--sign", signer.fingerprint, *extra],
               env=env, check=check)


def package_gets(server, suffix):
    return [r for r in server.requests if r.path.endswith(suffix) and r.method == "GET"]


# ---- resolution ------------------------------------------------------------------------------

def test_version_constraints_pick_the_best_allowed(repos, tmp_path, env):
    # app needs libfoo >= 2.0: the best is 3.0~rc1 (Debian's ~ sorts before the release, but
    # after 2.0); legacy-app needs << 2.0; a constraint in the manifest narrows it further.
    m = write_manifest(tmp_path, deb_repo(repos), ["app"])
    assert names(resolve(m, env)) == {"app": "1.0", "libfoo": "3.0~rc1"}
    m = write_manifest(tmp_path, deb_repo(repos), ["legacy-app"])
    assert names(resolve(m, env)) == {"legacy-app": "1.0", "libfoo": "1.0"}
    m = write_manifest(tmp_path, deb_repo(repos), ["app", "libfoo (<< 3.0~rc1)"])
    assert names(resolve(m, env))["libfoo"] == "2.0"
    m = write_manifest(tmp_path, deb_repo(repos), ["libfoo (<< 3.0)"])
    assert names(resolve(m, env))["libfoo"] == "3.0~rc1"


def test_unsatisfiable_version_constraint(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["libfoo (>= 4)"])
    p = resolve(m, env, check=False)
    assert p.returncode == 1
    assert "no version of 'libfoo' satisfies >= 4" in p.stderr
    assert not (tmp_path / "t.lock").exists()


def test_virtual_package_is_provided(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["mail-reader"])
    assert names(resolve(m, env)) == {"mail-reader": "1.0", "tiny-mta": "1.0"}
    # Asking for the virtual name itself installs a provider.
    m = write_manifest(tmp_path, deb_repo(repos), ["mail-transport-agent"])
    assert names(resolve(m, env)) == {"tiny-mta": "1.0"}


def test_alternatives_take_the_one_that_exists(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["alt-user"])
    assert names(resolve(m, env)) == {"alt-user": "1.0", "alt-one": "1.0"}


def test_conflict_is_explained_with_solutions(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["conflict-a", "conflict-b"])
    p = resolve(m, env, check=False)
    assert p.returncode == 1, p.stderr
    assert "cannot be installed together" in p.stderr
    assert "problem 1:" in p.stderr and "conflict" in p.stderr
    assert "solution 1:" in p.stderr and "do not ask to install" in p.stderr


def test_unsatisfiable_dependency(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["broken"])
    p = resolve(m, env, check=False)
    assert p.returncode == 1
    assert "does-not-exist" in p.stderr and "problem 1:" in p.stderr
    m = write_manifest(tmp_path, deb_repo(repos), ["wants-both"])
    p = resolve(m, env, check=False)
    assert p.returncode == 1 and "conflict" in p.stderr


def test_unknown_package(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["no-such-package"])
    p = resolve(m, env, check=False)
    assert p.returncode == 1
    assert "no package 'no-such-package' in any repository" in p.stderr


def test_exclude_forbids_a_package(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["alt-user"], extra="exclude: [alt-one]\n")
    p = resolve(m, env, check=False)
    assert p.returncode == 1 and "alt-one" in p.stderr


def test_base_sets_and_install_order(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["pre-user", "app"],
                       extra="base:\n  set: required\n")
    lock = resolve(m, env)
    order = [p["name"] for p in lock["packages"]]
    base = [p["name"] for p in lock["packages"] if p["base"]]
    assert sorted(base) == ["mini-base", "mini-libc", "mini-tools"]
    assert order[:3] == base, "the base set comes first"
    assert order.index("mini-libc") < order.index("mini-tools")
    assert order.index("libfoo") < order.index("app")
    assert "mini-extra" not in order
    assert [p["essential"] for p in lock["packages"] if p["name"] == "mini-base"] == [True]
    m = write_manifest(tmp_path, deb_repo(repos), [], extra="base:\n  set: important\n")
    assert "mini-extra" in names(resolve(m, env))


def test_recommends_off_by_default(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["rec-user"])
    assert names(resolve(m, env)) == {"rec-user": "1.0"}
    assert names(resolve(m, env, "--recommends")) == {"rec-user": "1.0", "rec-extra": "1.0"}


def test_repository_priority_wins_over_version(repos, tmp_path, env):
    two = deb_repo(repos) + "\n" + deb_repo(repos, name="extra", uri=repos.deb_extra_url,
                                            priority=10)
    m = write_manifest(tmp_path, two, ["app"])
    lock = resolve(m, env)
    (foo,) = [p for p in lock["packages"] if p["name"] == "libfoo"]
    assert (foo["version"], foo["repository"]) == ("2.5", "extra/stable")
    # Without the priority the higher version wins.
    two = deb_repo(repos) + "\n" + deb_repo(repos, name="extra", uri=repos.deb_extra_url)
    m = write_manifest(tmp_path, two, ["app"])
    assert names(resolve(m, env))["libfoo"] == "3.0~rc1"


def test_lock_records_checksums_and_is_stable(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["app"])
    lock = resolve(m, env)
    first = (tmp_path / "t.lock").read_bytes()
    for p in lock["packages"]:
        f = repos.deb.path(p["name"], p["version"])
        assert p["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert p["location"] == str(f.relative_to(repos.deb.root))
        assert p["repository"] == "local/stable" and p["arch"] in ("amd64", "all")
    resolve(m, env)
    assert (tmp_path / "t.lock").read_bytes() == first


# ---- metadata trust --------------------------------------------------------------------------

def test_wrong_key_is_refused(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos, keyring=repos.wrong_key.keyring), ["app"])
    p = resolve(m, env, check=False)
    assert p.returncode == 1
    assert "InRelease" in p.stderr and "unknown key" in p.stderr
    m = write_manifest(tmp_path, rpm_repo(repos, keyring=repos.wrong_key.keyring), ["rapp"],
                       arch="x86_64")
    p = resolve(m, env, check=False)
    assert p.returncode == 1 and "repomd.xml" in p.stderr and "unknown key" in p.stderr


def test_tampered_release_signature_fails(fresh_repo_site, tmp_path, env):
    site = fresh_repo_site
    inrel = site.deb.dists / "InRelease"
    inrel.write_text(inrel.read_text().replace("Suite: stable", "Suite: stab1e"))
    m = write_manifest(tmp_path, deb_repo(site), ["app"])
    p = resolve(m, env, check=False)
    assert p.returncode == 1 and "bad signature" in p.stderr


def test_tampered_packages_index_fails(fresh_repo_site, tmp_path, env):
    site = fresh_repo_site
    # Every copy: by path and by hash (the archive says Acquire-By-Hash, so that is what is read).
    for f in (site.deb.dists / "main" / "binary-amd64").rglob("*"):
        if f.is_file() and f.name != "Release":
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0x01  # same size: only the digest can tell
            f.write_bytes(bytes(data))
    m = write_manifest(tmp_path, deb_repo(site), ["app"])
    p = resolve(m, env, check=False)
    assert p.returncode == 1 and "sha256 mismatch" in p.stderr, p.stderr


def test_tampered_rpm_metadata_fails(fresh_repo_site, tmp_path, env):
    site = fresh_repo_site
    (primary,) = (site.rpm.root / "repodata").glob("*primary.xml*")
    primary.write_bytes(primary.read_bytes()[:-3] + b"xyz")
    m = write_manifest(tmp_path, rpm_repo(site), ["rapp"], arch="x86_64")
    p = resolve(m, env, check=False)
    assert p.returncode == 1 and "mismatch" in p.stderr, p.stderr


# ---- rpm resolution --------------------------------------------------------------------------

def test_rpm_resolution(repos, tmp_path, env):
    def rs(pkgs):
        return names(resolve(write_manifest(tmp_path, rpm_repo(repos), pkgs, arch="x86_64"), env))
    assert rs(["rapp"]) == {"rapp": "1.0-1", "libbar": "2.0-1"}
    assert rs(["rmail"]) == {"rmail": "1.0-1", "rsmtp": "1.0-1"}
    assert rs(["ralt"]) == {"ralt": "1.0-1", "ralt-two": "1.0-1"}
    assert rs(["libbar < 2.0"]) == {"libbar": "1.0-1"}
    for bad in (["rconflict-a", "rconflict-b"], ["rbroken"]):
        p = resolve(write_manifest(tmp_path, rpm_repo(repos), bad, arch="x86_64"), env,
                    check=False)
        assert p.returncode == 1 and "problem 1:" in p.stderr, p.stderr


# ---- build, downloads, mount -----------------------------------------------------------------

def test_build_and_mount_deb(repos, tmp_path, env, signer):
    m = write_manifest(tmp_path, deb_repo(repos), ["app", "mail-reader"],
                       extra="base:\n  set: required\n")
    store = tmp_path / "store"
    p = build(m, env, store, signer)
    lock = json.loads((tmp_path / "t.lock").read_text())
    assert all(len(p["fragment"] or "") == 64 for p in lock["packages"])
    assert (store / "roots" / "manifest-t").read_text().split() == \
        [p["fragment"] for p in lock["packages"]] + [f["digest"] for f in lock["fragments"]]
    assert [f["role"] for f in lock["fragments"]] == ["database"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run([MOSAIC, "mount", m, mnt, "-s", store, "--keyring", signer.keyring], env=env)
    try:
        for p in lock["packages"]:
            marker = mnt / "usr/share/doc" / p["name"] / "marker"
            assert marker.read_text() == f"{p['name']} {p['version']}\n"
        assert (mnt / "var/lib/dpkg/info/app.list").exists()
    finally:
        run([MOSAIC, "umount", mnt], env=env)


def test_build_is_incremental(repos, tmp_path, env, signer):
    m = write_manifest(tmp_path, deb_repo(repos), ["app"])
    store = tmp_path / "store"
    build(m, env, store, signer)
    assert len(package_gets(repos.server, ".deb")) == 2
    repos.server.reset()
    p = build(m, env, store, signer)
    assert package_gets(repos.server, ".deb") == []
    assert package_gets(repos.server, "Packages.xz") == []
    assert "fragments: 0 made, 2 already in the store" in p.stderr
    # InRelease is asked for again, but conditionally: the server answers 304.
    assert {r.status for r in repos.server.requests if r.path.endswith("InRelease")} == {304}


def test_404_fails_clearly(fresh_repo_site, tmp_path, env, signer):
    site = fresh_repo_site
    site.deb.path("app").unlink()
    m = write_manifest(tmp_path, deb_repo(site), ["app"])
    p = build(m, env, tmp_path / "store", signer, check=False)
    assert p.returncode == 1
    assert "404" in p.stderr and "app_1.0" in p.stderr


def test_tampered_package_is_refused(fresh_repo_site, tmp_path, env, signer):
    site = fresh_repo_site
    deb = site.deb.path("app")
    data = bytearray(deb.read_bytes())
    data[-10] ^= 0xFF
    deb.write_bytes(bytes(data))
    m = write_manifest(tmp_path, deb_repo(site), ["app"])
    store = tmp_path / "store"
    p = build(m, env, store, signer, check=False)
    assert p.returncode == 1 and "sha256 mismatch" in p.stderr
    assert not list((store / "sha256").rglob("*.sqfs")), "no fragment from a tampered package"


def test_dropped_connection_resumes(repos, tmp_path, env, signer):
    m = write_manifest(tmp_path, deb_repo(repos), ["app"])
    path = "/deb/" + str(repos.deb.path("app").relative_to(repos.deb.root))
    repos.server.drop(path, 300)
    build(m, env, tmp_path / "store", signer)
    gets = [r for r in repos.server.requests if r.path == path]
    assert len(gets) == 2
    assert gets[1].range == "bytes=300-"


def test_locked_and_offline(fresh_repo_site, tmp_path, env, signer):
    site = fresh_repo_site
    m = write_manifest(tmp_path, deb_repo(site), ["app"])
    store = tmp_path / "store"
    build(m, env, store, signer)
    first = (tmp_path / "t.lock").read_text()
    # Offline, from the cache alone: the server is not asked anything.
    site.server.reset()
    build(m, env, store, signer, "--offline", "--locked")
    assert site.server.requests == []
    # A changed manifest no longer matches its lock.
    m2 = write_manifest(tmp_path, deb_repo(site), ["app", "alt-user"])
    p = build(m2, env, store, signer, "--locked", check=False)
    assert p.returncode == 1 and "changed since the lock was written" in p.stderr
    m = write_manifest(tmp_path, deb_repo(site), ["app"])
    assert (tmp_path / "t.lock").read_text() == first
    # The repository drops the locked libfoo: --locked fails naming it, and leaves the lock.
    import repos as R
    shutil.rmtree(site.deb.root)
    R.build_deb_repo(site.deb.root, site.key,
                     [p for p in R.SCENARIO_DEB if (p.name, p.version) != ("libfoo", "3.0~rc1")])
    p = resolve(m, env, "--locked", check=False)
    assert p.returncode == 1
    assert "libfoo 3.0~rc1" in p.stderr and "mosaic resolve" in p.stderr
    assert (tmp_path / "t.lock").read_text() == first
    # Resolving again moves to what is there now.
    assert names(resolve(m, env))["libfoo"] == "2.0"


def test_offline_without_cache_fails(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["app"])
    p = resolve(m, env, "--offline", check=False)
    assert p.returncode == 1 and "offline" in p.stderr


def test_build_and_mount_rpm(repos, tmp_path, env, signer):
    m = write_manifest(tmp_path, rpm_repo(repos), ["rapp"], arch="x86_64")
    store = tmp_path / "store"
    build(m, env, store, signer)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run([MOSAIC, "mount", m, mnt, "-s", store, "--keyring", signer.keyring], env=env)
    try:
        found = sorted(p.name for p in (mnt / "usr/share").iterdir())
        assert "rapp" in found and "libbar" in found
    finally:
        run([MOSAIC, "umount", mnt], env=env)


def test_build_needs_a_signing_key(repos, tmp_path, env):
    m = write_manifest(tmp_path, deb_repo(repos), ["app"])
    e = {k: v for k, v in env.items() if k != "MOSAIC_SIGN_KEY"}
    e["MOSAIC_CONFIG"] = str(tmp_path / "none.json")
    p = run([MOSAIC, "build", m, "-s", tmp_path / "store"], env=e, check=False)
    assert p.returncode == 2 and "--sign" in p.stderr


def test_unsigned_rpm_is_refused(fresh_repo_site, tmp_path, env, signer):
    # Metadata signed and checksums right, but the packages themselves carry no signature:
    # librpm's header check against the repository's keyring refuses them.
    import repos as R
    site = fresh_repo_site
    shutil.rmtree(site.rpm.root)
    R.build_rpm_repo(site.rpm.root, site.key, R.SCENARIO_RPM, sign_packages=False)
    m = write_manifest(tmp_path, rpm_repo(site), ["rapp"], arch="x86_64")
    store = tmp_path / "store"
    p = build(m, env, store, signer, check=False)
    assert p.returncode == 1 and "unsigned" in p.stderr, p.stderr
    assert not list((store / "sha256").rglob("*.sqfs"))


def test_base_image_and_extra_fragments(repos, tmp_path, env, signer):
    # A base from a tarball, packages above it, a local directory on top (dev: true): the
    # mount shows all three in that order, and a second build remakes nothing.
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=tarball\n")
    (root / "usr/share/doc/app").mkdir(parents=True)
    (root / "usr/share/doc/app/marker").write_text("from the base\n")
    run(["tar", "-C", root, "-cf", tmp_path / "rootfs.tar", "."])
    dev = tmp_path / "overlay"
    (dev / "etc").mkdir(parents=True)
    (dev / "etc/os-release").write_text("ID=overlay\n")
    extra = "base:\n  image: rootfs.tar\nfragments:\n  - path: overlay\n    dev: true\n"
    m = write_manifest(tmp_path, deb_repo(repos), ["app"], extra=extra)
    store = tmp_path / "store"
    build(m, env, store, signer)
    lock = json.loads((tmp_path / "t.lock").read_text())
    assert [(f["role"], Path(f["source"]).name) for f in lock["fragments"]][:2] == \
        [("base", "rootfs.tar"), ("extra", "overlay")]
    assert [f["role"] for f in lock["fragments"]][2:] == ["database"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run([MOSAIC, "mount", m, mnt, "-s", store, "--keyring", signer.keyring], env=env)
    try:
        assert (mnt / "etc/os-release").read_text() == "ID=overlay\n"
        assert (mnt / "usr/share/doc/app/marker").read_text() == "app 1.0\n"
    finally:
        run([MOSAIC, "umount", mnt], env=env)
    p = build(m, env, store, signer)
    assert "0 made" in p.stderr
    assert json.loads((tmp_path / "t.lock").read_text())["fragments"] == lock["fragments"]
    # A change in the directory makes a new fragment for it, and only for it.
    (dev / "etc/motd").write_text("hello\n")
    build(m, env, store, signer)
    again = json.loads((tmp_path / "t.lock").read_text())["fragments"]
    assert again[0] == lock["fragments"][0] and again[1]["digest"] != lock["fragments"][1]["digest"]


def test_store_digest_as_extra_fragment(repos, tmp_path, env, signer):
    src = tmp_path / "snippet"
    (src / "etc").mkdir(parents=True)
    (src / "etc/snippet.conf").write_text("x = 1\n")
    store = tmp_path / "store"
    digest = run([MOSAIC, "fragment", "create", src, "-o", store, "--sign", signer.fingerprint],
                 env=env).stdout.split()[0]
    m = write_manifest(tmp_path, deb_repo(repos), ["app"],
                       extra=f"fragments:\n  - digest: {digest}\n")
    build(m, env, store, signer)
    lock = json.loads((tmp_path / "t.lock").read_text())
    assert lock["fragments"][0] == {"role": "extra", "source": digest, "digest": digest}
    assert [f["role"] for f in lock["fragments"][1:]] == ["database"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run([MOSAIC, "mount", m, mnt, "-s", store, "--keyring", signer.keyring], env=env)
    try:
        assert (mnt / "etc/snippet.conf").read_text() == "x = 1\n"
    finally:
        run([MOSAIC, "umount", mnt], env=env)
    # A digest the store does not have fails the build, naming it.
    m = write_manifest(tmp_path, deb_repo(repos), ["app"],
                       extra=f"fragments:\n  - digest: {'0' * 64}\n")
    p = build(m, env, store, signer, check=False)
    assert p.returncode != 0 and "0000000000" in p.stderr
