"""mosaic configure with a manifest: config: (users and groups, hostname, timezone, locale, files,
services, kernel_cmdline) and run: steps applied in the chroot after the packages, checked inside
the mount; a second run that changes nothing in the upper; a failing run: step named by its
manifest line and a re-run that carries on after it; a step killed at --step-timeout; clear
refusals where the composition lacks what config: asks for; `mosaic configure MANIFEST` mounting
by itself.

The compositions are real: Debian's required set plus systemd, sudo and locales (and one without
them), from the host's apt sources through manifests/defaults/debian.yaml (merged /usr), cached
in /var/cache/mosaic-tests/mosaic-cache. Slow: the first run downloads the packages."""

import os
import shutil
import stat
import subprocess
import time
import warnings
from pathlib import Path

import pytest

import minbase
from conftest import (CACHE, MOSAIC, REPO, assert_same_tree, host_build, mosaic_mounted, run,
                      tree_snapshot)
from test_configure import SUITE, host_mounts_under

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_mount_leftovers")]

DEFAULTS = REPO / "manifests" / "defaults" / "debian.yaml"
UNIT = "mosaic-hello.service"
PACKAGES = ["systemd", "sudo", "locales"]
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1vc2FpY1Rlc3RLZXlGb3JDb25maWc admin@example"


def password_hash(password):
    """A SHA-512 crypt(3) hash, as `mkpasswd -m sha-512` makes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # in the standard library up to Python 3.12
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    except ImportError:
        return run(["openssl", "passwd", "-6", password]).stdout.strip()


HASH = password_hash("secret")


def write_manifest(path, name, packages, config="", steps=()):
    """A manifest on the Debian defaults; steps are (name or None, command). Returns
    (path, {step name or command: the line it starts on})."""
    lines = [f"name: {name}", f"include: {DEFAULTS}", "arch: amd64",
             f"packages: [{', '.join(packages)}]"]
    if config:
        lines += ["config:"] + ["  " + l for l in config.strip("\n").splitlines()]
    where = {}
    if steps:
        lines.append("run:")
        for step_name, command in steps:
            where[step_name or command] = len(lines) + 1
            if step_name:
                lines += [f"  - name: {step_name}", f"    command: {quote(command)}"]
            else:
                lines.append(f"  - {quote(command)}")
    path.write_text("\n".join(lines) + "\n")
    return path, where


def quote(s):
    return "'" + s.replace("'", "''") + "'"


FULL_CONFIG = f"""
hostname: web1.example.org
timezone: Europe/Berlin
locale: en_US.UTF-8
groups:
  - {{name: deploy, gid: 2345}}
users:
  - name: admin
    uid: 1500
    groups: [deploy]
    sudo: true
    shell: /bin/bash
    password: '{HASH}'
    ssh_keys: ['{SSH_KEY}']
  - {{name: svc, system: true, shell: /usr/sbin/nologin}}
files:
  - path: /etc/systemd/system/{UNIT}
    content: |
      [Unit]
      Description=mosaic test unit
      [Service]
      ExecStart=/bin/true
      [Install]
      WantedBy=multi-user.target
  - {{path: /srv/app/secret.conf, content: "key=value\\n", mode: "0640", owner: "admin:deploy"}}
  - {{path: /etc/motd, content: "configured by mosaic\\n"}}
services:
  enable: [{UNIT}]
  disable: [getty@.service, apt-daily.timer]
