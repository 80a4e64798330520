"""mosaic switch and mosaic rollback: a running mount switched to another composition without
unmounting it. After a switch every path shows the new composition at once, whatever the kernel
cached with its day-long timeouts (attributes, contents, listings, symlink targets, xattrs,
negative lookups); paths whose content did not change keep their inode number and changed ones
get a new one; a process keeps reading what it holds open. A failing --check switches back, and
no bad input or fault leaves the mount serving anything but the old composition or the new one.

The quick tests use small signed fragments made at test time (and a shell copied from the host
for the chroot checks); the slow ones switch a real debian-minimal system between two builds
that differ by packages from a local signed repository, under a reader, a lister and runc.
Every test unmounts what it mounted and leaves no process behind, also when it fails."""

import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import (MOSAIC, assert_same_tree, file_sha256, flip_byte, host_build,
                      mosaic_mounted, object_path, run, tree_snapshot, view_xattrs, wait_gone,
                      walk_tree, write_file)
from test_mount import make_fragment, mosaic_pids

pytestmark = pytest.mark.usefixtures("no_mount_leftovers", "no_process_leftovers")

EPOCH = "1700000000"
NOBODY = 65534


@pytest.fixture
def no_process_leftovers():
    """No daemon of this mosaic binary that a test started outlives it (killed if one does,
    and then the test fails)."""
    before = mosaic_pids()
    yield
    left = {pid for pid in mosaic_pids() - before if not wait_gone(pid, 10)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 5)
    assert not left, f"mosaic processes outlived the test: {sorted(left)}"


# ---- the compositions ---------------------------------------------------------------------------

def copy_program(root, dst, src):
    """src from the host at dst under root, with every library ldd says it loads at the path
    ldd names (the loader's default directories), so that it runs in a chroot of root."""
    target = root / dst
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(os.path.realpath(src), target)
    target.chmod(0o755)
    for line in run(["ldd", src]).stdout.splitlines():
        lib = next((w for w in line.split() if w.startswith("/")), None)
        if lib and not (root / lib.lstrip("/")).exists():
            (root / lib.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.realpath(lib), root / lib.lstrip("/"))
            (root / lib.lstrip("/")).chmod(0o755)


def build_shell(root):
    """/bin/sh (the host's dash), sleep and /dev/null (sh gives it to background jobs): what a
    --check in a chroot of the view runs."""
    copy_program(root, "bin/sh", "/bin/dash")
    copy_program(root, "bin/sleep", "/bin/sleep")
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


def mkdir(path, mode=0o755, uid=0, gid=0, xattrs=None):
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v)
    return path


def build_common(root):
    """What both compositions share: the paths whose inode numbers a switch keeps."""
    write_file(root / "etc/kept.conf", "kept\n")
    for i in range(12):
        write_file(root / f"usr/share/common/f{i:02d}", f"common file {i}\n" * (i + 1))
    write_file(root / "hl/one", "linked\n")
    os.link(root / "hl/one", root / "hl/two")
    mkdir(root / "srv")
    write_file(root / "srv/keep", "srv keep\n")
    mkdir(root / "srv/perm-dir")
    write_file(root / "srv/perm-dir/inside", "inside\n")
    mkdir(root / "srv/xdir", xattrs={"user.tag": b"common"})
    write_file(root / "srv/xdir/f", "xdir f\n")


CHANGED_A = b"short\n"
CHANGED_B = b"a longer content than before, so the size changes too\n" * 40


def build_only_a(root):
    """The first composition's own fragment."""
    write_file(root / "etc/changed.conf", CHANGED_A)
    write_file(root / "etc/removed.conf", "removed by the switch\n")
    write_file(root / "srv/olddir/a", "a\n")
    write_file(root / "srv/olddir/b", "b\n")
    write_file(root / "srv/olddir/sub/c", "c\n")
    os.symlink("changed.conf", root / "etc/link")
    write_file(root / "etc/perms", "same bytes\n", mode=0o644)
    write_file(root / "etc/xattr-file", "xattr file\n", xattrs={"user.tag": b"a"})
    write_file(root / "etc/thing", "a file that becomes a directory\n")
    write_file(root / "etc/thing2/inner", "a directory that becomes a file\n")
    mkdir(root / "srv/xdir", xattrs={"user.tag": b"a"})
    mkdir(root / "srv/perm-dir")


def build_only_b(root):
    """The second composition's own fragment: every kind of change against build_only_a."""
    write_file(root / "etc/changed.conf", CHANGED_B)
    write_file(root / "etc/added.conf", "added by the switch\n")
    os.symlink("kept.conf", root / "etc/link")
    write_file(root / "etc/perms", "same bytes\n", mode=0o600, uid=1234, gid=5678)
    write_file(root / "etc/xattr-file", "xattr file\n", xattrs={"user.tag": b"b"})
    write_file(root / "etc/thing/inner", "now a directory\n")
    write_file(root / "etc/thing2", "now a file\n")
    mkdir(root / "srv/xdir", xattrs={"user.tag": b"b"})
    mkdir(root / "srv/perm-dir", mode=0o700, uid=42, gid=43)
    mkdir(root / "srv/newdir")
    write_file(root / "srv/newdir/n", "n\n")
    write_file(root / "usr/share/common/newsub/x", "a new subdirectory of a shared one\n")


# Paths the second composition adds where the first has nothing: stat'ed before the switch so
# that the kernel caches the ENOENT (a negative dentry).
NEGATIVE = ["etc/added.conf", "srv/newdir", "usr/share/common/newsub"]
# Paths whose content changes (bytes, link target, type or xattrs of a file): new inode numbers.
CHANGED = ["etc/changed.conf", "etc/link", "etc/xattr-file", "etc/thing", "etc/thing2"]
# Directories both have, whose attributes change (mode, owner, xattrs): they keep their number.
DIRS_WITH_NEW_ATTRS = ["srv/perm-dir", "srv/xdir"]
GONE = ["etc/removed.conf", "srv/olddir"]


@pytest.fixture(scope="module")
def lab(signer, outsider, tmp_path_factory):
    """The module's store and compositions: A = shell + common + only-a, B = shell + common +
    only-b (digests, lowest first), big (+ app1 or app2: one file differs), foreign (signed by
    the outsider). env trusts the signer."""
    base = tmp_path_factory.mktemp("switch")
    store = base / "store"
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"), MOSAIC_KEYRING=signer.keyring)
    src = base / "src"

    def make(build, name):
        d = src / name
        d.mkdir(parents=True)
        build(d)
        return make_fragment(store, d, signer, env, name)

    ns = SimpleNamespace(base=base, store=store, env=env, signer=signer, src=src)
    ns.shell = make(build_shell, "shell")
    ns.common = make(build_common, "common")
    ns.only_a = make(build_only_a, "only-a")
    ns.only_b = make(build_only_b, "only-b")
    ns.A = [ns.shell, ns.common, ns.only_a]
    ns.B = [ns.shell, ns.common, ns.only_b]

    def big(root):
        for i in range(300):
            write_file(root / f"usr/lib/big/d{i // 20:02d}/f{i:03d}", f"big {i}\n")
    ns.big = make(big, "big")
    ns.app1 = make(lambda r: write_file(r / "etc/app/config", "version 1\n"), "app")
    ns.app2 = make(lambda r: write_file(r / "etc/app/config", "version 2, longer\n"), "app2")

    d = src / "foreign"
    write_file(d / "etc/foreign", "signed by a key nobody trusts\n")
    ns.foreign = run([MOSAIC, "fragment", "create", d, "-o", store, "--name", "foreign",
                      "--version", "1", "--kind", "config", "--sign", outsider.fingerprint,
                      "--source-date-epoch", EPOCH], env=dict(outsider.env, **{
                          "MOSAIC_CACHE_DIR": env["MOSAIC_CACHE_DIR"]})).stdout.split()[0]
    ns.image = lambda digest: object_path(store, digest)
    return ns


# ---- helpers ------------------------------------------------------------------------------------

@contextlib.contextmanager
def mounted(lab, sources, mnt, *opts, env=None):
    """`mosaic mount -s STORE SOURCES... MNT OPTS`, taken down (and the daemon gone) after."""
    with mosaic_mounted(["-s", lab.store, *opts, *sources], mnt, env or lab.env) as m:
        yield m


