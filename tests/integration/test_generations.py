"""Generations: every mosaic build records one in the store (<store>/generations/<HISTORY>/<N>.json
and a gc root), unless nothing changed; `mosaic generations` lists, compares and drops them,
`export --generation N` reads an earlier one, and each fact set (role) has its own history and
lock. Real builds against the signed local repositories of repos.py, served on 127.0.0.1."""

import hashlib
import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import MOSAIC, mosaic_mounted, object_path, run, tree_snapshot
from test_build import build, deb_repo

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")


def manifest(tmp_path, repos, packages, name="t", layers=""):
    m = tmp_path / f"{name}.yaml"
    pk = "".join(f"\n  - \"{p}\"" for p in packages)
    m.write_text(f"name: {name}\narch: amd64\nrepositories:\n{deb_repo(repos)}\n"
                 f"packages:{pk}\n{layers}")
    return m


def gens(store, *args, env=None, check=True):
    return run([MOSAIC, "generations", *args, "-s", store], env=env, check=check)


def records(store, history="t"):
    d = Path(store) / "generations" / history
    return sorted(int(p.stem) for p in d.glob("*.json")) if d.is_dir() else []


def record(store, n, history="t"):
    return json.loads((Path(store) / "generations" / history / f"{n}.json").read_text())


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def two(repos, tmp_path, env, signer):
    """Two generations of t: libfoo 1.0 and tiny-mta, then app 1.0 with libfoo 3.0~rc1 and the
    same tiny-mta."""
    store = tmp_path / "store"
    m = manifest(tmp_path, repos, ["libfoo (<< 2.0)", "tiny-mta"])
    before = int(time.time())
    build(m, dict(env, SOURCE_DATE_EPOCH="1000"), store, signer)
    first = record(store, 1)
    lock1 = sha256(tmp_path / "t.lock")
    manifest(tmp_path, repos, ["app", "tiny-mta"])
    p = build(m, env, store, signer)
    assert "generation 2 of t" in p.stderr
    return dict(store=store, manifest=m, before=before, first=first, lock1=lock1)


def test_record_says_what_was_built(two, tmp_path):
    store, m = two["store"], two["manifest"]
    assert records(store) == [1, 2]
    r1, r2 = two["first"], record(store, 2)
    assert r1["version"] == 1 and r1["number"] == 1 and r2["number"] == 2
    assert r1["history"] == "t" and r1["facts"] == {}
    # The wall clock, not $SOURCE_DATE_EPOCH (the first build had it at 1000).
    assert two["before"] <= r1["time"] <= r2["time"] <= time.time() + 1
    assert r2["manifest"] == str(m.resolve()) and r2["manifest_digest"] == sha256(m)
    assert r1["lock_digest"] == two["lock1"]
    assert r2["lock_digest"] == sha256(tmp_path / "t.lock")
    # Exactly the list the index is built from, lowest first, and the index's own digest.
    assert r2["index_digest"] == sha256(r2["index"])
    idx = Path(r2["index"]).read_bytes()
    count, table = int.from_bytes(idx[56:60], "little"), int.from_bytes(idx[80:88], "little")
    assert [idx[table + 32 * i:table + 32 * (i + 1)].hex() for i in range(count)] == \
        [f["digest"] for f in r2["fragments"]]
    names = [f["name"] for f in r2["fragments"]]
    assert names.index("libfoo") < names.index("app") and names[-1] == "dpkg-database"
    libfoo = next(f for f in r2["fragments"] if f["name"] == "libfoo")
    assert libfoo["version"] == "3.0~rc1" and libfoo["kind"] == "package"
    assert libfoo["source"] == "deb" and libfoo["arch"] == "amd64"
    lock = json.loads((tmp_path / "t.lock").read_text())
    assert [f["digest"] for f in r2["fragments"][:-1]] == [p["fragment"] for p in lock["packages"]]
    # Each generation's fragments are a gc root of their own.
    for n, r in ((1, r1), (2, r2)):
        root = (store / "roots" / f"generation-t-{n}").read_text().split()
        assert root == [f["digest"] for f in r["fragments"]]


