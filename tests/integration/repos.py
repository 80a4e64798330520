"""Real, signed package repositories built at test time: Debian archives (pool/ + dists/ with
InRelease, Release.gpg and by-hash) and RPM repositories (createrepo_c + repomd.xml.asc), made
from tiny packages built here with dpkg-deb and rpmbuild, plus the standard test scenarios."""

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# Every timestamp in the packages and metadata comes from here, so a rebuild is byte-identical
# (except the OpenPGP signatures, which carry their own creation time).
SOURCE_DATE_EPOCH = 1700000000
RELEASE_DATE = "Tue, 14 Nov 2023 22:13:20 UTC"
MAINTAINER = "mosaic tests <tests@mosaic.invalid>"
_JOBS = max(2, min(16, os.cpu_count() or 2))


def _run(args, env=None, cwd=None, input=None):
    """Runs a command, raises with its output when it fails; returns stdout (bytes)."""
    args = [str(a) for a in args]
    p = subprocess.run(args, env=env, cwd=cwd, input=input, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"{args} exited {p.returncode}\n"
                           f"stdout:\n{p.stdout.decode(errors='replace')}\n"
                           f"stderr:\n{p.stderr.decode(errors='replace')}")
    return p.stdout


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bytes(data):
    return data if isinstance(data, bytes) else data.encode()


# ---- keys ---------------------------------------------------------------------------------------

@dataclass
class Key:
    """An ed25519 signing key without passphrase in its own GnuPG home. keyring is the exported
    public key (binary, for gpgv --keyring and gpgme), armored the same key in ASCII armor (for
    rpmkeys --import)."""
    home: Path
    fingerprint: str
    keyring: Path
    armored: Path
    uid: str
    _own_dir: Optional[Path] = None

    @classmethod
    def create(cls, dir, uid):
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        home, own = dir / "gnupg", None
        # The agent's socket lives in the home; a Unix socket path holds at most 107 bytes.
        if len(str(home)) > 80:
            own = Path(tempfile.mkdtemp(prefix="mosaic-gpg-"))
            home = own / "g"
        home.mkdir(mode=0o700)
        if "<" not in uid:
            uid = f"{uid} <{uid.replace(' ', '-')}@mosaic.invalid>"
        env = dict(os.environ, GNUPGHOME=str(home))
        _run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign",
              "never"], env=env)
        out = _run(["gpg", "--batch", "--list-keys", "--with-colons"], env=env).decode()
        fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
        keyring, armored = dir / "public.gpg", dir / "public.asc"
        keyring.write_bytes(_run(["gpg", "--batch", "--export", fpr], env=env))
        armored.write_bytes(_run(["gpg", "--batch", "--export", "--armor", fpr], env=env))
        return cls(home, fpr, keyring, armored, uid, own)

    @property
    def env(self):
        """The environment for a command that signs with this key (GNUPGHOME set)."""
        return dict(os.environ, GNUPGHOME=str(self.home))

    @property
    def keyid(self):
        return self.fingerprint[-16:]

    @property
    def gnupghome(self):
        return str(self.home)

    def gpg(self, *args, **kw):
        """Runs gpg in this key's home; returns stdout (bytes)."""
        return _run(["gpg", "--batch", "--yes", "--no-tty", "--local-user", self.fingerprint,
                     *args], env=self.env, **kw)

    def clearsign(self, src, dst):
        self.gpg("--digest-algo", "SHA512", "--clearsign", "-o", dst, src)

    def detach_sign(self, src, dst, armor=True):
        self.gpg("--digest-algo", "SHA512", "--detach-sign", *(["--armor"] if armor else []),
                 "-o", dst, src)

    def close(self):
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env, capture_output=True)
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- built repositories ------------------------------------------------------------------------

@dataclass
class Repo:
    """A repository on disk. packages maps (name, version, arch) to the package file's path
    relative to root (pool/... for deb, Packages/... for rpm)."""
    root: Path
    kind: str
    packages: dict
    suite: Optional[str] = None
    components: tuple = ()
    archs: tuple = ()

    def path(self, name, version=None):
        """The package file (absolute) of name, of that version when there are several."""
        hits = [p for (n, v, _), p in self.packages.items()
                if n == name and (version is None or v == version)]
        if len(hits) != 1:
            raise KeyError(f"{name} {version or ''}: {len(hits)} packages match")
        return self.root / hits[0]

    @property
    def dists(self):
        return self.root / "dists" / self.suite