def fresh_tree(lab, sources, mnt, *opts):
    """The tree of a fresh mount of sources at mnt (another mountpoint than the switched one)."""
    with mounted(lab, sources, mnt, *opts) as m:
        return tree_snapshot(m.mnt)


def switch(lab, mnt, *args, check=True, json_out=True, user=None, env=None):
    """mosaic switch MNT ARGS -s STORE [--json]; the parsed JSON (or the process)."""
    p = run([MOSAIC, "switch", mnt, *args, "-s", lab.store, *(["--json"] if json_out else [])],
            env=env or lab.env, check=False, user=user)
    if not check:
        return p
    assert p.returncode == 0, f"mosaic switch exited {p.returncode}: {p.stderr}"
    return json.loads(p.stdout) if json_out else p


def rollback(lab, mnt, *args, check=True):
    p = run([MOSAIC, "rollback", mnt, *args], env=lab.env, check=False)
    if check:
        assert p.returncode == 0, f"mosaic rollback exited {p.returncode}: {p.stderr}"
    return p


def status(lab, mnt):
    return json.loads(run([MOSAIC, "status", mnt, "--json"], env=lab.env).stdout)


def entry(root, rel):
    """What tree_snapshot says of one path, reached by a lookup of each component (no listing,
    which would refresh the kernel's entries as a side effect)."""
    p = Path(root) / rel
    st = os.lstat(p)
    e = dict(type=stat.S_IFMT(st.st_mode), mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
             gid=st.st_gid, mtime=st.st_mtime_ns, xattrs=view_xattrs(p))
    if not stat.S_ISDIR(st.st_mode):
        e["nlink"] = st.st_nlink
        e["size"] = st.st_size
    if stat.S_ISREG(st.st_mode):
        e["sha256"] = file_sha256(p)
    elif stat.S_ISLNK(st.st_mode):
        e["link"] = os.readlink(p)
    return e


def other_attrs(root):
    """What tree_snapshot leaves out: directories' link counts, and every entry's atime, ctime
    and block count."""
    out = {}
    for rel, p in walk_tree(root):
        st = os.lstat(p)
        out[rel] = (st.st_nlink if stat.S_ISDIR(st.st_mode) else None, st.st_atime_ns,
                    st.st_ctime_ns, st.st_blocks)
    return out


def inodes(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = os.lstat(p).st_ino
    return out


def own_files(lab):
    """The non-directories of the two compositions' own fragments (only-a, only-b)."""
    return {str(p.relative_to(lab.src / n)) for n in ("only-a", "only-b")
            for p in (lab.src / n).rglob("*") if not p.is_dir()}


def state_dir(mnt):
    """The daemon's state directory: /run/mosaic/<16 hex of sha256(real path)> (root's mounts)."""
    real = os.path.realpath(mnt)
    return Path("/run/mosaic") / hashlib.sha256(real.encode()).hexdigest()[:16]


def control(mnt, payload, timeout=60):
    """Sends payload (bytes, or an object sent as JSON) to the daemon's control socket as one
    request and returns its parsed answer."""
    if not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(state_dir(mnt) / "control"))
        with contextlib.suppress(BrokenPipeError):
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    return json.loads(data)


def assert_serves(lab, m, want, what):
    """The mount shows want (a tree_snapshot) and its daemon still runs and answers."""
    assert_same_tree(tree_snapshot(m.mnt), want, what)
    st = status(lab, m.mnt)
    assert st["running"] and st["pid"] == m.pid, st
    assert control(m.mnt, {"op": "ping"}) == {"ok": True, "pid": m.pid}


def processes_rooted_in(mnt):
    """Pids of processes whose root directory or cwd is inside mnt (a check's leftovers)."""
    real = os.path.realpath(mnt)
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        for link in ("root", "cwd"):
            try:
                t = os.readlink(f"/proc/{d}/{link}")
            except OSError:
                continue
            if t == real or t.startswith(real + "/"):
                out.append(int(d))
                break
    return out


HOLDER = r"""
import json, os, sys
fds = {}
for line in sys.stdin:
    op, *a = json.loads(line)
    try:
        if op == "chdir":
            os.chdir(a[0]); r = None
        elif op == "ls":
            r = sorted(os.listdir(a[0] if a else "."))
        elif op == "stat":
            st = os.lstat(a[0]); r = [st.st_ino, st.st_size]
        elif op == "open":  # path [key]
            fds[a[-1]] = os.open(a[0], os.O_RDONLY); r = None
        elif op == "pread":
            r = os.pread(fds[a[0]], a[1], a[2]).hex()
        elif op == "read":
            r = os.read(fds[a[0]], a[1]).hex()
        elif op == "seek":
            r = os.lseek(fds[a[0]], a[1], os.SEEK_SET)
        elif op == "cat":
            with open(a[0], "rb") as f:
                r = f.read().hex()
        r = ["ok", r]
    except OSError as e:
        r = ["error", e.errno]
    print(json.dumps(r), flush=True)
"""


class Holder:
    """A process that holds files open and a working directory for the test, and does what it
    is told one command at a time (HOLDER): another process than the test's, as a user's is."""

    def __init__(self, cwd=None):
        self.p = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd=cwd)

    def __call__(self, *cmd):
        self.p.stdin.write(json.dumps([str(c) if isinstance(c, Path) else c for c in cmd]) +
                           "\n")
        self.p.stdin.flush()
        ready = select.select([self.p.stdout], [], [], 30)[0]
        assert ready, f"the holder did not answer {cmd} within 30 s"
        kind, value = json.loads(self.p.stdout.readline())
        if kind == "error":
            raise OSError(value, os.strerror(value), str(cmd))
        return bytes.fromhex(value) if cmd[0] in ("pread", "read", "cat") else value

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.p.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- 1. exactness -------------------------------------------------------------------------------

def test_switch_shows_exactly_the_new_composition(lab, tmp_path):
    """Every cache warm (each path stat'ed, listed, read, readlink'ed, its xattrs read; the new
    names stat'ed so that ENOENT is cached): after the switch, each changed path looked up alone
    (before any listing could refresh the kernel's entries) and then a full walk equal a fresh
    mount of the target; unchanged paths keep their inode numbers, changed and new ones get
    numbers the mount never gave before."""
    with mounted(lab, lab.B, tmp_path / "ref") as ref:
        want, want_other = tree_snapshot(ref.mnt), other_attrs(ref.mnt)
    want_a = fresh_tree(lab, lab.A, tmp_path / "ref-a")
    with mounted(lab, lab.A, tmp_path / "mnt") as m:
        mnt = m.mnt
        before = tree_snapshot(mnt)  # lists, stats, reads, readlinks and getxattrs everything
        other_attrs(mnt)
        assert_same_tree(before, want_a, "the first composition")
        for rel in NEGATIVE:
            assert not os.path.lexists(mnt / rel)
        inos = inodes(mnt)

        out = switch(lab, mnt, *lab.B)
        assert out["fragments"] == 3 and out["changed"] >= len(CHANGED), out

        # Path by path, by lookup only: negative entries, attributes, contents, link targets
        # and xattrs the kernel held for a day must all be gone.
        for rel in NEGATIVE + CHANGED + DIRS_WITH_NEW_ATTRS + ["etc/perms", "etc/thing/inner"]:
            assert entry(mnt, rel) == want[rel], f"/{rel} after the switch"
        for rel in GONE + ["etc/thing2/inner", "srv/olddir/sub/c"]:
            assert not os.path.lexists(mnt / rel), f"/{rel} is still there after the switch"
        # Listings the kernel cached.
        for d in ("", "etc", "srv", "srv/xdir", "srv/perm-dir"):
            assert sorted(os.listdir(mnt / d)) == sorted(
                p.rsplit("/", 1)[-1] for p in want if p and os.path.dirname(p) == d), d
        after = tree_snapshot(mnt)
        after_other = other_attrs(mnt)
        after_inos = inodes(mnt)
    assert_same_tree(after, want, "switched mount vs a fresh mount of the target")
    assert after_other == want_other, {p: (after_other.get(p), want_other.get(p))
                                       for p in set(after_other) | set(want_other)
                                       if after_other.get(p) != want_other.get(p)}

    old_numbers = set(inos.values())
    # Unchanged: every directory both have, and every file of the fragments both serve that
    # neither composition's own fragment covers. (etc/perms has the same bytes in both but
    # comes from another fragment with its new owner and mode: either number is right.)
    own = own_files(lab)
    kept = [p for p in after_inos if p in inos and p not in own and
            (stat.S_ISDIR(after[p]["type"]) == stat.S_ISDIR(before[p]["type"]))]
    assert len(kept) > 20 and set(DIRS_WITH_NEW_ATTRS) <= set(kept)
    moved = {p: (inos[p], after_inos[p]) for p in kept if inos[p] != after_inos[p]}
    assert not moved, f"unchanged paths got new inode numbers: {moved}"
    assert after_inos["hl/one"] == after_inos["hl/two"]
    for rel in CHANGED + [p for p in after_inos if p not in inos]:
        assert after_inos[rel] not in old_numbers, \
            f"/{rel} changed or is new but has an inode number the mount gave before"