def test_rebuild_with_nothing_changed_adds_none(two, env, signer):
    store, m = two["store"], two["manifest"]
    p = build(m, env, store, signer)
    assert "generation 2 of t is the same build: no new generation" in p.stderr
    assert records(store) == [1, 2]
    # A change that does not change the result (a comment) adds none either.
    m.write_text(m.read_text() + "# a comment\n")
    build(m, env, store, signer)
    assert records(store) == [1, 2]
    # Going back to what generation 1 was is a new generation: 3, the same as 1.
    m.write_text(m.read_text().replace('"app"', '"libfoo (<< 2.0)"'))
    build(m, env, store, signer)
    assert records(store) == [1, 2, 3]
    r1, r3 = record(store, 1), record(store, 3)
    assert r1["fragments"] == r3["fragments"] and r1["index_digest"] == r3["index_digest"]


def test_list(two):
    store = two["store"]
    out = gens(store, "t").stdout.splitlines()
    assert out[0].split() == ["GEN", "TIME", "FRAGMENTS", "INDEX", "FACTS"]
    rows = [line.split() for line in out[1:]]
    assert [r[0] for r in rows] == ["1", "*"]
    assert rows[1][1] == "2"
    r2 = record(store, 2)
    assert rows[1][-3:] == [str(len(r2["fragments"])), r2["index_digest"][:12], "-"]
    # The manifest names its history too, and 'list' may be said.
    assert gens(store, "list", two["manifest"]).stdout.splitlines() == out
    listed = json.loads(gens(store, "t", "--json").stdout)
    assert [g["number"] for g in listed] == [1, 2]
    assert [g["newest"] for g in listed] == [False, True]
    assert listed[1]["index_digest"] == r2["index_digest"]
    assert [f["digest"] for f in listed[1]["fragments"]] == [f["digest"] for f in r2["fragments"]]
    for f in listed[1]["fragments"]:
        assert f["image"] == str(object_path(store, f["digest"]))


def test_diff(two):
    store = two["store"]
    p = gens(store, "diff", "t", "1", "2")
    lines = [line.split() for line in p.stdout.splitlines()]
    assert lines[0] == ["t:", "generation", "1", "->", "2"]
    assert ["added", "app", "1.0"] in lines
    assert ["upgraded", "libfoo", "1.0", "->", "3.0~rc1"] in lines
    changed = [line for line in lines if line[:3] == ["changed", "dpkg-database", "(fragment)"]]
    assert len(changed) == 1
    d = json.loads(gens(store, "diff", "t", "1", "2", "--json").stdout)
    assert (d["history"], d["from"], d["to"]) == ("t", 1, 2)
    by = {(c["change"], c["name"]): c for c in d["changes"]}
    assert set(by) == {("added", "app"), ("upgraded", "libfoo"), ("changed", "dpkg-database")}
    up = by[("upgraded", "libfoo")]
    assert (up["old_version"], up["new_version"], up["package"]) == ("1.0", "3.0~rc1", True)
    db = by[("changed", "dpkg-database")]
    assert db["package"] is False and db["old_digest"] != db["new_digest"]
    # The other way round: removed and downgraded.
    back = {(c["change"], c["name"]) for c in
            json.loads(gens(store, "diff", "t", "2", "1", "--json").stdout)["changes"]}
    assert back == {("removed", "app"), ("downgraded", "libfoo"), ("changed", "dpkg-database")}
    assert "no changes" in gens(store, "diff", "t", "2", "2").stdout


def test_export_an_earlier_generation(two, tmp_path, env, signer):
    m = two["manifest"]

    def marker(*extra):
        out = tmp_path / "out.tar"
        run([MOSAIC, "export", m, "-s", two["store"], "--keyring", signer.keyring,
             "--format", "tar", "-o", out, *extra], env=env)
        with tarfile.open(out) as t:
            names = t.getnames()
            text = t.extractfile("./usr/share/doc/libfoo/marker").read().decode()
        return text, "./usr/share/doc/app/marker" in names

    assert marker() == ("libfoo 3.0~rc1\n", True)
    assert marker("--generation", "1") == ("libfoo 1.0\n", False)
    assert marker("--generation", "2") == ("libfoo 3.0~rc1\n", True)


