"""Live dev directories: `mosaic mount ... --dev DIR` and a manifest's `{path: DIR, dev: true}`
serve DIR as it is now, on top of the composition. Every kind of edit made in DIR must show in
the mount (and in a chroot and a container of it) within 100 ms, to processes that hold files
and directories of it too; status says it is live and unsigned, export refuses it, a switch keeps
it on top. The root is the host's own shell and tools (livemount.build_host_root), so nothing
here needs the network."""

import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import MOSAIC, create, mosaic_mounted, run, write_file
from livemount import build_host_root, chroot, median, status, wait_until

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

EPOCH = "1700000000"
# The requirement: an edit in a dev directory shows in the mount within this.
LIMIT = 0.100
# Each kind of edit is measured this many times; the test asserts on the median, since a
# loaded 2-core machine can stall any one measurement (every one must still show, within 5 s).
ROUNDS = 5


@pytest.fixture(scope="module")
def root(signer, tmp_path_factory):
    """A signed fragment of a root chroot and runc can run, and one more to switch to."""
    base = tmp_path_factory.mktemp("dev")
    store = base / "store"
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"))
    src = build_host_root(base / "root")
    write_file(src / "srv/from-root", "root\n")
    write_file(src / "srv/shadowed", "from the root fragment\n")
    digest = create(store, src, env, "--sign", signer.fingerprint, "--name", "root",
                    "--version", "1", "--source-date-epoch", EPOCH)
    extra = base / "extra"
    write_file(extra / "srv/shadowed", "from the extra fragment\n")
    write_file(extra / "srv/from-extra", "extra\n")
    extra_digest = create(store, extra, env, "--sign", signer.fingerprint, "--name", "extra",
                          "--version", "1", "--source-date-epoch", EPOCH)
    return SimpleNamespace(store=store, env=env, keyring=signer.keyring, digest=digest,
                           extra=extra_digest, signer=signer)


def mount_args(root, *dev, digests=None):
    args = ["-s", root.store, "--keyring", root.keyring, *(digests or [root.digest])]
    for d in dev:
        args += ["--dev", d]
    return args


# ---- every kind of edit ------------------------------------------------------------------------

def _read(p):
    return Path(p).read_bytes()


def _gone(p):
    return not os.path.lexists(p)


class Edit:
    """One kind of edit: prepare(d, r) sets up DIR (not timed), act(d, r) is the edit timed from
    its syscall, seen(m, r) says the mount shows it, in_chroot(r) is a shell check of the same
    in a chroot of the mount. r numbers the round, so every round has names of its own."""

    def __init__(self, name, act, seen, in_chroot, prepare=None, ready=None):
        self.name, self.act, self.seen, self.in_chroot = name, act, seen, in_chroot
        self.prepare, self.ready = prepare, ready


def _append(p, data):
    with open(p, "ab") as f:
        f.write(data)


def _overwrite(p, data):
    with open(p, "r+b") as f:
        f.write(data)


def _replace(d, name, data):
    tmp = d / f".{name}.tmp"
    tmp.write_bytes(data)
    os.rename(tmp, d / name)