def test_switch_to_what_is_served_changes_nothing(lab, tmp_path):
    with mounted(lab, lab.A, tmp_path / "mnt") as m:
        before, inos = tree_snapshot(m.mnt), inodes(m.mnt)
        out = switch(lab, m.mnt, *lab.A)
        assert (out["added"], out["removed"], out["changed"], out["invalidations"]) == \
            (0, 0, 0, 0), out
        assert tree_snapshot(m.mnt) == before and inodes(m.mnt) == inos


def test_json_counts_each_path_once(lab, tmp_path):
    a = fresh_tree(lab, lab.A, tmp_path / "ref-a")
    b = fresh_tree(lab, lab.B, tmp_path / "ref-b")
    with mounted(lab, lab.A, tmp_path / "mnt") as m:
        tree_snapshot(m.mnt)
        inos = inodes(m.mnt)
        out = switch(lab, m.mnt, *lab.B)
        after = inodes(m.mnt)
    added, removed = set(b) - set(a), set(a) - set(b)
    changed = {p for p in set(a) & set(b) if p and inos[p] != after[p]}
    assert (len(added), len(removed), len(changed)) == (6, 7, 6)
    assert (out["added"], out["removed"], out["changed"]) == (6, 7, 6), out


# ---- 2. what processes hold ---------------------------------------------------------------------

def test_open_file_keeps_the_old_bytes_until_reopened(lab, tmp_path):
    with mounted(lab, lab.A, tmp_path / "mnt") as m, Holder() as h:
        changed, removed, untouched = (m.mnt / p for p in
                                       ("etc/changed.conf", "etc/removed.conf", "etc/perms"))
        h("open", changed)
        assert h("read", changed, 3) == CHANGED_A[:3]  # partly in the page cache
        h("open", removed)  # open, never read before the switch
        h("open", untouched)
        old_untouched = untouched.read_bytes()

        switch(lab, m.mnt, *lab.B)

        assert h("read", changed, 4096) == CHANGED_A[3:]
        h("seek", changed, 0)
        assert h("read", changed, 4096) == CHANGED_A, "after seeking back"
        assert h("pread", changed, 1 << 16, 0) == CHANGED_A
        assert h("pread", removed, 4096, 0) == b"removed by the switch\n"
        assert h("pread", untouched, 4096, 0) == old_untouched
        # A new open is the new composition's file; the removed one is gone.
        assert h("cat", changed) == CHANGED_B
        assert changed.read_bytes() == CHANGED_B
        with pytest.raises(FileNotFoundError):
            h("cat", removed)
        # And the held descriptor still reads the old bytes after the new open.
        assert h("pread", changed, 1 << 16, 0) == CHANGED_A


def test_files_held_across_many_switches(lab, tmp_path):
    """A file opened in each of five generations (switches and rollbacks back and forth): each
    descriptor reads what it opened, while the generations it keeps alive come and go."""
    with mounted(lab, lab.A, tmp_path / "mnt") as m, Holder() as h:
        path = m.mnt / "etc/changed.conf"
        held = []
        steps = [lambda: switch(lab, m.mnt, *lab.B), lambda: switch(lab, m.mnt, *lab.A),
                 lambda: rollback(lab, m.mnt), lambda: switch(lab, m.mnt, lab.shell, lab.common)]
        want = [CHANGED_A, CHANGED_B, CHANGED_A, CHANGED_B]
        for i, (step, data) in enumerate(zip([None] + steps, want + [None])):
            if step:
                step()
            if data is None:
                assert not path.exists()
                break
            h("open", path, f"gen{i}")
            held.append((f"gen{i}", data))
            for key, expect in held:
                assert h("pread", key, 1 << 16, 0) == expect, f"{key} after step {i}"
        assert [h("pread", key, 1 << 16, 0) for key, _ in held] == [d for _, d in held]


def test_cwd_in_a_removed_directory(lab, tmp_path):
    """A process whose working directory the switch removes sees it empty, cannot reach what
    was in it, and can still go up to the parent, which shows the new composition."""
    with mounted(lab, lab.A, tmp_path / "mnt") as m, Holder() as h:
        h("chdir", m.mnt / "srv/olddir/sub")
        h("stat", ".")
        switch(lab, m.mnt, *lab.B)
        assert h("ls") == []
        with pytest.raises(FileNotFoundError):
            h("stat", "c")
        h("chdir", "..")  # srv/olddir, removed too
        assert h("ls") == []
        h("chdir", "..")  # srv: in the new composition
        assert h("ls") == sorted(os.listdir(m.mnt / "srv"))
        assert "olddir" not in h("ls") and "newdir" in h("ls")


def test_cwd_in_a_removed_directory_it_had_listed(lab, tmp_path):
    with mounted(lab, lab.A, tmp_path / "mnt") as m, Holder() as h:
        h("chdir", m.mnt / "srv/olddir")
        assert h("ls") == ["a", "b", "sub"]  # the kernel caches this listing
        switch(lab, m.mnt, *lab.B)
        with pytest.raises(FileNotFoundError):
            h("stat", "a")
        assert h("ls") == [], "a removed directory still lists what it had"


# ---- 3. checks and rollback ----------------------------------------------------------------------

def test_failing_checks_switch_back(lab, tmp_path):
    want_b = fresh_tree(lab, lab.B, tmp_path / "ref")
    with mounted(lab, lab.A, tmp_path / "mnt") as m:
        mnt = m.mnt
        assert run(["chroot", mnt, "/bin/sh", "-c", "echo ok"]).stdout == "ok\n"
        before = tree_snapshot(mnt)
        for args, said in [
                (["--check", "false"], "the check 'false' failed (exit 1)"),
                (["--check", "exit 7"], "the check 'exit 7' failed (exit 7)"),
                # in the chroot: the new composition has no /etc/removed.conf
                (["--check", "test -e /etc/removed.conf"], "test -e /etc/removed.conf"),
                (["--check-host", "--check", 'test -e "$MOSAIC_MOUNT/etc/removed.conf"'],
                 "$MOSAIC_MOUNT/etc/removed.conf"),
        ]:
            p = switch(lab, mnt, *lab.B, *args, check=False, json_out=False)
            assert p.returncode == 1, (args, p.returncode, p.stderr)
            assert said in p.stderr and "serves what it served before" in p.stderr, p.stderr
            assert_serves(lab, m, before, f"after the failed check {args}")

        t0 = time.monotonic()
        p = switch(lab, mnt, *lab.B, "--check", "sleep 30", "--check-timeout", "1", check=False,
                   json_out=False)
        took = time.monotonic() - t0
        assert p.returncode == 1, p.stderr
        assert "the check 'sleep 30' did not finish in 1 s" in p.stderr, p.stderr
        assert took < 15, f"a check with a 1 s timeout took {took:.1f} s"
        assert_serves(lab, m, before, "after the check that timed out")
        assert not processes_rooted_in(mnt), "the timed-out check left a process behind"

        # Checks that pass keep the new composition.
        switch(lab, mnt, *lab.B, "--check", "test -e /etc/added.conf && ! test -e /srv/olddir")
        assert_serves(lab, m, want_b, "after a passing check in the chroot")
        rollback(lab, mnt)
        assert_serves(lab, m, before, "after the rollback")
        switch(lab, mnt, *lab.B, "--check-host", "--check",
               'test "$(cat "$MOSAIC_MOUNT/etc/added.conf")" = "added by the switch"')
        assert_serves(lab, m, want_b, "after a passing check on the host")


