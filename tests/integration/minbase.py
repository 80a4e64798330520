"""The Debian minbase package set (what `debootstrap --variant=minbase` installs) for the host's
release and architecture, as real .debs fetched once through the host's apt sources and cached.

No mirror address is written anywhere: the mirror debootstrap asks is read from the host's apt
sources at run time, and the packages themselves come from `apt-get download`. The package list
is cached beside the .debs, so once both are there nothing touches the network."""

import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("MOSAIC_TEST_CACHE", "/var/cache/mosaic-tests"))
DEB_DIR = CACHE / "minbase-debs"
MIN_PACKAGES = 50


class Unavailable(Exception):
    """The package set cannot be had here (no debootstrap and no apt metadata, no network)."""


def _out(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, check=True, **kw).stdout


def host_arch():
    return _out(["dpkg", "--print-architecture"]).strip()


def host_release():
    """The host's release codename (VERSION_CODENAME in /etc/os-release)."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                name = line.split("=", 1)[1].strip().strip('"')
                if name:
                    return name
    except OSError:
        pass
    raise Unavailable("/etc/os-release names no VERSION_CODENAME")


def apt_sources():
    """[(uri, [suites], [components])] of the host's 'deb' sources, deb822 files first."""
    found = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields, key = {}, None
            for line in stanza.splitlines():
                if line.startswith("#"):
                    continue
                if line[:1] in (" ", "\t") and key:
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, _, val = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = val.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                found.append((uri, fields.get("suites", "").split(),
                              fields.get("components", "").split()))
    lists = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in lists:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                found.append((line[1], [line[2]], line[3:]))
    return found


def host_mirror(suite):
    """The URI of the host's source that carries suite itself (not -updates or -security)."""
    for uri, suites, _ in apt_sources():
        if suite in suites and uri.startswith(("http://", "https://", "file:")):
            return uri
    raise Unavailable(f"no apt source of the host carries suite {suite!r}")


def _names_from_debootstrap(suite, arch):
    if shutil.which("debootstrap") is None:
        raise Unavailable("debootstrap is not installed")
    mirror = host_mirror(suite)
    target = tempfile.mkdtemp(prefix="mosaic-minbase-")
    try:
        p = subprocess.run(["debootstrap", "--print-debs", "--variant=minbase", f"--arch={arch}",
                            suite, target, mirror], capture_output=True, text=True)
    finally:
        shutil.rmtree(target, ignore_errors=True)
    if p.returncode != 0:
        raise Unavailable(f"debootstrap --print-debs failed: {p.stderr.strip()[-500:]}")
    return p.stdout.split()


def _apt_records():
    out = _out(["apt-cache", "dumpavail"])
    for block in out.split("\n\n"):
        rec, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                continue
            if ":" in line:
                key, _, val = line.partition(":")
                rec[key] = val.strip()
        if "Package" in rec:
            yield rec


def _names_from_apt(arch):
    """Fallback: every Priority: required package of the host's arch, then its dependencies."""
    pkgs, providers = {}, {}
    for rec in _apt_records():
        if rec.get("Architecture") not in (arch, "all") or rec["Package"] in pkgs:
            continue
        pkgs[rec["Package"]] = rec
        for prov in rec.get("Provides", "").split(","):
            name = re.sub(r"[\s(:].*$", "", prov.strip())
            if name:
                providers.setdefault(name, []).append(rec["Package"])
    queue = sorted(n for n, r in pkgs.items() if r.get("Priority") == "required")
    seen, chosen = set(queue), []
    while queue:
        name = queue.pop(0)
        chosen.append(name)
        deps = pkgs[name].get("Pre-Depends", "") + "," + pkgs[name].get("Depends", "")
        for group in deps.split(","):
            alts = [re.sub(r"[\s(\[<:].*$", "", a.strip()) for a in group.split("|")]
            alts = [a for a in alts if a]
            pick = next((a for a in alts if a in pkgs), None)
            if pick is None:
                pick = next((p for a in alts for p in sorted(providers.get(a, []))), None)
            if pick and pick not in seen:
                seen.add(pick)
                queue.append(pick)
    return chosen


def package_names(suite=None, arch=None):
    """The minbase package names in debootstrap's order, cached in DEB_DIR."""
    suite = suite or host_release()
    arch = arch or host_arch()
    DEB_DIR.mkdir(parents=True, exist_ok=True)
    listing = DEB_DIR / f"packages-{suite}-{arch}.txt"
    if listing.exists():
        names = listing.read_text().split()
        if len(names) >= MIN_PACKAGES:
            return names
    try:
        names = _names_from_debootstrap(suite, arch)
    except Unavailable:
        names = _names_from_apt(arch)
    if len(names) < MIN_PACKAGES:
        raise Unavailable(f"only {len(names)} minbase packages found for {suite}/{arch}")
    tmp = listing.with_suffix(".tmp")
    tmp.write_text("\n".join(names) + "\n")
    tmp.rename(listing)
    return names


def _version_of(deb):
    return deb.name.split("_")[1].replace("%3a", ":")


def _newest(debs):
    def cmp(a, b):
        va, vb = _version_of(a), _version_of(b)
        if va == vb:
            return 0
        lt = subprocess.run(["dpkg", "--compare-versions", va, "lt", vb]).returncode == 0
        return -1 if lt else 1
    return max(debs, key=functools.cmp_to_key(cmp))