# ---- Debian ------------------------------------------------------------------------------------

@dataclass
class DebPkg:
    name: str
    version: str
    arch: str = "amd64"
    depends: str = ""
    pre_depends: str = ""
    recommends: str = ""
    provides: str = ""
    conflicts: str = ""
    breaks: str = ""
    priority: str = "optional"
    essential: bool = False
    multi_arch: Optional[str] = None
    # path -> contents; None ships /usr/share/doc/<name>/marker holding "<name> <version>\n".
    files: Optional[dict] = None
    component: str = "main"
    section: str = "misc"
    # control-area file name -> contents (preinst, postinst, prerm, postrm, config: executable;
    # triggers, conffiles, templates: not).
    scripts: dict = field(default_factory=dict)
    # Ship DEBIAN/md5sums as dh_md5sums does (dpkg --audit asks for it once configured).
    md5sums: bool = False

    def __post_init__(self):
        if self.files is None:
            self.files = {f"/usr/share/doc/{self.name}/marker": f"{self.name} {self.version}\n"}

    @property
    def filename(self):
        return f"{self.name}_{self.version.split(':', 1)[-1]}_{self.arch}.deb"

    @property
    def pool_dir(self):
        prefix = self.name[:4] if self.name.startswith("lib") else self.name[0]
        return Path("pool") / self.component / prefix / self.name

    def control(self, installed_size):
        fields = [("Package", self.name), ("Version", self.version),
                  ("Architecture", self.arch), ("Maintainer", MAINTAINER),
                  ("Installed-Size", str(installed_size)),
                  ("Essential", "yes" if self.essential else ""),
                  ("Multi-Arch", self.multi_arch or ""),
                  ("Pre-Depends", self.pre_depends), ("Depends", self.depends),
                  ("Recommends", self.recommends), ("Conflicts", self.conflicts),
                  ("Breaks", self.breaks), ("Provides", self.provides),
                  ("Section", self.section), ("Priority", self.priority),
                  ("Description", f"mosaic test package {self.name}\n"
                   f" Built by tests/integration/repos.py for the resolver tests.")]
        return "".join(f"{k}: {v}\n" for k, v in fields if v)


def _tree(root, files, default_mode=0o644):
    """Writes files (path -> bytes/str) under root; returns the total size in bytes."""
    total = 0
    for path, data in files.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        data = _bytes(data)
        p.write_bytes(data)
        p.chmod(0o755 if "/bin/" in path else default_mode)
        total += len(data)
    return total


def _clamp_times(root):
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.utime(Path(dirpath) / n, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH),
                     follow_symlinks=False)
        Path(dirpath).chmod(0o755)
    os.utime(root, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))


