"""Fragments from .rpm packages. An rpm built here with rpmbuild, holding every kind of entry a
package can (content, executable, setuid, foreign owner, unknown owner, symlink, %dir, hard links,
%config, %caps, a device, a %ghost), and signed with a throwaway key becomes a fragment whose
every entry, read back through squashfuse and through the kernel's squashfs, matches
`rpm -qp --dump`; the descriptor's rpm section tells the package and whether its signature
verified; a damaged package is refused."""

import errno
import grp
import json
import os
import pwd
import shutil
import stat
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import (MOSAIC, create, flip_byte, kernel_mount, object_path, run,
                      squashfuse_mount, tree_listing)

SDE = 1700000000
NAME, EPOCH, VERSION, RELEASE, ARCH = "mosaic-rpmtest", 2, "1.2", "3", "noarch"
EVR = f"{EPOCH}:{VERSION}-{RELEASE}"
HEADER = f"var/lib/mosaic/rpm/{NAME}-{VERSION}-{RELEASE}.{ARCH}.rpmhdr"
CAPS_FILE = "usr/sbin/mosaic-ping"
# struct vfs_cap_data for cap_net_raw=ep: revision 2 with the effective flag, CAP_NET_RAW (13)
# permitted, nothing inheritable.
CAPS_XATTR = struct.pack("<5I", 0x02000000 | 0x1, 1 << 13, 0, 0, 0)
NOBODY = 65534

SPEC = r"""
Name: @NAME@
Epoch: @EPOCH@
Version: @VERSION@
Release: @RELEASE@
Summary: mosaic rpm source test
License: MIT
BuildArch: noarch
Requires: bash >= 4.0
Provides: mosaic-test-capability = 7
Conflicts: evil-pkg < 1.0
Obsoletes: old-mosaic-test <= 1.1

%description
Every kind of entry an rpm payload can hold.

%install
d=%{buildroot}/usr/share/mosaic-test
mkdir -p $d/dir %{buildroot}/usr/bin %{buildroot}/usr/sbin %{buildroot}/etc
printf 'hello rpm\n' > $d/hello.txt
: > $d/empty
seq 1 60000 > $d/big
printf '#!/bin/sh\necho hello\n' > %{buildroot}/usr/bin/mosaic-hello
chmod 0755 %{buildroot}/usr/bin/mosaic-hello
printf '#!/bin/sh\nid\n' > %{buildroot}/usr/bin/mosaic-suid
printf 'for the mail group\n' > $d/mailfile
printf 'nobody knows\n' > $d/orphan
ln -s hello.txt $d/link
seq 1 30000 | tac > $d/hl1
ln $d/hl1 $d/hl2
printf 'key=value\n' > %{buildroot}/etc/mosaic-test.conf
printf '#!/bin/sh\nping\n' > %{buildroot}/usr/sbin/mosaic-ping
chmod 0755 %{buildroot}/usr/sbin/mosaic-ping

%files
/usr/share/mosaic-test/hello.txt
/usr/share/mosaic-test/empty
/usr/share/mosaic-test/big
/usr/bin/mosaic-hello
%attr(4755,root,root) /usr/bin/mosaic-suid
%attr(0640,root,mail) /usr/share/mosaic-test/mailfile
%attr(0644,mosaic-nouser,mosaic-nogroup) /usr/share/mosaic-test/orphan
/usr/share/mosaic-test/link
%dir %attr(0750,root,root) /usr/share/mosaic-test/dir
/usr/share/mosaic-test/hl1
/usr/share/mosaic-test/hl2
%config(noreplace) /etc/mosaic-test.conf
%caps(cap_net_raw=ep) /usr/sbin/mosaic-ping
%dev(c,1,3) %attr(0666,root,root) /usr/share/mosaic-test/null
%ghost /var/log/mosaic-test.log
"""

# Every payload compressor rpm can write, as rpmbuild's _binary_payload names it.
PAYLOADS = {"gzip": "w9.gzdio", "bzip2": "w9.bzdio", "xz": "w2.xzdio", "lzma": "w2.lzdio",
            "zstd": "w19.zstdio"}


