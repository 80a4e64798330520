"""Shared fixtures for mosaic's integration tests: the binary, throwaway OpenPGP keys, stores,
real mounts (squashfuse and kernel squashfs) that are always unmounted, and tree listings."""

import contextlib
import errno
import hashlib
import json
import os
import pty
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
MOSAIC = os.environ.get("MOSAIC_BIN", str(REPO / "build" / "tools" / "mosaic"))
# Slow inputs (real Debian packages) are fetched once into this cache and reused.
CACHE = Path(os.environ.get("MOSAIC_TEST_CACHE", "/var/cache/mosaic-tests"))


def run_on_terminal(args, env=None, timeout=60):
    """Runs a command with its stderr on a pseudo-terminal (stdout a pipe), as a user at a
    terminal sees it; returns (exit status, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE,
                             stderr=slave, env=env)
        os.close(slave)
        slave = -1
        err = b""
        while True:
            ready = select.select([master], [], [], timeout)[0]
            assert ready, f"no output from {args[0]} within {timeout} s"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the command closed its end
                break
            if not chunk:
                break
            err += chunk
        out = p.stdout.read()
        p.stdout.close()
        return p.wait(timeout), out.decode(errors="replace"), err.decode(errors="replace")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


def run(args, env=None, check=True, input=None, user=None, cwd=None):
    """Runs a command, returns CompletedProcess with text output. user= runs it unprivileged."""
    args = [str(a) for a in args]
    if user is not None:
        args = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"] + args
    p = subprocess.run(args, env=env, input=input, capture_output=True, text=True, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def _make_key(home, name):
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
         f"{name} <{name}@mosaic.invalid>", "ed25519", "sign", "never"], env=env)
    out = run(["gpg", "--list-keys", "--with-colons"], env=env).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    keyring = home / "public.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--export", fpr], env=env,
                                       capture_output=True, check=True).stdout)
    return SimpleNamespace(gnupghome=str(home), keyid=fpr[-16:], fingerprint=fpr,
                           keyring=str(keyring), env=env)


@contextlib.contextmanager
def _key(name):
    home = Path(tempfile.mkdtemp(prefix="mosaic-gpg-")) / "g"
    try:
        yield _make_key(home, name)
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=dict(os.environ, GNUPGHOME=str(home)),
                       capture_output=True)
        shutil.rmtree(home.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def signer():
    """The trusted key: fragments signed by it verify against signer.keyring."""
    with _key("mosaic-test") as k:
        yield k


@pytest.fixture(scope="session")
def outsider():
    """A key that is in no keyring the tests trust."""
    with _key("outsider") as k:
        yield k


@pytest.fixture
def env(signer, tmp_path):
    """Environment for mosaic: the signer's GnuPG home and a private cache per test."""
    return dict(signer.env, MOSAIC_CACHE_DIR=str(tmp_path / "cache"))


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


def object_path(store, digest, suffix=".sqfs"):
    return Path(store) / "sha256" / digest[:2] / f"{digest}{suffix}"


def create(store, src, env, *extra, check=True, user=None):
    """mosaic fragment create; returns the digest (or the CompletedProcess when check=False)."""
    p = run([MOSAIC, "fragment", "create", src, "-o", store, *extra], env=env, check=check,
            user=user)
    if not check:
        return p
    return p.stdout.split()[0]


