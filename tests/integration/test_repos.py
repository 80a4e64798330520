"""The test repositories themselves (repos.py), checked with the standard tools only: gpgv for
InRelease, Release.gpg and repomd.xml.asc, dpkg-deb for the .debs, rpmkeys against a private rpm
database for the .rpms, and the checksums every index claims. The provider tests rely on these."""

import gzip
import hashlib
import io
import lzma
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest

import repos as R
from conftest import run

RPM_NS = {"c": "http://linux.duke.edu/metadata/common", "rpm": "http://linux.duke.edu/metadata/rpm",
          "repo": "http://linux.duke.edu/metadata/repo"}


def gpgv(keyring, *args):
    return subprocess.run(["gpgv", "--keyring", str(keyring), *map(str, args)],
                          capture_output=True)


def deb822(text):
    """Stanzas of a Packages/Release file as dicts (continuation lines joined with '\n')."""
    out = []
    for block in text.strip("\n").split("\n\n"):
        d, last = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t"):
                d[last] += "\n" + line[1:]
            else:
                last, _, value = line.partition(":")
                d[last] = value.strip()
        out.append(d)
    return out


def release_sums(release, field="SHA256"):
    """{path: (hex, size)} from a Release file's checksum field."""
    (fields,) = deb822(release.read_text())
    sums = {}
    for line in fields[field].strip("\n").splitlines():
        hexdigest, size, path = line.split()
        sums[path] = (hexdigest, int(size))
    return sums


def deb_repos(site):
    return [(site.deb, R.SCENARIO_DEB), (site.deb_extra, R.SCENARIO_DEB_EXTRA)]


# ---- Debian ------------------------------------------------------------------------------------

def test_inrelease_and_release_gpg_verify_with_the_key(repos):
    for repo, _ in deb_repos(repos):
        d = repo.dists
        p = gpgv(repos.key.keyring, "--output", "-", d / "InRelease")
        assert p.returncode == 0, p.stderr.decode()
        # What InRelease signs is exactly the Release file.
        assert p.stdout == (d / "Release").read_bytes()
        p = gpgv(repos.key.keyring, d / "Release.gpg", d / "Release")
        assert p.returncode == 0, p.stderr.decode()
        assert repos.key.fingerprint.encode() in p.stderr


def test_wrong_key_does_not_verify(repos):
    for repo, _ in deb_repos(repos):
        d = repo.dists
        assert gpgv(repos.wrong_key.keyring, d / "InRelease").returncode != 0
        assert gpgv(repos.wrong_key.keyring, d / "Release.gpg", d / "Release").returncode != 0


def test_tampered_release_does_not_verify(repos, tmp_path):
    d = repos.deb.dists
    release = tmp_path / "Release"
    release.write_bytes((d / "Release").read_bytes().replace(b"Suite: stable", b"Suite: stabld"))
    p = gpgv(repos.key.keyring, d / "Release.gpg", release)
    assert p.returncode != 0 and b"BAD signature" in p.stderr


def test_release_fields(repos):
    for repo, _ in deb_repos(repos):
        (f,) = deb822((repo.dists / "Release").read_text())
        assert f["Origin"] == f["Label"] == "mosaic-test"
        assert f["Suite"] == f["Codename"] == "stable"
        assert f["Architectures"] == "amd64" and f["Components"] == "main"
        assert f["Acquire-By-Hash"] == "yes"
        assert f["Date"] == R.RELEASE_DATE
        assert {"MD5Sum", "SHA1", "SHA256", "SHA512"} <= f.keys()