def rpmbuild(workdir, payload="w19.zstdio"):
    """Builds the test package into workdir; returns the .rpm's path."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / "mosaic-rpmtest.spec"
    text = SPEC
    for key, value in dict(NAME=NAME, EPOCH=EPOCH, VERSION=VERSION, RELEASE=RELEASE).items():
        text = text.replace(f"@{key}@", str(value))
    spec.write_text(text)
    top = workdir / "rpmbuild"
    run(["rpmbuild", "-bb", spec,
         "--define", f"_topdir {top}",
         "--define", f"_tmppath {workdir}",
         "--define", f"_binary_payload {payload}",
         "--define", "_build_id_links none",
         "--define", "__os_install_post %{nil}"])
    (built,) = (top / "RPMS" / ARCH).glob("*.rpm")
    return built


def rpmsign(package, key):
    run(["rpmsign", "--addsign", "--define", f"_gpg_name {key.fingerprint}",
         "--define", f"__gpg {shutil.which('gpg')}", package], env=key.env, input="")


@pytest.fixture(scope="module")
def rpms(signer, tmp_path_factory):
    """The test package unsigned and signed by the signer (same payload)."""
    d = tmp_path_factory.mktemp("rpm")
    unsigned = rpmbuild(d / "build")
    signed = d / f"signed-{unsigned.name}"
    shutil.copy(unsigned, signed)
    rpmsign(signed, signer)
    assert "Key ID" in run(["rpm", "-qp", "--qf", "%{DSAHEADER:pgpsig}%{RSAHEADER:pgpsig}",
                            signed]).stdout
    return SimpleNamespace(unsigned=unsigned, signed=signed)


def owner_id(name, group):
    if name == "root":
        return 0
    try:
        return grp.getgrnam(name).gr_gid if group else pwd.getpwnam(name).pw_uid
    except KeyError:
        return NOBODY


def rpm_dump(package):
    """The package's own listing: {relative path: expected attributes}, ghosts left out."""
    assert run(["rpm", "-qp", "--qf", "%{FILEDIGESTALGO}", package]).stdout == "8"  # SHA-256
    flags = {}
    out = run(["rpm", "-qp", "--qf", r"[%{FILENAMES}\t%{FILEFLAGS:fflags}\n]", package]).stdout
    for line in out.splitlines():
        path, fflags = line.split("\t")
        flags[path] = fflags
    entries = {}
    for line in run(["rpm", "-qp", "--dump", package]).stdout.splitlines():
        path, size, mtime, digest, mode, owner, group, isconfig, isdoc, rdev, link = line.split(" ")
        if "g" in flags[path]:
            continue
        mode = int(mode, 8)
        e = dict(mode=mode, uid=owner_id(owner, False), gid=owner_id(group, True),
                 mtime=int(mtime), link=None, sha256=None, size=None, rdev=None,
                 config=isconfig == "1", owner=(owner, group))
        if stat.S_ISREG(mode):
            e["size"] = int(size)
            e["sha256"] = digest
        elif stat.S_ISLNK(mode):
            e["link"] = link
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            e["rdev"] = (int(rdev) >> 8, int(rdev) & 0xFF)
        entries[path.lstrip("/")] = e
    return entries


def ghosts(package):
    out = run(["rpm", "-qp", "--qf", r"[%{FILENAMES}\t%{FILEFLAGS:fflags}\n]", package]).stdout
    return {p.lstrip("/") for p, f in (line.split("\t") for line in out.splitlines()) if "g" in f}


def parents(path):
    p = Path(path).parent
    while str(p) != ".":
        yield str(p)
        p = p.parent


def header_tags(blob):
    """The tags of a header as headerExport() writes it: il, dl, il index entries, dl data."""
    il, dl = struct.unpack(">II", blob[:8])
    assert len(blob) == 8 + 16 * il + dl
    data = blob[8 + 16 * il:]
    tags = {}
    for i in range(il):
        tag, kind, offset, count = struct.unpack(">IIII", blob[8 + 16 * i:24 + 16 * i])
        if kind == 6:  # RPM_STRING_TYPE
            tags[tag] = data[offset:data.index(b"\0", offset)].decode()
        else:
            tags[tag] = (kind, offset, count)
    return tags


