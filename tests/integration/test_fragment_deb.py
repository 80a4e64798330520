"""Fragments from real Debian packages: every entry of the image, read back through squashfuse
and through the kernel's squashfs, matches the package's own listing and payload."""

import io
import json
import os
import stat
import subprocess
import tarfile

import pytest

from conftest import (MOSAIC, create, kernel_mount, object_path, run, squashfuse_mount,
                      squashfuse_xattr_names, tree_listing)

pytestmark = pytest.mark.slow
PACKAGES = ["busybox-static", "coreutils", "iputils-ping", "tzdata"]


def deb_payload(deb):
    """The package's own view of its payload: dpkg-deb --fsys-tarfile, entry by entry."""
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                         check=True).stdout
    entries, order = {}, []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = tf.getmembers()
        by_name = {}
        for m in members:
            path = os.path.normpath(m.name).lstrip("./") if m.name not in (".", "./") else ""
            if m.name.startswith("./"):
                path = os.path.normpath(m.name[2:]) if m.name != "./" else ""
            e = dict(uid=m.uid, gid=m.gid, mtime=int(m.mtime), link=None, sha256=None, size=None)
            if m.isdir():
                e["mode"] = stat.S_IFDIR | m.mode
            elif m.issym():
                e["mode"] = stat.S_IFLNK | 0o777
                e["link"] = m.linkname
            elif m.islnk():
                target = by_name[os.path.normpath(m.linkname.lstrip("./"))]
                e = dict(target)
            elif m.isfile():
                data = tf.extractfile(m).read()
                e["mode"] = stat.S_IFREG | m.mode
                e["size"] = len(data)
                import hashlib
                e["sha256"] = hashlib.sha256(data).hexdigest()
            by_name[path] = e
            entries[path] = e
            order.append(path)
    return entries, order


def dpkg_listing(deb):
    """Paths dpkg-deb -c prints (its listing format: mode owner size date time name)."""
    out = run(["dpkg-deb", "-c", deb]).stdout
    paths = set()
    for line in out.splitlines():
        name = line.split(None, 5)[5]
        for sep in (" -> ", " link to "):
            name = name.split(sep)[0]
        name = name[2:] if name.startswith("./") else name
        paths.add(os.path.normpath(name) if name not in ("", "/") else "")
    return {"" if p == "." else p for p in paths}


@pytest.fixture(scope="module")
def built(debs, signer, tmp_path_factory):
    """All four packages made into signed fragments in one store, in one invocation."""
    store = tmp_path_factory.mktemp("debstore") / "store"
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(store.parent / "cache"))
    out = run([MOSAIC, "fragment", "create", *[debs[p] for p in PACKAGES], "-o", store,
               "--sign", signer.fingerprint, "--source-date-epoch", "1700000000", "--json"],
              env=env).stdout
    results = {r["name"]: r for r in json.loads(out)}
    assert sorted(results) == sorted(PACKAGES)
    return store, env, results