kernel_cmdline: console=ttyS0 quiet
"""

COUNT_STEPS = [(None, "echo one >> /root/count"), ("second", "echo two >> /root/count")]


@pytest.fixture(scope="module")
def site(signer, tmp_path_factory):
    """Builds the two compositions once: cfg (required + systemd + sudo) and bare (required
    only). Tests copy the lock beside a manifest of their own."""
    if minbase.host_release() != SUITE:
        pytest.skip(f"the host is not Debian {SUITE}")
    work = tmp_path_factory.mktemp("config-steps")
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(CACHE / "mosaic-cache"))
    store = work / "store"
    locks = {}
    for name, packages in (("cfg", PACKAGES), ("bare", [])):
        m, _ = write_manifest(work / f"{name}.yaml", name, packages)
        # Unconfigured: the tests configure (and break and fix) the mount themselves.
        host_build([m, "-s", store, "--sign", signer.fingerprint, "--no-configure"], env)
        locks[name] = work / f"{name}.lock"
    return dict(env=env, store=store, keyring=signer.keyring, locks=locks)


def manifest_in(site, tmp_path, name, packages, config="", steps=()):
    """A manifest in tmp_path with the built lock beside it."""
    shutil.copy(site["locks"][name], tmp_path / f"{name}.lock")
    return write_manifest(tmp_path / f"{name}.yaml", name, packages, config, steps)


def store_args(site):
    return ["-s", site["store"], "--keyring", site["keyring"]]


def configure(site, *args, timeout=None):
    extra = ["--step-timeout", str(timeout)] if timeout is not None else []
    return run([MOSAIC, "configure", *map(str, args), *extra], env=site["env"], check=False)


def chroot(mnt, *args):
    return run(["chroot", mnt, *args]).stdout


def no_process_in(mnt):
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                root = os.readlink(d / "root")
            except OSError:
                continue
            assert not root.startswith(str(mnt)), f"process {d.name} is still in the chroot"


def check_configured(mnt):
    """What FULL_CONFIG and COUNT_STEPS make, seen inside the mount."""
    pw = chroot(mnt, "getent", "passwd", "admin").strip().split(":")
    assert pw[2] == "1500" and pw[5] == "/home/admin" and pw[6] == "/bin/bash", pw
    uid, gid = 1500, int(pw[3])
    assert chroot(mnt, "getent", "group", "deploy").strip() == "deploy:x:2345:admin"
    assert "admin" in chroot(mnt, "getent", "group", "sudo").strip().split(":")[3].split(",")
    assert chroot(mnt, "getent", "shadow", "admin").split(":")[1] == HASH
    svc = chroot(mnt, "getent", "passwd", "svc").strip().split(":")
    assert int(svc[2]) < 1000 and svc[6] == "/usr/sbin/nologin", svc

    ssh = mnt / "home/admin/.ssh"
    for p, mode in ((ssh, 0o700), (ssh / "authorized_keys", 0o600)):
        st = os.lstat(p)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid), p
    assert (ssh / "authorized_keys").read_text() == SSH_KEY + "\n"

    assert (mnt / "etc/hostname").read_text() == "web1.example.org\n"
    hosts = (mnt / "etc/hosts").read_text().splitlines()
    assert "127.0.1.1\tweb1.example.org\tweb1" in hosts
    assert any(l.split()[:2] == ["127.0.0.1", "localhost"] for l in hosts if l.strip())
    assert os.readlink(mnt / "etc/localtime") == "/usr/share/zoneinfo/Europe/Berlin"
    assert (mnt / "etc/timezone").read_text() == "Europe/Berlin\n"
    assert (mnt / "etc/default/locale").read_text() == "LANG=en_US.UTF-8\n"
    assert "en_US.UTF-8 UTF-8" in (mnt / "etc/locale.gen").read_text().splitlines()
    assert "en_US.utf8" in chroot(mnt, "locale", "-a").split()
    assert (mnt / "etc/kernel/cmdline").read_text() == "console=ttyS0 quiet\n"

    secret = os.lstat(mnt / "srv/app/secret.conf")
    assert (stat.S_IMODE(secret.st_mode), secret.st_uid, secret.st_gid) == (0o640, uid, 2345)
    motd = os.lstat(mnt / "etc/motd")
    assert (stat.S_IMODE(motd.st_mode), motd.st_uid, motd.st_gid) == (0o644, 0, 0)
    assert (mnt / "etc/motd").read_text() == "configured by mosaic\n"

    def is_enabled(unit):
        p = run(["systemctl", "--root", mnt, "is-enabled", unit], check=False)
        return p.stdout.strip()
    assert is_enabled(UNIT) == "enabled"
    assert (mnt / "etc/systemd/system/multi-user.target.wants" / UNIT).is_symlink()
    # Both are enabled by their packages' postinsts (systemd, apt) before config: runs.
    assert is_enabled("getty@.service") == "disabled"
    assert is_enabled("apt-daily.timer") == "disabled"

    assert (mnt / "root/count").read_text() == "one\ntwo\n"
    assert all(v == "ii" for v in dpkg_status(mnt).values())


def dpkg_status(mnt):
    out = chroot(mnt, "dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\n")
    return {n: s.strip() for n, s in (line.split("\t") for line in out.splitlines())}


def test_configure_manifest_mounts_applies_and_changes_nothing_twice(site, tmp_path):
    m, _ = manifest_in(site, tmp_path, "cfg", PACKAGES, FULL_CONFIG, COUNT_STEPS)
    mnt, upper = tmp_path / "roots/cfg/mnt", tmp_path / "roots/cfg/upper"
    try:
        t0 = time.monotonic()
        p = configure(site, m, *store_args(site))
        print(f"configure MANIFEST took {time.monotonic() - t0:.1f} s")
        assert p.returncode == 0, p.stderr + p.stdout[-3000:]
        assert os.path.ismount(mnt), "configure MANIFEST mounts beside the lock"
        assert f"{mnt} stays mounted (upper {upper})" in p.stderr
        assert host_mounts_under(mnt) == [], "nothing of the namespace is left on the host"
        assert f"[systemctl {UNIT}] Created symlink" in p.stdout
        check_configured(mnt)
        # The passwords went through chpasswd's stdin, by a file on the session's /run.
        assert not (upper / "run").exists() or not any((upper / "run").iterdir())
        assert (upper / "var/lib/mosaic/configure-state").exists()

        # Again: nothing to do, nothing written, the same mount used.
        before = tree_snapshot(upper)
        p = configure(site, m, *store_args(site))
        assert p.returncode == 0, p.stderr
        assert "all " in p.stderr and "packages are configured" in p.stderr
        assert "run: 0 steps ran, 2 already done" in p.stderr
        assert "wrote " not in p.stderr and "stays mounted" not in p.stderr, p.stderr
        assert_same_tree(tree_snapshot(upper), before, "upper after a second configure")
        assert (mnt / "root/count").read_text() == "one\ntwo\n"
        assert host_mounts_under(mnt) == []

        # Changed by hand, put right again: only what differs is touched.
        (mnt / "etc/hostname").write_text("other\n")
        os.chmod(mnt / "srv/app/secret.conf", 0o666)
        p = configure(site, mnt, "--manifest", m)
        assert p.returncode == 0, p.stderr
        assert "wrote /etc/hostname" in p.stderr and "wrote /etc/hosts" not in p.stderr
        check_configured(mnt)
    finally:
        u = run([MOSAIC, "umount", mnt], env=site["env"], check=False)
    assert u.returncode == 0, u.stderr
    assert not os.path.ismount(mnt) and host_mounts_under(mnt) == []
    no_process_in(mnt)


def test_config_in_fuse_mode(site, tmp_path):
    """The daemon's own copy-up takes chown, chmod, rename and symlink the same way."""
    m, _ = manifest_in(site, tmp_path, "cfg", PACKAGES, FULL_CONFIG, COUNT_STEPS)
    upper = tmp_path / "upper"
    args = [m, *store_args(site), "--upper", upper, "--writable=fuse"]
    with mosaic_mounted(args, tmp_path / "mnt", site["env"]) as mt:
        assert mt.status["mode"] == "fuse"
        p = configure(site, mt.mnt, "--manifest", m)
        assert p.returncode == 0, p.stderr + p.stdout[-3000:]
        check_configured(mt.mnt)
        before = tree_snapshot(upper)
        p = configure(site, mt.mnt, "--manifest", m)
        assert p.returncode == 0, p.stderr
        assert_same_tree(tree_snapshot(upper), before, "upper after a second configure")
        assert host_mounts_under(mt.mnt) == []