def test_mount_and_switch_between_generations(two, tmp_path, env, signer):
    """A mount of the manifest serves its newest generation and says which; a switch to
    --generation 1 serves the earlier packages live, back to 2 the newer ones; an unknown
    generation is a clear error that leaves the mount serving what it served."""
    m, store = two["manifest"], two["store"]
    src = ["-s", store, "--keyring", signer.keyring]
    marker = "usr/share/doc/libfoo/marker"
    with mosaic_mounted([m, *src], tmp_path / "mnt", env) as mt:
        mnt = mt.mnt

        def serving():
            return json.loads(run([MOSAIC, "status", mnt, "--json"], env=env).stdout)["generation"]

        assert serving()["generation"] == 2 and serving()["source"] == "manifest"
        assert (mnt / marker).read_text() == "libfoo 3.0~rc1\n"
        assert (mnt / "usr/share/doc/app/marker").exists()
        run([MOSAIC, "switch", mnt, m, *src, "--generation", "1"], env=env)
        assert serving()["generation"] == 1
        assert (mnt / marker).read_text() == "libfoo 1.0\n"
        assert not (mnt / "usr/share/doc/app/marker").exists()
        before = tree_snapshot(mnt)
        p = run([MOSAIC, "switch", mnt, m, *src, "--generation", "9"], env=env, check=False)
        assert p.returncode == 1 and "9" in p.stderr and "generation" in p.stderr, p.stderr
        assert tree_snapshot(mnt) == before
        assert serving()["generation"] == 1
        run([MOSAIC, "switch", mnt, m, *src, "--generation", "2"], env=env)
        assert (mnt / marker).read_text() == "libfoo 3.0~rc1\n"


def test_roles_keep_their_own_history_and_lock(repos, tmp_path, env, signer):
    store = tmp_path / "store"
    m = manifest(tmp_path, repos, ["tiny-mta"],
                 layers="layers:\n  - when: {role: web}\n    packages: [app]\n"
                        "  - when: {role: db}\n    packages: [legacy-app]\n")
    build(m, env, store, signer, "--role", "web")
    build(m, env, store, signer, "--role", "db")
    web, db = tmp_path / "t@role=web.lock", tmp_path / "t@role=db.lock"
    assert web.exists() and db.exists() and not (tmp_path / "t.lock").exists()
    names = lambda lock: {p["name"] for p in json.loads(lock.read_text())["packages"]}
    assert "app" in names(web) and "app" not in names(db)
    db_bytes = db.read_bytes()
    # Building web again touches neither db's lock nor its history.
    build(m, env, store, signer, "--role", "web")
    assert db.read_bytes() == db_bytes
    assert records(store, "t@role=web") == [1] and records(store, "t@role=db") == [1]
    assert records(store, "t") == []
    assert record(store, 1, "t@role=web")["facts"] == {"role": "web"}
    for h in ("t@role=web", "t@role=db"):
        assert (store / "roots" / f"manifest-{h}").exists()
        assert (store / "roots" / f"generation-{h}-1").exists()
    # The manifest and its role name the history, as does the history's name.
    out = gens(store, m, "--role", "db").stdout
    assert out == gens(store, "t@role=db").stdout and "role=db" in out
    # A plain build is a third history, with NAME.lock as before.
    build(m, env, store, signer)
    assert (tmp_path / "t.lock").exists() and records(store, "t") == [1]
    # --lock still wins over the history's lock name.
    other = tmp_path / "elsewhere.lock"
    build(m, env, store, signer, "--role", "web", "--lock", other)
    assert other.exists() and records(store, "t@role=web") == [1]


def test_gc_keep_and_store_gc(two):
    store = two["store"]
    r1, r2 = record(store, 1), record(store, 2)
    only1 = {f["digest"] for f in r1["fragments"]} - {f["digest"] for f in r2["fragments"]}
    shared = {f["digest"] for f in r1["fragments"]} & {f["digest"] for f in r2["fragments"]}
    assert only1 and shared
    # Generation 1's root keeps its fragments through a store gc.
    run([MOSAIC, "store", "gc", "-s", store])
    assert all(object_path(store, d).exists() for d in only1)
    p = gens(store, "gc", "t", "--keep", "1")
    assert "removed generation 1 of t" in p.stdout and "store gc" in p.stdout
    assert records(store) == [2]
    assert not (store / "roots" / "generation-t-1").exists()
    assert (store / "roots" / "generation-t-2").exists()
    # Nothing was removed from the store yet; store gc removes what only generation 1 used.
    assert all(object_path(store, d).exists() for d in only1)
    run([MOSAIC, "store", "gc", "-s", store])
    for d in only1:
        for suffix in (".sqfs", ".json", ".json.sig"):
            assert not object_path(store, d, suffix).exists()
    for f in r2["fragments"]:
        assert object_path(store, f["digest"]).exists() and object_path(
            store, f["digest"], ".json").exists()
    assert "nothing removed" in gens(store, "gc", "t", "--keep", "1").stdout
    assert records(store) == [2]
    p = gens(store, "diff", "t", "1", "2", check=False)
    assert p.returncode == 1 and "has no generation 1" in p.stderr