def _cached(names, arch):
    by_name = {}
    for deb in DEB_DIR.glob("*.deb"):
        parts = deb.name[:-4].split("_")
        if len(parts) == 3 and parts[2] in (arch, "all"):
            by_name.setdefault(parts[0], []).append(deb)
    return {n: _newest(by_name[n]) for n in names if n in by_name}


def _download(names):
    return subprocess.run(["apt-get", "download", "-q", *names], cwd=DEB_DIR,
                          capture_output=True, text=True)


def minbase_debs():
    """[Path] of one .deb per minbase package, in debootstrap's order; downloads what is not in
    DEB_DIR yet (running `apt-get update` once if a download fails)."""
    arch = host_arch()
    names = package_names(arch=arch)
    have = _cached(names, arch)
    missing = [n for n in names if n not in have]
    if missing:
        p = _download(missing)
        if p.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            for name in missing:  # one at a time, so one missing package does not stop the rest
                _download([name])
        have = _cached(names, arch)
    debs = [have[n] for n in names if n in have]
    if len(debs) < MIN_PACKAGES:
        gone = [n for n in names if n not in have]
        raise Unavailable(f"only {len(debs)} of {len(names)} minbase .debs could be fetched "
                          f"(missing: {' '.join(gone[:10])}...)")
    return debs


# ---- debootstrap of exactly a lock's packages ----------------------------------------------------

def _stanzas(text):
    for block in re.split(r"\n\n+", text):
        if block.strip():
            yield block.strip("\n") + "\n"


def _field(stanza, name):
    m = re.search(rf"^{name}:[ \t]*(.*)$", stanza, re.M | re.I)
    return m.group(1).strip() if m else None


def archive_stanzas(metadata_dir, sha256s):
    """{sha256: the archive's own Packages stanza} for the .debs of those checksums, from the
    Packages indexes mosaic cached (metadata_dir/sha256/*.xz, *.gz or plain): the Priority,
    Essential and Filename debootstrap decides with are the archive's, not the .deb's."""
    import gzip
    import lzma
    want, found = set(sha256s), {}
    for path in sorted(Path(metadata_dir).glob("sha256/*")):
        opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
        try:
            with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except (OSError, EOFError, lzma.LZMAError):
            continue
        if "\nSHA256: " not in text:
            continue
        for st in _stanzas(text):
            h = _field(st, "SHA256")
            if h in want and h not in found:
                found[h] = st
    return found


def local_archive(root, lock, mosaic_cache, key, suite):
    """A Debian archive under root that holds exactly the lock's packages (the same .debs,
    from mosaic's package cache, at the archive's own pool paths) with the archive's Packages
    stanzas and a Release signed by key (a repos.Key), so that debootstrap installs the same
    bytes that mosaic composed. The host's sources keep -security on another URI, and
    debootstrap takes one mirror: from the host's mirror it would install older versions of
    every package that has a security update. Returns root."""
    import repos
    root = Path(root)
    pkgs = lock["packages"]
    stanzas = archive_stanzas(Path(mosaic_cache) / "metadata", [p["sha256"] for p in pkgs])
    missing = [p["name"] for p in pkgs if p["sha256"] not in stanzas]
    if missing:
        raise Unavailable(f"no Packages stanza cached for {' '.join(missing[:10])}")
    comp = "main"
    for p in pkgs:
        deb = Path(mosaic_cache) / "packages" / "sha256" / f"{p['sha256']}.deb"
        dst = root / _field(stanzas[p["sha256"]], "Filename")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            try:
                os.link(deb, dst)
            except OSError:
                shutil.copyfile(deb, dst)
    dists = root / "dists" / suite
    index = dists / comp / f"binary-{lock['arch']}"
    index.mkdir(parents=True, exist_ok=True)
    # Each stanza ends with a blank line: debootstrap's pkgdetails drops a last one without.
    (index / "Packages").write_text("".join(stanzas[p["sha256"]] + "\n" for p in pkgs))
    fields = {"Origin": "Debian", "Label": "Debian", "Suite": suite, "Codename": suite,
              "Date": repos.RELEASE_DATE, "Architectures": lock["arch"], "Components": comp}
    opts = [x for k, v in fields.items() for x in ("-o", f"APT::FTPArchive::Release::{k}={v}")]
    release = subprocess.run(["apt-ftparchive", *opts, "release", "."], cwd=dists,
                             capture_output=True, check=True).stdout
    (dists / "Release").write_bytes(release)
    key.clearsign(dists / "Release", dists / "InRelease")
    key.detach_sign(dists / "Release", dists / "Release.gpg")
    return root


def debootstrap(target, suite, mirror, keyring, arch, extra=()):
    """debootstrap --variant=minbase SUITE TARGET MIRROR; returns the CompletedProcess."""
    return subprocess.run(["debootstrap", "--variant=minbase", f"--arch={arch}",
                           f"--keyring={keyring}", *extra, suite, str(target), str(mirror)],
                          capture_output=True, text=True)


if __name__ == "__main__":
    for deb in minbase_debs():
        print(deb)