def test_failing_run_step_is_named_and_a_rerun_carries_on(site, tmp_path):
    steps = [(None, "echo a >> /root/count"),
             ("breaks", "echo b-start >> /root/count; echo about to fail; exit 3"),
             (None, "echo c >> /root/count")]
    m, where = manifest_in(site, tmp_path, "cfg", PACKAGES, steps=steps)
    upper = tmp_path / "upper"
    with mosaic_mounted([m, *store_args(site), "--upper", upper], tmp_path / "mnt",
                        site["env"]) as mt:
        mnt, count = mt.mnt, mt.mnt / "root/count"
        p = configure(site, mnt, "--manifest", m)
        assert p.returncode == 1, p.stderr
        assert f"{m}:{where['breaks']}: run step 'breaks' failed with exit status 3" \
            in p.stderr, p.stderr
        assert "about to fail" in p.stderr.split("last lines of its output:", 1)[1]
        assert "[breaks] about to fail" in p.stdout
        assert count.read_text() == "a\nb-start\n"
        assert host_mounts_under(mnt) == []
        assert not os.path.lexists(upper / "usr/sbin/policy-rc.d")

        # Still failing: the first step does not run again.
        p = configure(site, mnt, "--manifest", m)
        assert p.returncode == 1 and "run step 'breaks' failed" in p.stderr
        assert count.read_text() == "a\nb-start\nb-start\n"

        # Fixed in the manifest: it carries on from the failed step.
        steps[1] = ("breaks", "echo b-fixed >> /root/count")
        m, _ = write_manifest(m, "cfg", PACKAGES, steps=steps)
        p = configure(site, mnt, "--manifest", m)
        assert p.returncode == 0, p.stderr
        assert "run: 2 steps ran, 1 already done" in p.stderr
        assert count.read_text() == "a\nb-start\nb-start\nb-fixed\nc\n"

        # Done: a run runs none and writes nothing.
        before = tree_snapshot(upper)
        p = configure(site, mnt, "--manifest", m)
        assert p.returncode == 0 and "run: 0 steps ran, 3 already done" in p.stderr
        assert_same_tree(tree_snapshot(upper), before, "upper after a run with nothing to do")

        # A changed step runs again, and so does every step after it.
        steps[0] = (None, "echo A >> /root/count")
        m, _ = write_manifest(m, "cfg", PACKAGES, steps=steps)
        p = configure(site, mnt, "--manifest", m)
        assert p.returncode == 0 and "run: 3 steps ran, 0 already done" in p.stderr
        assert count.read_text().endswith("b-fixed\nc\nA\nb-fixed\nc\n")
        assert host_mounts_under(mnt) == []
        assert not os.path.lexists(upper / "usr/sbin/policy-rc.d")


