"""Reproducible builds (issue 7): the same lock and the same SOURCE_DATE_EPOCH give byte-identical
raw, ISO and tar exports, also when everything is built from scratch.

The slow test builds manifests/examples/debian-bootable.yaml twice from one lock (resolved
once, then `mosaic build --locked` on copies of it), each build with a store of its own and an
empty MOSAIC_CACHE_DIR of its own, so nothing is shared but the lock and the signing key:
packages are downloaded twice from the host's apt sources, every fragment is made twice and
configure (package scripts, the initramfs, users, services) runs twice. Both compositions are
exported as tar, raw and ISO with the same --source-date-epoch; every pair must be identical.
A mismatch reports the first paths whose tar entries differ (metadata or content), which is
where to look. Work directories live in /var/cache/mosaic-tests/repro-PID and are removed
afterwards."""

import hashlib
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import CACHE, MOSAIC, REPO, file_sha256, host_build, mounts_under, object_path, run

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

MANIFEST = REPO / "manifests" / "examples" / "debian-bootable.yaml"
# The lock test_boot.py resolved: reusing it saves a resolve, and nothing else is taken from
# that build (its store and cache stay unused).
CACHED_LOCK = CACHE / "boot" / "debian-bootable.lock"
EPOCH = "1700000000"
FORMATS = ("tar", "raw", "iso")


def tar_entries(path):
    """{name: (type, mode, uid, gid, mtime, size, link target, pax headers, content sha256)}."""
    out = {}
    with tarfile.open(path) as t:
        for m in t:
            digest = None
            if m.isfile():
                h = hashlib.sha256()
                f = t.extractfile(m)
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                digest = h.hexdigest()
            out[m.name] = (m.type, oct(m.mode), m.uid, m.gid, m.mtime, m.size, m.linkname,
                           sorted(m.pax_headers.items()), digest)
    return out


def tar_differences(a, b, limit=25):
    """Lines naming the first paths whose entries differ between the tars a and b."""
    ea, eb = tar_entries(a), tar_entries(b)
    lines = []
    for name in sorted(set(ea) | set(eb)):
        if ea.get(name) != eb.get(name):
            lines.append(f"  {name}\n    first:  {ea.get(name)}\n    second: {eb.get(name)}")
    if not lines and list(ea) != list(eb):
        lines.append("  the same entries in another order")
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def first_difference(a, b):
    """The offset of the first differing byte of files a and b, or None."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                n = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]),
                         min(len(x), len(y)))
                return offset + n
            if not x:
                return None
            offset += len(x)


def config_digest(lock):
    fragments = json.loads(Path(lock).read_text())["fragments"]
    return [f["digest"] for f in fragments if f.get("role") == "config"]


# ---- what configure leaves: the Debian required set and run: steps that leave what package
# scripts leave (a machine ID, a random seed, logs, files dated now) -----------------------------

SETTLE = """name: settle
arch: amd64
repositories:
  - name: debian
    type: deb
    host: true
    suites: [bookworm, bookworm-updates, bookworm-security]
    components: [main]
base:
  set: required
recommends: false
merged_usr: true
config:
  users:
    - name: tester
      password: "!"
run:
  - name: leave what package scripts leave
    command: |
      set -e
      echo 0123456789abcdef0123456789abcdef >/etc/machine-id
      chmod 0444 /etc/machine-id
      mkdir -p /var/lib/systemd /var/lib/dbus
      head -c 512 /dev/urandom >/var/lib/systemd/random-seed
      cp /etc/machine-id /var/lib/dbus/machine-id
      date >/var/log/bootstrap.log
      echo made now >/etc/made-now