def build_deb(pkg, out_dir, work_dir):
    """Builds pkg into out_dir with dpkg-deb; returns the .deb's path."""
    tree = Path(work_dir) / f"{pkg.name}_{pkg.version}_{pkg.arch}"
    size = _tree(tree, pkg.files)
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(pkg.control(max(1, -(-size // 1024))))
    if pkg.md5sums:
        (tree / "DEBIAN" / "md5sums").write_text("".join(
            f"{hashlib.md5(_bytes(data)).hexdigest()}  {path.lstrip('/')}\n"
            for path, data in sorted(pkg.files.items())))
    for name, text in pkg.scripts.items():
        f = tree / "DEBIAN" / name
        f.write_bytes(_bytes(text))
        f.chmod(0o755 if name in ("preinst", "postinst", "prerm", "postrm", "config") else 0o644)
    _clamp_times(tree)
    out = Path(out_dir) / pkg.filename
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", tree, out],
         env=dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH)))
    shutil.rmtree(tree)
    return out


def _write_compressed(path, data):
    """Writes path, path.gz and path.xz (deterministic: no name or time in the gzip header)."""
    path.write_bytes(data)
    with open(f"{path}.gz", "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0,
                                                      filename="") as g:
        g.write(data)
    Path(f"{path}.xz").write_bytes(lzma.compress(data, preset=6))
    return [path, Path(f"{path}.gz"), Path(f"{path}.xz")]


def build_deb_repo(root, key, packages, suite="stable", components=("main",), arch="amd64",
                   codename=None, release_fields=None, by_hash=True):
    """Builds a Debian archive under root: pool/<comp>/<prefix>/<name>/*.deb, and per component
    and architecture dists/<suite>/<comp>/binary-<arch>/Packages{,.gz,.xz} with by-hash/SHA256
    copies, a Release (Acquire-By-Hash: yes) and, when key is given, InRelease and Release.gpg
    signed by it. arch is one architecture or a sequence; arch "all" packages go into each.
    release_fields adds or overrides Release fields (e.g. {"Valid-Until": ...}). Returns a Repo."""
    root = Path(root)
    archs = (arch,) if isinstance(arch, str) else tuple(arch)
    components = tuple(components)
    for p in packages:
        if p.component not in components:
            raise ValueError(f"{p.name}: component {p.component} is not in {components}")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mosaic-deb-") as work, \
            ThreadPoolExecutor(_JOBS) as pool:
        debs = list(pool.map(lambda p: build_deb(p, root / p.pool_dir, work), packages))
    repo = Repo(root, "deb", {(p.name, p.version, p.arch): d.relative_to(root)
                              for p, d in zip(packages, debs)}, suite, components, archs)

    dists = root / "dists" / suite
    indices = []
    for comp in components:
        for a in archs:
            d = dists / comp / f"binary-{a}"
            d.mkdir(parents=True, exist_ok=True)
            text = b""
            if (root / "pool" / comp).is_dir():
                # -a takes *_<arch>.deb and *_all.deb only; paths are relative to root.
                text = _run(["apt-ftparchive", "-a", a, "packages", f"pool/{comp}"], cwd=root)
            indices += _write_compressed(d / "Packages", text)

    fields = {"Origin": "mosaic-test", "Label": "mosaic-test", "Suite": suite,
              "Codename": codename or suite, "Date": RELEASE_DATE,
              "Architectures": " ".join(archs), "Components": " ".join(components),
              "Description": "mosaic test archive", "Acquire-By-Hash": "yes" if by_hash else ""}
    fields.update(release_fields or {})
    opts = []
    for k, v in fields.items():
        if v:
            opts += ["-o", f"APT::FTPArchive::Release::{k}={v}"]
    # Written beside dists/ first: apt-ftparchive would otherwise list its own half-written output.
    release = _run(["apt-ftparchive", *opts, "release", "."], cwd=dists)
    (dists / "Release").write_bytes(release)

    if by_hash:
        for f in indices:
            h = f.parent / "by-hash" / "SHA256"
            h.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, h / sha256_file(f))
    if key is not None:
        key.clearsign(dists / "Release", dists / "InRelease")
        key.detach_sign(dists / "Release", dists / "Release.gpg")
    return repo


# ---- RPM ---------------------------------------------------------------------------------------

@dataclass
class RpmPkg:
    name: str
    version: str
    release: str = "1"
    arch: str = "noarch"
    requires: list = field(default_factory=list)
    provides: list = field(default_factory=list)
    conflicts: list = field(default_factory=list)
    recommends: list = field(default_factory=list)
    obsoletes: list = field(default_factory=list)
    # path -> contents; None ships /usr/share/<name>/marker holding "<name> <version>\n".
    files: Optional[dict] = None
    epoch: Optional[int] = None
    # For mosaic configure's RPM half (test_configure_rpm.py); all empty by default.
    # Scriptlets: "pretrans", "pre", "post", "posttrans" -> body, or (interpreter, body).
    scripts: dict = field(default_factory=dict)
    # path -> symlink target, shipped beside files.
    links: dict = field(default_factory=dict)
    # path -> what %files puts before it: "%config(noreplace)", "%attr(0750,root,root)", ...
    file_attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.files is None:
            self.files = {f"/usr/share/{self.name}/marker": f"{self.name} {self.version}\n"}

    @property
    def filename(self):
        return f"{self.name}-{self.version}-{self.release}.{self.arch}.rpm"

    def spec(self, source_dir):
        lines = [f"Name: {self.name}", f"Version: {self.version}", f"Release: {self.release}",
                 f"Summary: mosaic test package {self.name}", "License: MIT",
                 "URL: https://mosaic.invalid/", "AutoReqProv: no"]
        if self.epoch is not None:
            lines.append(f"Epoch: {self.epoch}")
        if self.arch == "noarch":
            lines.append("BuildArch: noarch")
        for tag, values in (("Requires", self.requires), ("Provides", self.provides),
                            ("Conflicts", self.conflicts), ("Recommends", self.recommends),
                            ("Obsoletes", self.obsoletes)):
            lines += [f"{tag}: {v}" for v in values]
        dirs = sorted({str(Path(p).parent) for p in self.files
                       if Path(p).parent.name == self.name})
        lines += ["", "%description", "Built by tests/integration/repos.py for the resolver "
                  "tests.", "", "%install", f"cp -a '{source_dir}/.' %{{buildroot}}/", ""]
        for stage, script in self.scripts.items():
            prog, body = script if isinstance(script, tuple) else (None, script)
            lines += [f"%{stage}" + (f" -p {prog}" if prog else ""), body.rstrip("\n"), ""]
        lines += ["%files", "%defattr(-,root,root,-)"]
        lines += [f"%dir {d}" for d in dirs]
        lines += [(f"{self.file_attrs[p]} " if p in self.file_attrs else "") + f'"{p}"'
                  for p in sorted({**self.files, **self.links})]
        return "\n".join(lines) + "\n"