def test_release_checksums_and_by_hash(repos):
    for repo, _ in deb_repos(repos):
        d = repo.dists
        sums = release_sums(d / "Release")
        assert set(sums) == {f"main/binary-amd64/Packages{ext}" for ext in ("", ".gz", ".xz")}
        for path, (hexdigest, size) in sums.items():
            f = d / path
            assert R.sha256_file(f) == hexdigest and f.stat().st_size == size
            by_hash = f.parent / "by-hash" / "SHA256" / hexdigest
            assert by_hash.read_bytes() == f.read_bytes()
        packages = (d / "main/binary-amd64/Packages").read_bytes()
        assert gzip.decompress((d / "main/binary-amd64/Packages.gz").read_bytes()) == packages
        assert lzma.decompress((d / "main/binary-amd64/Packages.xz").read_bytes()) == packages


def test_packages_lists_every_package_with_its_checksum(repos):
    for repo, scenario in deb_repos(repos):
        stanzas = deb822((repo.dists / "main/binary-amd64/Packages").read_text())
        by_nv = {(s["Package"], s["Version"]): s for s in stanzas}
        assert len(by_nv) == len(stanzas)
        assert set(by_nv) == {(p.name, p.version) for p in scenario}
        for p in scenario:
            s = by_nv[(p.name, p.version)]
            pool = repo.root / s["Filename"]
            assert pool == repo.path(p.name, p.version)
            assert s["Filename"].startswith(f"pool/main/{p.name[0]}")
            assert R.sha256_file(pool) == s["SHA256"]
            assert pool.stat().st_size == int(s["Size"])
            assert s["Architecture"] == p.arch and s["Priority"] == p.priority
            for field, value in (("Depends", p.depends), ("Pre-Depends", p.pre_depends),
                                 ("Recommends", p.recommends), ("Provides", p.provides),
                                 ("Conflicts", p.conflicts), ("Breaks", p.breaks)):
                assert s.get(field, "") == value, (p.name, field)
            assert s.get("Essential") == ("yes" if p.essential else None)


def test_scenario_relations(repos):
    """The relations the resolver tests lean on are really in the index."""
    stanzas = deb822((repos.deb.dists / "main/binary-amd64/Packages").read_text())
    by_name = {}
    for s in stanzas:
        by_name.setdefault(s["Package"], []).append(s)
    assert sorted(s["Version"] for s in by_name["libfoo"]) == ["1.0", "2.0", "3.0~rc1"]
    assert by_name["mini-base"][0]["Essential"] == "yes"
    assert {n for n, ss in by_name.items() if ss[0]["Priority"] == "required"} == \
        {"mini-base", "mini-libc", "mini-tools"}
    assert by_name["mini-extra"][0]["Priority"] == "important"
    assert by_name["app"][0]["Depends"] == "libfoo (>= 2.0)"
    assert by_name["legacy-app"][0]["Depends"] == "libfoo (<< 2.0)"
    assert by_name["tiny-mta"][0]["Provides"] == "mail-transport-agent"
    assert by_name["alt-user"][0]["Depends"] == "alt-missing | alt-one"
    assert "alt-missing" not in by_name and "does-not-exist" not in by_name
    assert by_name["pre-user"][0]["Pre-Depends"] == "mini-libc"
    (extra,) = deb822((repos.deb_extra.dists / "main/binary-amd64/Packages").read_text())
    assert (extra["Package"], extra["Version"]) == ("libfoo", "2.5")


def test_debs_are_real_packages(repos):
    for repo, scenario in deb_repos(repos):
        for p in scenario:
            deb = repo.path(p.name, p.version)
            control = deb822(run(["dpkg-deb", "-f", deb]).stdout)[0]
            assert (control["Package"], control["Version"]) == (p.name, p.version)
            tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                                 check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(tar)) as t:
                m = t.getmember(f"./usr/share/doc/{p.name}/marker")
                assert (m.uid, m.gid, m.mode, m.mtime) == (0, 0, 0o644, R.SOURCE_DATE_EPOCH)
                assert t.extractfile(m).read() == f"{p.name} {p.version}\n".encode()