def _wait_mounted(mnt, proc=None, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"mount of {mnt} failed: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"{mnt} did not become a mount point")


@contextlib.contextmanager
def squashfuse_mount(image, mountpoint):
    """Mounts image with squashfuse (FUSE) and always unmounts it."""
    mountpoint = Path(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["squashfuse", "-f", str(image), str(mountpoint)],
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_mounted(mountpoint, proc)
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def kernel_mount(image, mountpoint):
    """Loop-mounts image with the kernel's squashfs and always unmounts it."""
    mountpoint = Path(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "squashfs", "-o", "loop,ro", image, mountpoint])
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_file(path, data=b"", mode=0o644, uid=0, gid=0, xattrs=None, mtime=None):
    """Makes a file (and its parents) with exactly these attributes; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def pid_alive(pid):
    """Whether pid runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def no_mount_leftovers(tmp_path):
    """Unmounts whatever a test left mounted below its tmp_path (use with usefixtures)."""
    yield
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = line.split()[1]
        if mnt.startswith(str(tmp_path)):
            run([MOSAIC, "umount", "--lazy", mnt], check=False)


def wait_gone(pid, timeout=15.0):
    """True once pid has exited (within timeout)."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


@contextlib.contextmanager
def mosaic_mounted(args, mnt, env):
    """`mosaic mount ARGS... MNT` (daemonised); yields mnt, the daemon's pid, what mount printed
    and its first status. Then mosaic umount, which must end the daemon; cleans up (lazy
    unmount, kill) even when the test failed."""
    mnt = Path(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    args = list(args)
    p = run([MOSAIC, "mount", *args, mnt], env=env, check=False)
    assert p.returncode == 0, f"mosaic mount exited {p.returncode}: {p.stderr}"
    st = json.loads(run([MOSAIC, "status", mnt, "--json"], env=env).stdout)
    pid = st["pid"]
    ok = False
    try:
        yield SimpleNamespace(mnt=mnt, pid=pid, stdout=p.stdout, status=st)
        ok = True
    finally:
        u = run([MOSAIC, "umount", mnt], env=env, check=False)
        if u.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        if not wait_gone(pid):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid)
    if ok:
        assert u.returncode == 0, f"mosaic umount: {u.stderr}"
        assert not os.path.ismount(mnt)
        assert not pid_alive(pid), f"daemon {pid} outlived mosaic umount"


def tree_snapshot(root, whole_seconds=False):
    """{relative path: attributes}: type, mode, owner, mtime (ns, or whole seconds: what a
    fragment keeps), xattrs, and for non-directories link count and size, content hash, symlink
    target, device. Directory link counts are left out (kernel overlayfs says 1 for a merged
    directory)."""
    out = {}
    for rel, p in walk_tree(root):
        st = os.lstat(p)
        e = dict(type=stat.S_IFMT(st.st_mode), mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                 gid=st.st_gid, mtime=int(st.st_mtime) if whole_seconds else st.st_mtime_ns,
                 xattrs=view_xattrs(p))
        if not stat.S_ISDIR(st.st_mode):
            e["nlink"] = st.st_nlink
            e["size"] = st.st_size
        if stat.S_ISREG(st.st_mode):
            e["sha256"] = file_sha256(p)
        elif stat.S_ISLNK(st.st_mode):
            e["link"] = os.readlink(p)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        out[rel] = e
    return out


def assert_same_tree(got, want, what):
    """Compares two tree_snapshot results, naming the first differences."""
    diff = [f"/{p}: got {got.get(p)} want {want.get(p)}" for p in sorted(set(got) | set(want))
            if got.get(p) != want.get(p)]
    assert not diff, f"{what}: {len(diff)} differ\n" + "\n".join(diff[:20])


def walk_tree(root):
    """Yields (relative path, path) for root itself ('') and every entry under it."""
    root = Path(root)
    yield "", root
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            yield str(p.relative_to(root)), p


def view_xattrs(path):
    """The xattrs a view shows (overlayfs keeps trusted.overlay.* to itself)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in sorted(names) if not n.startswith("trusted.overlay.")}