def build_rpm(pkg, out_dir, work_dir):
    """Builds pkg (unsigned) into out_dir with rpmbuild -bb; returns the .rpm's path."""
    work = Path(work_dir) / f"{pkg.name}-{pkg.version}-{pkg.release}.{pkg.arch}"
    src = work / "src"
    src.mkdir(parents=True)
    _tree(src, pkg.files)
    for path, target in pkg.links.items():
        (src / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, src / path.lstrip("/"))
    _clamp_times(src)
    spec = work / f"{pkg.name}.spec"
    spec.write_text(pkg.spec(src))
    top = work / "top"
    args = ["rpmbuild", "-bb", "--quiet", spec,
            "--define", f"_topdir {top}",
            "--define", f"_tmppath {work}",
            "--define", "_buildhost mosaic-test",
            "--define", "use_source_date_epoch_as_buildtime 1",
            "--define", "clamp_mtime_to_source_date_epoch 1",
            "--define", "_binary_payload w9.gzdio",
            "--define", "_build_id_links none",
            "--define", "debug_package %{nil}",
            "--define", "__os_install_post %{nil}"]
    if pkg.arch != "noarch":
        args += ["--target", pkg.arch]
    _run(args, env=dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH)))
    built = top / "RPMS" / pkg.arch / pkg.filename
    out = Path(out_dir) / pkg.filename
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(built, out)
    shutil.rmtree(work)
    return out


def rpmsign(paths, key):
    """Adds key's header signature to each rpm in place (one rpmsign run for all of them)."""
    paths = list(paths)
    if paths:
        _run(["rpmsign", "--addsign", "--define", f"_gpg_name {key.fingerprint}",
              "--define", f"_gpg_path {key.home}", "--define", f"__gpg {shutil.which('gpg')}",
              *paths], env=key.env, input=b"")


def build_rpm_repo(root, key, packages, sign_packages=True):
    """Builds an RPM repository under root: Packages/*.rpm (signed by key when given and
    sign_packages), repodata/ by createrepo_c (sha256, checksums in the file names) and, when
    key is given, repodata/repomd.xml.asc. Returns a Repo."""
    root = Path(root)
    (root / "Packages").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mosaic-rpm-") as work, \
            ThreadPoolExecutor(_JOBS) as pool:
        rpms = list(pool.map(lambda p: build_rpm(p, root / "Packages", work), packages))
    if key is not None and sign_packages:
        rpmsign(rpms, key)
    _run(["createrepo_c", "--quiet", "--checksum", "sha256", "--unique-md-filenames",
          "--no-database", "--revision", str(SOURCE_DATE_EPOCH), root])
    if key is not None:
        key.detach_sign(root / "repodata" / "repomd.xml", root / "repodata" / "repomd.xml.asc")
    return Repo(root, "rpm", {(p.name, p.version, p.arch): r.relative_to(root)
                              for p, r in zip(packages, rpms)})


# ---- the standard scenarios --------------------------------------------------------------------

