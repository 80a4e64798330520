"""mosaic export --format tar: the composed view read straight from index, fragments and upper
(no mount), written as a pax tar, with an SPDX 2.3 SBOM and an image manifest beside it.

Small signed fragments are made at test time (files, directories, symlinks, hard links, device
nodes, xattrs, a file capability, setuid, owners named in the view's own /etc/passwd, a .deb built
with dpkg-deb and a hand-written lock naming it); the tar is read back with Python's tarfile and
GNU tar and compared with the mounted view entry by entry: paths, types, modes, owners and their
names, sizes, content hashes, link targets, devices, xattrs, hard links, clamped mtimes. Changes
made through writable mounts (whiteouts, an opaque directory, type changes, new devices and
capabilities) are exported from the running mount. Exports are byte-identical across runs,
caches and locales, work as an unprivileged user, and leave nothing behind on a full disk.

The slow test exports the configured debian-minimal (from the host's apt sources) and compares
it with its mount."""

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import (CACHE, MOSAIC, REPO, cached_key, create, file_sha256, host_build,
                      mosaic_mounted, run, run_on_terminal, view_xattrs, walk_tree, write_file)

pytestmark = pytest.mark.usefixtures("no_mount_leftovers")

EPOCH = 1_700_000_000
FRAGMENT_EPOCH = "1600000000"
PACKAGE = "hello-export"
# cap_net_raw+ep as a VFS_CAP_REVISION_2 blob (what setcap writes as root)
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
CAP_CHOWN = struct.pack("<IIIII", 0x02000001, 1 << 0, 0, 0, 0)


# ---- fragments ---------------------------------------------------------------------------------

def build_base(root):
    write_file(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
               "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
               "tester:x:1000:1000:a tester:/home/tester:/bin/sh\n"
               "alias:x:1000:1000:second name of uid 1000:/:/bin/sh\n")
    write_file(root / "etc/group", "root:x:0:\ndaemon:x:1:\ntesters:x:1000:tester\nstaff:x:50:\n")
    write_file(root / "etc/config", "config v0\n", mtime=1_400_000_000)
    write_file(root / "etc/gone", "gone\n")
    write_file(root / "etc/future", "dated after the epoch\n", mtime=EPOCH + 1000)
    write_file(root / "etc/attrs", "attrs\n", mode=0o640, uid=1000, gid=50,
               xattrs={"user.one": b"1", "user.binary": bytes(range(256))})
    write_file(root / "usr/bin/ping", b"\x7fELF not really\n" * 100, mode=0o755,
               xattrs={"security.capability": CAP_NET_RAW})
    write_file(root / "usr/bin/su", "setuid\n", mode=0o4755)
    write_file(root / "usr/bin/unnamed", "owner without a name\n", uid=4242, gid=4343)
    write_file(root / "usr/share/big", os.urandom(300 * 1024))
    write_file(root / "home/tester/.profile", "# profile\n", uid=1000, gid=1000)
    os.chown(root / "home/tester", 1000, 1000)
    os.chmod(root / "home/tester", 0o750)
    write_file(root / "rebuild/old", "old\n")
    write_file(root / "rebuild/sub/deep", "deep\n")
    write_file(root / "todir", "a file, then a directory\n")
    write_file(root / "hl/one", "linked\n", mode=0o600, uid=1, gid=1)
    os.link(root / "hl/one", root / "hl/two")
    os.link(root / "hl/one", root / "hl/three")
    os.symlink("config", root / "etc/link")
    os.symlink("/nowhere/at/all", root / "etc/dangling")
    os.makedirs(root / "dev")
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "dev/sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
    os.mkfifo(root / "dev/fifo", 0o600)
    os.makedirs(root / "empty")
    write_file(root / ("long/" + "d" * 120 + "/" + "f" * 120), "a name past ustar's 100\n")
    write_file(root / "utf8/caf\u00e9", "accent\n")
    for d in ("", "etc", "usr", "usr/bin", "dev", "empty", "hl", "rebuild", "long", "utf8"):
        os.chmod(root / d, 0o755)