def tree_listing(root):
    """{relative path: attributes} for every entry under root ('' is root itself)."""
    out = {}
    for rel, p in walk_tree(root):
        st = os.lstat(p)
        e = dict(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, mtime=int(st.st_mtime),
                 nlink=st.st_nlink, link=None, sha256=None, size=None, rdev=None)
        if stat.S_ISREG(st.st_mode):
            e["size"] = st.st_size
            e["sha256"] = file_sha256(p)
        elif stat.S_ISLNK(st.st_mode):
            e["link"] = os.readlink(p)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        try:
            names = os.listxattr(p, follow_symlinks=False)
        except OSError:
            names = []
        e["xattrs"] = {n: os.getxattr(p, n, follow_symlinks=False) for n in sorted(names)}
        out[rel] = e
    return out


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture(scope="session")
def debs():
    """Real .deb files from the Debian archive through the host's apt sources, fetched once."""
    d = CACHE / "debs"
    d.mkdir(parents=True, exist_ok=True)
    wanted = ["busybox-static", "coreutils", "iputils-ping", "tzdata"]
    have = {p.name.split("_")[0]: p for p in d.glob("*.deb")}
    missing = [w for w in wanted if w not in have]
    if missing:
        cmd = ["apt-get", "download", *missing]
        p = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
        if p.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            p = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"the Debian archive is not reachable through apt: {p.stderr.strip()}")
        have = {p.name.split("_")[0]: p for p in d.glob("*.deb")}
    return {w: have[w] for w in wanted}


@pytest.fixture
def shared_tmp():
    """A temp dir an unprivileged user can write to (pytest's own is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="mosaic-shared-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def squashfuse_xattr_names(tree):
    """Undoes a known bug of the squashfuse *binary* in bookworm (0.1.105): it reports
    trusted.* xattrs as security.* and the other way round (fixed upstream, squashfuse PR #83).
    The image is right (the kernel reads it as written); mosaic's own reader names them itself."""
    swap = {"trusted.": "security.", "security.": "trusted."}
    for e in tree.values():
        e["xattrs"] = {next((swap[p] + k[len(p):] for p in swap if k.startswith(p)), k): v
                       for k, v in e["xattrs"].items()}
    return tree


# ---- the minbase composition (appended for the mount tests) ----------------------------------

@pytest.fixture(scope="session")
def minbase_store(signer, tmp_path_factory):
    """The Debian minbase package set (tests/integration/minbase.py) made into signed fragments,
    once per session: (store, digests in debootstrap's order, keyring, env). env trusts the
    signer (MOSAIC_KEYRING) and has its own MOSAIC_CACHE_DIR for the session. Slow: use it only
    from tests marked slow."""
    import json
    from collections import namedtuple
    import minbase

    try:
        debs = minbase.minbase_debs()
    except (minbase.Unavailable, OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"the minbase package set is not available: {e}")
    base = tmp_path_factory.mktemp("minbase")
    store = base / "store"
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"), MOSAIC_KEYRING=signer.keyring)
    out = run([MOSAIC, "fragment", "create", *debs, "-o", store, "--sign", signer.fingerprint,
               "--source-date-epoch", "1700000000", "--json"], env=env).stdout
    by_source = {os.path.realpath(r["source"]): r["digest"] for r in json.loads(out)}
    digests = [by_source[os.path.realpath(d)] for d in debs]
    Minbase = namedtuple("Minbase", "store digests keyring env")
    return Minbase(store, digests, signer.keyring, env)


# ---- signed package repositories served over HTTP (appended for the provider tests) ------------

@pytest.fixture(scope="session")
def repo_key(tmp_path_factory):
    """The key that signs the test repositories (InRelease, Release.gpg, rpms, repomd.xml.asc)."""
    import repos
    with repos.Key.create(tmp_path_factory.mktemp("repo-key"), "mosaic repo signer") as k:
        yield k


@pytest.fixture(scope="session")
def repo_wrong_key(tmp_path_factory):
    """Another key: its keyring does not hold the repositories' signer."""
    import repos
    with repos.Key.create(tmp_path_factory.mktemp("repo-wrong-key"), "mosaic wrong key") as k:
        yield k


@pytest.fixture(scope="session")
def repo_site(repo_key, repo_wrong_key, tmp_path_factory):
    """The standard repositories (repos.py: deb/, deb-extra/, rpm/), built once per session and
    served over HTTP on 127.0.0.1: a repos.Site with .url, .server, .root, .key, .wrong_key and
    .deb/.deb_extra/.rpm (repos.Repo). Do not change its files; use fresh_repo_site for that, and
    the `repos` fixture to get the server's faults and log reset after the test."""
    import httpd
    import repos
    site = repos.build_site(tmp_path_factory.mktemp("repo-site") / "site", repo_key,
                            repo_wrong_key)
    with httpd.serve(site.root) as srv:
        site.server = srv
        yield site


@pytest.fixture
def repos(repo_site):
    """repo_site for one test; the server's faults and request log are reset afterwards."""
    try:
        yield repo_site
    finally:
        repo_site.server.reset()


@pytest.fixture
def fresh_repo_site(repo_site, tmp_path):
    """A private copy of repo_site (same keys) under tmp_path, served by its own server, for
    tests that change or remove repository files."""
    import httpd
    root = tmp_path / "site"
    shutil.copytree(repo_site.root, root, symlinks=True)
    with httpd.serve(root) as srv:
        yield repo_site.moved(root, srv)


def cached_key(work, name):
    """A signing key kept in work/key beside a store cached across test runs, so that a later
    run trusts what an earlier one made. A new key empties work/store (its signatures would
    not verify)."""
    import repos
    d = Path(work) / "key"
    fpr = d / "fingerprint"
    if fpr.exists() and (d / "gnupg").is_dir():
        return repos.Key(d / "gnupg", fpr.read_text().strip(), d / "public.gpg",
                         d / "public.asc", name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(Path(work) / "store", ignore_errors=True)
    if len(str(d / "gnupg")) > 80:
        pytest.skip(f"{d}: too long a path for a GnuPG home (its agent's socket)")
    key = repos.Key.create(d, name)
    fpr.write_text(key.fingerprint + "\n")
    return key


def mounts_under(path):
    """The host's mount points at path or below it."""
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1] == str(path) or line.split()[1].startswith(f"{path}/")]


