"""Trust: a fragment is used only when its descriptor is signed by a key in the keyring, the
image matches the descriptor, and the image parses. Every way of breaking that is refused with
its own error and exit code 1, and the verification cache never hides a change."""

import json
import os
import re
from pathlib import Path

import pytest

from conftest import MOSAIC, create, flip_byte, object_path, run


@pytest.fixture
def fragment(tmp_path, env, signer):
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/motd").write_text("hello from a fragment\n" * 100)
    (src / "bin").mkdir()
    (src / "bin/tool").write_bytes(os.urandom(200_000))
    store = tmp_path / "store"
    digest = create(store, src, env, "--name", "demo", "--sign", signer.fingerprint)
    return store, digest


def verify(store, ref, env, keyring):
    return run([MOSAIC, "fragment", "verify", "-s", store, "--keyring", keyring, ref], env=env,
               check=False)


def test_good_fragment_verifies(fragment, env, signer):
    store, digest = fragment
    p = verify(store, "demo", env, signer.keyring)
    assert p.returncode == 0 and p.stdout.startswith(digest) and p.stdout.endswith("OK\n")
    # by digest prefix and by path, too
    assert verify(store, digest[:10], env, signer.keyring).returncode == 0
    assert verify(store, object_path(store, digest), env, signer.keyring).returncode == 0


def test_flipped_image_byte(fragment, env, signer):
    store, digest = fragment
    flip_byte(object_path(store, digest), 20000)
    p = verify(store, digest, env, signer.keyring)
    assert p.returncode == 1 and "image digest mismatch" in p.stderr


def test_flipped_descriptor_byte(fragment, env, signer):
    store, digest = fragment
    desc = object_path(store, digest, ".json")
    flip_byte(desc, desc.read_text().index('"demo"') + 2)
    p = verify(store, digest, env, signer.keyring)
    assert p.returncode == 1 and "bad signature" in p.stderr and signer.keyid in p.stderr


def test_flipped_signature_byte(fragment, env, signer):
    store, digest = fragment
    sig = object_path(store, digest, ".json.sig")
    flip_byte(sig, sig.stat().st_size - 5)  # inside the signature value
    p = verify(store, digest, env, signer.keyring)
    assert p.returncode == 1
    assert re.search(r"bad signature|not a valid OpenPGP signature", p.stderr), p.stderr
    flip_byte(sig, sig.stat().st_size - 5)
    flip_byte(sig, 0)  # the packet header: no longer a signature at all
    p = verify(store, digest, env, signer.keyring)
    assert p.returncode == 1 and "not a valid OpenPGP signature" in p.stderr


def test_key_outside_keyring(tmp_path, env, signer, outsider):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    store = tmp_path / "store"
    digest = create(store, src, dict(env, GNUPGHOME=outsider.gnupghome), "--name", "o",
                    "--sign", outsider.fingerprint)
    p = verify(store, digest, env, signer.keyring)
    assert p.returncode == 1 and "unknown key" in p.stderr and "--keyring" in p.stderr
    assert outsider.keyid in p.stderr
    # With the outsider's key in the keyring it verifies.
    assert verify(store, digest, env, outsider.keyring).returncode == 0


def test_unsigned(tmp_path, env, signer):
    src = tmp_path / "src"
    src.mkdir()
    digest = create(tmp_path / "store", src, env, "--name", "u")
    p = verify(tmp_path / "store", digest, env, signer.keyring)
    assert p.returncode == 1 and "unsigned" in p.stderr


def test_truncated_image(fragment, env, signer):
    store, digest = fragment
    img = object_path(store, digest)
    os.truncate(img, img.stat().st_size // 2)
    p = verify(store, digest, env, signer.keyring)
    assert p.returncode == 1 and "truncated image" in p.stderr


def test_not_a_squashfs_image(tmp_path, env, signer):
    """A correctly signed descriptor of bytes that are not squashfs: the parse check catches it."""
    d = tmp_path / "frag"
    d.mkdir()
    garbage = os.urandom(8192)
    import hashlib
    hexd = hashlib.sha256(garbage).hexdigest()
    img = d / f"{hexd}.sqfs"
    img.write_bytes(garbage)
    desc = {"mosaic_fragment": 1, "name": "junk", "version": "1", "arch": None, "kind": "base",
            "provides": [], "requires": [], "files": 0, "created": 0,
            "image": {"digest": f"sha256:{hexd}", "size": len(garbage)}}
    (d / f"{hexd}.json").write_text(json.dumps(desc))
    run(["gpg", "--batch", "--yes", "--detach-sign", "-u", signer.fingerprint, "-o",
         d / f"{hexd}.json.sig", d / f"{hexd}.json"], env=env)
    p = run([MOSAIC, "fragment", "verify", "--keyring", signer.keyring, img], env=env,
            check=False)
    assert p.returncode == 1 and "not a squashfs image" in p.stderr


def test_unsupported_descriptor_version(tmp_path, env, signer, fragment):
    store, digest = fragment
    desc = object_path(store, digest, ".json")
    text = desc.read_text().replace('"mosaic_fragment": 1', '"mosaic_fragment": 9')
    desc.write_text(text)
    run(["gpg", "--batch", "--yes", "--detach-sign", "-u", signer.fingerprint, "-o",
         object_path(store, digest, ".json.sig"), desc], env=env)
    p = verify(store, digest, env, signer.keyring)
    assert p.returncode == 1 and "format version 9 is not supported" in p.stderr


def test_verification_is_remembered_but_never_stale(fragment, env, signer, tmp_path):
    store, digest = fragment
    assert verify(store, digest, env, signer.keyring).returncode == 0
    remembered = list((Path(env["MOSAIC_CACHE_DIR"]) / "verified").rglob("*"))
    assert any(p.is_file() for p in remembered)
    # A second verify of the unchanged fragment succeeds from the cache...
    assert verify(store, digest, env, signer.keyring).returncode == 0
    # ...but a changed image (same size, mtime put back) is still caught: ctime moved.
    img = object_path(store, digest)
    st = img.stat()
    flip_byte(img, 30000)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    p = verify(store, digest, env, signer.keyring)
    assert p.returncode == 1 and "digest mismatch" in p.stderr
    # A different keyring is a different verification: the outsider's does not trust it.


def test_other_keyring_is_not_served_from_cache(fragment, env, signer, outsider):
    store, digest = fragment
    assert verify(store, digest, env, signer.keyring).returncode == 0
    p = verify(store, digest, env, outsider.keyring)
    assert p.returncode == 1 and "unknown key" in p.stderr


def test_store_verify_reports_each_bad_fragment(fragment, env, signer, tmp_path):
    store, digest = fragment
    src = tmp_path / "src2"
    src.mkdir()
    (src / "x").write_text("two")
    other = create(store, src, env, "--name", "two", "--sign", signer.fingerprint)
    p = run([MOSAIC, "store", "verify", "-s", store, "--keyring", signer.keyring], env=env)
    assert "2 of 2 fragments verified" in p.stdout
    flip_byte(object_path(store, other), 100)
    p = run([MOSAIC, "store", "verify", "-s", store, "--keyring", signer.keyring], env=env,
            check=False)
    assert p.returncode == 1 and "1 of 2 fragments verified" in p.stdout
    assert f"fragment {other[:12]}" in p.stderr


def test_missing_keyring_is_a_clear_error(fragment, env, tmp_path):
    store, digest = fragment
    p = verify(store, digest, env, tmp_path / "nope.gpg")
    assert p.returncode == 1 and "nope.gpg" in p.stderr and "--keyring" in p.stderr