def build_top(root):
    write_file(root / "etc/config", "config v1\n", mtime=1_400_000_001)
    write_file(root / "opt/top/file", "from the top\n")
    os.chmod(root / "etc", 0o755)
    os.chmod(root, 0o755)


def build_deb(tmp):
    root = tmp / "deb-root"
    write_file(root / "usr/bin/hello", "#!/bin/sh\necho hello\n", mode=0o755)
    write_file(root / f"usr/share/doc/{PACKAGE}/copyright", "public domain\n")
    write_file(root / "DEBIAN/control",
               f"Package: {PACKAGE}\nVersion: 1:1.0-1\nArchitecture: all\n"
               "Maintainer: mosaic tests <tests@mosaic.invalid>\nDescription: export test\n")
    deb = tmp / f"{PACKAGE}_1.0-1_all.deb"
    run(["dpkg-deb", "--root-owner-group", "--build", root, deb])
    return deb


def write_lock(path, deb, deb_digest, base_digest, top_digest):
    """A lock as mosaic build writes it (providers/lock.c), naming the .deb and its fragment."""
    lock = {
        "version": 1, "name": "export-test", "arch": "amd64", "input": "0" * 64,
        "repositories": [{"name": "local/test", "type": "deb", "root_digest": "1" * 64}],
        "packages": [{"name": PACKAGE, "version": "1:1.0-1", "arch": "all",
                      "repository": "local/test",
                      "location": f"pool/main/h/{PACKAGE}/{deb.name}",
                      "sha256": file_sha256(deb), "size": deb.stat().st_size, "base": False,
                      "essential": False, "fragment": deb_digest}],
        "fragments": [{"role": "base", "source": "test", "digest": base_digest},
                      {"role": "config", "source": "test", "digest": top_digest}],
    }
    path.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def layers(signer):
    """Three signed fragments (base, a .deb, top) in a store everyone can read, a keyring copy
    everyone can read, and a lock naming them."""
    base = Path(tempfile.mkdtemp(prefix="mosaic-export-"))
    base.chmod(0o755)
    try:
        store = base / "store"
        env = dict(signer.env, MOSAIC_CACHE_DIR=str(base / "cache"))
        env.pop("SOURCE_DATE_EPOCH", None)
        sign = ["--sign", signer.fingerprint, "--source-date-epoch", FRAGMENT_EPOCH]
        src = base / "base"
        src.mkdir()
        build_base(src)
        digests = [create(store, src, env, *sign, "--name", "base", "--version", "1",
                          "--kind", "base")]
        deb = build_deb(base)
        digests.append(create(store, deb, env, *sign))
        src = base / "top"
        src.mkdir()
        build_top(src)
        digests.append(create(store, src, env, *sign, "--name", "top", "--version", "2",
                              "--kind", "config"))
        keyring = base / "keyring.gpg"
        shutil.copy(signer.keyring, keyring)
        lock = base / "export-test.lock"
        write_lock(lock, deb, digests[1], digests[0], digests[2])
        for d, _, files in os.walk(store):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(Path(d) / f, 0o644)
        keyring.chmod(0o644)
        yield SimpleNamespace(base=base, store=store, env=env, keyring=keyring, lock=lock,
                              digests=digests, deb=deb)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def export(layers, inputs, out, *extra, env=None, check=True, user=None):
    args = [MOSAIC, "export", *inputs, "--format", "tar", "-o", out, "-s", layers.store,
            "--keyring", layers.keyring, *extra]
    return run(args, env=env or layers.env, check=check, user=user)


@contextlib.contextmanager
def mounted(layers, tmp, mode=None, upper=None):
    extra = []
    if mode:
        upper = upper or Path(tmp) / "upper"
        upper.mkdir(mode=0o755, exist_ok=True)
        extra = ["--upper", upper, f"--writable={mode}"]
    with mosaic_mounted(["-s", layers.store, "--keyring", layers.keyring, *layers.digests,
                         *extra], Path(tmp) / "mnt", layers.env) as m:
        yield m