def capability(path):
    try:
        return os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def check_tree(root, package, signed, kernel):
    """Every entry of the mounted image against the package's own listing. Two things only the
    kernel shows as they are: squashfuse 0.1.105 lists security.* xattrs as trusted.* and the other
    way round (its prefix table swaps the two squashfs type ids; getxattr by name is right), and
    without -o use_ino it gives hard links their own inode numbers."""
    want = rpm_dump(package)
    got = tree_listing(root)
    for path, w in want.items():
        assert path in got, f"{path} is missing from the image"
        g = got[path]
        for field in ("mode", "uid", "gid", "mtime", "link", "size", "sha256", "rdev"):
            assert g[field] == w[field], f"{path}: {field} is {g[field]!r}, rpm says {w[field]!r}"
        if path == CAPS_FILE:
            caps = capability(Path(root) / path)
            assert caps == CAPS_XATTR, f"{path}: security.capability is {caps!r}"
            assert len(g["xattrs"]) == 1
            if kernel:
                assert list(g["xattrs"]) == ["security.capability"]
        else:
            assert g["xattrs"] == {}, f"{path}: unexpected xattrs {g['xattrs']}"

    # The image holds the package's entries, their parent directories, the header and nothing
    # else: %ghost files are not in the payload.
    allowed = {""} | set(want) | {HEADER}
    for path in list(allowed):
        allowed.update(parents(path))
    assert set(got) - allowed == set()
    assert not ghosts(package) & set(got)
    for path in set(got) - set(want) - {HEADER}:
        assert got[path]["mode"] == stat.S_IFDIR | 0o755 and got[path]["uid"] == 0

    # The hard link pair is one inode.
    hl1, hl2 = (os.lstat(Path(root) / "usr/share/mosaic-test" / n) for n in ("hl1", "hl2"))
    assert hl1.st_nlink == hl2.st_nlink == 2
    if kernel:
        assert hl1.st_ino == hl2.st_ino

    # The setuid bit and the mail group survived, the unknown owner became nobody.
    assert got["usr/bin/mosaic-suid"]["mode"] == stat.S_IFREG | 0o4755
    assert got["usr/share/mosaic-test/mailfile"]["gid"] == owner_id("mail", True)
    assert got["usr/share/mosaic-test/orphan"]["uid"] == NOBODY
    assert got["usr/share/mosaic-test/orphan"]["gid"] == NOBODY
    assert run(["getcap", Path(root) / CAPS_FILE]).stdout.split()[-1] == "cap_net_raw=ep"

    # The header for the package database.
    h = got[HEADER]
    assert (h["mode"], h["uid"], h["gid"], h["mtime"]) == (stat.S_IFREG | 0o644, 0, 0, SDE)
    tags = header_tags((Path(root) / HEADER).read_bytes())
    assert (tags[1000], tags[1001], tags[1002]) == (NAME, VERSION, RELEASE)
    assert 63 in tags  # RPMTAG_HEADERIMMUTABLE: the region as the package signed it
    # The signature (EdDSA lands in DSAHEADER, RSA in RSAHEADER) travels with a signed header.
    assert (267 in tags or 268 in tags) == signed


def fragment(store, package, env, *extra):
    digest = create(store, package, env, "--source-date-epoch", str(SDE), *extra)
    desc = json.loads(object_path(store, digest, ".json").read_text())
    return digest, desc


@pytest.mark.parametrize("mount", [squashfuse_mount, kernel_mount], ids=["squashfuse", "kernel"])
def test_signed_rpm_matches_its_listing(rpms, signer, store, env, tmp_path, mount):
    if not any(g.gr_name == "mail" for g in grp.getgrall()):
        pytest.skip("this host has no 'mail' group")
    digest, desc = fragment(store, rpms.signed, env, "--keyring", signer.keyring)
    with mount(object_path(store, digest), tmp_path / "mnt") as root:
        check_tree(root, rpms.signed, signed=True, kernel=mount is kernel_mount)


def test_descriptor_describes_the_package(rpms, signer, store, env):
    digest, desc = fragment(store, rpms.signed, env, "--keyring", signer.keyring)
    assert (desc["name"], desc["version"], desc["arch"], desc["kind"]) == \
        (NAME, EVR, ARCH, "package")
    assert desc["source"]["type"] == "rpm"
    assert f"{NAME} = {EVR}" in desc["provides"]
    assert "mosaic-test-capability = 7" in desc["provides"]
    assert "bash >= 4.0" in desc["requires"]
    assert any(r.startswith("rpmlib(") for r in desc["requires"])

    r = desc["rpm"]
    assert (r["name"], r["epoch"], r["version"], r["release"], r["arch"]) == \
        (NAME, EPOCH, VERSION, RELEASE, ARCH)
    assert r["requires"] == desc["requires"] and r["provides"] == desc["provides"]
    assert r["conflicts"] == ["evil-pkg < 1.0"]
    assert r["obsoletes"] == ["old-mosaic-test <= 1.1"]
    assert r["summary"] == "mosaic rpm source test"
    assert r["license"] == "MIT"
    assert r["sourcerpm"] == f"{NAME}-{VERSION}-{RELEASE}.src.rpm"
    assert r["header"] == HEADER
    assert r["unknown_owners"] == [{"path": "usr/share/mosaic-test/orphan",
                                    "user": "mosaic-nouser", "group": "mosaic-nogroup"}]
    assert r["signature"] == {"verified": True, "status": "ok", "key": signer.keyid.lower()}