def test_bad_input(two):
    store = two["store"]
    p = gens(store, "nope", check=False)
    assert p.returncode == 1 and "no generations of 'nope'" in p.stderr
    p = gens(store, "diff", "t", "1", "7", check=False)
    assert p.returncode == 1 and "'t' has no generation 7 (it has 1 to 2)" in p.stderr
    for args in (["diff", "t", "1", "x"], ["diff", "t", "0", "1"], ["diff", "t", "1"],
                 ["gc", "t"], ["gc", "t", "--keep", "0"], ["t", "--keep", "1"],
                 ["../t"], ["a/b"], [".t"], ["t", "--role", "web"], ["t", "u"]):
        p = gens(store, *args, check=False)
        assert p.returncode == 2 and p.stderr.startswith("mosaic: "), (args, p.stderr)
    p = run([MOSAIC, "export", "-s", store, "--generation", "1", "x.idx", "--format", "tar",
             "-o", "/dev/null"], check=False)
    assert p.returncode == 2 and "MANIFEST" in p.stderr
    p = run([MOSAIC, "export", two["manifest"], "-s", store, "--generation", "9", "--format",
             "tar", "-o", "/dev/null"], check=False)
    assert p.returncode == 1 and "has no generation 9" in p.stderr


@pytest.mark.parametrize("damage", ["garbage", "truncated", "version", "digest", "other"])
def test_corrupt_record(two, damage):
    store = two["store"]
    path = store / "generations" / "t" / "1.json"
    text = path.read_text()
    r = json.loads(text)
    if damage == "garbage":
        path.write_bytes(b"\x00\xffnot json")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "version":
        path.write_text(json.dumps(dict(r, version=2)))
    elif damage == "digest":
        r["fragments"][0]["digest"] = "../../../etc/passwd"
        path.write_text(json.dumps(r))
    else:
        path.write_text(json.dumps(dict(r, number=2)))  # another record copied over it
    p = gens(store, "t", check=False)
    assert p.returncode == 1 and str(path) in p.stderr, p.stderr
    rows = [line.split() for line in p.stdout.splitlines()[1:]]
    assert rows[0] == ["1", "(unreadable)"] and rows[1][:2] == ["*", "2"]
    listed = json.loads(gens(store, "t", "--json", check=False).stdout)
    assert str(path) in listed[0]["error"] and listed[1]["number"] == 2
    p = gens(store, "diff", "t", "1", "2", check=False)
    assert p.returncode == 1 and str(path) in p.stderr
    # The newest is still read, and gc drops the unreadable one like any other.
    assert gens(store, "diff", "t", "2", "2").returncode == 0
    gens(store, "gc", "t", "--keep", "1")
    assert records(store) == [2]


def test_concurrent_builds_get_their_own_numbers(repos, tmp_path, env, signer):
    # Two manifests named t (two directories) built into one store at once: one history, and
    # the lock on it gives each build a number of its own.
    store = tmp_path / "store"
    procs = []
    for i, pkgs in enumerate((["libfoo (<< 2.0)"], ["app"])):
        d = tmp_path / f"m{i}"
        d.mkdir()
        m = manifest(d, repos, pkgs)
        e = dict(env, MOSAIC_CACHE_DIR=str(tmp_path / f"cache{i}"))
        procs.append(subprocess.Popen([MOSAIC, "build", m, "-s", store, "--sign",
                                       signer.fingerprint, "--no-configure"], env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert records(store) == [1, 2]
    assert {len(record(store, n)["fragments"]) for n in (1, 2)} == {2, 3}


def test_help_and_usage():
    p = run([MOSAIC, "generations", "--help"])
    assert p.stdout.startswith("Usage: mosaic generations")
    for args in ([], ["diff"], ["gc", "--keep", "1"], ["--bogus", "t"]):
        p = run([MOSAIC, "generations", *args], check=False)
        assert p.returncode == 2 and p.stderr.startswith("mosaic: "), args