def host_build(args, env):
    """`mosaic build ARGS` from the host's apt sources: skips the test when they cannot be
    reached, fails it when the build fails, and unmounts what a failed configure left mounted
    in $MOSAIC_CACHE_DIR (this build's, not another run's). Returns the finished process."""
    cache = env.get("MOSAIC_CACHE_DIR")
    before = set(mounts_under(cache)) if cache else set()
    try:
        p = run([MOSAIC, "build", *args], env=env, check=False)
    finally:
        left = set(mounts_under(cache)) - before if cache else set()
        for mnt in sorted(left, key=len, reverse=True):
            run([MOSAIC, "umount", "--lazy", mnt], check=False)
    if p.returncode != 0 and ("resolve host" in p.stderr or "connect" in p.stderr.lower()):
        pytest.skip(f"the host's apt sources cannot be reached: {p.stderr[-300:]}")
    assert p.returncode == 0, p.stderr[-3000:]
    return p


# ---- debian-minimal, built once per run (appended for the switch tests) ------------------------

DEBIAN_MINIMAL = REPO / "manifests" / "examples" / "debian-minimal.yaml"


@pytest.fixture(scope="session")
def debian_minimal():
    """manifests/examples/debian-minimal.yaml built unconfigured from the host's apt sources, once
    per run, into a store kept across runs (CACHE/configure-debian/store) under a signing key
    kept beside it, so that later runs make no fragment: SimpleNamespace(key, env, lock, store,
    manifest, data (the lock), build (the finished process)). env signs with the key and uses
    the shared package cache. Slow: only for tests marked slow."""
    import minbase
    if minbase.host_release() != "bookworm":
        pytest.skip("the host is not Debian bookworm")
    work = CACHE / "configure-debian"
    work.mkdir(parents=True, exist_ok=True)
    key = cached_key(work, "mosaic configure-debian")
    try:
        env = dict(os.environ, GNUPGHOME=key.gnupghome,
                   MOSAIC_CACHE_DIR=str(CACHE / "mosaic-cache"))
        env.pop("MOSAIC_KEYRING", None)
        lock, store = work / "debian-minimal.lock", work / "store"
        p = host_build([DEBIAN_MINIMAL, "--lock", lock, "-s", store, "--sign", key.fingerprint,
                        "--no-configure"], env)
        yield SimpleNamespace(key=key, env=env, lock=lock, store=store, manifest=DEBIAN_MINIMAL,
                              data=json.loads(lock.read_text()), build=p)
    finally:
        key.close()  # its gpg-agent
