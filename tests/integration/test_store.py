"""The content-addressed store: layout, atomic and concurrent adds, refs, list/show, add from
elsewhere, and gc that keeps what refs and roots name and nothing half-written."""

import json
import os
import subprocess
import time


from conftest import MOSAIC, create, flip_byte, object_path, run


def make_src(path, text):
    path.mkdir(parents=True)
    (path / "etc").mkdir()
    (path / "etc/content").write_text(text * 1000)
    return path


def test_layout_and_descriptor(tmp_path, env, signer):
    src = make_src(tmp_path / "src", "layout")
    store = tmp_path / "store"
    digest = create(store, src, env, "--name", "cfg", "--version", "2", "--kind", "config",
                    "--sign", signer.fingerprint, "--source-date-epoch", "1700000000")
    img = object_path(store, digest)
    assert img.exists() and object_path(store, digest, ".json.sig").exists()
    import hashlib
    assert hashlib.sha256(img.read_bytes()).hexdigest() == digest
    desc = json.loads(object_path(store, digest, ".json").read_text())
    assert desc["mosaic_fragment"] == 1
    assert (desc["name"], desc["version"], desc["kind"], desc["created"]) == \
        ("cfg", "2", "config", 1700000000)
    assert desc["image"] == {"digest": f"sha256:{digest}", "size": img.stat().st_size,
                             "compression": "zstd", "block_size": 131072}
    assert desc["files"] == 2 and desc["content_size"] == 6000
    assert (store / "refs" / "cfg").read_text() == digest + "\n"
    assert not list((store / "tmp").iterdir())