# ---- reading the tar and the view --------------------------------------------------------------

def read_names(text):
    """{id: first name} of a passwd or group file's text."""
    out = {}
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 3 and f[2].isdigit():
            out.setdefault(int(f[2]), f[0])
    return out


def tar_snapshot(path):
    """({relative path: attributes}, [sorted hard-link groups], member names in order) of a tar,
    with what the view shows for each entry (hard links take their target's content)."""
    out, groups, order = {}, {}, []
    with tarfile.open(path, format=tarfile.PAX_FORMAT) as tf:
        members = tf.getmembers()
        for m in members:
            order.append(m.name)
        by_name = {}
        for m in members:
            rel = m.name[2:] if m.name.startswith("./") else ("" if m.name == "." else m.name)
            rel = rel.rstrip("/")
            assert m.name == "." or m.name.startswith("./"), m.name
            src = m
            if m.islnk():
                src = by_name[m.linkname]
                groups.setdefault(m.linkname, {m.linkname[2:]}).add(rel)
            by_name[m.name] = m
            e = dict(type=stat.S_IFMT(tarfile_mode(src)), mode=m.mode & 0o7777, uid=m.uid,
                     gid=m.gid, uname=m.uname, gname=m.gname, mtime=int(m.mtime),
                     xattrs={k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                             for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")})
            if src.isreg():
                data = tf.extractfile(src).read()
                e["size"] = len(data)
                e["sha256"] = hashlib.sha256(data).hexdigest()
            elif src.issym():
                e["link"] = src.linkname
            elif src.ischr() or src.isblk():
                e["rdev"] = (src.devmajor, src.devminor)
            out[rel] = e
    return out, sorted(sorted(g) for g in groups.values()), order


def tarfile_mode(m):
    return {tarfile.REGTYPE: stat.S_IFREG, tarfile.AREGTYPE: stat.S_IFREG,
            tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK,
            tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
            tarfile.FIFOTYPE: stat.S_IFIFO}[m.type]


def view_snapshot(root, epoch=EPOCH):
    """The same attributes read from a mounted view; mtimes clamped to epoch as export does."""
    def names(path):
        p = Path(root) / path
        return read_names(p.read_text()) if p.is_file() and not p.is_symlink() else {}
    passwd, group = names("etc/passwd"), names("etc/group")
    out, inodes = {}, {}
    for rel, p in walk_tree(root):
        st = os.lstat(p)
        e = dict(type=stat.S_IFMT(st.st_mode), mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                 gid=st.st_gid, uname=passwd.get(st.st_uid, ""), gname=group.get(st.st_gid, ""),
                 mtime=min(int(st.st_mtime), epoch) if epoch is not None else int(st.st_mtime),
                 xattrs=view_xattrs(p))
        if stat.S_ISREG(st.st_mode):
            e["size"] = st.st_size
            e["sha256"] = file_sha256(p)
        elif stat.S_ISLNK(st.st_mode):
            e["link"] = os.readlink(p)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
        out[rel] = e
    groups = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
    return out, groups


def assert_same(got, want, what):
    diff = [f"/{p}: tar {got.get(p)}\n   view {want.get(p)}" for p in sorted(set(got) | set(want))
            if got.get(p) != want.get(p)]
    assert not diff, f"{what}: {len(diff)} differ\n" + "\n".join(diff[:20])


def assert_sorted_walk(order):
    """Parents before children, names sorted bytewise within each directory."""
    rel = [n[2:].rstrip("/") if n.startswith("./") else "" for n in order]
    assert rel[0] == ""
    seen = {""}
    for r in rel[1:]:
        parent = r.rsplit("/", 1)[0] if "/" in r else ""
        assert parent in seen, f"{r} before its parent"
        seen.add(r)
    keys = [tuple(x.encode("utf-8", "surrogateescape") for x in r.split("/")) for r in rel[1:]]
    assert keys == sorted(keys), "not in depth-first sorted order"


# ---- tests -------------------------------------------------------------------------------------

def test_tar_of_fragments_matches_the_mounted_view(layers, tmp_path):
    out = tmp_path / "root.tar"
    p = export(layers, layers.digests, out, "--source-date-epoch", str(EPOCH))
    assert p.stdout.startswith(f"{out} ")
    got, got_links, order = tar_snapshot(out)
    with mounted(layers, tmp_path) as m:
        want, want_links = view_snapshot(m.mnt)
    assert_same(got, want, "tar vs read-only mount")
    assert got_links == want_links == [["hl/one", "hl/three", "hl/two"]]
    assert_sorted_walk(order)
    # spot checks of what the comparison covers
    assert got["usr/bin/ping"]["xattrs"]["security.capability"] == CAP_NET_RAW
    assert got["etc/attrs"]["xattrs"]["user.binary"] == bytes(range(256))
    assert (got["etc/attrs"]["uname"], got["etc/attrs"]["gname"]) == ("tester", "staff")
    assert (got["usr/bin/unnamed"]["uid"], got["usr/bin/unnamed"]["uname"]) == (4242, "")
    assert got["usr/bin/su"]["mode"] == 0o4755
    assert got["dev/null"]["rdev"] == (1, 3) and got["dev/sda"]["type"] == stat.S_IFBLK
    assert got["dev/fifo"]["type"] == stat.S_IFIFO
    assert got["etc/future"]["mtime"] == EPOCH and got["etc/config"]["mtime"] == 1_400_000_001
    assert got["etc/config"]["sha256"] == hashlib.sha256(b"config v1\n").hexdigest()
    assert got["etc/dangling"]["link"] == "/nowhere/at/all"
    assert f"usr/share/doc/{PACKAGE}/copyright" in got
    # GNU tar reads the same: capabilities and xattrs with --xattrs
    listing = run(["tar", "--xattrs", "--xattrs-include=*", "-tvvf", out]).stdout
    assert re.search(r"x: +20 security\.capability", listing)
    assert "./hl/two link to ./hl/one" in listing or "./hl/three link to ./hl/one" in listing


def change_everything(mnt):
    """Configuration-like changes through a writable mount."""
    write_file(mnt / "etc/new", "new\n", mode=0o640, uid=1000, gid=1000,
               xattrs={"user.new": b"n"})
    (mnt / "etc/config").write_text("config v2\n")
    os.chmod(mnt / "usr/bin/su", 0o4750)
    os.unlink(mnt / "etc/gone")                              # a whiteout
    os.unlink(mnt / "opt/top/file")                          # from the second fragment
    subprocess.run(["rm", "-r", str(mnt / "rebuild")], check=True)
    os.mkdir(mnt / "rebuild")                                # opaque
    write_file(mnt / "rebuild/fresh", "fresh\n")
    os.unlink(mnt / "todir")
    write_file(mnt / "todir/inside", "a directory now\n")    # type change
    os.mknod(mnt / "dev/zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    write_file(mnt / "usr/bin/chown-tool", "tool\n", mode=0o755,
               xattrs={"security.capability": CAP_CHOWN})
    os.setxattr(mnt / "etc/attrs", "user.one", b"changed")
    os.link(mnt / "etc/new", mnt / "etc/new-link")           # a hard link in the upper
    os.unlink(mnt / "etc/link")
    os.symlink("new", mnt / "etc/link")
    os.utime(mnt / "etc/config", (1_300_000_000, 1_300_000_000))


@pytest.mark.parametrize("mode", ["overlay", "fuse"])
def test_tar_of_a_running_mount_with_an_upper(layers, tmp_path, mode):
    out, again = tmp_path / "live.tar", tmp_path / "again.tar"
    with mounted(layers, tmp_path, mode) as m:
        change_everything(m.mnt)
        want, want_links = view_snapshot(m.mnt)
        export(layers, [m.mnt], out, "--source-date-epoch", str(EPOCH))
        got, got_links, order = tar_snapshot(out)
        # the same index and upper named directly give the same bytes
        export(layers, [m.status["index"]], again, "--upper", m.status["upper"],
               "--source-date-epoch", str(EPOCH))
    assert_same(got, want, f"tar vs writable mount ({mode})")
    assert got_links == want_links
    assert ["etc/new", "etc/new-link"] in got_links
    assert_sorted_walk(order)
    assert "etc/gone" not in got and "opt/top/file" not in got and "rebuild/old" not in got
    assert sorted(p for p in got if p.startswith("rebuild")) == ["rebuild", "rebuild/fresh"]
    assert got["todir"]["type"] == stat.S_IFDIR and "todir/inside" in got
    assert got["dev/zero"]["rdev"] == (1, 5)
    assert got["usr/bin/chown-tool"]["xattrs"]["security.capability"] == CAP_CHOWN
    assert got["etc/config"]["mtime"] == 1_300_000_000
    assert got["etc/new"]["mtime"] == EPOCH  # made now, clamped
    assert not any(k.startswith("trusted.overlay.") for e in got.values() for k in e["xattrs"])
    assert out.read_bytes() == again.read_bytes()


def test_directory_made_inside_an_opaque_one(layers, tmp_path):
    """Below an opaque directory overlayfs looks at no lower layer at any depth: a directory
    made again inside one is empty, though the lower had one of that name with files."""
    out = tmp_path / "root.tar"
    with mounted(layers, tmp_path, "overlay") as m:
        subprocess.run(["rm", "-r", str(m.mnt / "rebuild")], check=True)
        os.mkdir(m.mnt / "rebuild")
        os.mkdir(m.mnt / "rebuild/sub")
        assert os.listdir(m.mnt / "rebuild/sub") == []
        want, _ = view_snapshot(m.mnt)
        export(layers, [m.mnt], out, "--source-date-epoch", str(EPOCH))
    got, _, _ = tar_snapshot(out)
    assert_same(got, want, "tar vs a directory made inside an opaque one")


def test_exports_are_reproducible(layers, tmp_path):
    a, b = tmp_path / "a" / "root.tar", tmp_path / "b" / "root.tar"
    a.parent.mkdir()
    b.parent.mkdir()
    export(layers, layers.digests, a, "--source-date-epoch", str(EPOCH), "--lock", layers.lock)
    # clean caches, another locale, the epoch from the environment
    env = dict(layers.env, MOSAIC_CACHE_DIR=str(tmp_path / "other-cache"), LC_ALL="C",
               LANG="C", SOURCE_DATE_EPOCH=str(EPOCH))
    export(layers, layers.digests, b, "--lock", layers.lock, env=env)
    for suffix in ("", ".spdx.json", ".manifest.json"):
        pa, pb = Path(f"{a}{suffix}"), Path(f"{b}{suffix}")
        assert pa.read_bytes() == pb.read_bytes(), f"{pa.name} differs"
    # without an epoch: no clamping, and the SBOM dates itself by the newest mtime
    c = tmp_path / "c.tar"
    export(layers, layers.digests, c)
    got, _, _ = tar_snapshot(c)
    assert got["etc/future"]["mtime"] == EPOCH + 1000
    newest = max(e["mtime"] for e in got.values())
    sbom = json.loads(Path(f"{c}.spdx.json").read_text())
    assert sbom["creationInfo"]["created"] == \
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest))
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_export_as_an_unprivileged_user_without_loop_devices(layers, tmp_path):
    root_tar = tmp_path / "root.tar"
    export(layers, layers.digests, root_tar, "--source-date-epoch", str(EPOCH))
    shared = layers.base / "nobody"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    loops_before = sorted(os.listdir("/sys/block"))
    env = dict(layers.env, MOSAIC_CACHE_DIR=str(shared / "cache"), HOME=str(shared))
    env.pop("GNUPGHOME", None)
    out = shared / "user.tar"
    p = export(layers, layers.digests, out, "--source-date-epoch", str(EPOCH), env=env,
               user=65534, check=False)  # nobody (its group is nogroup)
    assert p.returncode == 0, p.stderr
    assert out.stat().st_uid != 0
    assert out.read_bytes() == root_tar.read_bytes()
    assert sorted(os.listdir("/sys/block")) == loops_before
    # the owners, devices and capabilities came from the composition, not from nobody
    got, _, _ = tar_snapshot(out)
    assert got["dev/null"]["rdev"] == (1, 3) and got["hl/one"]["uid"] == 1
    assert got["usr/bin/ping"]["xattrs"]["security.capability"] == CAP_NET_RAW