SCENARIO_DEB = [
    DebPkg("mini-base", "1.0", essential=True, priority="required"),
    DebPkg("mini-libc", "1.0", priority="required"),
    DebPkg("mini-tools", "1.0", priority="required", depends="mini-libc"),
    DebPkg("mini-extra", "1.0", priority="important"),
    DebPkg("libfoo", "1.0"),
    DebPkg("libfoo", "2.0"),
    DebPkg("libfoo", "3.0~rc1"),
    DebPkg("app", "1.0", depends="libfoo (>= 2.0)"),
    DebPkg("legacy-app", "1.0", depends="libfoo (<< 2.0)"),
    DebPkg("mail-reader", "1.0", depends="mail-transport-agent"),
    DebPkg("tiny-mta", "1.0", provides="mail-transport-agent"),
    DebPkg("alt-user", "1.0", depends="alt-missing | alt-one"),
    DebPkg("alt-one", "1.0"),
    DebPkg("conflict-a", "1.0", conflicts="conflict-b"),
    DebPkg("conflict-b", "1.0"),
    DebPkg("wants-both", "1.0", depends="conflict-a, conflict-b"),
    DebPkg("broken", "1.0", depends="does-not-exist"),
    DebPkg("rec-user", "1.0", recommends="rec-extra"),
    DebPkg("rec-extra", "1.0"),
    DebPkg("pre-user", "1.0", pre_depends="mini-libc"),
    # Maintainer scripts and triggers, for mosaic configure (tests/integration/test_configure.py).
    # They need a real shell: the tests put them beside real Debian packages.
    DebPkg("script-pkg", "1.0", md5sums=True, scripts={
        "preinst": "#!/bin/sh\nset -e\nmkdir -p /var/lib/script-pkg\n"
                   "echo \"preinst $*\" >> /var/lib/script-pkg/preinst-ran\n",
        "postinst": "#!/bin/sh\nset -e\ncase \"$1\" in\n"
                    "configure) log=/var/lib/script-pkg/postinst.log\n"
                    "  echo \"configured $DEBIAN_FRONTEND\" >> $log\n"
                    "  rc=0; /usr/sbin/policy-rc.d script-pkg start || rc=$?\n"
                    "  echo \"policy-rc.d $rc\" >> $log ;;\n"
                    "triggered) echo \"triggered $2\" >> /var/lib/script-pkg/triggers.log ;;\n"
                    "esac\n",
        "triggers": "interest-noawait script-pkg-trigger\n"
                    "interest-noawait /usr/share/script-trig\n",
    }),
    DebPkg("trig-a", "1.0", depends="script-pkg", md5sums=True,
           files={"/usr/share/doc/trig-a/marker": "trig-a 1.0\n",
                  "/usr/share/script-trig/a": "a\n"},
           scripts={"triggers": "activate-noawait script-pkg-trigger\n"}),
    DebPkg("trig-b", "1.0", depends="script-pkg", md5sums=True,
           scripts={"triggers": "activate-noawait script-pkg-trigger\n"}),
    DebPkg("script-fail", "1.0", md5sums=True, scripts={
        "postinst": "#!/bin/sh\necho 'script-fail: setting up'\n"
                    "echo 'script-fail: it broke' >&2\nexit 3\n"}),
    DebPkg("script-slow", "1.0", md5sums=True, scripts={
        "postinst": "#!/bin/sh\necho 'script-slow: sleeping'\nexec sleep 600\n"}),
    # Files in /bin and /lib as pre-merged-/usr packages ship them, for merged /usr
    # (tests/integration/test_merged_usr.py).
    DebPkg("unmerged-tool", "1.0", files={"/bin/unmerged-foo": "#!/bin/sh\necho foo\n",
                                          "/lib/unmerged/x": "x\n",
                                          "/usr/share/doc/unmerged-tool/marker":
                                              "unmerged-tool 1.0\n"}),
]

# A second archive, for repository priorities: a libfoo between the main archive's 2.0 and 3.0~rc1.
SCENARIO_DEB_EXTRA = [
    DebPkg("libfoo", "2.5"),
]

SCENARIO_RPM = [
    RpmPkg("libbar", "1.0"),
    RpmPkg("libbar", "2.0"),
    RpmPkg("rapp", "1.0", requires=["libbar >= 2.0"]),
    RpmPkg("rmail", "1.0", requires=["smtp-daemon"]),
    RpmPkg("rsmtp", "1.0", provides=["smtp-daemon"]),
    RpmPkg("ralt", "1.0", requires=["(ralt-one or ralt-two)"]),
    RpmPkg("ralt-two", "1.0"),
    RpmPkg("rconflict-a", "1.0", conflicts=["rconflict-b"]),
    RpmPkg("rconflict-b", "1.0"),
    RpmPkg("rbroken", "1.0", requires=["nothing-provides-this"]),
    RpmPkg("rrec", "1.0", recommends=["rrec-extra"]),
    RpmPkg("rrec-extra", "1.0"),
]