"""


@pytest.mark.slow
def test_build_settles_what_configure_leaves(signer, tmp_path):
    """With SOURCE_DATE_EPOCH: the machine ID emptied (mode kept), seed, dbus's copy, logs and
    ldconfig's aux-cache gone, every mtime clamped, /etc/shadow dated by the epoch."""
    import minbase
    if minbase.host_release() != "bookworm":
        pytest.skip("the host is not Debian bookworm")
    m = tmp_path / "settle.yaml"
    m.write_text(SETTLE)
    # The shared cache keeps the packages; a new store makes configure run again.
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(CACHE / "mosaic-cache"), SOURCE_DATE_EPOCH=EPOCH)
    store = tmp_path / "store"
    host_build([m, "-s", store, "--sign", signer.fingerprint, "--keyring", signer.keyring], env)
    [digest] = config_digest(tmp_path / "settle.lock")
    listing = run([MOSAIC, "fragment", "inspect", digest, "-s", store, "--json"]).stdout
    entries = {e["path"]: e for e in json.loads(listing)}

    assert entries["/etc/machine-id"]["size"] == 0
    assert entries["/etc/machine-id"]["mode"] & 0o7777 == 0o444
    for gone in ("/var/lib/systemd/random-seed", "/var/lib/dbus/machine-id",
                 "/var/log/bootstrap.log", "/var/log/dpkg.log", "/var/log/alternatives.log",
                 "/var/cache/ldconfig/aux-cache"):
        assert gone not in entries, f"{gone} is in the config fragment"
    assert "/etc/made-now" in entries
    late = {p: e["mtime"] for p, e in entries.items() if e["mtime"] > int(EPOCH)}
    assert late == {}, f"mtimes after SOURCE_DATE_EPOCH: {sorted(late)[:20]}"
    assert entries["/etc/made-now"]["mtime"] == int(EPOCH)

    shadow = run(["unsquashfs", "-cat", object_path(store, digest), "etc/shadow"]).stdout
    days = str(int(EPOCH) // 86400)
    lastchg = {line.split(":")[0]: line.split(":")[2] for line in shadow.splitlines()}
    assert lastchg["tester"] == days, shadow
    assert set(lastchg.values()) <= {days, ""}, shadow


# ---- the same lock, built twice from scratch ---------------------------------------------------

@pytest.fixture
def work():
    """/var/cache/mosaic-tests/repro-PID, removed afterwards with whatever is mounted in it."""
    d = CACHE / f"repro-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        for mnt in sorted(mounts_under(d), key=len, reverse=True):
            run([MOSAIC, "umount", "--lazy", mnt], check=False)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_same_lock_on_clean_caches_gives_identical_exports(signer, work):
    import minbase
    if minbase.host_release() != "bookworm":
        pytest.skip("the host is not Debian bookworm")
    base = dict(signer.env, SOURCE_DATE_EPOCH=EPOCH)
    # One lock for both: the cached one when test_boot.py resolved it, else resolved here.
    lock = work / "debian-bootable.lock"
    if CACHED_LOCK.exists():
        shutil.copyfile(CACHED_LOCK, lock)
    else:
        p = run([MOSAIC, "resolve", MANIFEST, "--lock", lock], env=dict(
            base, MOSAIC_CACHE_DIR=str(work / "resolve-cache")), check=False)
        if p.returncode != 0 and ("resolve host" in p.stderr or "connect" in p.stderr.lower()):
            pytest.skip(f"the host's apt sources cannot be reached: {p.stderr[-300:]}")
        assert p.returncode == 0, p.stderr[-3000:]
        shutil.rmtree(work / "resolve-cache")
    builds = []
    for name in ("first", "second"):
        d = work / name
        d.mkdir()
        shutil.copyfile(lock, d / "debian-bootable.lock")
        env = dict(base, MOSAIC_CACHE_DIR=str(d / "cache"))
        b = dict(dir=d, env=env, lock=d / "debian-bootable.lock", store=d / "store")
        p = host_build([MANIFEST, "--locked", "--lock", b["lock"], "-s", b["store"], "--sign",
                        signer.fingerprint, "--keyring", signer.keyring, "--no-export"], env)
        # Each build made its own fragments and ran configure: nothing came from elsewhere.
        assert re.search(r"^fragments: [1-9]\d* made, 0 already in the store", p.stderr,
                         re.M), p.stderr[-2000:]
        assert re.search(r"^configuration: \w+ made in", p.stderr, re.M), p.stderr[-2000:]
        builds.append(b)
        # The cache is what the issue asks to be clean for the next build; the store stays
        # for the export.
        shutil.rmtree(d / "cache")

    # Different config fragments are reported with the exports, which show where they differ.
    configs = [config_digest(b["lock"]) for b in builds]
    mismatches = []
    for fmt in FORMATS:
        outs = []
        for b in builds:
            out = b["dir"] / f"debian-bootable.{fmt}"
            run([MOSAIC, "export", MANIFEST, "--lock", b["lock"], "-s", b["store"], "--keyring",
                 signer.keyring, "--format", fmt, "--source-date-epoch", EPOCH, "-o", out],
                env=dict(b["env"], MOSAIC_CACHE_DIR=str(b["dir"] / "export-cache")))
            outs.append(out)
        if file_sha256(outs[0]) != file_sha256(outs[1]):
            mismatches.append((fmt, outs))

    if mismatches or configs[0] != configs[1]:
        report = [f"config fragments: {configs[0]} and {configs[1]}"]
        tars = [b["dir"] / "debian-bootable.tar" for b in builds]
        if any(fmt == "tar" for fmt, _ in mismatches) or configs[0] != configs[1]:
            report.append("tar entries that differ:\n" + tar_differences(*tars))
        for fmt, (a, b) in mismatches:
            report.append(f"{fmt}: {a.name} differs, first at byte {first_difference(a, b)}")
        pytest.fail("exports of the same lock differ:\n" + "\n".join(report))
