"""The RPM half of a composition: the rpm database mosaic build makes from the RPM fragments'
headers (compose/rpm-db.c), and mosaic configure running their %pre/%post scriptlets in rpm's
order (configure/rpm.c).

A Debian manifest resolves from Debian repositories only, so its RPM packages come in as the
manifest's extra fragments (`mosaic fragment create` of .rpm files built here, repos.py
SCENARIO_RPM_SCRIPTS); Debian's own rpm (from the host's apt sources, cached in
/var/cache/mosaic-tests/mosaic-cache) then finds the database where it looks, ~/.rpmdb of root.
An RPM manifest gets the database in /var/lib/rpm."""

import json
import os
import tempfile
from pathlib import Path

import pytest

import minbase
import repos as R
from conftest import CACHE, MOSAIC, host_build, mosaic_mounted, run, tree_snapshot
from test_build import build, rpm_repo, write_manifest

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

SUITE = "bookworm"
# As test_configure.py: bookworm's usr-is-merged preinst refuses a system that is not merged
# unless this file says so.
SKIP_USRMERGE = ("etc/unsupported-skip-usrmerge-conversion",
                 "this system will not be supported in the future\n")
LOG = "var/lib/rscript/log"
# rpm as root finds its database in $HOME/.rpmdb on Debian.
ROOT_ENV = {"HOME": "/root", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def lock_of(manifest):
    return json.loads(manifest.with_suffix(".lock").read_text())


def host_mounts_under(mnt):
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(f"{mnt}/")]


def rpm_in(mnt, *args, check=True):
    """rpm run chrooted into the mount, as root with its own home."""
    return run(["chroot", mnt, "rpm", *args], env=ROOT_ENV, check=check)


@pytest.fixture(scope="module")
def rpms(tmp_path_factory):
    out = tmp_path_factory.mktemp("rpms")
    with tempfile.TemporaryDirectory(prefix="mosaic-rpm-") as work:
        return {p.name: R.build_rpm(p, out, work) for p in R.SCENARIO_RPM_SCRIPTS}


# ---- an RPM manifest: the database alone -------------------------------------------------------

def test_rpm_manifest_gets_a_database(repos, tmp_path, env, signer):
    m = write_manifest(tmp_path, rpm_repo(repos), ["rapp"], arch="x86_64")
    store = tmp_path / "store"
    p = build(m, env, store, signer)
    assert "rpm database:" in p.stderr and "made" in p.stderr
    roles = [f["role"] for f in lock_of(m)["fragments"]]
    assert roles == ["rpm-database"]
    # Mounted read-only, the database reads: rollback journal, nothing to create beside it.
    with mosaic_mounted([m, "-s", store, "--keyring", signer.keyring], tmp_path / "mnt",
                        env) as mt:
        q = run(["rpm", "--root", mt.mnt, "--dbpath", "/var/lib/rpm", "-qa"], env=ROOT_ENV)
        assert sorted(q.stdout.split()) == ["libbar-2.0-1.noarch", "rapp-1.0-1.noarch"]
        for name in ("rapp", "libbar"):
            v = run(["rpm", "--root", mt.mnt, "--dbpath", "/var/lib/rpm", "-V",
                     name], env=ROOT_ENV, check=False)
            assert v.returncode == 0 and v.stdout == "", v.stdout + v.stderr
        plan = json.loads((mt.mnt / "var/lib/mosaic/rpm-database.json").read_text())
        assert plan["dbpath"] == "/var/lib/rpm"
        assert [p["nevra"] for p in plan["packages"]] == ["libbar-2.0-1.noarch",
                                                           "rapp-1.0-1.noarch"]
        assert sorted(os.listdir(mt.mnt / "var/lib/rpm")) == ["rpmdb.sqlite"]

    # The same packages give the same fragment, made again without its cache entry.
    (db,) = [f for f in lock_of(m)["fragments"] if f["role"] == "rpm-database"]
    (Path(env["MOSAIC_CACHE_DIR"]) / "rpm-database" / db["source"]).unlink()
    p = build(m, env, store, signer)
    assert "rpm database:" in p.stderr and "made" in p.stderr
    assert [f for f in lock_of(m)["fragments"] if f["role"] == "rpm-database"] == [db]
    p = build(m, env, store, signer)
    assert "already in the store" in p.stderr


# ---- Debian's rpm and RPM fragments: configure --------------------------------------------------

def debian_manifest(path, digests):
    frags = "".join(f"\n  - {d}" for d in digests)
    path.write_text(
        f"name: {path.stem}\narch: amd64\nrepositories:\n"
        "  - name: debian\n    type: deb\n    host: true\n"
        f"    suites: [{SUITE}, {SUITE}-updates, {SUITE}-security]\n    components: [main]\n"
        "base:\n  set: required\nrecommends: false\npackages:\n  - usr-is-merged\n  - rpm\n"
        f"fragments:{frags}\n")
    return path


@pytest.fixture(scope="module")
def site(rpms, signer, tmp_path_factory):
    """Two manifests over the Debian required set + rpm: ok (rscript-app listed before the
    rscript-base it needs) and fail (+ rscript-fail)."""
    if minbase.host_release() != SUITE:
        pytest.skip(f"the host is not Debian {SUITE}")
    work = tmp_path_factory.mktemp("configure-rpm")
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(CACHE / "mosaic-cache"))
    store = work / "store"
    made = run([MOSAIC, "fragment", "create", *rpms.values(), "-o", store, "--sign",
                signer.fingerprint, "--keyring", signer.keyring, "--json"], env=env).stdout
    digest = {f["name"]: f["digest"] for f in json.loads(made)}
    built = {}
    for name, pkgs in (("ok", ["rscript-app", "rscript-base"]),
                       ("fail", ["rscript-app", "rscript-base", "rscript-fail"])):
        m = debian_manifest(work / f"{name}.yaml", [digest[p] for p in pkgs])
        host_build([m, "-s", store, "--sign", signer.fingerprint, "--no-configure"], env)
        built[name] = m
    return dict(work=work, env=env, store=store, signer=signer, manifests=built)