def test_check_leaves_no_process_behind(lab, tmp_path):
    with mounted(lab, lab.A, tmp_path / "mnt") as m:
        try:
            for check in ("sleep 60 >/dev/null 2>&1 & exit 0",
                          "sleep 60 >/dev/null 2>&1 & exit 1"):
                switch(lab, m.mnt, *lab.B, "--check", check, check=False)
                left = processes_rooted_in(m.mnt)
                assert not left, f"the check '{check}' left {left} running in the mount"
        finally:
            for pid in processes_rooted_in(m.mnt):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid)


def test_rollback(lab, tmp_path):
    want_b = fresh_tree(lab, lab.B, tmp_path / "ref")
    with mounted(lab, lab.A, tmp_path / "mnt") as m:
        mnt = m.mnt
        p = rollback(lab, mnt, check=False)
        assert p.returncode == 1 and "nothing to roll back" in p.stderr, (p.returncode, p.stderr)
        first = tree_snapshot(mnt)
        inos = inodes(mnt)
        switch(lab, mnt, *lab.B)
        assert_serves(lab, m, want_b, "after the switch")
        out = json.loads(rollback(lab, mnt, "--json").stdout)
        assert out["changed"] >= len(CHANGED), out
        assert_serves(lab, m, first, "after the rollback")
        # What both compositions share keeps its numbers across the round trip.
        back = inodes(mnt)
        own = own_files(lab)
        shared = [p for p in back if p not in own and not p.startswith(("etc/thing", "srv/old"))]
        assert len(shared) > 20
        assert {p: back[p] for p in shared} == {p: inos[p] for p in shared}
        p = rollback(lab, mnt, check=False)
        assert p.returncode == 1 and "nothing to roll back" in p.stderr, p.stderr
        assert_serves(lab, m, first, "after a rollback with nothing to roll back")
        # Two switches, two rollbacks: back through the stack.
        switch(lab, mnt, *lab.B)
        switch(lab, mnt, lab.shell, lab.common)
        rollback(lab, mnt)
        assert_serves(lab, m, want_b, "one rollback of two")
        rollback(lab, mnt)
        assert_serves(lab, m, first, "two rollbacks of two")


def test_rollback_whose_check_fails_keeps_what_to_roll_back_to(lab, tmp_path):
    want_a = fresh_tree(lab, lab.A, tmp_path / "ref-a")
    want_b = fresh_tree(lab, lab.B, tmp_path / "ref-b")
    with mounted(lab, lab.A, tmp_path / "mnt") as m:
        switch(lab, m.mnt, *lab.B)
        p = rollback(lab, m.mnt, "--check", "false", check=False)
        assert p.returncode == 1 and "the check 'false' failed" in p.stderr, p.stderr
        assert_serves(lab, m, want_b, "after a rollback whose check failed")
        assert status(lab, m.mnt).get("can_roll_back") == 1, "the stack lost its top"
        rollback(lab, m.mnt)
        assert_serves(lab, m, want_a, "after the rollback done again")


# ---- 4. status, history, proportionality ---------------------------------------------------------

def test_status_history_and_invalidation_counts(lab, tmp_path):
    index_b = tmp_path / "b.idx"
    run([MOSAIC, "compose", *lab.B, "-s", lab.store, "-o", index_b], env=lab.env)
    with mounted(lab, lab.A, tmp_path / "mnt") as m:
        mnt = m.mnt
        tree_snapshot(mnt)
        st = status(lab, mnt)
        assert st["invalidations"] == 0 and not st.get("history") and not st.get("can_roll_back")
        reported = []

        out = switch(lab, mnt, *lab.B)
        reported.append(out["invalidations"])
        tree_snapshot(mnt)
        out = json.loads(rollback(lab, mnt, "--json").stdout)
        reported.append(out["invalidations"])
        tree_snapshot(mnt)
        p = switch(lab, mnt, *lab.B, "--check", "false", check=False, json_out=False)
        assert p.returncode == 1
        tree_snapshot(mnt)
        out = switch(lab, mnt, index_b)
        reported.append(out["invalidations"])

        st = status(lab, mnt)
        hist = st["history"]
        assert [h["reason"] for h in hist] == [
            "switch", "rollback", "switch", "rollback: the check 'false' failed (exit 1)",
            "switch"], hist
        for h in hist:
            assert isinstance(h["time"], int) and abs(h["time"] - time.time()) < 600, h
            assert h["invalidations"] >= 0 and h["ms"] >= 0, h
        assert [hist[i]["invalidations"] for i in (0, 1, 4)] == reported
        assert all(n > 0 for n in reported), reported
        assert st["invalidations"] == sum(h["invalidations"] for h in hist), st
        # What each switch came from and went to.
        assert hist[0]["to"] == {"source": "fragments"}
        # the mount's own composition is described as the mount opened it
        assert hist[1]["from"] == {"source": "fragments"}
        assert hist[1]["to"] == {"source": "fragments"}
        assert hist[4]["to"] == {"source": "index", "path": str(index_b)}, hist[4]
        assert st["generation"] == hist[4]["to"]
        # One switch not undone: the stack holds the first composition.
        # (the stack itself stays in the daemon: rollback below goes back to it)
        assert st["can_roll_back"] == 1, st
        assert st["fragments"] == [str(lab.image(d)) for d in lab.B]
        assert st["index"] == str(index_b)


def test_invalidations_follow_the_change_not_the_tree(lab, tmp_path):
    """A switch that changes one file of a composition of a few hundred tells the kernel about
    that file and its directory, not about the tree."""
    one, two = [lab.shell, lab.big, lab.app1], [lab.shell, lab.big, lab.app2]
    want = fresh_tree(lab, two, tmp_path / "ref")
    with mounted(lab, one, tmp_path / "mnt") as m:
        tree_snapshot(m.mnt)
        inos = inodes(m.mnt)
        assert len(inos) > 300
        out = switch(lab, m.mnt, *two)
        # the changed file: its entry in etc/app, etc/app's listing (the entry's inode number
        # changed), and at most the attributes of its directories
        assert (out["changed"], out["removed"]) == (1, 0), out
        assert 1 <= out["invalidations"] <= 5, out
        assert 0 <= out["ms"] < 5000, out
        assert out["kept"] >= len(inos) - 1, out
        assert (m.mnt / "etc/app/config").read_text() == "version 2, longer\n"
        assert_same_tree(tree_snapshot(m.mnt), want, "after a one-file switch")
        after = inodes(m.mnt)
        assert [p for p in after if after[p] != inos[p]] == ["etc/app/config"]
        # and a switch that changes the whole big tree reports as many
        out = switch(lab, m.mnt, lab.shell, lab.app2)
        assert out["removed"] >= 1 and out["invalidations"] >= 2, out


# ---- 5. bad input and faults ---------------------------------------------------------------------

@pytest.fixture
def served_a(lab, tmp_path):
    """The first composition mounted with every cache warm; .before is its tree."""
    with mounted(lab, lab.A, tmp_path / "mnt") as m:
        m.before = tree_snapshot(m.mnt)
        for rel in NEGATIVE:
            assert not os.path.lexists(m.mnt / rel)
        yield m


def refused(p, *words):
    msg = p.stderr + p.stdout
    assert p.returncode in (1, 2), f"exit {p.returncode}: {msg}"
    for w in words:
        assert str(w) in msg, f"the message does not name {w}: {msg.strip()}"
    return msg


def test_untrusted_fragment_in_the_target(lab, served_a, outsider):
    m = served_a
    p = switch(lab, m.mnt, *lab.A, lab.foreign, check=False)
    msg = refused(p, lab.foreign[:12])
    assert outsider.keyid[-8:].upper() in msg.upper(), f"the key is not named: {msg}"
    assert_serves(lab, m, m.before, "after a switch to an untrusted fragment")
    # The daemon itself refuses it too (an index that names it, sent straight to the daemon).
    index = lab.base / "with-foreign.idx"
    if not index.exists():
        both = lab.base / "both.gpg"  # binary keyrings concatenate
        both.write_bytes(Path(lab.signer.keyring).read_bytes() +
                         Path(outsider.keyring).read_bytes())
        run([MOSAIC, "compose", *lab.A, lab.foreign, "-s", lab.store, "-o", index,
             "--keyring", both], env=lab.env)
    reply = control(m.mnt, {"op": "switch", "index": str(index),
                            "images": [str(lab.image(d)) for d in [*lab.A, lab.foreign]]})
    assert reply["ok"] is False and lab.foreign[:12] in reply["error"], reply
    assert_serves(lab, m, m.before, "after a request naming an untrusted fragment")