EDITS = [
    Edit("create",
         lambda d, r: (d / f"srv/new{r}").write_bytes(b"created %d\n" % r),
         lambda m, r: _read(m / f"srv/new{r}") == b"created %d\n" % r,
         lambda r: f'[ "$(cat /srv/new{r})" = "created {r}" ]'),
    Edit("write",
         lambda d, r: _append(d / f"srv/w{r}", b" and more\n"),
         lambda m, r: _read(m / f"srv/w{r}") == b"first and more\n",
         lambda r: f'[ "$(cat /srv/w{r})" = "first and more" ]',
         prepare=lambda d, r: (d / f"srv/w{r}").write_bytes(b"first"),
         ready=lambda m, r: _read(m / f"srv/w{r}") == b"first"),
    # Same size, same inode: only the content changes, and the page cache holds the old one
    # (ready reads it through the mount).
    Edit("write, same size",
         lambda d, r: _overwrite(d / f"srv/s{r}", b"BBBB%d\n" % r),
         lambda m, r: _read(m / f"srv/s{r}") == b"BBBB%d\n" % r,
         lambda r: f'[ "$(cat /srv/s{r})" = "BBBB{r}" ]',
         prepare=lambda d, r: (d / f"srv/s{r}").write_bytes(b"AAAA%d\n" % r),
         ready=lambda m, r: _read(m / f"srv/s{r}") == b"AAAA%d\n" % r),
    Edit("replace by rename",
         lambda d, r: _replace(d / "srv", f"e{r}", b"edited %d\n" % r),
         lambda m, r: _read(m / f"srv/e{r}") == b"edited %d\n" % r,
         lambda r: f'[ "$(cat /srv/e{r})" = "edited {r}" ]',
         prepare=lambda d, r: (d / f"srv/e{r}").write_bytes(b"original\n"),
         ready=lambda m, r: _read(m / f"srv/e{r}") == b"original\n"),
    Edit("truncate",
         lambda d, r: os.truncate(d / f"srv/t{r}", 4),
         lambda m, r: _read(m / f"srv/t{r}") == b"0123",
         lambda r: f'[ "$(stat -c %s /srv/t{r})" = 4 ] && [ "$(cat /srv/t{r})" = 0123 ]',
         prepare=lambda d, r: (d / f"srv/t{r}").write_bytes(b"0123456789\n"),
         ready=lambda m, r: _read(m / f"srv/t{r}") == b"0123456789\n"),
    Edit("delete",
         lambda d, r: os.unlink(d / f"srv/d{r}"),
         lambda m, r: _gone(m / f"srv/d{r}"),
         lambda r: f'[ ! -e /srv/d{r} ] && for f in $(ls /srv); do [ $f != d{r} ] || exit 1; done',
         prepare=lambda d, r: (d / f"srv/d{r}").write_bytes(b"delete me\n"),
         ready=lambda m, r: _read(m / f"srv/d{r}") == b"delete me\n"),
    Edit("rename",
         lambda d, r: os.rename(d / f"srv/r{r}", d / f"srv/r{r}.moved"),
         lambda m, r: _gone(m / f"srv/r{r}") and _read(m / f"srv/r{r}.moved") == b"move me\n",
         lambda r: f'[ ! -e /srv/r{r} ] && [ "$(cat /srv/r{r}.moved)" = "move me" ]',
         prepare=lambda d, r: (d / f"srv/r{r}").write_bytes(b"move me\n"),
         ready=lambda m, r: _read(m / f"srv/r{r}") == b"move me\n"),
    Edit("chmod",
         lambda d, r: os.chmod(d / f"srv/m{r}", 0o750),
         lambda m, r: stat.S_IMODE(os.lstat(m / f"srv/m{r}").st_mode) == 0o750,
         lambda r: f'[ "$(stat -c %a /srv/m{r})" = 750 ]',
         prepare=lambda d, r: write_file(d / f"srv/m{r}", "mode\n", mode=0o644),
         ready=lambda m, r: stat.S_IMODE(os.lstat(m / f"srv/m{r}").st_mode) == 0o644),
    Edit("chown",
         lambda d, r: os.chown(d / f"srv/o{r}", 1234, 5678),
         lambda m, r: (os.lstat(m / f"srv/o{r}").st_uid,
                       os.lstat(m / f"srv/o{r}").st_gid) == (1234, 5678),
         lambda r: f'[ "$(stat -c %u:%g /srv/o{r})" = 1234:5678 ]',
         prepare=lambda d, r: write_file(d / f"srv/o{r}", "owner\n"),
         ready=lambda m, r: os.lstat(m / f"srv/o{r}").st_uid == 0),
    Edit("symlink",
         lambda d, r: os.symlink(f"target-{r}", d / f"srv/l{r}"),
         lambda m, r: os.readlink(m / f"srv/l{r}") == f"target-{r}",
         lambda r: f'[ "$(readlink /srv/l{r})" = target-{r} ]'),
    Edit("xattr",
         lambda d, r: os.setxattr(d / f"srv/x{r}", "user.mosaic", b"v%d" % r),
         lambda m, r: os.getxattr(m / f"srv/x{r}", "user.mosaic") == b"v%d" % r,
         lambda r: f'[ "$(getfattr --only-values -n user.mosaic /srv/x{r})" = v{r} ]',
         prepare=lambda d, r: write_file(d / f"srv/x{r}", "xattr\n"),
         ready=lambda m, r: _read(m / f"srv/x{r}") == b"xattr\n"),
    # mkdir and a file in it at once: timed from the mkdir to the file showing.
    Edit("mkdir + file inside",
         lambda d, r: ((d / f"srv/dir{r}").mkdir(),
                       (d / f"srv/dir{r}/inner").write_bytes(b"inner %d\n" % r)),
         lambda m, r: _read(m / f"srv/dir{r}/inner") == b"inner %d\n" % r,
         lambda r: f'[ -d /srv/dir{r} ] && [ "$(cat /srv/dir{r}/inner)" = "inner {r}" ]'),
    # A directory made earlier (and already served) is watched too.
    Edit("file in a new directory",
         lambda d, r: (d / f"srv/nd{r}/later").write_bytes(b"later\n"),
         lambda m, r: _read(m / f"srv/nd{r}/later") == b"later\n",
         lambda r: f'[ "$(cat /srv/nd{r}/later)" = later ]',
         prepare=lambda d, r: (d / f"srv/nd{r}").mkdir(),
         ready=lambda m, r: (m / f"srv/nd{r}").is_dir()),
    Edit("rmdir",
         lambda d, r: os.rmdir(d / f"srv/rd{r}"),
         lambda m, r: _gone(m / f"srv/rd{r}"),
         lambda r: f'[ ! -e /srv/rd{r} ]',
         prepare=lambda d, r: (d / f"srv/rd{r}").mkdir(),
         ready=lambda m, r: (m / f"srv/rd{r}").is_dir()),
]


