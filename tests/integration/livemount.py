"""Helpers of the live-mount tests (test_dev.py, test_restart.py, test_switch_fuse.py): a root
that chroot and runc can run, made from the host's own tools; mounts whose daemon may change
under them (restart) and are always taken down; polling what a mount shows."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

from conftest import MOSAIC, pid_alive, run, wait_gone

# Enough for sh -c loops, cat/stat/ls/readlink/getfattr checks and sleeps in a chroot or a
# container. [ and test are dash builtins.
HOST_TOOLS = ("sh", "cat", "stat", "ls", "readlink", "sleep", "getfattr")


def _libraries(binary):
    """The shared objects ldd says binary loads (the dynamic loader included)."""
    out = run(["ldd", binary], check=False).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            path = parts[parts.index("=>") + 1]
        elif parts and parts[0].startswith("/"):
            path = parts[0]
        else:
            continue
        if path.startswith("/"):
            libs.append(path)
    return libs


def build_host_root(root):
    """A merged-/usr root with HOST_TOOLS and their libraries copied from the host (no network,
    no package), plus the directories runc mounts over (proc, sys, dev) and /tmp, /srv."""
    root = Path(root)
    for d in ("usr/bin", "usr/lib", "usr/lib64", "etc", "proc", "sys", "dev", "tmp", "srv"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        os.symlink(target, root / link)
    for tool in HOST_TOOLS:
        path = shutil.which(tool)
        assert path, f"the host has no {tool}"
        dest = root / "usr/bin" / tool
        shutil.copyfile(os.path.realpath(path), dest)
        dest.chmod(0o755)
        for lib in _libraries(path):
            # Copied where the real file lies (/lib64/x -> /usr/lib64/x), under the name the
            # loader asks for; the root's own bin/lib/lib64 links do the rest.
            where = Path(os.path.realpath(os.path.dirname(lib))) / os.path.basename(lib)
            dest = root / where.relative_to("/")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(os.path.realpath(lib), dest)
                dest.chmod(0o755)
    (root / "etc/os-release").write_text("ID=mosaic-host-tools\n")
    (root / "tmp").chmod(0o1777)
    return root


def status(mnt, env):
    return json.loads(run([MOSAIC, "status", mnt, "--json"], env=env).stdout)


def chroot(mnt, script, check=True):
    """sh -c script chrooted into mnt; its stdout."""
    p = run(["chroot", mnt, "/bin/sh", "-c", script], check=check)
    return p.stdout if check else p


def wait_until(pred, timeout=5.0):
    """Polls pred (an OSError counts as not yet) every millisecond; seconds it took to hold,
    or None when it did not within timeout."""
    t0 = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except OSError:
            pass
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(0.001)


@contextlib.contextmanager
def served(args, mnt, env):
    """`mosaic mount ARGS... MNT` for a test that may restart the daemon or kill it: yields an
    object with .mnt, .stdout, .pid (the first daemon) and .pids (every daemon the test saw: add
    to it with note_pid()). At the end mosaic umount must succeed and end the daemon serving
    then; whatever the outcome, no mount and no daemon of the test is left."""
    mnt = Path(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    p = run([MOSAIC, "mount", *args, mnt], env=env, check=False)
    assert p.returncode == 0, f"mosaic mount exited {p.returncode}: {p.stderr}"
    pid = status(mnt, env)["pid"]
    m = SimpleNamespace(mnt=mnt, stdout=p.stdout, pid=pid, pids=[pid])

    def note_pid():
        now = status(mnt, env)["pid"]
        if now not in m.pids:
            m.pids.append(now)
        return now

    m.note_pid = note_pid
    ok = False
    try:
        yield m
        ok = True
    finally:
        with contextlib.suppress(Exception):
            note_pid()
        u = run([MOSAIC, "umount", mnt], env=env, check=False)
        if u.returncode != 0:
            run([MOSAIC, "umount", "--lazy", mnt], env=env, check=False)
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        left = [p for p in m.pids if not wait_gone(p)]
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
            wait_gone(p)
    if ok:
        assert u.returncode == 0, f"mosaic umount: {u.stderr}"
        assert not os.path.ismount(mnt)
        assert not left, f"daemons {left} outlived mosaic umount"
        assert not [p for p in m.pids if pid_alive(p)]


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