def test_sbom_and_manifest(layers, tmp_path):
    out = tmp_path / "root.tar"
    export(layers, layers.digests, out, "--source-date-epoch", str(EPOCH), "--lock", layers.lock)
    digest = file_sha256(out)
    sbom = json.loads(Path(f"{out}.spdx.json").read_text())
    check_spdx_23(sbom)
    assert sbom["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    assert sbom["creationInfo"]["creators"] == [
        "Tool: mosaic-" + run([MOSAIC, "--version"]).stdout.split()[1]]
    assert digest in sbom["documentNamespace"]
    pk = {p["SPDXID"]: p for p in sbom["packages"]}
    image = pk["SPDXRef-Image"]
    assert image["name"] == "root.tar"
    assert image["checksums"] == [{"algorithm": "SHA256", "checksumValue": digest}]
    debs = [p for p in sbom["packages"] if p["SPDXID"].startswith("SPDXRef-Package-")]
    assert len(debs) == 1
    deb = debs[0]
    assert (deb["name"], deb["versionInfo"], deb["supplier"]) == (PACKAGE, "1:1.0-1",
                                                                  "NOASSERTION")
    assert deb["checksums"] == [{"algorithm": "SHA256", "checksumValue": file_sha256(layers.deb)}]
    assert deb["externalRefs"] == [{
        "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
        "referenceLocator": f"pkg:deb/debian/{PACKAGE}@1%3A1.0-1?arch=all"}]
    assert "local/test" in deb["sourceInfo"]
    frags = {p["checksums"][0]["checksumValue"]: p for p in sbom["packages"]
             if p["SPDXID"].startswith("SPDXRef-Fragment-")}
    assert sorted(frags) == sorted(layers.digests)
    assert frags[layers.digests[0]]["name"] == "base"
    assert "lock role config" in frags[layers.digests[2]]["comment"]
    rels = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"])
            for r in sbom["relationships"]}
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image") in rels
    assert ("SPDXRef-Image", "CONTAINS", deb["SPDXID"]) in rels
    for d in layers.digests:
        assert ("SPDXRef-Image", "CONTAINS", frags[d]["SPDXID"]) in rels
    assert (frags[layers.digests[1]]["SPDXID"], "GENERATED_FROM", deb["SPDXID"]) in rels

    man = json.loads(Path(f"{out}.manifest.json").read_text())
    assert man["format"] == "tar" and man["image"] == "root.tar"
    assert man["size"] == out.stat().st_size and man["sha256"] == digest

    # without a lock (an index, fragments), fragments only
    bare = tmp_path / "bare.tar"
    export(layers, layers.digests, bare, "--source-date-epoch", str(EPOCH))
    sbom = json.loads(Path(f"{bare}.spdx.json").read_text())
    check_spdx_23(sbom)
    assert sorted(p["SPDXID"].split("-")[1] for p in sbom["packages"]) == \
        ["Fragment"] * 3 + ["Image"]