def test_signature_without_the_key_is_recorded_not_fatal(rpms, signer, outsider, store, env):
    _, desc = fragment(store, rpms.signed, env)
    assert desc["rpm"]["signature"] == {"verified": False, "status": "nokey",
                                        "key": signer.keyid.lower()}
    _, desc = fragment(store, rpms.signed, env, "--keyring", outsider.keyring)
    assert desc["rpm"]["signature"]["status"] == "nokey"
    assert desc["rpm"]["signature"]["verified"] is False


def test_unsigned_rpm(rpms, signer, store, env, tmp_path):
    digest, desc = fragment(store, rpms.unsigned, env, "--keyring", signer.keyring)
    assert desc["rpm"]["signature"] == {"verified": False, "status": "unsigned", "key": None}
    with squashfuse_mount(object_path(store, digest), tmp_path / "mnt") as root:
        check_tree(root, rpms.unsigned, signed=False, kernel=False)


def signature_offset(package):
    """Offset of the last byte of the header signature packet inside the signature header."""
    data = Path(package).read_bytes()
    base = 96  # the lead
    assert data[base:base + 3] == b"\x8e\xad\xe8"
    il, _ = struct.unpack(">II", data[base + 8:base + 16])
    store = base + 16 + 16 * il
    for i in range(il):
        tag, _, offset, count = struct.unpack(">IIII", data[base + 16 + 16 * i:base + 32 + 16 * i])
        if tag in (267, 268):  # RPMSIGTAG_DSA, RPMSIGTAG_RSA
            return store + offset + count - 1
    raise AssertionError("no header signature")


def test_bad_signature_is_recorded(rpms, signer, store, env, tmp_path):
    # The signature is outside what the header digests cover: the package is intact, only the
    # signature no longer verifies.
    bad = tmp_path / "badsig.rpm"
    shutil.copy(rpms.signed, bad)
    flip_byte(bad, signature_offset(bad))
    _, desc = fragment(store, bad, env, "--keyring", signer.keyring)
    assert desc["rpm"]["signature"] == {"verified": False, "status": "bad",
                                        "key": signer.keyid.lower()}


def damaged(src, dst, how):
    data = bytearray(Path(src).read_bytes())
    if how == "header":
        data[data.index(b"mosaic rpm source test")] ^= 0xFF  # the summary, inside the header
    elif how == "payload":
        data[len(data) - 100] ^= 0xFF
    elif how == "truncated":
        del data[len(data) - 1000:]
    Path(dst).write_bytes(data)
    return dst


@pytest.mark.parametrize("how", ["header", "payload", "truncated"])
def test_damaged_rpm_is_refused(rpms, signer, store, env, tmp_path, how):
    bad = damaged(rpms.signed, tmp_path / f"{how}.rpm", how)
    p = create(store, bad, env, "--keyring", signer.keyring, "--source-date-epoch", str(SDE),
               check=False)
    assert p.returncode != 0
    assert f"{how}.rpm" in p.stderr
    assert "corrupt" in p.stderr or "digest" in p.stderr, p.stderr
    assert not list(Path(store).glob("sha256/*/*.sqfs"))


def test_not_an_rpm_is_refused(store, env, tmp_path):
    fake = tmp_path / "fake.rpm"
    fake.write_bytes(b"\xed\xab\xee\xdb" + bytes(200))  # rpm's magic, nothing behind it
    p = create(store, fake, env, check=False)
    assert p.returncode != 0 and "fake.rpm" in p.stderr


@pytest.mark.parametrize("compressor", sorted(PAYLOADS))
def test_every_payload_compressor(compressor, store, env, tmp_path):
    package = rpmbuild(tmp_path / "build", PAYLOADS[compressor])
    assert run(["rpm", "-qp", "--qf", "%{PAYLOADCOMPRESSOR}", package]).stdout == compressor
    digest, _ = fragment(store, package, env)
    with squashfuse_mount(object_path(store, digest), tmp_path / "mnt") as root:
        check_tree(root, package, signed=False, kernel=False)


def test_same_rpm_same_fragment(rpms, signer, env, tmp_path):
    a, _ = fragment(tmp_path / "a", rpms.signed, env, "--keyring", signer.keyring)
    b, _ = fragment(tmp_path / "b", rpms.signed, env, "--keyring", signer.keyring)
    assert a == b


def test_many_rpms_in_parallel(rpms, signer, env, store):
    """librpm from several worker threads at once (fragment create -j)."""
    out = run([MOSAIC, "fragment", "create", rpms.signed, rpms.unsigned, "-o", store,
               "-j", "2", "--keyring", signer.keyring, "--source-date-epoch", str(SDE),
               "--json"], env=env).stdout
    results = json.loads(out)
    assert len(results) == 2 and len({r["digest"] for r in results}) == 2
