"""mosaic restart: a running daemon hands its FUSE session to a new one, and processes on the
mount see a pause, never an error; a daemon that is gone (SIGKILL, also in the middle of a
switch) comes back with what it served last. Checked under eight threads reading (read-only)
and reading and writing (--writable=fuse) while restarts happen back to back, with a file held
open and a process working inside the mount; the history, rollback, switch and dev watching
after a restart; that no one but root or the owner may restart or switch a mount; and that
umount after all of it leaves no state behind."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import (MOSAIC, assert_same_tree, create, mosaic_mounted, pid_alive, run,
                      tree_snapshot, wait_gone, write_file)
from livemount import served, status, wait_until
from test_fuse_writable import build_base, build_top

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

EPOCH = "1700000000"
# The files test_fuse_writable's test_concurrent_copy_ups_of_many_files works on.
NAMES = ["etc/keep", "etc/config", "etc/extra", "etc/sub/deep", "etc/sub/deep2", "opq/new",
         "notempty/x", "rebuild/old", "victim/sub/f", "etc/trunc"]
THREADS = 8
RESTARTS = 3
LOAD_SECONDS = 2.0
NOBODY = 65534  # nobody:nogroup


def build_v3(root):
    """A fragment to switch to: changes lower files and adds one."""
    write_file(root / "etc/keep", "keep v3\n")
    write_file(root / "etc/v3", "only in v3\n")
    write_file(root / "rebuild/old", "old v3\n")


@pytest.fixture(scope="module")
def layers(signer, tmp_path_factory):
    base = tmp_path_factory.mktemp("restart")
    store = base / "store"
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"))
    d = {}
    for name, build in (("base", build_base), ("top", build_top), ("v3", build_v3)):
        src = base / name
        src.mkdir()
        build(src)
        d[name] = create(store, src, env, "--sign", signer.fingerprint, "--name", name,
                         "--version", "1", "--kind", "config", "--source-date-epoch", EPOCH)
    return SimpleNamespace(store=store, env=env, keyring=signer.keyring, base=base, signer=signer,
                           d=d, digests=[d["base"], d["top"]])


def mount_args(layers, digests=None, upper=None, extra=()):
    args = ["-s", layers.store, "--keyring", layers.keyring, *(digests or layers.digests)]
    if upper is not None:
        args += ["--upper", upper, "--writable=fuse"]
    return args + list(extra)


def restart(m, env):
    """mosaic restart: a new daemon takes the session over and the old one exits."""
    old = status(m.mnt, env)["pid"]
    p = run([MOSAIC, "restart", m.mnt], env=env)
    new = m.note_pid()
    assert f"pid {new} took the session over from pid {old}" in p.stdout, p.stdout
    assert new != old
    assert wait_gone(old, 10), f"the old daemon {old} did not exit"
    return new


def switch(mnt, layers, *args):
    return run([MOSAIC, "switch", mnt, "-s", layers.store, "--keyring", layers.keyring, *args],
               env=layers.env)


def snapshot_of(layers, tmp_path, name, digests, upper=None, extra=()):
    """The tree a fresh mount of digests (over a copy of upper) shows."""
    args = mount_args(layers, digests, extra=extra)
    if upper is not None:
        copy = tmp_path / f"{name}-upper"
        run(["cp", "-a", "--preserve=all", upper, copy])
        args += ["--upper", copy, "--writable=fuse"]
    with mosaic_mounted(args, tmp_path / name, layers.env) as m:
        return tree_snapshot(m.mnt)


# ---- restarts under load ----------------------------------------------------------------------

CWD_WORKER = r"""
import os, sys
stop, expect, write = sys.argv[1], sys.argv[2].encode(), sys.argv[3] == "1"
n = 0
while not os.path.exists(stop):
    with open("chmod", "rb") as f:
        assert f.read() == expect, "chmod changed"
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert "sub" in os.listdir(".")
    os.stat("sub/deep")
    if write:
        with open("cwd-written", "w") as f:
            f.write(str(n))
    n += 1