def test_every_kind_of_edit_shows_within_100_ms(root, tmp_path):
    dev = tmp_path / "dev"
    (dev / "srv").mkdir(parents=True)
    timings = {e.name: [] for e in EDITS}
    with mosaic_mounted(mount_args(root, dev), tmp_path / "mnt", root.env) as m:
        for r in range(ROUNDS):
            for e in EDITS:
                if e.prepare:
                    e.prepare(dev, r)
                    assert wait_until(lambda: e.ready(m.mnt, r)) is not None, \
                        f"{e.name}: what was prepared did not show"
                    time.sleep(0.01)  # its switch is done: the next one is the edit's own
                t0 = time.monotonic()
                e.act(dev, r)
                took = wait_until(lambda: e.seen(m.mnt, r))
                assert took is not None, f"{e.name} (round {r}): not shown within 5 s"
                timings[e.name].append(time.monotonic() - t0)
                c = chroot(m.mnt, e.in_chroot(r), check=False)
                assert c.returncode == 0, f"{e.name} (round {r}): in a chroot: {c.stderr}"
        switches = status(m.mnt, root.env)["dev_switches"]
    report = {k: (round(median(v) * 1000, 1), round(max(v) * 1000, 1))
              for k, v in timings.items()}
    print("\ndev edit -> visible in the mount, ms (median, max):")
    for k, (med, mx) in report.items():
        print(f"  {k:26} {med:7.1f} {mx:7.1f}")
    slow = {k: v for k, v in report.items() if v[0] > LIMIT * 1000}
    assert not slow, f"edits slower than {LIMIT * 1000:.0f} ms (median, max): {slow}"
    assert switches >= len(EDITS), f"only {switches} dev switches"


# ---- processes using the mount while it changes ------------------------------------------------