def test_packages_build_reproducibly(tmp_path):
    """Unsigned packages are byte-identical from build to build (signatures carry a time)."""
    pkg = R.DebPkg("same", "1:2.0-1", depends="x", files={"/usr/bin/same": "#!/bin/sh\n"})
    a = R.build_deb(pkg, tmp_path / "a", tmp_path / "wa")
    b = R.build_deb(pkg, tmp_path / "b", tmp_path / "wb")
    assert a.name == "same_2.0-1_amd64.deb"
    assert a.read_bytes() == b.read_bytes()
    assert "-rwxr-xr-x root/root" in run(["dpkg-deb", "-c", a]).stdout
    rpm = R.RpmPkg("same", "2.0", epoch=1, requires=["(a or b)"])
    a = R.build_rpm(rpm, tmp_path / "ra", tmp_path / "wra")
    b = R.build_rpm(rpm, tmp_path / "rb", tmp_path / "wrb")
    assert a.name == "same-2.0-1.noarch.rpm"
    assert a.read_bytes() == b.read_bytes()


# ---- RPM ---------------------------------------------------------------------------------------

def rpmdb(tmp_path, key=None):
    db = tmp_path / "rpmdb"
    db.mkdir(parents=True)
    if key is not None:
        run(["rpmkeys", "--dbpath", db, "--import", key.armored])
    return db


def checksig(db, package):
    return subprocess.run(["rpmkeys", "--dbpath", str(db), "--checksig", "-v", str(package)],
                          capture_output=True, text=True)


def test_rpms_are_signed_by_the_key(repos, tmp_path):
    db = rpmdb(tmp_path, repos.key)
    for (name, version, _), _path in repos.rpm.packages.items():
        p = checksig(db, repos.rpm.path(name, version))
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"key ID {repos.key.fingerprint[-8:].lower()}: OK" in p.stdout


def test_rpms_do_not_verify_without_the_key(repos, tmp_path):
    for db in (rpmdb(tmp_path), rpmdb(tmp_path / "w", repos.wrong_key)):
        for (name, version, _), _path in repos.rpm.packages.items():
            p = checksig(db, repos.rpm.path(name, version))
            assert p.returncode != 0 and "NOKEY" in p.stdout + p.stderr


def test_rpm_headers(repos):
    for p in R.SCENARIO_RPM:
        out = run(["rpm", "-qp", "--nosignature", "--qf",
                   "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{BUILDHOST} %{BUILDTIME}\n",
                   repos.rpm.path(p.name, p.version)]).stdout
        assert out.split() == [p.name, p.version, p.release, p.arch, "mosaic-test",
                               str(R.SOURCE_DATE_EPOCH)]
        files = run(["rpm", "-qpl", "--nosignature", repos.rpm.path(p.name, p.version)]).stdout
        assert f"/usr/share/{p.name}/marker" in files.split()


def test_repomd_signature(repos):
    md = repos.rpm.root / "repodata"
    p = gpgv(repos.key.keyring, md / "repomd.xml.asc", md / "repomd.xml")
    assert p.returncode == 0, p.stderr.decode()
    assert gpgv(repos.wrong_key.keyring, md / "repomd.xml.asc", md / "repomd.xml").returncode != 0


def primary(repo):
    md = ET.parse(repo.root / "repodata" / "repomd.xml").getroot()
    (loc,) = [d.find("repo:location", RPM_NS).get("href")
              for d in md.findall("repo:data", RPM_NS) if d.get("type") == "primary"]
    return ET.fromstring(gzip.decompress((repo.root / loc).read_bytes()))


def test_repomd_checksums(repos):
    md = ET.parse(repos.rpm.root / "repodata" / "repomd.xml").getroot()
    types = set()
    for d in md.findall("repo:data", RPM_NS):
        types.add(d.get("type"))
        f = repos.rpm.root / d.find("repo:location", RPM_NS).get("href")
        checksum = d.find("repo:checksum", RPM_NS)
        assert checksum.get("type") == "sha256"
        assert R.sha256_file(f) == checksum.text
        assert f.name.startswith(checksum.text + "-")
        assert f.stat().st_size == int(d.find("repo:size", RPM_NS).text)
        opened = gzip.decompress(f.read_bytes())
        assert hashlib.sha256(opened).hexdigest() == d.find("repo:open-checksum", RPM_NS).text
    assert {"primary", "filelists", "other"} <= types


