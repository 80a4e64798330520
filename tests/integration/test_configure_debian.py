"""The configured debian-minimal against debootstrap: `mosaic build` of
manifests/examples/debian-minimal.yaml, `mosaic mount --upper`, `mosaic configure`, and
`debootstrap --variant=minbase bookworm` of the same packages, compared path by path (type,
owner, group, mode, symlink target, size, content, xattrs, hard links) outside the short list
of differences by nature in minbase-differences.txt (docs/debootstrap-differences.md), which the
test prints. Then, in the same configured mount, what a user does next: dpkg's view of it,
`apt-get install hello` from the host's apt sources, `mosaic diff`, `mosaic commit`, and the
committed composition mounted without an upper showing the same tree.

debootstrap gets exactly the .debs that mosaic composed: they are served to it as a local
archive (minbase.local_archive) with the archive's own Packages stanzas, because the host's
sources keep bookworm-security on another URI and debootstrap takes one mirror, so from the
host's mirror it would install older versions of every package with a security update. That
the package set is the same one debootstrap picks from the host's mirror is checked first.

Slow and networked (the first run downloads the required set; the apt-get step always asks the
host's mirrors). The store, its signing key and the packages are cached under
/var/cache/mosaic-tests/configure-debian and mosaic-cache, so later runs build nothing. No
mirror name is written anywhere: everything comes from the host's apt sources at run time."""

import difflib
import fnmatch
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

import minbase
from conftest import (CACHE, MOSAIC, REPO, assert_same_tree, mounts_under, run, tree_snapshot,
                      wait_gone)

pytestmark = pytest.mark.slow

MANIFEST = REPO / "manifests" / "examples" / "debian-minimal.yaml"
SUITE = "bookworm"
DIFFERENCES = Path(__file__).resolve().parent / "minbase-differences.txt"
MOSAIC_CACHE = CACHE / "mosaic-cache"
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME": "/root", "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


# ---- the list of differences by nature ----------------------------------------------------------

@dataclass
class Difference:
    pattern: str
    kind: str
    reason: str
    seen: int = 0


KINDS = ("only-debootstrap", "only-mosaic", "content", "any")


def load_differences():
    out = []
    for n, line in enumerate(DIFFERENCES.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        pattern, kind, reason = line.split(None, 2)
        assert kind in KINDS or kind.startswith("field:"), f"{DIFFERENCES.name}:{n}: {kind}"
        out.append(Difference(pattern, kind, reason))
    return out


def paragraphs_without(path, field):
    """The deb822 paragraphs of path with field dropped, as lists of lines."""
    paras, cur, skip = [], [], False
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            if cur:
                paras.append(cur)
            cur, skip = [], False
            continue
        if line[:1] in (" ", "\t"):
            if not skip:
                cur.append(line)
            continue
        skip = line.split(":", 1)[0].lower() == field.lower()
        if not skip:
            cur.append(line)
    if cur:
        paras.append(cur)
    return paras


def how_they_differ(ours, theirs):
    """only-mosaic, only-debootstrap, content (same type, owner, mode) or attributes."""
    if theirs is None:
        return "only-mosaic"
    if ours is None:
        return "only-debootstrap"
    rest = {k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)}
    return "content" if rest <= {"size", "sha256"} else "attributes"


def explained(d, path, how, ours_root, theirs_root):
    if not fnmatch.fnmatchcase(path, d.pattern):
        return False
    if d.kind == "any":
        return True
    if d.kind.startswith("field:"):
        return how == "content" and (paragraphs_without(ours_root / path, d.kind[6:]) ==
                                     paragraphs_without(theirs_root / path, d.kind[6:]))
    return d.kind == how


def text_diff(ours, theirs, how, limit=12):
    """The first lines of a unified diff of two small text files, to show what differs."""
    if how != "content" or not ours.is_file() or ours.stat().st_size > 1 << 20:
        return ""
    try:
        a, b = ours.read_text().splitlines(), theirs.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    lines = list(difflib.unified_diff(a, b, "mosaic", "debootstrap", n=1, lineterm=""))
    return "".join(f"\n    {line}" for line in lines[:limit])


