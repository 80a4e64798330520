"""mosaic configure on a live writable mount: preinsts in dependency order, dpkg --configure with
triggers deferred and run once, dpkg --audit, in private mount and PID namespaces that leave
nothing behind; services kept from starting by a policy-rc.d that is gone afterwards; idempotent
re-runs; a failing postinst and a step timeout reported.

The compositions are real: the Debian required set (a shell and dpkg to chroot into, from the
host's apt sources, cached in /var/cache/mosaic-tests/mosaic-cache) plus the signed test
repository's packages with maintainer scripts (repos.py: script-pkg, trig-a, trig-b,
script-fail, script-slow). Slow: the first run downloads the required set."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import minbase
from conftest import CACHE, MOSAIC, host_build, mosaic_mounted, run, tree_snapshot
from test_build import deb_repo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_mount_leftovers")]

SUITE = "bookworm"
NAMESPACE_MOUNTS = ("proc", "sys", "dev", "dev/pts", "run", "tmp")


def manifest(path, repos, packages):
    host = "\n".join(["  - name: debian", "    type: deb", "    host: true",
                      f"    suites: [{SUITE}, {SUITE}-updates, {SUITE}-security]",
                      "    components: [main]"])
    pk = "".join(f"\n  - {p}" for p in packages)
    path.write_text(f"name: {path.stem}\narch: amd64\nrepositories:\n{host}\n{deb_repo(repos)}\n"
                    f"base:\n  set: required\nrecommends: false\nmerged_usr: true\npackages:{pk}\n"
                    # The test repository's own required set has no md5sums (dpkg --audit).
                    "exclude: [mini-base, mini-libc, mini-tools]\n")
    return path


@pytest.fixture(scope="module")
def site(repo_site, signer, tmp_path_factory):
    """Builds the test manifests once: ok (script-pkg and two trigger activators), fail
    (+ script-fail), slow (+ script-slow). Returns a namespace-like dict."""
    if minbase.host_release() != SUITE:
        pytest.skip(f"the host is not Debian {SUITE}")
    work = tmp_path_factory.mktemp("configure")
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(CACHE / "mosaic-cache"))
    store = work / "store"
    common = ["usr-is-merged", "script-pkg", "trig-a", "trig-b"]
    built = {}
    for name, extra in (("ok", []), ("fail", ["script-fail"]), ("slow", ["script-slow"])):
        m = manifest(work / f"{name}.yaml", repo_site, common + extra)
        # Unconfigured: these tests configure the mount themselves.
        host_build([m, "-s", store, "--sign", signer.fingerprint, "--no-configure"], env)
        built[name] = m
    return dict(work=work, env=env, store=store, signer=signer, manifests=built)


def mount_args(site, name, upper):
    return [site["manifests"][name], "-s", site["store"], "--keyring", site["signer"].keyring,
            "--upper", upper]


def configure(mnt, env, *extra):
    return run([MOSAIC, "configure", mnt, *extra], env=env, check=False)


def host_mounts_under(mnt):
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(f"{mnt}/")]


def dpkg_rows(mnt):
    """{package: dpkg -l's status letters}, e.g. "ii"."""
    out = run(["chroot", mnt, "dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\n"])
    return {n: s.strip() for n, s in (line.split("\t") for line in out.stdout.splitlines())}


def upper_snapshot(upper):
    # ctime and atime are not compared; mtimes are.
    return tree_snapshot(upper)


@pytest.mark.parametrize("mode", ["overlay", "fuse"])
def test_configure_makes_every_package_installed(site, tmp_path, mode):
    env, upper = site["env"], tmp_path / "upper"
    with mosaic_mounted(mount_args(site, "ok", upper) + [f"--writable={mode}"],
                        tmp_path / "mnt", env) as m:
        mnt = m.mnt
        assert set(dpkg_rows(mnt).values()) == {"iU"}, "all unpacked before"
        t0 = time.monotonic()
        p = configure(mnt, env)
        print(f"configure ({mode}) took {time.monotonic() - t0:.1f} s")
        assert p.returncode == 0, p.stderr + p.stdout[-3000:]
        # Output streams with each step's name first.
        assert "[preinst script-pkg] " not in p.stdout  # the preinst prints nothing
        assert "[dpkg --configure] Setting up script-pkg (1.0)" in p.stdout, p.stdout[-2000:]

        rows = dpkg_rows(mnt)
        assert rows and set(rows.values()) == {"ii"}, \
            {k: v for k, v in rows.items() if v != "ii"}
        audit = run(["chroot", mnt, "dpkg", "--audit"])
        assert audit.stdout == "" and audit.stderr == ""

        # preinst once with "install", postinst with the noninteractive frontend, services
        # refused by policy-rc.d, and the trigger once for both activators.
        lib = mnt / "var/lib/script-pkg"
        assert (lib / "preinst-ran").read_text() == "preinst install\n"
        assert (lib / "postinst.log").read_text() == "configured noninteractive\npolicy-rc.d 101\n"
        assert (lib / "triggers.log").read_text() == "triggered script-pkg-trigger\n"
        # The real system's scripts ran too: base-passwd's preinst wrote the accounts.
        assert (mnt / "etc/passwd").read_text().startswith("root:")
        assert (upper / "var/lib/script-pkg/postinst.log").exists(), "changes are in the upper"

        # policy-rc.d is gone, from the view and the upper, and left no whiteout.
        assert not os.path.lexists(mnt / "usr/sbin/policy-rc.d")
        assert not os.path.lexists(upper / "usr/sbin/policy-rc.d")
        # Nothing the namespace mounted is visible on the host.
        assert host_mounts_under(mnt) == []

        # A second run does nothing and changes nothing.
        before = upper_snapshot(upper)
        diff_before = run([MOSAIC, "diff", mnt, "--json"], env=env).stdout
        p2 = configure(mnt, env)
        assert p2.returncode == 0, p2.stderr
        assert "nothing to do" in p2.stderr
        assert upper_snapshot(upper) == before
        assert run([MOSAIC, "diff", mnt, "--json"], env=env).stdout == diff_before
        assert host_mounts_under(mnt) == []


def test_failing_postinst_is_named_and_a_rerun_carries_on(site, tmp_path):
    env, upper = site["env"], tmp_path / "upper"
    with mosaic_mounted(mount_args(site, "fail", upper), tmp_path / "mnt", env) as m:
        mnt = m.mnt
        p = configure(mnt, env)
        assert p.returncode == 1, p.stderr
        assert "step 'dpkg --configure' failed with exit status 1" in p.stderr
        assert "package script-fail: its postinst failed (half-configured)" in p.stderr
        tail = p.stderr.split("last lines of its output:", 1)[1]
        assert "script-fail: it broke" in p.stderr.split("package script-fail:", 1)[1], p.stderr
        assert "Errors were encountered" in tail
        assert "[dpkg --configure] script-fail: setting up" in p.stdout
        assert host_mounts_under(mnt) == []
        assert not os.path.lexists(upper / "usr/sbin/policy-rc.d")
        rows = dpkg_rows(mnt)
        assert rows["script-fail"] == "iF"
        # Configured, its trigger (deferred to the end) still pending: the run stopped first.
        assert rows["script-pkg"] == "it"
        assert rows["dash"] == "ii"

        # The next run carries on with what is left (the failed package, pending triggers): no
        # preinst again, the same failure.
        left = sum(1 for v in rows.values() if v != "ii")
        p = configure(mnt, env)
        assert p.returncode == 1
        assert f"configure: {left} of {len(rows)} packages" in p.stderr, p.stderr
        assert "package script-fail: its postinst failed" in p.stderr
        assert "[preinst " not in p.stdout
        assert host_mounts_under(mnt) == []

        # Fixed, a run completes: the trigger runs once, everything is configured.
        script = mnt / "var/lib/dpkg/info/script-fail.postinst"
        script.write_text("#!/bin/sh\necho 'script-fail: fixed'\n")
        p = configure(mnt, env)
        assert p.returncode == 0, p.stderr
        assert "[dpkg --configure] script-fail: fixed" in p.stdout
        assert set(dpkg_rows(mnt).values()) == {"ii"}
        lib = mnt / "var/lib/script-pkg"
        assert (lib / "preinst-ran").read_text() == "preinst install\n"
        assert (lib / "triggers.log").read_text() == "triggered script-pkg-trigger\n"
        assert run(["chroot", mnt, "dpkg", "--audit"]).stdout == ""
        assert not os.path.lexists(upper / "usr/sbin/policy-rc.d")
        assert host_mounts_under(mnt) == []


def test_step_timeout_kills_and_reports(site, tmp_path):
    env, upper = site["env"], tmp_path / "upper"
    with mosaic_mounted(mount_args(site, "slow", upper), tmp_path / "mnt", env) as m:
        mnt = m.mnt
        t0 = time.monotonic()
        p = configure(mnt, env, "--step-timeout", "20")
        took = time.monotonic() - t0
        assert p.returncode == 1, p.stderr
        assert "step 'dpkg --configure' ran past --step-timeout 20 s and was killed" in p.stderr
        assert "package script-slow: its postinst failed (half-configured)" in p.stderr, p.stderr
        assert "script-slow: sleeping" in p.stderr
        assert took < 120
        # No process of the run is left: nothing has the mount open.
        assert not processes_under(mnt)
        assert host_mounts_under(mnt) == []
        assert not os.path.lexists(upper / "usr/sbin/policy-rc.d")


def test_configure_refuses_read_only_and_unknown(site, tmp_path):
    env = site["env"]
    p = configure(tmp_path, env)
    assert p.returncode != 0 and "not mounted by mosaic" in p.stderr
    m = site["manifests"]["ok"]
    with mosaic_mounted([m, "-s", site["store"], "--keyring", site["signer"].keyring],
                        tmp_path / "mnt", env) as mt:
        p = configure(mt.mnt, env)
        assert p.returncode == 2 and "read-only" in p.stderr
    p = run([MOSAIC, "configure", tmp_path, "--step-timeout", "x"], check=False)
    assert p.returncode == 2 and "bad --step-timeout" in p.stderr


def test_own_policy_rc_d_is_covered_not_touched(site, tmp_path):
    env, upper = site["env"], tmp_path / "upper"
    with mosaic_mounted(mount_args(site, "ok", upper), tmp_path / "mnt", env) as m:
        mnt = m.mnt
        own = mnt / "usr/sbin/policy-rc.d"
        own.write_text("#!/bin/sh\nexit 0\n")
        own.chmod(0o755)
        st = os.lstat(upper / "usr/sbin/policy-rc.d")
        p = configure(mnt, env)
        assert p.returncode == 0, p.stderr
        assert (mnt / "var/lib/script-pkg/postinst.log").read_text().endswith("policy-rc.d 101\n")
        assert own.read_text() == "#!/bin/sh\nexit 0\n"
        assert os.lstat(upper / "usr/sbin/policy-rc.d").st_mtime_ns == st.st_mtime_ns
        assert host_mounts_under(mnt) == []


def lock_of(manifest):
    return json.loads(manifest.with_suffix(".lock").read_text())


def test_build_configures_and_a_second_build_reuses_it(site, tmp_path):
    """mosaic build = ... + configure + commit: the config fragment is recorded in the lock, the
    manifest then mounts configured at once, and a second build runs no script. A changed run:
    step makes a new configuration; the old one is found again when the step is changed back."""
    env, store, signer = site["env"], site["store"], site["signer"]
    m = tmp_path / "cfg.yaml"
    m.write_text(site["manifests"]["ok"].read_text().replace("name: ok", "name: cfg") +
                 "run:\n  - echo built >> /var/lib/build-runs\n")
    build = [MOSAIC, "build", m, "-s", store, "--sign", signer.fingerprint,
             "--keyring", signer.keyring, "--configure"]
    p = run(build, env=env, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[dpkg --configure] Setting up script-pkg (1.0)" in p.stdout, p.stdout[-2000:]
    config = [f for f in lock_of(m)["fragments"] if f["role"] == "config"]
    assert len(config) == 1 and len(config[0]["digest"]) == 64, lock_of(m)
    assert host_mounts_under(tmp_path) == []

    # Mounted read-only, the manifest is a configured system: no upper needed.
    with mosaic_mounted([m, "-s", store, "--keyring", signer.keyring], tmp_path / "mnt",
                        env) as mt:
        rows = dpkg_rows(mt.mnt)
        assert rows and set(rows.values()) == {"ii"}
        assert (mt.mnt / "var/lib/script-pkg/postinst.log").exists()
        assert (mt.mnt / "var/lib/build-runs").read_text() == "built\n"
        assert not os.path.lexists(mt.mnt / "usr/sbin/policy-rc.d")

    # Nothing changed: the configuration is found, no script runs.
    before = m.with_suffix(".lock").read_text()
    t0 = time.monotonic()
    p = run(build, env=env)
    took = time.monotonic() - t0
    assert "no script runs" in p.stderr and "Setting up" not in p.stdout, p.stderr
    assert m.with_suffix(".lock").read_text() == before
    print(f"second build: {took:.2f} s")

    # Another run: step, another configuration on the same fragments.
    m.write_text(m.read_text().replace("echo built", "echo rebuilt"))
    p = run(build, env=env)
    new = [f for f in lock_of(m)["fragments"] if f["role"] == "config"]
    assert new[0]["digest"] != config[0]["digest"] and new[0]["base"] == config[0]["base"]
    with mosaic_mounted([m, "-s", store, "--keyring", signer.keyring], tmp_path / "mnt",
                        env) as mt:
        assert (mt.mnt / "var/lib/build-runs").read_text() == "rebuilt\n"
    # And back: the first one again, from the cache.
    m.write_text(m.read_text().replace("echo rebuilt", "echo built"))
    p = run(build, env=env)
    assert "no script runs" in p.stderr
    assert m.with_suffix(".lock").read_text() == before


def test_interrupted_configure_leaves_a_consistent_upper_and_carries_on(site, tmp_path):
    """Ctrl-C (SIGINT) and SIGKILL in the middle of a postinst: the namespace, its mounts and its
    processes go with mosaic, and the next run carries on to a configured system."""
    env, upper = site["env"], tmp_path / "upper"
    with mosaic_mounted(mount_args(site, "slow", upper), tmp_path / "mnt", env) as m:
        mnt = m.mnt
        for sig in (signal.SIGINT, signal.SIGKILL):
            p = subprocess.Popen([MOSAIC, "configure", mnt], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            seen = ""
            for line in p.stdout:  # until script-slow's postinst is running
                seen += line
                if "script-slow: sleeping" in line:
                    break
            assert "script-slow: sleeping" in seen, seen[-2000:]
            p.send_signal(sig)
            p.communicate(timeout=60)
            assert p.returncode != 0
            assert host_mounts_under(mnt) == []
            # The kernel ends the PID namespace's processes once its init is gone.
            deadline = time.monotonic() + 10
            while processes_under(mnt) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not processes_under(mnt), f"processes left in the chroot after {sig!r}"
            rows = dpkg_rows(mnt)
            assert rows["script-slow"] in ("iF", "iU"), rows["script-slow"]
        # The package is fixed (as a user would), and the next run carries on.
        (mnt / "var/lib/dpkg/info/script-slow.postinst").write_text("#!/bin/sh\nexit 0\n")
        p = configure(mnt, env)
        assert p.returncode == 0, p.stderr
        assert set(dpkg_rows(mnt).values()) == {"ii"}
        assert run(["chroot", mnt, "dpkg", "--audit"]).stdout == ""
        assert not os.path.lexists(mnt / "usr/sbin/policy-rc.d")
        assert host_mounts_under(mnt) == []


def processes_under(mnt):
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "root").startswith(str(mnt)):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_build_makes_the_manifests_export_targets(site, tmp_path):
    """export: targets are made last by mosaic build, as mosaic export makes them; a target
    export cannot make yet is refused before anything is written."""
    env, store, signer = site["env"], site["store"], site["signer"]
    m = tmp_path / "exp.yaml"
    m.write_text(site["manifests"]["ok"].read_text().replace("name: ok", "name: exp") +
                 "export:\n  - {format: tar, output: out/exp.tar}\n")
    build = [MOSAIC, "build", m, "-s", store, "--sign", signer.fingerprint,
             "--keyring", signer.keyring]
    p = run(build, env=env, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    tar = tmp_path / "out/exp.tar"
    names = run(["tar", "-tf", tar]).stdout.split()
    assert "./var/lib/script-pkg/postinst.log" in names, "the configured system is exported"
    spdx = json.loads((tmp_path / "out/exp.tar.spdx.json").read_text())
    assert spdx["spdxVersion"] == "SPDX-2.3"
    assert any(p["name"] == "script-pkg" for p in spdx["packages"])

    # a disk target's layout reaches the exporter (which finds no /data to mount a partition
    # on); a partition type it cannot make is refused before anything is written
    tar_target = "{format: tar, output: out/exp.tar}"
    m.write_text(m.read_text().replace(
        tar_target, "{format: raw, output: out/exp.raw, filesystem: squashfs, bootloader: grub,"
        " partitions: [{mountpoint: /data, size: 64M}, {type: swap, size: 8M}]}"))
    p = run(build, env=env, check=False)
    assert p.returncode == 1 and "no directory /data to mount a partition on" in p.stderr, \
        p.stderr
    assert "--partition /data:64M" not in p.stderr
    m.write_text(m.read_text().replace("{type: swap, size: 8M}", "{mountpoint: /x, type: xfs}"))
    p = run(build, env=env, check=False)
    assert p.returncode == 2 and "partition 2: give a mountpoint" in p.stderr, p.stderr
    assert not (tmp_path / "out/exp.raw").exists()
    p = run(build + ["--no-export"], env=env, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