def test_run_step_past_timeout_is_killed(site, tmp_path):
    steps = [("sleeper", "echo going to sleep; sleep 600 & sleep 600")]
    m, where = manifest_in(site, tmp_path, "cfg", PACKAGES, steps=steps)
    with mosaic_mounted([m, *store_args(site), "--upper", tmp_path / "upper"],
                        tmp_path / "mnt", site["env"]) as mt:
        # The packages first, without a limit that their scripts could run past.
        assert configure(site, mt.mnt).returncode == 0
        t0 = time.monotonic()
        p = configure(site, mt.mnt, "--manifest", m, timeout=3)
        took = time.monotonic() - t0
        assert p.returncode == 1, p.stderr
        assert (f"{m}:{where['sleeper']}: run step 'sleeper' ran past --step-timeout 3 s and "
                "was killed") in p.stderr, p.stderr
        assert "going to sleep" in p.stderr
        assert took < 60
        no_process_in(mt.mnt)
        assert host_mounts_under(mt.mnt) == []


def test_refusals_name_what_is_missing(site, tmp_path):
    """A composition without sudo, systemd or the zone asked for: each config: step that needs
    it fails with a message that says what to add, and nothing after it runs."""
    cases = [
        ("users: [{name: admin, groups: [wheel]}]", "user admin: no group 'wheel'"),
        ("services: {enable: [ssh.service]}",
         "config.services needs systemd, but the composition has no systemctl"),
        ("timezone: Mars/Olympus_Mons",
         "timezone 'Mars/Olympus_Mons' is not in the composition's /usr/share/zoneinfo"),
        ("timezone: ../../etc/passwd", "timezone '../../etc/passwd' is not in"),
        ("files: [{path: /etc/x, content: x, owner: 'nobody2:root'}]",
         "file /etc/x: owner 'nobody2:root': no user 'nobody2' in the composition's "
         "/etc/passwd"),
    ]
    m, _ = manifest_in(site, tmp_path, "bare", [])
    with mosaic_mounted([m, *store_args(site), "--upper", tmp_path / "upper"],
                        tmp_path / "mnt", site["env"]) as mt:
        assert configure(site, mt.mnt).returncode == 0
        # base-passwd gives every Debian system the group sudo; the package gives the command.
        group = (mt.mnt / "etc/group").read_text()
        assert "\nsudo:x:27:" in group
        (mt.mnt / "etc/group").write_text(group.replace("\nsudo:x:27:", "\nxsudo:x:27:"))
        cases.insert(0, ("users: [{name: admin, sudo: true}]",
                         "user admin: 'sudo: true' needs the group sudo, which the "
                         "composition does not have"))
        for config, message in cases:
            m, _ = write_manifest(m, "bare", [], config + "\nkernel_cmdline: x",
                                  steps=[(None, "touch /root/ran")])
            p = configure(site, mt.mnt, "--manifest", m)
            assert p.returncode == 1, (config, p.stderr)
            assert message in p.stderr, (config, p.stderr)
            assert not (mt.mnt / "etc/kernel/cmdline").exists()
            assert not (mt.mnt / "root/ran").exists()
            (mt.mnt / "etc/group").write_text(group)
        # With the group but without the package: a member of sudo, and a warning.
        m, _ = write_manifest(m, "bare", [], "users: [{name: admin, sudo: true}]\n"
                              "locale: C.UTF-8")
        p = configure(site, mt.mnt, "--manifest", m)
        assert p.returncode == 0, p.stderr
        # C.UTF-8 is glibc's own: nothing to generate, and no locales package needed.
        assert (mt.mnt / "etc/default/locale").read_text() == "LANG=C.UTF-8\n"
        assert "warning: locale" not in p.stderr and "[locale-gen]" not in p.stdout
        assert "user admin is in the group sudo, but the composition has no sudo command" \
            in p.stderr
        assert "admin" in chroot(mt.mnt, "getent", "group", "sudo").split(":")[3]
        assert host_mounts_under(mt.mnt) == []


