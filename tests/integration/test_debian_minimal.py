"""The real-world journey: `mosaic build manifests/examples/debian-minimal.yaml` against the
Debian archive the host's apt sources name, compared with what `debootstrap --variant=minbase
--print-debs` picks for the same release, then `mosaic mount` of the result with every file of
every package present.

Slow and networked: metadata and packages go to a cache under /var/cache/mosaic-tests and are
reused by later runs (mosaic's own cache by checksum). No mirror name is written anywhere: both
debootstrap and mosaic take the mirror from the host's apt sources at run time."""

import json
import os
import subprocess

import pytest

import minbase
from conftest import CACHE, MOSAIC, REPO, host_build, run

pytestmark = pytest.mark.slow

MANIFEST = REPO / "manifests" / "examples" / "debian-minimal.yaml"
SUITE = "bookworm"

# Where mosaic and debootstrap differ, and why. Each entry must be a real difference seen in
# the comparison (the test fails on an entry that no longer differs, so the list stays true).
EXPLAINED = {}


def debootstrap_names(arch):
    """debootstrap's minbase set for SUITE, asked once and cached beside the test debs."""
    listing = CACHE / f"debootstrap-minbase-{SUITE}-{arch}.txt"
    if listing.exists():
        return listing.read_text().split()
    try:
        names = minbase._names_from_debootstrap(SUITE, arch)
    except minbase.Unavailable as e:
        pytest.skip(f"debootstrap cannot run here: {e}")
    CACHE.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(names) + "\n")
    return names


@pytest.fixture(scope="module")
def built(signer, tmp_path_factory):
    if minbase.host_release() != SUITE:
        pytest.skip(f"the host is not Debian {SUITE}")
    work = tmp_path_factory.mktemp("debian-minimal")
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(CACHE / "mosaic-cache"))
    lock = work / "debian-minimal.lock"
    store = work / "store"
    # The packages as they unpack: configured systems are test_configure_debian.py's.
    p = host_build([MANIFEST, "--lock", lock, "-s", store, "--sign", signer.fingerprint,
                    "--no-configure"], env)
    return work, env, lock, store, p


def test_same_package_set_as_debootstrap(built):
    work, env, lock, store, p = built
    data = json.loads(lock.read_text())
    ours = {q["name"] for q in data["packages"]}
    theirs = set(debootstrap_names(data["arch"]))
    only_ours, only_theirs = sorted(ours - theirs), sorted(theirs - ours)
    print(f"mosaic: {len(ours)} packages, debootstrap: {len(theirs)}")
    for name in only_ours:
        print(f"  only mosaic:      {name}: {EXPLAINED.get(name, 'UNEXPLAINED')}")
    for name in only_theirs:
        print(f"  only debootstrap: {name}: {EXPLAINED.get(name, 'UNEXPLAINED')}")
    assert not [n for n in only_ours + only_theirs if n not in EXPLAINED]
    stale = [n for n in EXPLAINED if n not in only_ours + only_theirs]
    assert not stale, f"EXPLAINED lists differences that are gone: {stale}"


def test_every_package_verified_and_a_fragment(built):
    work, env, lock, store, p = built
    data = json.loads(lock.read_text())
    for q in data["packages"]:
        assert len(q["sha256"]) == 64 and len(q["fragment"]) == 64
        deb = CACHE / "mosaic-cache" / "packages" / "sha256" / f"{q['sha256']}.deb"
        assert deb.exists()
        assert (store / "sha256" / q["fragment"][:2] / f"{q['fragment']}.sqfs").exists()


def test_second_build_downloads_and_makes_nothing(built, signer):
    work, env, lock, store, first = built
    p = run([MOSAIC, "build", MANIFEST, "--lock", lock, "-s", store, "--sign",
             signer.fingerprint, "--no-configure"], env=env)
    assert "fragments: 0 made" in p.stderr
    assert " 0 fetched" in p.stderr, p.stderr


def test_mount_shows_every_file_of_every_package(built, signer):
    work, env, lock, store, p = built
    data = json.loads(lock.read_text())
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    run([MOSAIC, "mount", MANIFEST, mnt, "--lock", lock, "-s", store, "--keyring",
         signer.keyring], env=env)
    try:
        missing = []
        debs = CACHE / "mosaic-cache" / "packages" / "sha256"
        for q in data["packages"]:
            listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", debs / f"{q['sha256']}.deb"],
                                     capture_output=True, check=True).stdout
            names = subprocess.run(["tar", "-t"], input=listing, capture_output=True,
                                   check=True).stdout.decode().split("\n")
            for name in names:
                path = name.lstrip(".").rstrip("/")
                if path and not os.path.lexists(f"{mnt}{path}"):
                    missing.append(f"{q['name']}: {path}")
        assert not missing, f"{len(missing)} files missing, e.g. {missing[:10]}"
        out = subprocess.run(["chroot", mnt, "/bin/sh", "-c", "echo hello from $(uname -s)"],
                             capture_output=True, text=True)
        assert out.stdout == "hello from Linux\n", out.stderr
    finally:
        run([MOSAIC, "umount", mnt])