@pytest.mark.parametrize("package", PACKAGES)
def test_deb_fragment_matches_package(built, debs, package, signer, tmp_path):
    store, env, results = built
    digest = results[package]["digest"]
    image = object_path(store, digest)
    run([MOSAIC, "fragment", "verify", "--keyring", signer.keyring, image], env=env)

    payload, order = deb_payload(debs[package])
    # The tar we compare against is the listing dpkg-deb -c prints.
    assert set(payload) == dpkg_listing(debs[package])

    desc = json.loads(object_path(store, digest, ".json").read_text())
    ctrl = subprocess.run(["dpkg-deb", "-f", str(debs[package])], capture_output=True,
                          text=True, check=True).stdout
    fields = dict(l.split(": ", 1) for l in ctrl.splitlines() if ": " in l and not l[0].isspace())
    assert desc["name"] == fields["Package"] == package
    assert desc["version"] == fields["Version"]
    assert desc["arch"] == fields["Architecture"]
    assert desc["kind"] == "package"
    assert desc["deb"]["Package"] == package
    for f in ("Depends", "Pre-Depends", "Provides", "Conflicts", "Breaks", "Replaces",
              "Essential", "Priority"):
        assert desc["deb"].get(f) == (fields.get(f).strip() if f in fields else None), f
    assert desc["deb"]["control"].strip() == ctrl.strip()
    assert desc["image"]["size"] == image.stat().st_size
    assert desc["source"]["type"] == "deb"

    info = "var/lib/dpkg/info"
    multiarch = fields.get("Multi-Arch") == "same"
    stem = f"{package}:{fields['Architecture']}" if multiarch else package
    control_dir = tmp_path / "control"
    run(["dpkg-deb", "-e", debs[package], control_dir])
    expected_info = {f"{info}/{stem}.{p.name}": p.read_bytes()
                     for p in control_dir.iterdir() if p.name != "control"}
    expected_list = "".join("/.\n" if p == "" else f"/{p}\n" for p in [""] + [p for p in order if p])

    listings = []
    for mount in (squashfuse_mount, kernel_mount):
        with mount(image, tmp_path / mount.__name__) as mnt:
            tree = tree_listing(mnt)
            if mount is squashfuse_mount:
                squashfuse_xattr_names(tree)
            for path, want in payload.items():
                got = tree[path]
                for key in ("mode", "uid", "gid", "size", "link", "sha256"):
                    if key == "mode" and path == "":
                        continue
                    assert got[key] == want[key], (mount.__name__, path, key)
                if not stat.S_ISDIR(want["mode"]):
                    assert got["mtime"] == want["mtime"], (path, "mtime")
            for path, data in expected_info.items():
                assert (mnt / path).read_bytes() == data, path
            assert (mnt / f"{info}/{stem}.list").read_text() == expected_list
            extra = set(tree) - set(payload)
            assert all(p.startswith("var") for p in extra), extra
            listings.append(tree)
    # squashfuse and the kernel read the same image the same way, xattrs included.
    assert listings[0] == listings[1]


def test_deb_hard_links_and_setuid_survive(built, debs, tmp_path):
    """coreutils ships no hard links but busybox-static's tree and tzdata's do have links and
    the setuid-free layout; check link counts agree with the payload's hard links."""
    store, env, results = built
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs["tzdata"])],
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        hard = [m for m in tf.getmembers() if m.islnk()]
    image = object_path(store, results["tzdata"]["digest"])
    with kernel_mount(image, tmp_path / "m") as mnt:
        for m in hard:
            a = os.lstat(mnt / m.name)
            b = os.lstat(mnt / m.linkname)
            assert (a.st_ino, a.st_nlink) == (b.st_ino, b.st_nlink) and a.st_nlink >= 2


def test_deb_reproducible(debs, signer, tmp_path):
    """The same .deb and --source-date-epoch give byte-identical image and descriptor."""
    env = dict(signer.env, MOSAIC_CACHE_DIR=str(tmp_path / "cache"))
    a = create(tmp_path / "a", debs["coreutils"], env, "--source-date-epoch", "1700000000")
    b = create(tmp_path / "b", debs["coreutils"], env, "--source-date-epoch", "1700000000",
               "-j", "1")
    assert a == b
    for suffix in (".sqfs", ".json"):
        assert (object_path(tmp_path / "a", a, suffix).read_bytes() ==
                object_path(tmp_path / "b", b, suffix).read_bytes())


def test_deb_created_without_root(debs, shared_tmp):
    """No root is needed: an unprivileged user makes the fragment and root ownership stays."""
    tmp_path = shared_tmp
    deb = tmp_path / "coreutils.deb"
    deb.write_bytes(debs["coreutils"].read_bytes())
    deb.chmod(0o644)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "MOSAIC_CACHE_DIR": str(tmp_path / "ucache")}
    digest = create(tmp_path / "ustore", deb, env, "--source-date-epoch", "1", user=65534)
    root_digest = create(tmp_path / "rstore", deb, dict(env, MOSAIC_CACHE_DIR=str(tmp_path / "r")),
                         "--source-date-epoch", "1")
    assert digest == root_digest
    with kernel_mount(object_path(tmp_path / "ustore", digest), tmp_path / "m") as mnt:
        assert os.lstat(mnt / "bin/ls").st_uid == 0