def test_usage(site, tmp_path):
    p = run([MOSAIC, "configure", tmp_path, "--store", tmp_path], check=False)
    assert p.returncode == 2 and "are for mounting a MANIFEST" in p.stderr
    p = run([MOSAIC, "configure", tmp_path, tmp_path], check=False)
    assert p.returncode == 2 and "is not a manifest" in p.stderr
    m, _ = manifest_in(site, tmp_path, "bare", [])
    p = run([MOSAIC, "configure", m, "--manifest", m], check=False)
    assert p.returncode == 2 and "give the manifest once" in p.stderr
    p = run([MOSAIC, "configure", "--help"], check=False)
    assert p.returncode == 0 and "mosaic configure MANIFEST [MOUNTPOINT]" in p.stdout


def test_a_view_unmounted_during_a_configure_goes_away(site, tmp_path):
    """The chroot session's mount namespace starts as a copy of every mount, and a copy keeps a
    filesystem alive: a view unmounted elsewhere while a configure runs must still go, its
    daemon with it, rather than wait for the configure to end."""
    steps = [("waiter", "touch /var/tmp/started; "
              "while [ ! -e /var/tmp/go ]; do sleep 0.2; done")]
    m, _ = manifest_in(site, tmp_path, "cfg", PACKAGES, steps=steps)
    other_m, _ = manifest_in(site, tmp_path, "bare", [])
    other = tmp_path / "other"
    other.mkdir()
    run([MOSAIC, "mount", other_m, other, *store_args(site)], env=site["env"])
    mounted_other = True
    try:
        with mosaic_mounted([m, *store_args(site), "--upper", tmp_path / "upper"],
                            tmp_path / "mnt", site["env"]) as mt:
            assert configure(site, mt.mnt).returncode == 0
            proc = subprocess.Popen([MOSAIC, "configure", mt.mnt, "--manifest", m],
                                    env=site["env"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            try:
                deadline = time.monotonic() + 120
                while not (mt.mnt / "var/tmp/started").exists():
                    assert proc.poll() is None, proc.communicate()
                    assert time.monotonic() < deadline, "the run: step did not start"
                    time.sleep(0.2)
                # the session is running: the other view unmounts, and its daemon exits
                t0 = time.monotonic()
                u = run([MOSAIC, "umount", other], env=site["env"], check=False)
                assert u.returncode == 0, u.stderr
                mounted_other = False
                assert time.monotonic() - t0 < 10
                assert not os.path.ismount(other)
            finally:
                (mt.mnt / "var/tmp/go").touch()
                out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            no_process_in(mt.mnt)
    finally:
        if mounted_other:
            run([MOSAIC, "umount", "--lazy", other], env=site["env"], check=False)