def check_spdx_23(doc):
    """The fields SPDX 2.3 requires (spec clauses 6 and 7, JSON names), and that every
    relationship names an element of the document."""
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["dataLicense"] == "CC0-1.0"
    assert doc["SPDXID"] == "SPDXRef-DOCUMENT" and doc["name"]
    assert re.fullmatch(r"[a-z]+://[^#\s]+", doc["documentNamespace"])
    ci = doc["creationInfo"]
    assert ci["creators"] and all(re.match(r"(Tool|Person|Organization): ", c)
                                  for c in ci["creators"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ci["created"])
    ids = {"SPDXRef-DOCUMENT"}
    for p in doc["packages"]:
        for k in ("name", "SPDXID", "downloadLocation"):
            assert p.get(k), f"package without {k}: {p}"
        assert re.fullmatch(r"SPDXRef-[A-Za-z0-9.\-]+", p["SPDXID"]), p["SPDXID"]
        assert p["SPDXID"] not in ids, "duplicate SPDXID"
        ids.add(p["SPDXID"])
        assert p["filesAnalyzed"] is False  # so no packageVerificationCode is needed
        for c in p.get("checksums", []):
            assert c["algorithm"] == "SHA256" and re.fullmatch(r"[0-9a-f]{64}",
                                                               c["checksumValue"])
        for r in p.get("externalRefs", []):
            assert r["referenceCategory"] == "PACKAGE-MANAGER" and r["referenceType"] == "purl"
            assert r["referenceLocator"].startswith("pkg:")
    for r in doc["relationships"]:
        assert r["spdxElementId"] in ids and r["relatedSpdxElement"] in ids
        assert r["relationshipType"] in ("DESCRIBES", "CONTAINS", "GENERATED_FROM")


def test_progress_on_a_terminal_and_in_a_log(layers, tmp_path):
    """On a terminal the export draws its content bytes as a progress line and clears it;
    in a log (stderr not a terminal) nothing but the result is printed."""
    env = dict(layers.env, MOSAIC_CACHE_DIR=str(tmp_path / "cache"))
    args = [MOSAIC, "export", *layers.digests, "--format", "tar", "-o", tmp_path / "a.tar",
            "-s", layers.store, "--keyring", layers.keyring]
    rc, out, term = run_on_terminal(args, env=env)
    assert rc == 0, term
    # the index of the three fragments is built first (not cached in this cache), then read
    assert re.search(r"\r\x1b\[Kexport \[[# ]{30}\] [0-9.]+ [kM]?B/[0-9.]+ [kM]?B ", term), term
    assert term.endswith("\r\x1b[K"), "the progress line is cleared at the end"
    assert out.startswith(f"{tmp_path / 'a.tar'} ")
    p = export(layers, layers.digests, tmp_path / "b.tar", env=env)
    assert p.stderr == "" and "\x1b" not in p.stdout
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_full_disk_leaves_nothing(layers, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", disk])
    try:
        out = disk / "root.tar"
        p = export(layers, layers.digests, out, check=False)
        assert p.returncode == 1
        assert "No space left on device" in p.stderr and str(out) in p.stderr
        assert os.listdir(disk) == []
        # an older export under the name stays as it was
        out.write_bytes(b"old")
        p = export(layers, layers.digests, out, check=False)
        assert p.returncode == 1 and out.read_bytes() == b"old"
        assert os.listdir(disk) == ["root.tar"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_unwritable_output_and_bad_usage(layers, tmp_path):
    p = export(layers, layers.digests, tmp_path / "no/such/dir/root.tar", check=False)
    assert p.returncode == 1 and "no/such/dir" in p.stderr
    base = [MOSAIC, "export", *layers.digests, "-s", layers.store, "--keyring", layers.keyring]
    for extra, words in ((["-o", tmp_path / "x"], "--format"),
                         (["--format", "tar"], "-o OUT"),
                         (["--format", "vfat", "-o", tmp_path / "x"], "is not known"),
                         (["--format", "tar", "-o", tmp_path / "x", "--source-date-epoch", "-1"],
                          "seconds"),
                         (["--bogus"], "unknown option")):
        p = run([*base, *extra], check=False)
        assert p.returncode == 2 and words in p.stderr, (extra, p.stderr)
    p = run([MOSAIC, "export", "--format", "tar", "-o", tmp_path / "x"], check=False)
    assert p.returncode == 2
    p = run([MOSAIC, "export", tmp_path, "--format", "tar", "-o", tmp_path / "x"], check=False)
    assert p.returncode == 2 and "not mounted by mosaic" in p.stderr
    assert not (tmp_path / "x").exists()
    assert run([MOSAIC, "export", "--help"]).stdout.startswith("Usage: mosaic export")


def test_an_untrusted_fragment_is_refused(layers, tmp_path, outsider):
    out = tmp_path / "root.tar"
    p = run([MOSAIC, "export", *layers.digests, "-s", layers.store, "--keyring",
             outsider.keyring, "--format", "tar", "-o", out], env=layers.env, check=False)
    assert p.returncode != 0 and "key" in p.stderr
    assert not out.exists()


# ---- slow: the configured debian-minimal -------------------------------------------------------

MANIFEST = REPO / "manifests" / "examples" / "debian-minimal.yaml"
WORK = CACHE / "export-debian"


@pytest.mark.slow
def test_configured_debian_minimal(tmp_path):
    """The configured system (the lock's config fragment on top, when build made one) exported
    from its MANIFEST and compared with its read-only mount, entry by entry."""
    import minbase
    if minbase.host_release() != "bookworm":
        pytest.skip("the host is not Debian bookworm")
    WORK.mkdir(parents=True, exist_ok=True)
    key = cached_key(WORK, "mosaic export-debian")
    try:
        _export_and_compare(key, tmp_path)
    finally:
        key.close()  # its gpg-agent


def _export_and_compare(key, tmp_path):
    fpr, keyring = key.fingerprint, key.keyring
    env = dict(os.environ, GNUPGHOME=key.gnupghome, MOSAIC_CACHE_DIR=str(CACHE / "mosaic-cache"))
    env.pop("SOURCE_DATE_EPOCH", None)
    lock, store = WORK / "debian-minimal.lock", WORK / "store"
    host_build([MANIFEST, "--lock", lock, "-s", store, "--sign", fpr, "--keyring", keyring], env)
    roles = [f["role"] for f in json.loads(lock.read_text()).get("fragments", [])]
    assert "config" in roles, roles

    out = tmp_path / "debian.tar"
    run([MOSAIC, "export", MANIFEST, "--lock", lock, "-s", store, "--keyring", keyring,
         "--format", "tar", "-o", out, "--source-date-epoch", str(EPOCH)], env=env)
    got, got_links, order = tar_snapshot(out)
    with mosaic_mounted([MANIFEST, "--lock", lock, "-s", store, "--keyring", keyring,
                         "--read-only"], tmp_path / "mnt", env) as m:
        want, want_links = view_snapshot(m.mnt)
    assert_same(got, want, "debian-minimal: tar vs mount")
    assert got_links == want_links
    assert_sorted_walk(order)
    assert len(got) > 5000 and got["usr/bin/dpkg"]["uid"] == 0
    if "etc/passwd" in got:  # base-passwd's preinst made it: owners have names
        assert got["usr/bin/dpkg"]["uname"] == "root"
    data = json.loads(lock.read_text())
    sbom = json.loads(Path(f"{out}.spdx.json").read_text())
    check_spdx_23(sbom)
    names = {p["name"] for p in sbom["packages"] if p["SPDXID"].startswith("SPDXRef-Package-")}
    assert names == {p["name"] for p in data["packages"]}
    purls = [r["referenceLocator"] for p in sbom["packages"] for r in p.get("externalRefs", [])]
    assert any(u.startswith("pkg:deb/debian/dpkg@") and "arch=amd64" in u for u in purls)