def mount_args(site, name, upper=None):
    args = [site["manifests"][name], "-s", site["store"], "--keyring", site["signer"].keyring]
    return args + (["--upper", upper] if upper else [])


def prepare(mnt):
    path, text = SKIP_USRMERGE
    (mnt / path).write_text(text)


def configure(mnt, env):
    return run([MOSAIC, "configure", mnt], env=env, check=False)


@pytest.mark.slow
def test_scriptlets_run_in_order_and_rpm_knows_the_packages(site, tmp_path):
    env, upper = site["env"], tmp_path / "upper"
    lock = lock_of(site["manifests"]["ok"])
    roles = [f["role"] for f in lock["fragments"]]
    assert roles == ["extra", "extra", "database", "rpm-database"], roles
    with mosaic_mounted(mount_args(site, "ok", upper), tmp_path / "mnt", env) as m:
        mnt = m.mnt
        prepare(mnt)
        # Before configure: rpm already knows them, nothing has run.
        assert sorted(rpm_in(mnt, "-qa").stdout.split()) == \
            ["rscript-app-1.0-1.noarch", "rscript-base-1.0-1.noarch"]
        assert not (mnt / LOG).exists()

        p = configure(mnt, env)
        assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
        # rpm's order (base before the app that requires it, though listed after it), %pre
        # then %post per package, argument 1, the app's %post under bash (-p).
        assert (mnt / LOG).read_text() == \
            "base pre 1\nbase post 1\napp pre 1\napp post 1 bash\n"
        assert "[%post rscript-app-1.0-1.noarch] rscript-app: configured" in p.stdout
        assert "rpm: 4 of 4 scriptlets to run" in p.stderr
        assert (upper / LOG).exists(), "the scriptlets wrote into the upper"
        assert host_mounts_under(mnt) == []

        # rpm inside: both packages, and every file as the package says (digest, size, mode,
        # owner, mtime, link target) and its dependencies (rpm finds /bin/sh on disk).
        assert sorted(rpm_in(mnt, "-qa").stdout.split()) == \
            ["rscript-app-1.0-1.noarch", "rscript-base-1.0-1.noarch"]
        for name in ("rscript-base", "rscript-app"):
            v = rpm_in(mnt, "-V", name, check=False)
            assert v.returncode == 0 and v.stdout == "", v.stdout + v.stderr
        assert rpm_in(mnt, "-qf", "/usr/share/rscript-base/marker").stdout.strip() == \
            "rscript-base-1.0-1.noarch"
        # and from the host through the mount.
        q = run(["rpm", "--root", mnt, "-qa"], env=ROOT_ENV)
        assert sorted(q.stdout.split()) == \
            ["rscript-app-1.0-1.noarch", "rscript-base-1.0-1.noarch"]

        # A second run runs nothing and changes nothing.
        before = tree_snapshot(upper)
        p2 = configure(mnt, env)
        assert p2.returncode == 0, p2.stderr
        assert "rpm: all 4 scriptlets have run; nothing to do" in p2.stderr
        assert "[%" not in p2.stdout
        assert tree_snapshot(upper) == before
        assert host_mounts_under(mnt) == []

    # The read-only view (no upper) reads the database too, from the host and inside.
    with mosaic_mounted(mount_args(site, "ok"), tmp_path / "ro", env) as m:
        q = run(["rpm", "--root", m.mnt, "-qa"], env=ROOT_ENV)
        assert sorted(q.stdout.split()) == \
            ["rscript-app-1.0-1.noarch", "rscript-base-1.0-1.noarch"]
        v = rpm_in(m.mnt, "-V", "rscript-base", check=False)
        assert v.returncode == 0 and v.stdout == "", v.stdout + v.stderr


@pytest.mark.slow
def test_failing_scriptlet_is_named_and_a_rerun_carries_on(site, tmp_path):
    env, upper = site["env"], tmp_path / "upper"
    with mosaic_mounted(mount_args(site, "fail", upper), tmp_path / "mnt", env) as m:
        mnt = m.mnt
        prepare(mnt)
        p = configure(mnt, env)
        assert p.returncode == 1, p.stderr
        assert "%post rscript-fail-1.0-1.noarch failed with exit status 4" in p.stderr
        assert "rscript-fail: broken" in p.stderr.split("last lines of its output:", 1)[1]
        assert host_mounts_under(mnt) == []
        done = (mnt / "var/lib/mosaic/rpm-scriptlets").read_text().splitlines()
        assert "rscript-fail-1.0-1.noarch post" not in done

        # Fixed, the next run starts at the failed scriptlet: none runs twice.
        (mnt / "etc/rscript-fail.ok").write_text("")
        p = configure(mnt, env)
        assert p.returncode == 0, p.stderr[-3000:]
        assert f"rpm: {5 - len(done)} of 5 scriptlets to run" in p.stderr
        log = (mnt / LOG).read_text().splitlines()
        assert sorted(log) == sorted(["base pre 1", "base post 1", "app pre 1",
                                      "app post 1 bash", "fail post 1"])
        assert host_mounts_under(mnt) == []