def compare_trees(ours_root, theirs_root):
    """(unexplained differences, the list with what each entry explained)."""
    ours, theirs = (tree_snapshot(r) for r in (ours_root, theirs_root))
    for tree in (ours, theirs):
        for e in tree.values():
            e.pop("mtime")  # every file written while installing has the time of the run
    diffs = load_differences()
    unexplained = []
    for path in sorted(set(ours) | set(theirs)):
        a, b = ours.get(path), theirs.get(path)
        if a == b:
            continue
        how = how_they_differ(a, b)
        d = next((d for d in diffs if explained(d, path, how, ours_root, theirs_root)), None)
        if d is None:
            unexplained.append(f"/{path}: {how}: mosaic {a} debootstrap {b}" +
                               text_diff(ours_root / path, theirs_root / path, how))
        else:
            d.seen += 1
    return unexplained, diffs, len(ours), len(theirs)


# ---- the store, its key, debootstrap ------------------------------------------------------------

def unmount_all_under(path):
    """What a failed run left mounted below path, deepest first: mosaic's own mounts through
    mosaic umount (which ends their daemons), anything else lazily."""
    for mnt in sorted(mounts_under(path), key=len, reverse=True):
        run([MOSAIC, "umount", "--lazy", mnt], check=False)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", mnt], capture_output=True)