def test_primary_lists_every_package_with_its_relations(repos):
    pkgs = {}
    for p in primary(repos.rpm).findall("c:package", RPM_NS):
        name = p.find("c:name", RPM_NS).text
        ver = p.find("c:version", RPM_NS).get("ver")
        fmt = p.find("c:format", RPM_NS)
        rel = {tag: [(e.get("name"), e.get("flags"), e.get("ver"))
                     for e in fmt.findall(f"rpm:{tag}/rpm:entry", RPM_NS)]
               for tag in ("requires", "provides", "conflicts", "recommends")}
        f = repos.rpm.root / p.find("c:location", RPM_NS).get("href")
        assert f == repos.rpm.path(name, ver)
        checksum = p.find("c:checksum", RPM_NS)
        assert checksum.get("type") == "sha256" and checksum.text == R.sha256_file(f)
        pkgs[(name, ver)] = rel
    assert set(pkgs) == {(p.name, p.version) for p in R.SCENARIO_RPM}
    assert ("libbar", "GE", "2.0") in pkgs[("rapp", "1.0")]["requires"]
    assert ("smtp-daemon", None, None) in pkgs[("rmail", "1.0")]["requires"]
    assert ("smtp-daemon", None, None) in pkgs[("rsmtp", "1.0")]["provides"]
    assert ("(ralt-one or ralt-two)", None, None) in pkgs[("ralt", "1.0")]["requires"]
    assert ("rconflict-b", None, None) in pkgs[("rconflict-a", "1.0")]["conflicts"]
    assert ("nothing-provides-this", None, None) in pkgs[("rbroken", "1.0")]["requires"]
    assert ("rrec-extra", None, None) in pkgs[("rrec", "1.0")]["recommends"]
    assert not any(n == "ralt-one" for n, _ in pkgs)


# ---- HTTP --------------------------------------------------------------------------------------

def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_served_over_http(repos):
    assert repos.url.startswith("http://127.0.0.1:")
    assert fetch(f"{repos.deb_url}/dists/stable/InRelease") == \
        (repos.deb.dists / "InRelease").read_bytes()
    rel = repos.deb.path("libfoo", "3.0~rc1").relative_to(repos.deb.root)
    assert fetch(f"{repos.deb_url}/{urllib.request.pathname2url(str(rel))}") == \
        repos.deb.path("libfoo", "3.0~rc1").read_bytes()
    assert fetch(f"{repos.rpm_url}/repodata/repomd.xml.asc") == \
        (repos.rpm.root / "repodata/repomd.xml.asc").read_bytes()
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(f"{repos.deb_url}/dists/unstable/InRelease")
    assert e.value.code == 404


def test_fresh_site_is_a_private_copy(repos, fresh_repo_site):
    assert fresh_repo_site.url != repos.url
    assert fresh_repo_site.root != repos.root
    inrelease = fresh_repo_site.deb.dists / "InRelease"
    assert inrelease.read_bytes() == (repos.deb.dists / "InRelease").read_bytes()
    inrelease.write_bytes(b"tampered")
    assert fetch(f"{fresh_repo_site.deb_url}/dists/stable/InRelease") == b"tampered"
    assert fetch(f"{repos.deb_url}/dists/stable/InRelease") == \
        (repos.deb.dists / "InRelease").read_bytes() != b"tampered"
    shutil.rmtree(fresh_repo_site.rpm.root / "Packages")
    assert repos.rpm.path("rapp").exists()
    assert fresh_repo_site.rpm.path("rapp") == fresh_repo_site.rpm.root / "Packages" / \
        R.RpmPkg("rapp", "1.0").filename