def test_long_running_readers_see_each_edit_and_nothing_breaks(root, tmp_path):
    """A shell in a chroot of the mount rereads a file in a loop, a thread reads it too, and a
    process works in a directory of the dev tree (its cwd) while the file is replaced (as an
    editor does) and rewritten in place (same size, one write): every read is one whole
    version, the last one shows, and no one sees an error."""
    dev = tmp_path / "dev"
    write_file(dev / "srv/conf", "v000\n")
    write_file(dev / "srv/work/a", "a\n")
    with mosaic_mounted(mount_args(root, dev), tmp_path / "mnt", root.env) as m:
        shell = subprocess.Popen(
            ["chroot", m.mnt, "/bin/sh", "-c",
             'while :; do read l < /srv/conf || exit 3; echo "$l"; '
             '[ "$l" = v040 ] && exit 0; sleep 0.005; done'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # cwd inside the dev tree: relative reads and listings go on across every switch
        worker = subprocess.Popen(
            [sys.executable, "-c",
             "import os, sys, time\n"
             "end = time.monotonic() + 60\n"
             "n = 0\n"
             "while not os.path.exists('stop') and time.monotonic() < end:\n"
             "    assert open('a').read() == 'a\\n'\n"
             "    assert 'a' in os.listdir('.')\n"
             "    n += 1\n"
             "print(n)\n"],
            cwd=m.mnt / "srv/work", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        errors, seen = [], set()
        stop = threading.Event()

        def reader():
            while not stop.is_set():
                try:
                    seen.add((m.mnt / "srv/conf").read_text())
                except OSError as e:
                    errors.append(repr(e))

        t = threading.Thread(target=reader)
        t.start()
        try:
            for i in range(1, 41):
                if i % 2:
                    _replace(dev / "srv", "conf", f"v{i:03}\n".encode())
                else:
                    _overwrite(dev / "srv/conf", f"v{i:03}\n".encode())  # same size
                time.sleep(0.02)
            (dev / "srv/work/stop").write_text("")
            out, err = shell.communicate(timeout=30)
            wout, werr = worker.communicate(timeout=30)
        finally:
            stop.set()
            t.join(10)
            for p in (shell, worker):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert shell.returncode == 0, f"the chroot's reader exited {shell.returncode}: {err}"
        lines = out.split()
        assert lines[-1] == "v040"
        valid = {f"v{i:03}" for i in range(41)}
        assert set(lines) <= valid, f"reads that were no whole version: {set(lines) - valid}"
        assert worker.returncode == 0 and int(wout) > 0, werr
        assert not errors, errors[:5]
        assert seen <= {f"v{i:03}\n" for i in range(41)}, seen
        assert (m.mnt / "srv/conf").read_text() == "v040\n"


def test_a_file_held_open_sees_an_in_place_edit(root, tmp_path):
    dev = tmp_path / "dev"
    write_file(dev / "srv/held", "version1\n")
    with mosaic_mounted(mount_args(root, dev), tmp_path / "mnt", root.env) as m:
        with open(m.mnt / "srv/held", "rb") as f:
            assert os.pread(f.fileno(), 100, 0) == b"version1\n"
            with open(dev / "srv/held", "r+b") as w:  # in place, as `echo > file` does
                w.write(b"v3 longer content\n")
                w.truncate()
            assert wait_until(lambda: _read(m.mnt / "srv/held") == b"v3 longer content\n")
            # on the directory itself (or a bind mount of it) the open fd reads the new content
            assert os.pread(f.fileno(), 100, 0) == b"v3 longer content\n"
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(f.fileno(), 100, 0) == b"v3 longer content\n"


# ---- a manifest's dev: true directory ----------------------------------------------------------

def test_manifest_dev_directory_is_served_live(repos, tmp_path, env, signer):
    """A manifest with a base tarball, a package from the test repository and a directory with
    dev: true in the middle of its fragments: mosaic build freezes the directory into its lock,
    but the MANIFEST mounted serves the directory live, in its place (above the base, below
    nothing but what the manifest put above it)."""
    base = tmp_path / "rootfs"
    write_file(base / "etc/os-release", "ID=tarball\n")
    write_file(base / "etc/motd", "from the base\n")
    run(["tar", "-C", base, "-cf", tmp_path / "rootfs.tar", "."])
    dev = tmp_path / "overlay"
    write_file(dev / "etc/os-release", "ID=overlay\n")
    above = tmp_path / "above"
    write_file(above / "etc/above", "above the dev directory\n")
    write_file(above / "etc/motd", "from above\n")
    m = tmp_path / "t.yaml"
    m.write_text(f"name: t\narch: amd64\nrepositories:\n  - name: local\n    type: deb\n"
                 f"    uri: {repos.deb_url}\n    suites: [stable]\n"
                 f"    keyring: {repos.key.keyring}\npackages:\n  - app\n"
                 f"base:\n  image: rootfs.tar\n"
                 f"fragments:\n  - path: overlay\n    dev: true\n  - path: above\n")
    store = tmp_path / "store"
    run([MOSAIC, "build", m, "-s", store, "--sign", signer.fingerprint, "--no-configure"],
        env=env)
    with mosaic_mounted([m, "-s", store, "--keyring", signer.keyring], tmp_path / "mnt",
                        env) as mt:
        st = status(mt.mnt, env)
        assert st["dev"] == [str(dev)], st
        assert (mt.mnt / "etc/os-release").read_text() == "ID=overlay\n"
        assert (mt.mnt / "etc/motd").read_text() == "from above\n"
        took = []
        for i in range(3):
            t0 = time.monotonic()
            (dev / "etc/os-release").write_text(f"ID=edited-{i}\n")
            assert wait_until(lambda: (mt.mnt / "etc/os-release").read_text()
                              == f"ID=edited-{i}\n") is not None
            took.append(time.monotonic() - t0)
        assert median(took) < LIMIT, took  # the median of three: see ROUNDS
        # in the middle: what the manifest puts above it still wins
        (dev / "etc/motd").write_text("from the dev directory\n")
        (dev / "etc/new").write_text("new\n")
        assert wait_until(lambda: (mt.mnt / "etc/new").read_text() == "new\n") is not None
        assert (mt.mnt / "etc/motd").read_text() == "from above\n"
        assert (mt.mnt / "etc/above").exists()
        assert status(mt.mnt, env)["dev_switches"] >= 4


# ---- status, export, switch, bad input ----------------------------------------------------------

def test_status_says_live_and_unsigned_and_export_refuses(root, tmp_path):
    dev = tmp_path / "dev"
    write_file(dev / "srv/x", "x\n")
    with mosaic_mounted(mount_args(root, dev), tmp_path / "mnt", root.env) as m:
        text = run([MOSAIC, "status", m.mnt], env=root.env).stdout
        assert f"dev:            {dev} (live, unsigned)" in text, text
        st = status(m.mnt, root.env)
        assert st["dev"] == [str(dev)] and st["fragments"][-1] == str(dev), st
        before = st["dev_switches"]
        (dev / "srv/y").write_text("y\n")
        assert wait_until(lambda: status(m.mnt, root.env)["dev_switches"] > before)
        out = tmp_path / "out.tar"
        p = run([MOSAIC, "export", m.mnt, "--format", "tar", "-o", out], env=root.env,
                check=False)
        assert p.returncode == 2, (p.returncode, p.stderr)
        assert f"live dev directory {dev}" in p.stderr and "freeze it first" in p.stderr, \
            p.stderr
        assert f"mosaic fragment create {dev}" in p.stderr, p.stderr
        assert not list(tmp_path.glob("out.tar*")), "a refused export left files"
        # what it says to do works: the frozen directory exports
        frozen = create(root.store, dev, root.env, "--sign", root.signer.fingerprint,
                        "--name", "frozen")
        run([MOSAIC, "export", "-s", root.store, "--keyring", root.keyring, root.digest, frozen,
             "--format", "tar", "-o", out], env=root.env)
        assert "./srv/y" in run(["tar", "-tf", out]).stdout.split()


def test_switch_keeps_the_dev_directory_on_top(root, tmp_path):
    dev = tmp_path / "dev"
    write_file(dev / "srv/shadowed", "from the dev directory\n")
    with mosaic_mounted(mount_args(root, dev), tmp_path / "mnt", root.env) as m:
        assert (m.mnt / "srv/shadowed").read_text() == "from the dev directory\n"
        run([MOSAIC, "switch", m.mnt, "-s", root.store, "--keyring", root.keyring, root.digest,
             root.extra], env=root.env)
        st = status(m.mnt, root.env)
        assert st["fragments"][-1] == str(dev) and st["dev"] == [str(dev)], st
        assert (m.mnt / "srv/from-extra").read_text() == "extra\n"
        assert (m.mnt / "srv/shadowed").read_text() == "from the dev directory\n"
        # and still live
        t0 = time.monotonic()
        (dev / "srv/shadowed").write_text("edited after the switch\n")
        assert wait_until(lambda: (m.mnt / "srv/shadowed").read_text()
                          == "edited after the switch\n", timeout=5) is not None
        assert time.monotonic() - t0 < 5
        # a rollback keeps it too
        run([MOSAIC, "rollback", m.mnt], env=root.env)
        assert not (m.mnt / "srv/from-extra").exists()
        assert (m.mnt / "srv/shadowed").read_text() == "edited after the switch\n"
        assert status(m.mnt, root.env)["fragments"][-1] == str(dev)


def test_switch_add_keeps_the_dev_directory_on_top(root, tmp_path):
    dev = tmp_path / "dev"
    write_file(dev / "srv/shadowed", "from the dev directory\n")
    with mosaic_mounted(mount_args(root, dev), tmp_path / "mnt", root.env) as m:
        run([MOSAIC, "switch", m.mnt, "-s", root.store, "--keyring", root.keyring,
             "--add", root.extra], env=root.env)
        assert (m.mnt / "srv/from-extra").read_text() == "extra\n"
        assert status(m.mnt, root.env)["fragments"][-1] == str(dev)
        assert (m.mnt / "srv/shadowed").read_text() == "from the dev directory\n"


def test_two_dev_directories_the_later_on_top(root, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write_file(one / "srv/both", "one\n")
    write_file(one / "srv/only-one", "one\n")
    write_file(two / "srv/both", "two\n")
    with mosaic_mounted(mount_args(root, one, two), tmp_path / "mnt", root.env) as m:
        assert status(m.mnt, root.env)["dev"] == [str(one), str(two)]
        assert (m.mnt / "srv/both").read_text() == "two\n"
        os.unlink(two / "srv/both")  # the lower dev directory shows through
        assert wait_until(lambda: (m.mnt / "srv/both").read_text() == "one\n") is not None
        (one / "srv/only-one").write_text("edited\n")  # and is watched as well
        assert wait_until(lambda: (m.mnt / "srv/only-one").read_text() == "edited\n")
        assert chroot(m.mnt, "cat /srv/both /srv/only-one") == "one\nedited\n"


@pytest.mark.parametrize("what", ["file", "missing"])
def test_dev_must_be_a_directory(root, tmp_path, what):
    target = tmp_path / "not-a-dir"
    if what == "file":
        target.write_text("x\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = run([MOSAIC, "mount", *mount_args(root, target), mnt], env=root.env, check=False)
    try:
        assert p.returncode in (1, 2), (p.returncode, p.stderr)
        assert f"--dev {target}: not a directory" in p.stderr, p.stderr
        assert not os.path.ismount(mnt)
        assert run([MOSAIC, "status", mnt], env=root.env, check=False).returncode != 0
    finally:
        if os.path.ismount(mnt):
            run([MOSAIC, "umount", "--lazy", mnt], env=root.env, check=False)


# ---- a container --------------------------------------------------------------------------------

def test_container_sees_an_edit_without_restart(root, tmp_path):
    """runc runs a shell from the read-only mount (the host-tools root, so this is quick) with a
    --dev directory on top; an edit made on the host while the container runs shows inside."""
    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    dev = tmp_path / "dev"
    write_file(dev / "srv/conf", "before\n")
    name = f"mosaic-dev-{uuid.uuid4().hex[:12]}"
    with mosaic_mounted(mount_args(root, dev), rootfs, root.env) as m:
        run(["runc", "spec"], cwd=bundle)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = [
            "/bin/sh", "-c",
            'read l < /srv/conf; echo "$l"; i=0; '
            'while [ $i -lt 3000 ]; do read l < /srv/conf; '
            '[ "$l" = after ] && { echo "$l"; exit 0; }; sleep 0.01; i=$((i+1)); done; exit 4']
        spec["root"] = {"path": "rootfs", "readonly": True}
        (bundle / "config.json").write_text(json.dumps(spec))
        p = subprocess.Popen(["runc", "run", "--bundle", str(bundle), name],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = p.stdout.readline()
            assert first == "before\n", (first, p.stderr.read() if p.poll() is not None else "")
            (dev / "srv/conf").write_text("after\n")
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, (p.returncode, err)
            assert out == "after\n"
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            subprocess.run(["runc", "delete", "-f", name], capture_output=True)
        assert status(m.mnt, root.env)["pid"] == m.pid  # the same daemon all along