def test_corrupt_index_as_target(lab, served_a, tmp_path):
    m = served_a
    good = Path(status(lab, m.mnt)["index"])  # the index cache's copy of what is served
    images = [str(lab.image(d)) for d in lab.A]
    size = good.stat().st_size
    for offset in (0, 9, size // 2, size - 1):
        bad = tmp_path / f"bad-{offset}.idx"
        shutil.copyfile(good, bad)
        flip_byte(bad, offset)
        p = switch(lab, m.mnt, bad, check=False)
        refused(p, bad)
        assert_serves(lab, m, m.before, f"after a switch to an index with byte {offset} flipped")
        reply = control(m.mnt, {"op": "switch", "index": str(bad), "images": images})
        assert reply["ok"] is False and str(bad) in reply["error"], reply
        assert_serves(lab, m, m.before, f"after a request for an index with byte {offset} "
                                        f"flipped")


def test_missing_target_image(lab, served_a, tmp_path):
    m = served_a
    store = tmp_path / "store"
    shutil.copytree(lab.store, store)
    object_path(store, lab.only_b).unlink()
    p = run([MOSAIC, "switch", m.mnt, *lab.B, "-s", store], env=lab.env, check=False)
    refused(p, lab.only_b[:12])
    assert_serves(lab, m, m.before, "after a switch to a fragment missing from the store")
    # Straight to the daemon: an index whose image is not there.
    index = tmp_path / "b.idx"
    run([MOSAIC, "compose", *lab.B, "-s", lab.store, "-o", index], env=lab.env)
    images = [str(lab.image(d)) for d in lab.B]
    images[2] = str(tmp_path / "gone.sqfs")
    reply = control(m.mnt, {"op": "switch", "index": str(index), "images": images})
    assert reply["ok"] is False and "gone.sqfs" in reply["error"], reply
    assert_serves(lab, m, m.before, "after a request naming a missing image")


def test_store_object_holding_another_fragment(lab, served_a, tmp_path):
    m = served_a
    store = tmp_path / "store"
    shutil.copytree(lab.store, store)
    for suffix in (".sqfs", ".json", ".json.sig"):
        shutil.copyfile(object_path(lab.store, lab.only_a, suffix),
                        object_path(store, lab.only_b, suffix))
    env = dict(lab.env, MOSAIC_CACHE_DIR=str(tmp_path / "cache"))  # nothing remembered
    p = run([MOSAIC, "switch", m.mnt, *lab.B, "-s", store], env=env, check=False)
    refused(p, lab.only_b[:12])
    assert_serves(lab, m, m.before, "after a switch to a store object holding another fragment")


def test_switch_of_what_is_not_a_mosaic_mount(lab, tmp_path, served_a):
    plain = tmp_path / "plain"
    plain.mkdir()
    refused(switch(lab, plain, *lab.B, check=False), plain, "not mounted by mosaic")
    refused(rollback(lab, plain, check=False), plain, "not mounted by mosaic")
    refused(switch(lab, tmp_path / "nowhere", *lab.B, check=False), "nowhere")
    # a directory inside a mosaic mount is not its mountpoint
    inner = served_a.mnt / "etc"
    refused(switch(lab, inner, *lab.B, check=False), "not mounted by mosaic")
    assert_serves(lab, served_a, served_a.before, "after switches of other directories")


@pytest.fixture
def shared_mount(lab, shared_tmp):
    """The first composition mounted where an unprivileged user can reach it (pytest's own
    temporary directory is root's alone); .before is its tree."""
    with mounted(lab, lab.A, shared_tmp / "mnt") as m:
        m.before = tree_snapshot(m.mnt)
        yield m


UNPRIVILEGED_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


CLIENT = r"""
import json, socket, sys
# As mosaic's own client (fusefs_control) talks to the daemon: the request, the end of it, then
# the answer up to the end; with "listen", only the answer.
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    if sys.argv[2] != "listen":
        s.sendall(sys.argv[2].encode())
        s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    print(json.dumps(["answer", data.decode()]))
except OSError as e:
    print(json.dumps(["error", e.strerror]))
"""


def unprivileged_request(mnt, request):
    p = run([sys.executable, "-c", CLIENT, state_dir(mnt) / "control", request], user=NOBODY,
            env=UNPRIVILEGED_ENV)
    return json.loads(p.stdout)


def test_unprivileged_control_request_is_refused(lab, shared_mount):
    """Another user connects to the control socket: the daemon tells it, by the peer's
    credentials, that it does not serve it, and nothing changes."""
    m = shared_mount
    kind, text = unprivileged_request(m.mnt, "listen")
    assert kind == "answer", text
    assert json.loads(text) == {"ok": False, "errno": 1, "error": f"only root or the mount's owner (uid 0) "
                                                      f"may control {m.mnt}"}
    assert_serves(lab, m, m.before, "after a connection from another user")


def test_unprivileged_request_gets_the_refusal(lab, shared_mount):
    m = shared_mount
    index = status(lab, m.mnt)["index"]
    for req in ({"op": "ping"}, {"op": "switch", "index": index,
                                 "images": [str(lab.image(d)) for d in lab.B]}):
        for _ in range(5):
            kind, text = unprivileged_request(m.mnt, json.dumps(req))
            assert kind == "answer", f"{req['op']}: {text}"
            assert "only root or the mount's owner (uid 0)" in text, text
    assert_serves(lab, m, m.before, "after requests from another user")


def test_unprivileged_cli_hears_the_daemons_refusal(lab, shared_mount):
    m = shared_mount
    switch(lab, m.mnt, *lab.B)
    after = tree_snapshot(m.mnt)
    # rollback needs nothing but the mount's state and its daemon: no store, no keyring
    p = run([MOSAIC, "rollback", m.mnt], env=UNPRIVILEGED_ENV, user=NOBODY, check=False)
    refused(p, f"only root or the mount's owner (uid 0) may control {m.mnt}")
    assert_serves(lab, m, after, "after an unprivileged rollback")


MALFORMED = {
    "garbage bytes": b"\x00\xff\xfegarbage{{{",
    "empty": b"",
    "not an object": b"[1, 2, 3]",
    "no op": json.dumps({"index": "/x", "images": []}).encode(),
    "op not a string": json.dumps({"op": 5}).encode(),
    "unknown op": json.dumps({"op": "format-disk"}).encode(),
    "switch without images": json.dumps({"op": "switch", "index": "/nonexistent"}).encode(),
    "switch without index": json.dumps({"op": "switch", "images": []}).encode(),
    "images not a list": json.dumps({"op": "switch", "index": "/x", "images": "/x"}).encode(),
    "image not a string": json.dumps({"op": "switch", "index": "/x", "images": [5]}).encode(),
    "relative image": json.dumps({"op": "switch", "index": "/x", "images": ["rel.sqfs"]}).encode(),
    "truncated JSON": b'{"op": "switch", "index": "/x", "ima',
    "index not there": json.dumps({"op": "switch", "index": "/nonexistent/x.idx",
                                   "images": []}).encode(),
}


def test_malformed_control_requests(lab, served_a):
    m = served_a
    idx = status(lab, m.mnt)["index"]
    cases = dict(MALFORMED)
    cases["too few images"] = json.dumps({"op": "switch", "index": idx, "images": []}).encode()
    cases["too many images"] = json.dumps({"op": "switch", "index": idx, "images": [
        str(lab.image(d)) for d in [*lab.A, lab.only_b]]}).encode()
    cases["an index that is not one"] = json.dumps({"op": "switch", "index": "/etc/passwd",
                                                    "images": []}).encode()
    for what, payload in cases.items():
        reply = control(m.mnt, payload)
        assert reply.get("ok") is False and reply.get("error"), (what, reply)
        assert_serves(lab, m, m.before, f"after a malformed request ({what})")
    st = status(lab, m.mnt)
    assert not st.get("history") and st["invalidations"] == 0, st


def test_control_refuses_images_that_are_not_the_index_fragments(lab, served_a, tmp_path):
    m = served_a
    index_b = tmp_path / "b.idx"
    run([MOSAIC, "compose", *lab.B, "-s", lab.store, "-o", index_b], env=lab.env)
    # B's index with A's third fragment in the place of only-b
    images = [str(lab.image(d)) for d in lab.A]
    reply = control(m.mnt, {"op": "switch", "index": str(index_b), "images": images})
    assert reply.get("ok") is False and lab.only_a[:12] in reply.get("error", ""), reply
    assert_serves(lab, m, m.before, "after a request pairing an index with other fragments")


# ---- SIGKILL in the middle of a switch -----------------------------------------------------------

@pytest.fixture(scope="module")
def many(lab):
    """A target of 150 fragments besides the shell: verifying each one (a gpg run per
    signature) makes a switch to it last long enough to be killed in the middle."""
    dirs = []
    for i in range(150):
        d = lab.src / "many" / f"many{i:03d}"
        write_file(d / f"many/{i:03d}/f", f"many {i}\n")
        dirs.append(d)
    out = run([MOSAIC, "fragment", "create", *dirs, "-o", lab.store, "--kind", "config",
               "--version", "1", "--sign", lab.signer.fingerprint, "--source-date-epoch", EPOCH,
               "--json"], env=lab.env).stdout
    digests = [r["digest"] for r in sorted(json.loads(out), key=lambda r: r["source"])]
    sources = [lab.shell, *digests]
    index = lab.base / "many.idx"
    run([MOSAIC, "compose", *sources, "-s", lab.store, "-o", index], env=lab.env)
    return SimpleNamespace(index=str(index), images=[str(lab.image(d)) for d in sources])


def daemon_children(pid):
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out.update(int(c) for c in (task / "children").read_text().split())
    return out


def test_sigkill_in_the_middle_of_a_switch(lab, many, tmp_path):
    """SIGKILL of the daemon while it switches to a target of 151 fragments, at four moments:
    right after the request is sent, while the daemon verifies the new fragments (a gpg child
    runs), near the end of the switch (90 % of how long a whole one took), and right after the
    daemon answered that the switch is done.

    Asserted each time: state.json in the state directory still parses and names either the
    old composition (its index with its fragments, no history) or, only if the switch had
    completed, the new one (the target's index with exactly the target's fragments, and the
    switch in its history), never an index with another index's fragments; `mosaic status`
    says the daemon is not running; no process the daemon started outlives it; `mosaic umount`
    takes the dead mount down (exit 0) and a new `mosaic mount` at the same place serves the
    old composition again."""
    old_images = [str(lab.image(d)) for d in lab.A]
    request = {"op": "switch", "index": many.index, "images": many.images, "reason": "switch"}
    # Each daemon gets a cache of its own, where no fragment is remembered as verified yet.
    envs = (dict(lab.env, MOSAIC_CACHE_DIR=str(tmp_path / f"cache{i}")) for i in range(10))
    # How long a whole switch to the target takes.
    with mounted(lab, lab.A, tmp_path / "timing", env=next(envs)) as m:
        t0 = time.monotonic()
        reply = control(m.mnt, request)
        whole = time.monotonic() - t0
        assert reply["ok"], reply
    assert whole > 0.2, f"a switch to 151 fragments took only {whole:.3f} s: too fast to hit"

    mnt = tmp_path / "mnt"
    seen = []
    moments = ("at once", "verifying", "near the end", "after the answer")
    for moment in moments:
        with mounted(lab, lab.A, mnt, env=next(envs)) as m:
            before = tree_snapshot(m.mnt)
            old_index = status(lab, m.mnt)["index"]
            s = socket.socket(socket.AF_UNIX)
            children = set()
            try:
                s.connect(str(state_dir(m.mnt) / "control"))
                s.sendall(json.dumps(request).encode())
                s.shutdown(socket.SHUT_WR)
                t0 = time.monotonic()
                if moment == "verifying":
                    while not daemon_children(m.pid) and time.monotonic() - t0 < whole:
                        time.sleep(0.001)
                    children = daemon_children(m.pid)
                    assert children, "never caught the daemon verifying a fragment"
                elif moment == "near the end":
                    time.sleep(whole * 0.9)
                elif moment == "after the answer":
                    assert json.loads(s.makefile("rb").read())["ok"]
                children |= daemon_children(m.pid)
                os.kill(m.pid, signal.SIGKILL)
            finally:
                s.close()
            assert wait_gone(m.pid), "the daemon outlived SIGKILL"
            for c in children:
                assert wait_gone(c), f"process {c} the daemon started outlived it"

            state = json.loads((state_dir(mnt) / "state.json").read_text())
            if state["index"] == old_index:
                assert state["fragments"] == old_images, state
                assert not state.get("history"), state
                seen.append("old")
            else:
                assert state["index"] == many.index, state
                assert state["fragments"] == many.images, state
                assert [h["reason"] for h in state["history"]] == ["switch"], state
                seen.append("new")
            if moment == "after the answer":
                assert seen[-1] == "new", "the daemon answered ok but state.json names the old"
            assert status(lab, mnt)["running"] is False

            u = run([MOSAIC, "umount", mnt], env=lab.env, check=False)
            assert u.returncode == 0, u.stderr
            assert not os.path.ismount(mnt)
            # A new mount at the same place: mosaic_mounted's own umount then takes it down.
            run([MOSAIC, "mount", "-s", lab.store, *lab.A, mnt], env=lab.env)
            m.pid = status(lab, mnt)["pid"]
            assert_serves(lab, m, before, f"a new mount after SIGKILL ({moment})")
    print(f"a whole switch: {whole:.2f} s; state.json after SIGKILL: {dict(zip(moments, seen))}")


def test_umount_after_sigkill_leaves_no_state(lab, tmp_path):
    mnt = tmp_path / "mnt"
    with mounted(lab, lab.A, mnt) as m:
        os.kill(m.pid, signal.SIGKILL)
        assert wait_gone(m.pid)
        run([MOSAIC, "umount", mnt], env=lab.env)
        left = sorted(p.name for p in state_dir(mnt).iterdir()) if state_dir(mnt).exists() \
            else []
        run([MOSAIC, "mount", "-s", lab.store, *lab.A, mnt], env=lab.env)
        m.pid = status(lab, mnt)["pid"]
    assert left == [], f"left in {state_dir(mnt)}: {left}"


def test_switch_of_a_dead_mount_names_a_fix_that_exists(lab, tmp_path):
    mnt = tmp_path / "mnt"
    with mounted(lab, lab.A, mnt) as m:
        os.kill(m.pid, signal.SIGKILL)
        assert wait_gone(m.pid)
        p = switch(lab, mnt, *lab.B, check=False)
        msg = refused(p, "not running")
        run([MOSAIC, "umount", mnt], env=lab.env)
        run([MOSAIC, "mount", "-s", lab.store, *lab.A, mnt], env=lab.env)
        m.pid = status(lab, mnt)["pid"]
    for command in re.findall(r"'mosaic ([a-z-]+)", msg):
        h = run([MOSAIC, command, "--help"], check=False)
        assert h.returncode == 0, f"the message names 'mosaic {command}': {h.stderr.strip()}"


# ---- 6. writable mounts --------------------------------------------------------------------------

def test_overlay_mount_refuses_a_switch(lab, tmp_path):
    upper = tmp_path / "upper"
    with mounted(lab, lab.A, tmp_path / "mnt", "--upper", upper, "--writable=overlay") as m:
        (m.mnt / "etc/written").write_text("in the upper\n")
        before = tree_snapshot(m.mnt)
        p = switch(lab, m.mnt, *lab.B, check=False)
        msg = refused(p, "--writable=fuse")
        assert "overlay" in msg, msg
        assert_same_tree(tree_snapshot(m.mnt), before, "the overlay mount after the refusal")
        assert status(lab, m.mnt)["index"] == m.status["index"]
        assert not status(lab, m.mnt).get("history")
        refused(switch(lab, m.mnt, "--add", lab.only_b, check=False), "--writable=fuse")
        assert_same_tree(tree_snapshot(m.mnt), before, "the overlay mount after --add")
    assert (upper / "etc/written").read_text() == "in the upper\n"




def write_in(mnt):
    """Writes through a fuse-mode mount: a new file, a copied-up file of both compositions, a
    deletion of a file only the first has, a new directory."""
    (mnt / "srv/mine").write_text("mine\n")
    with open(mnt / "etc/kept.conf", "a") as f:
        f.write("appended\n")
    os.unlink(mnt / "etc/removed.conf")
    (mnt / "srv/new-dir").mkdir()
    (mnt / "srv/new-dir/x").write_text("x\n")


def test_fuse_mode_switch_keeps_the_upper_on_top(lab, tmp_path):
    """After a switch of a --writable=fuse mount the view is the new composition with the same
    upper over it: the same tree as a fresh fuse mount of the target over that upper."""
    upper, mnt = tmp_path / "upper", tmp_path / "mnt"
    with mounted(lab, lab.A, mnt, "--upper", upper, "--writable=fuse") as m:
        write_in(m.mnt)
        tree_snapshot(m.mnt)
        switch(lab, m.mnt, *lab.B)
        assert (m.mnt / "srv/mine").read_text() == "mine\n"
        assert (m.mnt / "etc/kept.conf").read_text() == "kept\nappended\n"
        assert (m.mnt / "etc/changed.conf").read_bytes() == CHANGED_B
        assert not (m.mnt / "srv/olddir").exists()
        (m.mnt / "srv/after").write_text("written after the switch\n")
        switched = tree_snapshot(m.mnt)
    want = fresh_tree(lab, lab.B, mnt, "--upper", upper, "--writable=fuse")
    assert_same_tree(switched, want, "switched fuse mount vs a fresh fuse mount of the target")


def test_fuse_mode_rollback_and_failed_check(lab, tmp_path):
    upper, mnt = tmp_path / "upper", tmp_path / "mnt"
    with mounted(lab, lab.A, mnt, "--upper", upper, "--writable=fuse") as m:
        write_in(m.mnt)
        before = tree_snapshot(m.mnt)
        p = switch(lab, m.mnt, *lab.B, "--check", "false", check=False, json_out=False)
        assert p.returncode == 1 and "the check 'false' failed" in p.stderr, p.stderr
        assert_same_tree(tree_snapshot(m.mnt), before, "fuse mount after a failed check")
        switch(lab, m.mnt, *lab.B)
        rollback(lab, m.mnt)
        assert_same_tree(tree_snapshot(m.mnt), before, "fuse mount after switch + rollback")


# ---- 7. edits of the served list -----------------------------------------------------------------

def test_add_remove_replace(lab, tmp_path):
    want_b = fresh_tree(lab, lab.B, tmp_path / "ref-b")
    want_base = fresh_tree(lab, [lab.shell, lab.common], tmp_path / "ref-base")
    want_a = fresh_tree(lab, lab.A, tmp_path / "ref-a")
    want_ab = fresh_tree(lab, [*lab.A, lab.only_b], tmp_path / "ref-ab")
    with mounted(lab, lab.A, tmp_path / "mnt") as m:
        mnt = m.mnt
        tree_snapshot(mnt)
        switch(lab, mnt, "--replace", f"only-a={lab.only_b}")
        assert_serves(lab, m, want_b, "after --replace only-a=only-b")
        st = status(lab, mnt)
        assert st["fragments"] == [str(lab.image(d)) for d in lab.B]
        assert st["generation"]["source"] == "edit", st["generation"]
        switch(lab, mnt, "--remove", "only-b")
        assert_serves(lab, m, want_base, "after --remove only-b")
        switch(lab, mnt, "--add", lab.only_a)
        assert_serves(lab, m, want_a, "after --add only-a")
        assert status(lab, mnt)["fragments"] == [str(lab.image(d)) for d in lab.A]
        # several at once, in the order remove, replace, add
        switch(lab, mnt, "--remove", "only-a", "--add", lab.only_a, "--add", lab.only_b)
        assert_serves(lab, m, want_ab, "after --remove and two --add")
        switch(lab, mnt, "--replace", f"only-a={lab.only_a}", "--remove", "only-b")
        assert_serves(lab, m, want_a, "after --replace by itself and --remove")
        # an added fragment given as a path to its image
        switch(lab, mnt, "--remove", "only-a", "--add", str(lab.image(lab.only_b)))
        assert_serves(lab, m, want_b, "after --add IMAGE")
        switch(lab, mnt, "--replace", f"only-b={lab.only_a}")

        for args, words in [
                (["--remove", "nothing-by-this-name"], ["nothing-by-this-name"]),
                (["--replace", "nothing-by-this-name=" + lab.only_b], ["nothing-by-this-name"]),
                (["--replace", "only-a"], ["--replace", "NAME=FRAGMENT"]),
                (["--replace", "=" + lab.only_b], ["NAME=FRAGMENT"]),
                (["--add", "no-such-fragment"], ["no-such-fragment"]),
                (["--add", lab.foreign], [lab.foreign[:12]]),
        ]:
            refused(switch(lab, mnt, *args, check=False), *words)
            assert_serves(lab, m, want_a, f"after a refused edit {args}")
        p = switch(lab, mnt, *lab.B, "--add", lab.only_b, check=False)
        assert p.returncode == 2 and "not both" in p.stderr, p.stderr
        p = run([MOSAIC, "rollback", mnt, "--add", lab.only_b], env=lab.env, check=False)
        assert p.returncode == 2, p.stderr
        assert_serves(lab, m, want_a, "after usage errors")


# ---- 8. other users ------------------------------------------------------------------------------

WALKER = r"""
import hashlib, json, os, stat, sys
root = sys.argv[1]
out = {}
def visit(p, rel):
    try:
        st = os.lstat(p)
    except OSError as e:
        out[rel] = ["error", e.errno]; return
    e = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
         st.st_ino]
    if stat.S_ISREG(st.st_mode):
        try:
            with open(p, "rb") as f:
                e.append(hashlib.sha256(f.read()).hexdigest())
        except OSError as x:
            e.append(x.errno)
    elif stat.S_ISLNK(st.st_mode):
        e.append(os.readlink(p))
    elif stat.S_ISDIR(st.st_mode):
        try:
            names = sorted(os.listdir(p))
        except OSError as x:
            names = x.errno
        e.append(names)
        for n in names if isinstance(names, list) else []:
            visit(os.path.join(p, n), f"{rel}/{n}" if rel else n)
    out[rel] = e
for rel in sys.argv[2:]:  # looked up alone, before any listing
    visit(os.path.join(root, rel), f"lookup:{rel}")
visit(root, "")
print(json.dumps(out))
"""


def walk_as(user, root, *extra):
    """{path: [type, mode, uid, gid, size, ino, sha256 | target | listing | errno]} of what user
    sees under root, plus each of extra looked up alone (first)."""
    p = run([sys.executable, "-c", WALKER, root, *extra], user=user, env=UNPRIVILEGED_ENV)
    return json.loads(p.stdout)


def without_inodes(tree):
    return {k: v[:5] + v[6:] if v[0] != "error" else v for k, v in tree.items()}


def test_other_users_see_the_new_composition(lab, shared_tmp):
    """The mount serves every user (allow_other, as root mounts it): another user who walked
    the first composition walks the second after the switch, as it walks a fresh mount of it,
    the paths that changed looked up alone first."""
    probes = NEGATIVE + CHANGED + DIRS_WITH_NEW_ATTRS + GONE
    with mounted(lab, lab.B, shared_tmp / "ref") as ref:
        want = without_inodes(walk_as(NOBODY, ref.mnt, *probes))
    with mounted(lab, lab.A, shared_tmp / "mnt") as m:
        first = walk_as(NOBODY, m.mnt, *probes)
        assert all(first[f"lookup:{p}"] == ["error", 2] for p in NEGATIVE), first
        assert first["srv/perm-dir"][6] == ["inside"]  # 0755 in the first composition
        switch(lab, m.mnt, *lab.B)
        got = without_inodes(walk_as(NOBODY, m.mnt, *probes))
    assert got == want, "\n".join(f"/{p}: got {got.get(p)} want {want.get(p)}"
                                  for p in sorted(set(got) | set(want))
                                  if got.get(p) != want.get(p))
    assert got["srv/perm-dir"][5] == 13  # EACCES: 0700 and owned by uid 42 now


# ---- 9, 10. a real system: debian-minimal between two builds (slow) ------------------------

def foo_files(version, data_byte):
    return {"/usr/share/foo/version": f"foo {version}\n",
            "/usr/bin/foo": f"#!/bin/sh\necho foo {version}\n",
            # big enough that a holder's reads are not one page
            "/usr/share/foo/data": bytes([data_byte]) * (300 << 10) + f"foo {version}\n".encode(),
            "/usr/share/doc/foo/marker": f"foo {version}\n"}


@pytest.fixture(scope="module")
def generations(debian_minimal, repo_key, tmp_path_factory):
    """Two builds of debian-minimal plus packages from a local signed repository served on
    127.0.0.1: gen1 with foo 1.0, gen2 with foo 2.0 and bar. Both are built (unconfigured: dpkg's
    status then says "unpacked") into a copy of the session's debian-minimal store made of hard
    links, so that only foo, bar and each generation's dpkg database are made here and the
    session's store is left as it was."""
    import httpd
    import repos
    dm = debian_minimal
    work = tmp_path_factory.mktemp("switch-debian")
    pkgs = [repos.DebPkg("foo", "1.0", files=foo_files("1.0", 0x11)),
            repos.DebPkg("foo", "2.0", files=foo_files("2.0", 0x22)),
            repos.DebPkg("bar", "1.0", files={"/usr/bin/bar": "#!/bin/sh\necho bar 1.0\n"})]
    repos.build_deb_repo(work / "repo", repo_key, pkgs)
    store = work / "store"
    shutil.copytree(dm.store, store, copy_function=os.link)
    with httpd.serve(work / "repo") as srv:
        gens = {}
        # Debian has a bar of its own (1.11): the version says which one.
        for n, packages in ((1, ["foo (= 1.0)"]), (2, ["foo (= 2.0)", "bar (= 1.0)"])):
            manifest, lock = work / f"gen{n}.yaml", work / f"gen{n}.lock"
            manifest.write_text(
                f"name: switch-gen{n}\ninclude: {dm.manifest}\nrepositories:\n"
                f"  - name: local\n    type: deb\n    uri: {srv.url}\n    suites: [stable]\n"
                f"    keyring: {repo_key.keyring}\n"
                "packages:\n" + "".join(f'  - "{p}"\n' for p in packages))
            p = host_build([manifest, "--lock", lock, "-s", store, "--sign", dm.key.fingerprint,
                            "--no-configure"], dm.env)
            print(p.stderr)
            gens[n] = [manifest, "--lock", lock]
        yield SimpleNamespace(gen1=gens[1], gen2=gens[2], store=store, env=dm.env,
                              keyring=dm.key.keyring, work=work)


def gen_mounted(g, gen, mnt):
    return mosaic_mounted([*gen, "-s", g.store, "--keyring", g.keyring], mnt, g.env)


def switch_gen(g, mnt, gen):
    p = run([MOSAIC, "switch", mnt, *gen, "-s", g.store, "--keyring", g.keyring, "--json"],
            env=g.env, check=False)
    assert p.returncode == 0, f"mosaic switch exited {p.returncode}: {p.stderr}"
    return json.loads(p.stdout)


LISTER = r"""
import hashlib, json, os, sys
d, stop = sys.argv[1], sys.argv[2]
loops, errors, seen = 0, [], {}
while not os.path.exists(stop):
    loops += 1
    try:
        names = sorted(os.listdir(d))
        seen[hashlib.sha256("\0".join(names).encode()).hexdigest()] = len(names)
        os.stat(os.path.join(d, "foo"))  # in both generations: a lookup never fails
    except OSError as e:
        errors.append(f"{loops}: {e}")
print(json.dumps({"loops": loops, "errors": errors[:20], "n_errors": len(errors),
                  "seen": seen}))
"""


def listing_key(d):
    return hashlib.sha256("\0".join(sorted(os.listdir(d))).encode()).hexdigest()


@pytest.mark.slow
def test_debian_generations_switch_under_readers(generations, tmp_path):
    """A real system switched from gen1 to gen2 while a process holds foo 1.0's data open and
    another lists /usr/bin in a loop: the holder reads foo 1.0's bytes until it reopens, the
    lister never sees an error nor a listing that is neither generation's, dpkg in a chroot of
    the mount says foo 2.0 and bar, and a full walk equals a fresh mount of gen2."""
    g = generations
    with gen_mounted(g, g.gen2, tmp_path / "ref") as ref:
        want = tree_snapshot(ref.mnt)
        listing2 = listing_key(ref.mnt / "usr/bin")
    data_old = foo_files("1.0", 0x11)["/usr/share/foo/data"]
    data_new = foo_files("2.0", 0x22)["/usr/share/foo/data"]
    stop = tmp_path / "stop-lister"
    with gen_mounted(g, g.gen1, tmp_path / "mnt") as m, Holder() as h:
        mnt = m.mnt
        data = mnt / "usr/share/foo/data"
        listing1 = listing_key(mnt / "usr/bin")
        h("open", data)
        assert h("read", data, 4096) == data_old[:4096]
        lister = subprocess.Popen([sys.executable, "-c", LISTER, mnt / "usr/bin", stop],
                                  stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1)
            out = switch_gen(g, mnt, g.gen2)
            time.sleep(1)
        finally:
            stop.touch()
            listed = json.loads(lister.communicate(timeout=60)[0])
        assert listed["n_errors"] == 0, listed["errors"]
        assert listed["loops"] > 10, listed
        assert set(listed["seen"]) <= {listing1, listing2}, listed["seen"]
        assert listing2 in listed["seen"], "the lister never saw gen2's /usr/bin"
        assert out["changed"] >= 1 and out["invalidations"] >= 1, out

        assert h("read", data, 1 << 20) == data_old[4096:]
        h("seek", data, 0)
        assert h("read", data, 1 << 20) == data_old, "the held file, read again from the start"
        assert h("cat", data) == data_new, "a new open"
        assert (mnt / "usr/share/foo/version").read_text() == "foo 2.0\n"

        q = run(["chroot", mnt, "dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\n",
                 "foo", "bar"])
        assert sorted(q.stdout.splitlines()) == ["bar 1.0 install ok unpacked",
                                                 "foo 2.0 install ok unpacked"], q.stdout
        listing = run(["chroot", mnt, "dpkg", "-l", "foo", "bar"]).stdout
        assert re.search(r"^\S+\s+foo\s+2\.0\s", listing, re.M), listing
        assert re.search(r"^\S+\s+bar\s+1\.0\s", listing, re.M), listing
        assert run(["chroot", mnt, "/usr/bin/foo"]).stdout == "foo 2.0\n"
        assert run(["chroot", mnt, "bar"]).stdout == "bar 1.0\n"
        got = tree_snapshot(mnt)
    assert_same_tree(got, want, "debian-minimal switched to gen2 vs a fresh mount of gen2")


@pytest.mark.slow
def test_runc_container_sees_the_switch(generations, tmp_path):
    """A container whose root is the read-only view prints foo's version in a loop; after the
    switch it prints the new one, without being restarted."""
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    g = generations
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    name = f"mosaic-switch-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    with gen_mounted(g, g.gen1, bundle / "rootfs") as m:
        run(["runc", "spec"], cwd=bundle)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["/bin/sh", "-c", "while true; do cat /usr/share/foo/version; "
                                   "sleep 0.1; done"]
        spec["root"] = {"path": "rootfs", "readonly": True}
        (bundle / "config.json").write_text(json.dumps(spec))
        lines, lock = [], threading.Lock()
        p = subprocess.Popen(["runc", "run", "--bundle", bundle, name], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

        def read():
            for line in p.stdout:
                with lock:
                    lines.append(line.rstrip("\n"))
        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def wait_for(text, timeout):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and p.poll() is None:
                with lock:
                    if text in lines:
                        return True
                time.sleep(0.05)
            return False

        try:
            assert wait_for("foo 1.0", 60), f"the container did not start: {p.poll()} " \
                                             f"{p.stderr.read() if p.poll() is not None else ''}"
            pid = json.loads(run(["runc", "state", name]).stdout)["pid"]
            switch_gen(g, m.mnt, g.gen2)
            assert wait_for("foo 2.0", 30), f"still {lines[-3:]} 30 s after the switch"
            time.sleep(0.5)
            assert p.poll() is None, "the container stopped"
            assert json.loads(run(["runc", "state", name]).stdout)["pid"] == pid
            with lock:
                after = lines[lines.index("foo 2.0"):]
            assert set(after) == {"foo 2.0"}, f"the old version again after the new: {after}"
        finally:
            subprocess.run(["runc", "kill", name, "KILL"], capture_output=True)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            subprocess.run(["runc", "delete", "-f", name], capture_output=True)
            reader.join(10)