def test_concurrent_adds_of_the_same_fragment(tmp_path, env, signer):
    src = make_src(tmp_path / "src", "same")
    store = tmp_path / "store"
    cmd = [MOSAIC, "fragment", "create", src, "-o", store, "--name", "same",
           "--sign", signer.fingerprint, "--source-date-epoch", "1"]
    for _ in range(3):
        procs = [subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]
        outs = [p.communicate() for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        digests = {o[0].split()[0] for o in outs}
        assert len(digests) == 1
    images = list((store / "sha256").rglob("*.sqfs"))
    assert len(images) == 1
    assert not list((store / "tmp").iterdir())
    assert not [p for p in (store / "sha256").rglob("*") if ".tmp-" in p.name]
    run([MOSAIC, "fragment", "verify", "-s", store, "--keyring", signer.keyring, "same"], env=env)


def test_list_and_show(tmp_path, env):
    store = tmp_path / "store"
    a = create(store, make_src(tmp_path / "a", "a"), env, "--name", "alpha", "--version", "1")
    b = create(store, make_src(tmp_path / "b", "b"), env, "--name", "beta", "--kind", "config")
    listing = json.loads(run([MOSAIC, "store", "list", "-s", store, "--json"], env=env).stdout)
    assert sorted((e["digest"], e["name"], e["kind"]) for e in listing) == \
        sorted([(a, "alpha", "base"), (b, "beta", "config")])
    text = run([MOSAIC, "store", "list", "-s", store], env=env).stdout
    assert "alpha" in text and a[:16] in text
    shown = json.loads(run([MOSAIC, "store", "show", "-s", store, "alpha"], env=env).stdout)
    assert shown["image"]["digest"] == f"sha256:{a}"
    p = run([MOSAIC, "store", "show", "-s", store, "gamma"], env=env, check=False)
    assert p.returncode == 1 and "no fragment 'gamma'" in p.stderr


def test_store_add_verifies_before_copying(tmp_path, env, signer, outsider):
    elsewhere = tmp_path / "elsewhere"
    digest = create(elsewhere, make_src(tmp_path / "s", "x"), env, "--name", "x",
                    "--sign", signer.fingerprint)
    store = tmp_path / "store"
    p = run([MOSAIC, "store", "add", "-s", store, "--keyring", outsider.keyring,
             object_path(elsewhere, digest)], env=env, check=False)
    assert p.returncode == 1 and "unknown key" in p.stderr
    assert not list((store / "sha256").rglob("*.sqfs"))
    run([MOSAIC, "store", "add", "-s", store, "--keyring", signer.keyring,
         object_path(elsewhere, digest)], env=env)
    assert object_path(store, digest).read_bytes() == object_path(elsewhere, digest).read_bytes()
    assert object_path(store, digest, ".json.sig").exists()
    run([MOSAIC, "fragment", "verify", "-s", store, "--keyring", signer.keyring, "x"], env=env)
    # A tampered source fragment never enters the store.
    flip_byte(object_path(elsewhere, digest), 100)
    other = tmp_path / "store2"
    p = run([MOSAIC, "store", "add", "-s", other, "--keyring", signer.keyring,
             object_path(elsewhere, digest)], env=env, check=False)
    assert p.returncode == 1 and "digest mismatch" in p.stderr


def test_gc_keeps_refs_and_roots(tmp_path, env):
    store = tmp_path / "store"
    a = create(store, make_src(tmp_path / "a", "a"), env, "--name", "alpha")
    b = create(store, make_src(tmp_path / "b", "b"), env, "--name", "beta")
    c = create(store, make_src(tmp_path / "c", "c"), env, "--name", "gamma")
    (store / "refs" / "beta").unlink()
    (store / "refs" / "gamma").unlink()
    (store / "roots" / "build.lock").write_text(f"# fragments of a build\nsha256:{c}\n")
    stale = store / "tmp" / "123-old.sqfs"
    stale.write_bytes(b"x" * 100)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    fresh = store / "tmp" / "456-new.sqfs"  # a create in progress
    fresh.write_bytes(b"y")

    dry = run([MOSAIC, "store", "gc", "-s", store, "--dry-run"], env=env).stdout
    assert "would remove 1 fragments and 1 temporary files" in dry
    assert object_path(store, b).exists() and stale.exists()

    out = run([MOSAIC, "store", "gc", "-s", store], env=env).stdout
    assert "removed 1 fragments and 1 temporary files" in out and "kept 2" in out
    assert not object_path(store, b).exists() and not object_path(store, b, ".json").exists()
    assert object_path(store, a).exists() and object_path(store, c).exists()
    assert not stale.exists() and fresh.exists()


def test_gc_removes_half_written_objects(tmp_path, env):
    store = tmp_path / "store"
    a = create(store, make_src(tmp_path / "a", "a"), env, "--name", "alpha")
    object_path(store, a, ".json").unlink()  # as if a crash hit between the two renames
    out = run([MOSAIC, "store", "gc", "-s", store], env=env).stdout
    assert "removed 1 fragments" in out
    assert not object_path(store, a).exists()


def test_not_a_store(tmp_path, env):
    (tmp_path / "plain").mkdir()
    p = run([MOSAIC, "store", "list", "-s", tmp_path / "plain"], env=env, check=False)
    assert p.returncode == 1 and "is not a mosaic store" in p.stderr


def test_full_disk_loses_nothing(tmp_path, env, signer):
    """A store on a filesystem that fills up: the create fails clearly and what the store held
    before is intact and still verifies."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt])
    try:
        store = mnt / "store"
        small = create(store, make_src(tmp_path / "s", "small"), env, "--name", "small",
                       "--sign", signer.fingerprint)
        big = tmp_path / "big"
        big.mkdir()
        (big / "blob").write_bytes(os.urandom(3 << 20))  # incompressible, larger than the fs
        p = create(store, big, env, "--name", "big", "--sign", signer.fingerprint, check=False)
        assert p.returncode == 1 and ("No space left" in p.stderr or "failed" in p.stderr), p.stderr
        assert not list((store / "tmp").iterdir())
        run([MOSAIC, "store", "verify", "-s", store, "--keyring", signer.keyring], env=env)
        assert (store / "refs" / "small").read_text().strip() == small
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