print(n)
"""


def _reader(mnt, i, expect, stop, errors, ops):
    """Reads every stable file (dropping its pages, so the next read reaches the daemon) and
    looks up a name never seen before (a lookup the kernel cannot answer from its cache)."""
    k = 0
    while not stop.is_set():
        for rel, data in expect.items():
            try:
                with open(mnt / rel, "rb") as f:
                    got = f.read()
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                if got != data:
                    errors.append(f"reader {i}: {rel}: {got[:40]!r} != {data[:40]!r}")
                ops[i] += 1
                try:
                    os.lstat(mnt / f"etc/missing-{i}-{k}")
                    errors.append(f"reader {i}: etc/missing-{i}-{k} exists")
                except FileNotFoundError:
                    pass
                k += 1
                ops[i] += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported
                errors.append(f"reader {i}: {rel}: {e!r}\n{traceback.format_exc()}")


def _writer(mnt, i, stop, errors, ops, rounds):
    """The workload of test_concurrent_copy_ups_of_many_files, round after round: append a line
    to each shared file (copy-ups at first), rewrite a file of its own beside it, read it back."""
    k = 0
    while not stop.is_set():
        try:
            for n in NAMES:
                with open(mnt / n, "ab") as f:
                    f.write(f"{i}.{k}\n".encode())
                ops[i] += 1
                own = f"{i}.{k}\n".encode() * (i + 1)
                (mnt / f"{n}.{i}").write_bytes(own)
                got = (mnt / f"{n}.{i}").read_bytes()
                if got != own:
                    errors.append(f"writer {i}: {n}.{i}: {got[:40]!r} != {own[:40]!r}")
                ops[i] += 2
            k += 1
            rounds[i] = k
        except Exception as e:  # noqa: BLE001 - every failure is reported
            errors.append(f"writer {i} round {k}: {e!r}\n{traceback.format_exc()}")
            return


@pytest.mark.parametrize("mode", ["read-only", "fuse"])
def test_restarts_under_parallel_readers_and_writers(layers, tmp_path, mode):
    writable = mode == "fuse"
    upper = tmp_path / "upper" if writable else None
    with served(mount_args(layers, upper=upper), tmp_path / "mnt", layers.env) as m:
        mnt = m.mnt
        orig = {n: (mnt / n).read_bytes() for n in NAMES}
        stable = {rel: (mnt / rel).read_bytes()
                  for rel in ("etc/attrs", "hl/one", "hl2/a", "etc/chmod", "etc/chown",
                              "etc/tolink", "emptyme/a", "bin/suid", "etc/sub/deep", "opq/new")
                  if not (writable and rel in NAMES)}
        stop, errors = threading.Event(), []
        ops, wops, rounds = [0] * THREADS, [0] * THREADS, [0] * THREADS
        threads = [threading.Thread(target=_reader, args=(mnt, i, stable, stop, errors, ops))
                   for i in range(THREADS)]
        if writable:
            threads += [threading.Thread(target=_writer,
                                         args=(mnt, i, stop, errors, wops, rounds))
                        for i in range(THREADS)]
        # held open across every restart: for writing (a new file and a copied-up lower one)
        # in fuse mode, for reading in both
        reading = open(mnt / "etc/chmod", "rb")
        held_new = open(mnt / "etc/held", "w") if writable else None
        held_lower = open(mnt / "etc/append", "a") if writable else None
        stop_file = tmp_path / "stop"
        cwd_proc = subprocess.Popen(
            [sys.executable, "-c", CWD_WORKER, str(stop_file), stable["etc/chmod"].decode(),
             "1" if writable else "0"],
            cwd=mnt / "etc", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pids, at_restart = [m.pid], []
        try:
            for t in threads:
                t.start()
            t0 = time.monotonic()
            time.sleep(0.3)
            for j in range(RESTARTS):
                at_restart.append(sum(ops) + sum(wops))
                pids.append(restart(m, layers.env))
                assert os.pread(reading.fileno(), 100, 0) == stable["etc/chmod"]
                if writable:
                    held_new.write(f"line {j}\n")
                    held_new.flush()
                    os.fsync(held_new.fileno())
                    held_lower.write(f"after restart {j}\n")
                    held_lower.flush()
            at_restart.append(sum(ops) + sum(wops))
            time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - t0)))
        finally:
            stop.set()
            stop_file.write_text("")
            for t in threads:
                t.join(60)
            try:
                out, err = cwd_proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                cwd_proc.kill()
                out, err = cwd_proc.communicate()
            reading.close()
            for f in (held_new, held_lower):
                if f:
                    f.close()
        assert not [t for t in threads if t.is_alive()], "threads hung"
        assert not errors, f"{len(errors)} failed operations:\n" + "\n".join(errors[:10])
        assert len(set(pids)) == RESTARTS + 1, f"the daemon pid did not change each time: {pids}"
        assert all(n > 0 for n in ops) and (not writable or all(n > 0 for n in wops)), \
            (ops, wops)
        total = sum(ops) + sum(wops)
        assert total > at_restart[-1] > at_restart[0], \
            f"no operations between or after the restarts: {at_restart}, {total}"
        assert cwd_proc.returncode == 0 and int(out) > 0, err
        if writable:
            # every line each writer appended, its own in its order, after the lower content
            for n in NAMES:
                data = (mnt / n).read_bytes()
                assert data.startswith(orig[n]), n
                lines = data[len(orig[n]):].decode().split()
                for i in range(THREADS):
                    mine = [x for x in lines if x.split(".")[0] == str(i)]
                    assert mine == [f"{i}.{k}" for k in range(rounds[i])], (n, i, mine[-3:])
                assert len(lines) == sum(rounds), n
                for i in range(THREADS):
                    k = rounds[i] - 1
                    assert (mnt / f"{n}.{i}").read_bytes() == f"{i}.{k}\n".encode() * (i + 1)
            assert (mnt / "etc/held").read_text() == "".join(
                f"line {j}\n" for j in range(RESTARTS))
            assert (mnt / "etc/append").read_text() == "line 1\n" + "".join(
                f"after restart {j}\n" for j in range(RESTARTS))
            assert (mnt / "etc/cwd-written").read_text() == str(int(out) - 1)
        live = tree_snapshot(mnt)
    if writable:  # what the restarted daemons wrote is in the upper: a fresh mount shows it
        with mosaic_mounted(mount_args(layers, upper=upper), tmp_path / "mnt", layers.env) as f:
            assert_same_tree(tree_snapshot(f.mnt), live, "a fresh mount of the upper")


# ---- what a restart keeps ----------------------------------------------------------------------

def test_restart_keeps_history_rollback_switch_and_dev_watching(layers, tmp_path):
    dev = tmp_path / "dev"
    write_file(dev / "etc/dev-file", "dev 0\n")
    dev_arg = ["--dev", dev]
    with served(mount_args(layers, [layers.d["base"]], extra=dev_arg), tmp_path / "mnt",
                layers.env) as m:
        switch(m.mnt, layers, layers.d["base"], layers.d["top"])
        switch(m.mnt, layers, "--remove", "top", "--replace", f"base={layers.d['base']}",
               "--add", layers.d["v3"])
        before = status(m.mnt, layers.env)
        assert len(before["history"]) == 2 and before["can_roll_back"] == 2, before
        view = tree_snapshot(m.mnt)
        restart(m, layers.env)
        after = status(m.mnt, layers.env)
        for k in ("history", "can_roll_back", "generation", "fragments", "dev", "index"):
            assert after[k] == before[k], (k, after[k], before[k])
        assert_same_tree(tree_snapshot(m.mnt), view, "after the restart")
        # the dev directory is still watched, by the new daemon
        t0 = time.monotonic()
        (dev / "etc/dev-file").write_text("dev 1\n")
        took = wait_until(lambda: (m.mnt / "etc/dev-file").read_text() == "dev 1\n")
        assert took is not None, "an edit after the restart did not show"
        assert time.monotonic() - t0 < 1.0
        # rollback after the restart: back to base + top (+ dev on top)
        run([MOSAIC, "rollback", m.mnt], env=layers.env)
        assert len(status(m.mnt, layers.env)["history"]) == 3
        rolled = tree_snapshot(m.mnt)
        # a switch after the restart, then another restart, and the history goes on
        switch(m.mnt, layers, layers.d["base"], layers.d["v3"])
        switched = tree_snapshot(m.mnt)
        restart(m, layers.env)
        st = status(m.mnt, layers.env)
        assert len(st["history"]) == 4 and st["history"][:2] == before["history"], st["history"]
        assert_same_tree(tree_snapshot(m.mnt), switched, "after the second restart")
    want = snapshot_of(layers, tmp_path, "fresh-top", [layers.d["base"], layers.d["top"]],
                       extra=dev_arg)
    assert_same_tree(rolled, want, "rollback after a restart vs a fresh mount")
    want = snapshot_of(layers, tmp_path, "fresh-v3", [layers.d["base"], layers.d["v3"]],
                       extra=dev_arg)
    assert_same_tree(switched, want, "a switch after a restart vs a fresh mount")


# ---- a daemon that is gone ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["read-only", "fuse"])
def test_sigkill_then_restart_mounts_what_was_served_last(layers, tmp_path, mode):
    upper = tmp_path / "upper" if mode == "fuse" else None
    target = [layers.d["base"], layers.d["top"], layers.d["v3"]]
    with served(mount_args(layers, [layers.d["base"]], upper=upper), tmp_path / "mnt",
                layers.env) as m:
        if upper:
            with open(m.mnt / "etc/keep", "ab") as f:  # a copy-up
                f.write(b"changed in the upper\n")
            os.unlink(m.mnt / "etc/gone")  # a whiteout
            (m.mnt / "newdir").mkdir()
            (m.mnt / "newdir/file").write_text("new\n")
        switch(m.mnt, layers, *target)
        served_view = tree_snapshot(m.mnt)
        os.kill(m.pid, signal.SIGKILL)
        assert wait_gone(m.pid)
        p = run([MOSAIC, "restart", m.mnt], env=layers.env)
        assert "was gone: mounted again with what it served last" in p.stdout, p.stdout
        new = m.note_pid()
        assert new != m.pid and pid_alive(new)
        st = status(m.mnt, layers.env)
        assert st["running"] and st["mode"] == mode, st
        assert [os.path.basename(f) for f in st["fragments"]] == \
            [f"{d}.sqfs" for d in target], st["fragments"]
        assert_same_tree(tree_snapshot(m.mnt), served_view, "remounted after SIGKILL")
        if upper:
            assert (upper / "etc/keep").read_text() == "keep\nchanged in the upper\n"
            assert (upper / "newdir/file").read_text() == "new\n"
            assert os.path.exists(upper / "etc/gone")  # the whiteout
            (m.mnt / "etc/after").write_text("written after the remount\n")
        # and it serves on: a switch and a restart work on the remounted daemon
        switch(m.mnt, layers, layers.d["base"], layers.d["top"])
        restart(m, layers.env)
        now = tree_snapshot(m.mnt)
    want = snapshot_of(layers, tmp_path, "fresh", [layers.d["base"], layers.d["top"]],
                       upper=upper)
    assert_same_tree(now, want, "after SIGKILL, restart, switch, restart vs a fresh mount")


@pytest.fixture(scope="module")
def many(layers):
    """Forty more fragments, each changing /etc/common and adding 256 KiB of its own: a switch
    to all of them has the daemon open and verify forty new fragments, a window to kill it in."""
    srcs = []
    for j in range(40):
        src = layers.base / f"many/m{j:02}"
        write_file(src / "etc/common", f"from m{j:02}\n")
        for k in range(4):
            write_file(src / f"many/m{j:02}/f{k}", os.urandom(64 << 10))
        srcs.append(src)
    out = run([MOSAIC, "fragment", "create", *srcs, "-o", layers.store, "--sign",
               layers.signer.fingerprint, "--source-date-epoch", EPOCH, "-l", "1", "--json"],
              env=layers.env).stdout
    by = {os.path.realpath(r["source"]): r["digest"] for r in json.loads(out)}
    return [by[os.path.realpath(s)] for s in srcs]


def _kill_when_open(pid, names, k, sw, timeout=30.0):
    """SIGKILLs pid once it holds k of the files named names open (k=0: at once, or as soon as
    the switch process sw ended); returns how many it held."""
    deadline = time.monotonic() + timeout
    n = 0
    while k and sw.poll() is None and time.monotonic() < deadline:
        n = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    n += os.path.basename(os.readlink(f"/proc/{pid}/fd/{fd}")) in names
        if n >= k:
            break
    os.kill(pid, signal.SIGKILL)
    return n


@pytest.mark.parametrize("mode", ["read-only", "fuse"])
def test_sigkill_during_a_switch_serves_old_or_new_in_full(layers, many, tmp_path, mode):
    """The daemon is killed while it verifies the new fragments of a switch (after the first,
    the tenth, ... of them is open), just after, and at a few times from the switch's start;
    mosaic restart then serves the old or the new composition, each in full (a walk equal to a
    fresh mount's), and the new one whenever mosaic switch said it switched."""
    old = layers.digests
    new = [layers.d["base"], *many]
    new_names = {f"{d}.sqfs" for d in many}
    upper = None
    if mode == "fuse":
        upper = tmp_path / "upper"
        write_file(upper / "etc/keep", "the upper's keep\n")
        write_file(upper / "etc/common", "the upper's common\n")
    snaps = {"old": snapshot_of(layers, tmp_path, "fresh-old", old, upper=upper),
             "new": snapshot_of(layers, tmp_path, "fresh-new", new, upper=upper)}
    assert snaps["old"] != snaps["new"]
    seen = []
    # (new fragments open in the daemon, or None for a delay) and the delay in seconds
    for k, delay in ((1, 0), (10, 0), (25, 0), (40, 0), (None, 0), (None, 0.01),
                     (None, 0.03), (None, 0.06)):
        # a copy of the upper per round: a remount after SIGKILL must find it as it was
        args = mount_args(layers, old)
        if upper is not None:
            u = tmp_path / f"upper-{len(seen)}"
            run(["cp", "-a", "--preserve=all", upper, u])
            args += ["--upper", u, "--writable=fuse"]
        with served(args, tmp_path / "mnt", layers.env) as m:
            sw = subprocess.Popen([MOSAIC, "switch", m.mnt, "-s", layers.store, "--keyring",
                                   layers.keyring, *new], env=layers.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                if k is None:
                    time.sleep(delay)
                held = _kill_when_open(m.pid, new_names, k or 0, sw)
                assert wait_gone(m.pid)
                sw.communicate(timeout=60)
            finally:
                if sw.poll() is None:
                    sw.kill()
                    sw.wait()
            p = run([MOSAIC, "restart", m.mnt], env=layers.env)
            assert "was gone" in p.stdout, p.stdout
            m.note_pid()
            got = tree_snapshot(m.mnt)
            which = [w for w, s in snaps.items() if s == got]
            when = f"killed with {held} new fragments open" if k else f"killed at {delay} s"
            assert which, (f"{when}: the remount serves neither the old nor the new "
                           f"composition in full: " + "; ".join(
                               f"{w}: {sum(got.get(p) != s.get(p) for p in set(got) | set(s))}"
                               f" paths differ" for w, s in snaps.items()))
            if sw.returncode == 0:
                assert which == ["new"], f"{when}: mosaic switch said it switched"
            seen.append((when, which[0], sw.returncode))
    print(f"\n{mode}: " + "; ".join(f"{w} -> {x} (switch exit {c})" for w, x, c in seen))


# ---- who may restart -----------------------------------------------------------------------------

def _control_path(mnt):
    """The daemon's control socket (fusefs/lifecycle.c: /run/mosaic/ and 16 hex digits of the
    SHA-256 of the real mountpoint, for a root mount)."""
    real = os.path.realpath(mnt)
    return f"/run/mosaic/{hashlib.sha256(real.encode()).hexdigest()[:16]}/control"


# One request to a control socket; the answer is one line. A daemon that refuses answers at
# once and closes with the request unread: sending may then fail with EPIPE, and the end of the
# answer come as ECONNRESET rather than EOF. The answer is in the socket all the same.
CONTROL_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(sys.argv[2].encode())
    s.shutdown(socket.SHUT_WR)
except (BrokenPipeError, ConnectionResetError):
    pass
data = b""
while not data.endswith(b"\n"):
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"""


def _control(mnt, request):
    """One request to the daemon's control socket, as root; its answer."""
    p = run([sys.executable, "-c", CONTROL_CLIENT, _control_path(mnt), json.dumps(request)])
    return json.loads(p.stdout)


@pytest.fixture
def shared_mount(layers, shared_tmp):
    """A root mount at a path other users can reach, of fragments they can read."""
    store = shared_tmp / "store"
    shutil.copytree(layers.store, store)
    for p in [store, *store.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    keyring = shared_tmp / "keyring.gpg"
    keyring.write_bytes(Path(layers.keyring).read_bytes())
    keyring.chmod(0o644)
    args = ["-s", store, "--keyring", keyring, layers.d["base"], layers.d["top"]]
    with served(args, shared_tmp / "mnt", layers.env) as m:
        m.store, m.keyring = store, keyring
        yield m


def test_nobody_may_not_restart_or_switch_a_root_mount(layers, shared_mount):
    m = shared_mount
    before = status(m.mnt, layers.env)
    view = tree_snapshot(m.mnt)
    attempts = [["restart", m.mnt], ["rollback", m.mnt],
                ["switch", m.mnt, "-s", m.store, "--keyring", m.keyring, layers.d["base"]],
                ["switch", m.mnt, "-s", m.store, "--keyring", m.keyring, "--remove", "top"]]
    for a in attempts:
        p = run([MOSAIC, *a], user=NOBODY, check=False)
        assert p.returncode != 0, f"nobody could {a[0]}: {p.stdout}"
    # the daemon itself refuses every request from someone else, saying who may
    for op in ({"op": "handover"}, {"op": "rollback"},
               {"op": "switch", "index": "/nonexistent", "images": ["/nonexistent"]}):
        out = run(["/usr/bin/python3", "-c", CONTROL_CLIENT, _control_path(m.mnt),
                   json.dumps(op)], user=NOBODY).stdout
        answer = json.loads(out)
        assert answer["ok"] is False and "only root or the mount's owner (uid 0)" in \
            answer["error"], answer
    after = status(m.mnt, layers.env)
    assert after["pid"] == before["pid"] and pid_alive(before["pid"])
    assert after["fragments"] == before["fragments"] and after.get("history") is None
    assert_same_tree(tree_snapshot(m.mnt), view, "after nobody's attempts")
    assert _control(m.mnt, {"op": "ping"})["pid"] == before["pid"]


def test_nobody_hears_why_it_may_not_restart(layers, shared_mount):
    m = shared_mount
    for a in (["restart", m.mnt], ["rollback", m.mnt]):
        p = run([MOSAIC, *a], user=NOBODY, check=False)
        assert p.returncode != 0
        assert ("only root or the mount's owner" in p.stderr
                or "ermission denied" in p.stderr), p.stderr





@pytest.mark.parametrize("restarts,dev", [
    (0, False), (0, True),
    pytest.param(1, False), pytest.param(1, True)])
def test_umount_leaves_no_state_behind(layers, tmp_path, restarts, dev):
    extra = []
    if dev:
        write_file(tmp_path / "dev/etc/x", "x\n")
        extra = ["--dev", tmp_path / "dev"]
    with served(mount_args(layers, extra=extra), tmp_path / "mnt", layers.env) as m:
        state = Path(_control_path(m.mnt)).parent
        assert (state / "state.json").exists()
        if dev:
            (tmp_path / "dev/etc/x").write_text("y\n")
            assert wait_until(lambda: (m.mnt / "etc/x").read_text() == "y\n")
        for _ in range(restarts):
            restart(m, layers.env)
    assert not state.exists(), sorted(os.listdir(state))