@pytest.fixture(scope="module")
def built(debian_minimal, tmp_path_factory):
    """debian-minimal as the session builds it once (conftest's debian_minimal: unconfigured,
    the test runs mosaic configure on the live mount itself), and a work dir for the module."""
    for tool in ("debootstrap", "apt-ftparchive", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (tools/setup.sh)")
    dm = debian_minimal
    print(dm.build.stderr)
    work = tmp_path_factory.mktemp("configure-debian")
    yield SimpleNamespace(key=dm.key, env=dm.env, lock=dm.lock, store=dm.store, work=work,
                          data=dm.data)
    unmount_all_under(work)
    assert mounts_under(work) == [], "a mount outlived the test"


@pytest.fixture(scope="module")
def reference(built):
    """debootstrap --variant=minbase of the lock's .debs, served as a local archive."""
    archive, target = built.work / "archive", built.work / "debootstrap"
    try:
        minbase.local_archive(archive, built.data, MOSAIC_CACHE, built.key, SUITE)
    except minbase.Unavailable as e:
        pytest.skip(f"no local archive of the lock's packages: {e}")
    t0 = time.monotonic()
    p = minbase.debootstrap(target, SUITE, f"file://{archive}", built.key.keyring,
                            built.data["arch"])
    print(f"debootstrap --variant=minbase took {time.monotonic() - t0:.1f} s")
    try:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        yield target
    finally:
        # debootstrap mounts proc and sys into the target while it works; a failed run may
        # leave them, and nothing may be deleted through them.
        unmount_all_under(target)
        if not mounts_under(target):
            shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(archive, ignore_errors=True)


class Mount:
    """A mosaic mount of the test that is always taken down (test or no test)."""

    def __init__(self, built, mnt):
        self.built, self.mnt, self.pid = built, Path(mnt), None

    def mount(self, *args):
        self.mnt.mkdir(parents=True, exist_ok=True)
        run([MOSAIC, "mount", *args, self.mnt, "-s", self.built.store, "--keyring",
             self.built.key.keyring], env=self.built.env)
        self.pid = self.status()["pid"]

    def status(self):
        return json.loads(run([MOSAIC, "status", self.mnt, "--json"],
                              env=self.built.env).stdout)

    def umount(self):
        if self.pid is None:
            return
        p = run([MOSAIC, "umount", self.mnt], env=self.built.env, check=False)
        if p.returncode != 0:
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
        gone = wait_gone(self.pid)
        if not gone:
            os.kill(self.pid, 9)
            wait_gone(self.pid)
        self.pid = None
        assert p.returncode == 0, f"mosaic umount: {p.stderr}"
        assert gone, "the daemon outlived mosaic umount"
        assert not os.path.ismount(self.mnt)


@pytest.fixture(scope="module")
def configured(built):
    """The manifest mounted with an upper and configured by mosaic configure."""
    m = Mount(built, built.work / "mnt")
    try:
        m.mount(MANIFEST, "--lock", built.lock, "--upper", built.work / "upper")
        t0 = time.monotonic()
        p = run([MOSAIC, "configure", m.mnt], env=built.env, check=False)
        print(f"mosaic configure took {time.monotonic() - t0:.1f} s")
        assert p.returncode == 0, p.stderr + p.stdout[-3000:]
        assert mounts_under(m.mnt) == [str(m.mnt)], "configure left a mount"
        yield m
    finally:
        m.umount()


def in_chroot(root, script, check=True):
    """sh -c script chrooted into root, in private mount and PID namespaces carrying /proc, the
    host's /dev and a tmpfs /run: they vanish with the namespace, and so does every process."""
    inner = ('set -e; r="$1"; mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; '
             'mount -t tmpfs tmpfs "$r/run"; exec chroot "$r" /bin/sh -c "$0"')
    env = dict(CHROOT_ENV)
    env.update({k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")})
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                        "--kill-child", "sh", "-c", inner, script, str(root)],
                       env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"in the chroot: {script} exited {p.returncode}\n"
                             f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def write_host_apt_config(root):
    """What a user would write into the system to reach the host's mirrors: the host's deb
    sources for SUITE (read now, from its apt sources), its apt proxy settings, its resolver."""
    stanzas = []
    for uri, suites, components in minbase.apt_sources():
        mine = [s for s in suites if s == SUITE or s.startswith(f"{SUITE}-")]
        if mine:
            stanzas.append(f"Types: deb\nURIs: {uri}\nSuites: {' '.join(mine)}\n"
                           f"Components: {' '.join(components)}\n")
    if not stanzas:
        pytest.skip(f"the host's apt sources carry no {SUITE} suite")
    (root / "etc/apt/sources.list.d/host.sources").write_text("\n".join(stanzas))
    dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True).stdout
    proxies = [line for line in dump.splitlines()
               if re.match(r'^Acquire::[^ ]*::Proxy(::[^ ]*)? "', line, re.I)]
    if proxies:
        (root / "etc/apt/apt.conf.d/99host-proxy").write_text(
            "".join(f"{line.rstrip(';')};\n" for line in proxies))
    resolv = Path("/etc/resolv.conf")
    if resolv.exists():
        (root / "etc/resolv.conf").write_text(resolv.read_text())


def installed(admindir):
    out = run(["dpkg-query", f"--admindir={admindir}", "-W", "-f",
               "${Package}\t${Version}\t${db:Status-Abbrev}\n"]).stdout
    return {n: (v, s.strip()) for n, v, s in (line.split("\t") for line in out.splitlines())}


# ---- the tests ----------------------------------------------------------------------------------

def test_same_packages_as_debootstrap(built, reference, configured):
    """The package lists first: the lock against what debootstrap picks from the host's mirror
    for SUITE (by name), and against what it installed here (name and version)."""
    from test_debian_minimal import debootstrap_names
    ours = {p["name"]: p["version"] for p in built.data["packages"]}
    picked = set(debootstrap_names(built.data["arch"]))
    only_ours, only_theirs = sorted(set(ours) - picked), sorted(picked - set(ours))
    print(f"mosaic: {len(ours)} packages; debootstrap --print-debs: {len(picked)}")
    for name in only_ours:
        print(f"  only mosaic:      {name}")
    for name in only_theirs:
        print(f"  only debootstrap: {name}")
    assert not only_ours and not only_theirs
    theirs = installed(reference / "var/lib/dpkg")
    assert {n: v for n, (v, _) in theirs.items()} == ours
    mine = installed(configured.mnt / "var/lib/dpkg")
    assert {n: v for n, (v, _) in mine.items()} == ours


def test_tree_matches_debootstrap(reference, configured):
    unexplained, diffs, n_ours, n_theirs = compare_trees(configured.mnt, reference)
    print(f"compared {n_ours} paths (mosaic) with {n_theirs} (debootstrap); times are not "
          f"compared. Differences by nature ({DIFFERENCES.name}):")
    for d in diffs:
        print(f"  {d.pattern:<30} {d.kind:<17} {d.seen:4d} path(s): {d.reason}")
    assert not unexplained, f"{len(unexplained)} unexplained differences:\n" + \
        "\n".join(unexplained[:40])
    stale = [d.pattern for d in diffs if d.seen == 0]
    assert not stale, f"{DIFFERENCES.name} lists differences that are gone: {stale}"


def test_dpkg_sees_a_configured_system(configured):
    rows = installed(configured.mnt / "var/lib/dpkg")
    assert rows and {s for _, s in rows.values()} == {"ii"}, \
        {n: s for n, (_, s) in rows.items() if s != "ii"}
    listing = in_chroot(configured.mnt, "dpkg -l").stdout
    assert [ln for ln in listing.splitlines() if re.match(r"^[a-z][A-Z ]", ln)
            and not ln.startswith("ii ")] == []
    audit = in_chroot(configured.mnt, "dpkg --audit")
    assert audit.stdout == "" and audit.stderr == ""


def test_apt_install_hello_then_commit_and_remount(built, configured):
    mnt = configured.mnt
    write_host_apt_config(mnt)
    p = in_chroot(mnt, "apt-get update -q", check=False)
    if p.returncode != 0 or re.search(r"^(W|E): Failed to fetch", p.stdout + p.stderr, re.M):
        pytest.skip(f"the host's apt sources cannot be reached from the chroot: "
                    f"{(p.stdout + p.stderr)[-500:]}")
    in_chroot(mnt, "apt-get install -y -q --no-install-recommends hello")
    assert in_chroot(mnt, "hello").stdout == "Hello, world!\n"
    assert installed(mnt / "var/lib/dpkg")["hello"][1] == "ii"
    assert in_chroot(mnt, "dpkg --audit").stdout == ""

    diff = json.loads(run([MOSAIC, "diff", mnt, "--json"], env=built.env).stdout)
    added = {e["path"] for e in diff if e["change"] == "added"}
    assert {"/usr/bin/hello", "/etc/apt/sources.list.d/host.sources",
            "/var/lib/dpkg/info/hello.list"} <= added, sorted(added)[:40]
    modified = {e["path"] for e in diff if e["change"] == "modified"}
    assert "/var/lib/dpkg/status" in modified

    # Freeze the upper, take the mount down, and mount its fragments plus the config fragment
    # without an upper: the same tree, entry by entry.
    fragments = configured.status()["fragments"]
    live = tree_snapshot(mnt, whole_seconds=True)
    name = f"configure-debian-{os.getpid()}"
    ref = built.store / "refs" / name
    try:
        p = run([MOSAIC, "commit", mnt, "-o", built.store, "--sign", built.key.fingerprint,
                 "--name", name, "--json"], env=built.env)
        digest = json.loads(p.stdout)["digest"]
        configured.umount()
        frozen_mount = Mount(built, built.work / "remount")
        try:
            frozen_mount.mount(*fragments, digest, "--read-only")
            frozen = tree_snapshot(frozen_mount.mnt, whole_seconds=True)
            assert in_chroot(frozen_mount.mnt, "hello").stdout == "Hello, world!\n"
        finally:
            frozen_mount.umount()
        assert_same_tree(frozen, live, "fragments + config fragment vs fragments + upper")
        assert "usr/bin/hello" in frozen
    finally:
        # The committed fragment is this run's alone: drop its ref and collect it.
        ref.unlink(missing_ok=True)
        run([MOSAIC, "store", "gc", "-s", built.store], env=built.env, check=False)