# Scriptlets for mosaic configure (tests/integration/test_configure_rpm.py): each leaves a line
# in /var/lib/rscript/log; rscript-app's %post (bash, via -p) fails unless rscript-base's %post
# ran before it; rscript-fail's %post fails until /etc/rscript-fail.ok exists. Their files
# cover what rpm -V checks: content, modes (%attr), a symlink, a %config file, a directory.
_RLOG = "/var/lib/rscript/log"
SCENARIO_RPM_SCRIPTS = [
    RpmPkg("rscript-base", "1.0",
           files={"/usr/share/rscript-base/marker": "rscript-base 1.0\n",
                  "/usr/bin/rscript-base": "#!/bin/sh\necho rscript-base\n",
                  "/usr/libexec/rscript-base/helper": "#!/bin/sh\nexit 0\n",
                  "/etc/rscript-base.conf": "setting = 1\n"},
           links={"/usr/share/rscript-base/link": "marker"},
           file_attrs={"/usr/libexec/rscript-base/helper": "%attr(0750,root,root)",
                       "/etc/rscript-base.conf": "%config(noreplace)"},
           scripts={"pre": f"mkdir -p /var/lib/rscript\necho \"base pre $1\" >> {_RLOG}\n",
                    "post": f"echo \"base post $1\" >> {_RLOG}\n"}),
    RpmPkg("rscript-app", "1.0", requires=["rscript-base"],
           scripts={"pre": f"echo \"app pre $1\" >> {_RLOG}\n",
                    "post": ("/bin/bash",
                             f"[[ -n $BASH_VERSION ]] || exit 5\n"
                             f"grep -qx 'base post 1' {_RLOG} || "
                             "{ echo \"rscript-app: base's %post has not run\" >&2; exit 6; }\n"
                             f"echo \"app post $1 bash\" >> {_RLOG}\n"
                             "echo 'rscript-app: configured'\n")}),
    RpmPkg("rscript-fail", "1.0",
           scripts={"post": "if [ ! -e /etc/rscript-fail.ok ]; then\n"
                            "  echo 'rscript-fail: broken' >&2; exit 4\nfi\n"
                            f"echo \"fail post $1\" >> {_RLOG}\n"}),
]


# ---- the site the fixtures serve ---------------------------------------------------------------

@dataclass
class Site:
    """The standard repositories under one HTTP root: deb/ (SCENARIO_DEB, suite stable),
    deb-extra/ (SCENARIO_DEB_EXTRA, suite stable) and rpm/ (SCENARIO_RPM)."""
    root: Path
    key: Key
    wrong_key: Key
    deb: Repo
    deb_extra: Repo
    rpm: Repo
    server: object = None

    @property
    def url(self):
        return self.server.url

    @property
    def deb_url(self):
        return f"{self.url}/deb"

    @property
    def deb_extra_url(self):
        return f"{self.url}/deb-extra"

    @property
    def rpm_url(self):
        return f"{self.url}/rpm"

    def moved(self, root, server):
        """The same site copied to root and served by server (the Repo paths follow)."""
        def move(r):
            return Repo(Path(root) / r.root.relative_to(self.root), r.kind, dict(r.packages),
                        r.suite, r.components, r.archs)
        return Site(Path(root), self.key, self.wrong_key, move(self.deb), move(self.deb_extra),
                    move(self.rpm), server)


def build_site(root, key, wrong_key):
    """Builds the three standard repositories under root at once; returns a Site (no server)."""
    root = Path(root)
    with ThreadPoolExecutor(3) as pool:
        deb = pool.submit(build_deb_repo, root / "deb", key, SCENARIO_DEB)
        extra = pool.submit(build_deb_repo, root / "deb-extra", key, SCENARIO_DEB_EXTRA)
        rpm = pool.submit(build_rpm_repo, root / "rpm", key, SCENARIO_RPM)
        return Site(root, key, wrong_key, deb.result(), extra.result(), rpm.result())
