"""mosaic manifest check|show: every kind of validation error with its exact FILE:LINE:COL and
message (exit 2), the example manifests merged with their include and layers, paths made
absolute, and the include override rules."""

import json

import pytest

from conftest import MOSAIC, REPO, run

EXAMPLES = REPO / "manifests" / "examples"
DEFAULTS = REPO / "manifests" / "defaults" / "debian.yaml"


def check(tmp_path, files, main="m.yaml"):
    """Writes files into tmp_path and runs `manifest check main` there (names stay relative)."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return run([MOSAIC, "manifest", "check", main], cwd=tmp_path, check=False)


def show(path, *args, cwd=None):
    p = run([MOSAIC, "manifest", "show", "--json", *args, path], cwd=cwd)
    return json.loads(p.stdout)


ERRORS = {
    "unknown key, did you mean": (
        "name: t\npakages: [apt]\n",
        "m.yaml:2:1: unknown key 'pakages' (did you mean 'packages'?)"),
    "unknown key, no hint": (
        "name: t\nfrobnicate: 1\n",
        "m.yaml:2:1: unknown key 'frobnicate'"),
    "nested unknown key": (
        "name: t\nrepositories:\n  - name: d\n    type: deb\n    url: http://x.invalid\n",
        "m.yaml:5:5: unknown key 'url' (did you mean 'uri'?)"),
    "wrong type": (
        "name: t\npackages:\n  apt: yes\n",
        "m.yaml:3:3: 'packages' must be a list, not a mapping"),
    "wrong scalar type": (
        "name: t\nconfig:\n  users:\n    - name: alice\n      uid: lots\n",
        "m.yaml:5:12: 'uid' must be an integer, not 'lots'"),
    "missing required field": (
        "name: t\nrepositories:\n  - type: deb\n    host: true\n",
        "m.yaml:3:5: repository is missing required key 'name'"),
    "missing name": (
        "# no name\npackages: [apt]\n",
        "m.yaml:2:1: manifest is missing required key 'name'"),
    "malformed package name": (
        "name: t\npackages:\n  - apt\n  - \"foo$\"\n",
        "m.yaml:4:5: malformed package name 'foo$': '$' is not allowed in a package name "
        "(letters, digits and + . _ -)"),
    "malformed version constraint": (
        "name: t\npackages:\n  - foo (>= abc)\n",
        "m.yaml:3:5: malformed version constraint in 'foo (>= abc)': version 'abc' must start "
        "with a digit"),
    "unknown version operator": (
        "name: t\npackages:\n  - {name: foo, version: '=> 1'}\n",
        "m.yaml:3:26: malformed version constraint in 'foo (=> 1)': unknown operator '=>' "
        "(use =, >=, <=, >>, <<, > or <)"),
    "bad enum value": (
        "name: t\nexport:\n  - format: zip\n",
        "m.yaml:3:13: 'format' must be one of raw, iso, qcow2, vmdk, vhdx or tar, not 'zip'"),
    "bad base set": (
        "name: t\nbase: {set: minimal}\n",
        "m.yaml:2:13: 'set' must be one of essential, required or important, not 'minimal'"),
    "plain-text password": (
        "name: t\nconfig:\n  users:\n    - name: alice\n      password: hunter2\n",
        "m.yaml:5:17: 'password' looks like a plain-text password; give a crypt(3) hash such as "
        "'$y$...' (make one with 'mkpasswd -m yescrypt'), or '!' to lock the account"),
    "YAML syntax error": (
        "name: t\npackages: [apt\n",
        "m.yaml:3:1: did not find expected ',' or ']' (while parsing a flow sequence at 2:11)"),
    "YAML indentation error": (
        "name: t\npackages:\n  - apt\n bad: 1\n",
        "m.yaml:4:2: did not find expected key (while parsing a block mapping at 1:1)"),
    "missing include file": (
        "name: t\ninclude: nothere.yaml\n",
        "m.yaml:2:10: cannot include 'nothere.yaml': No such file or directory"),
    "deb repository with uri and host": (
        "name: t\nrepositories:\n  - name: d\n    type: deb\n    uri: http://x.invalid/debian\n"
        "    host: true\n    suites: [bookworm]\n",
        "m.yaml:6:5: 'uri' and 'host: true' cannot both be given in a repository; use one"),
    "deb repository with neither": (
        "name: t\nrepositories:\n  - {name: d, type: deb, keyring: k.gpg}\n",
        "m.yaml:3:5: deb repository needs 'uri' or 'host: true'"),
    "rpm repository with a deb key": (
        "name: t\nrepositories:\n  - name: r\n    type: rpm\n    baseurl: http://x.invalid/el\n"
        "    keyring: k.gpg\n    suites: [a]\n",
        "m.yaml:7:5: 'suites' is not allowed in an rpm repository"),
    "two of base's alternatives": (
        "name: t\nbase:\n  set: required\n  image: root.tar\n",
        "m.yaml:4:3: 'set' and 'image' cannot both be given in 'base'; use one"),
    "key not allowed in a layer": (
        "name: t\nlayers:\n  - when: {role: x}\n    arch: arm64\n",
        "m.yaml:4:5: 'arch' is not allowed in a layer"),
    "relative file path": (
        "name: t\nconfig:\n  files:\n    - {path: etc/motd, content: hi}\n",
        "m.yaml:4:14: 'path' must be an absolute path, not 'etc/motd'"),
}


@pytest.mark.parametrize("case", ERRORS, ids=lambda c: c.replace(" ", "-"))
def test_validation_error(tmp_path, case):
    text, message = ERRORS[case]
    p = check(tmp_path, {"m.yaml": text})
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert p.stderr == message + "\n"


def test_password_is_not_echoed(tmp_path):
    p = check(tmp_path, {"m.yaml": ERRORS["plain-text password"][0]})
    assert p.returncode == 2 and "hunter2" not in p.stderr


def test_include_cycle(tmp_path):
    p = check(tmp_path, {"a.yaml": "name: a\ninclude: sub/b.yaml\n",
                         "sub/b.yaml": "packages: [x]\ninclude:\n  - ../a.yaml\n"}, main="a.yaml")
    assert p.returncode == 2
    assert p.stderr == "sub/b.yaml:3:5: include cycle: a.yaml → b.yaml → a.yaml\n"


def test_errors_in_included_file_name_it(tmp_path):
    p = check(tmp_path, {"m.yaml": "name: t\ninclude: parts/extra.yaml\nrecommends: maybe\n",
                         "parts/extra.yaml": "packages: [apt]\nexlude: [nano]\n"})
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        "m.yaml:3:13: 'recommends' must be true or false (or yes/no), not 'maybe'",
        "parts/extra.yaml:2:1: unknown key 'exlude' (did you mean 'exclude'?)",
    ]


def test_all_errors_reported_then_counted(tmp_path):
    text = "name: t\n" + "".join(f"zz{i:02d}: 1\n" for i in range(15))
    p = check(tmp_path, {"m.yaml": text})
    lines = p.stderr.splitlines()
    assert p.returncode == 2 and len(lines) == 13
    assert lines[0] == "m.yaml:2:1: unknown key 'zz00'"
    assert lines[11] == "m.yaml:13:1: unknown key 'zz11'"
    assert lines[12] == "… and 3 more errors"


def test_check_ok_and_io_errors(tmp_path):
    p = check(tmp_path, {"m.yaml": "name: t\npackages: [apt]\n"})
    assert p.returncode == 0 and p.stdout == "m.yaml: ok\n" and p.stderr == ""
    p = run([MOSAIC, "manifest", "check", tmp_path / "missing.yaml"], check=False)
    assert p.returncode == 1 and "missing.yaml: No such file or directory" in p.stderr


@pytest.mark.parametrize("args", [["manifest"], ["manifest", "frob", "m.yaml"],
                                  ["manifest", "show"], ["manifest", "show", "a", "b"],
                                  ["manifest", "show", "--fact", "novalue", "m.yaml"],
                                  ["manifest", "check", "--json", "m.yaml"],
                                  ["manifest", "show", "--bogus", "m.yaml"]])
def test_bad_usage(args):
    p = run([MOSAIC, *args], check=False)
    assert p.returncode == 2 and p.stderr.startswith("mosaic: ")


def test_help():
    for args in (["manifest", "--help"], ["manifest", "show", "--help"]):
        p = run([MOSAIC, *args])
        assert p.stdout.startswith("Usage: mosaic manifest")
    assert "manifest show|check" in run([MOSAIC, "--help"]).stdout


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_validate(example):
    assert run([MOSAIC, "manifest", "check", EXAMPLES / example]).stdout.endswith(": ok\n")


def test_debian_minimal_model():
    assert show(EXAMPLES / "debian-minimal.yaml") == {
        "name": "debian-minimal",
        "arch": "amd64",
        "include": [str(DEFAULTS)],
        "repositories": [{
            "name": "debian", "type": "deb", "host": True,
            "suites": ["bookworm", "bookworm-updates", "bookworm-security"],
            "components": ["main"], "priority": 0, "check_valid_until": True,
        }],
        "base": {"set": "required"},
        "packages": [{"name": "usr-is-merged"}, {"name": "apt"}],
        "recommends": False,
        "merged_usr": True,
    }


def test_summary():
    out = run([MOSAIC, "manifest", "show", EXAMPLES / "debian-minimal.yaml"]).stdout
    assert "name          debian-minimal\n" in out
    assert "repository    debian: deb from the host's apt sources" in out
    assert "base          set required\n" in out
    assert "packages      2 (usr-is-merged, apt)\n" in out
    assert "run           0 steps\n" in out


def names(model):
    return [p["name"] for p in model["packages"]]


def test_roles_layers_follow_facts():
    path = EXAMPLES / "debian-roles.yaml"
    common = ["usr-is-merged", "apt", "systemd-sysv", "openssh-server", "ca-certificates"]

    plain = show(path, "--fact", "arch=amd64")
    assert names(plain) == common + ["linux-image-amd64"]
    assert plain["arch"] == "amd64" and plain["recommends"] is False
    assert "layers" not in plain and all("when" not in p for p in plain["packages"])

    server = show(path, "--role", "server", "--fact", "arch=amd64")
    assert names(server) == common + ["linux-image-amd64", "nginx-light", "unattended-upgrades"]
    assert server["packages"][-1] == {"name": "unattended-upgrades", "op": ">=",
                                      "version": "2.9"}
    assert server["config"]["services"]["enable"] == ["ssh", "nginx"]

    desktop = show(path, "--role", "desktop", "--fact", "arch=arm64", "--fact", "hardware=gpu",
                   "--fact", "hardware=wlan0", "--fact", "hardware=virtio-net")
    assert desktop["arch"] == "arm64"
    assert names(desktop) == common + ["linux-image-arm64", "task-xfce-desktop", "firefox-esr",
                                       "wpasupplicant", "iw", "qemu-guest-agent"]
    assert desktop["recommends"] is True
    assert [s["command"] for s in desktop["run"]] == [
        "systemctl set-default multi-user.target", "rm -rf /var/lib/apt/lists/*",
        "systemctl set-default graphical.target"]


def test_roles_paths_and_run_positions():
    path = EXAMPLES / "debian-roles.yaml"
    model = show(path, "--fact", "arch=amd64")
    assert model["export"][0]["output"] == str(EXAMPLES / "debian-roles.raw")
    text = path.read_text().splitlines()
    for step in model["run"]:
        # The line where the step starts: the command's, or the mapping's that holds it.
        assert step["file"] == str(path)
        start = text[step["line"] - 1]
        assert step["command"] in start or step.get("name") in start


def test_default_arch_is_the_hosts(tmp_path):
    (tmp_path / "m.yaml").write_text("name: t\n")
    machine = run(["uname", "-m"]).stdout.strip()
    dpkg = run(["dpkg", "--print-architecture"]).stdout.strip()
    if machine == "x86_64":
        assert show("m.yaml", cwd=tmp_path)["arch"] == dpkg == "amd64"
    assert show("m.yaml", "--fact", "arch=riscv64", cwd=tmp_path)["arch"] == "riscv64"


def test_include_override_semantics(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "base.yaml").write_text(
        "arch: arm64\n"
        "repositories:\n"
        "  - {name: debian, type: deb, host: true, suites: [bookworm], priority: 5}\n"
        "  - {name: extra, type: deb, uri: 'http://x.invalid/extra', suites: [stable],\n"
        "     keyring: keys/extra.gpg}\n"
        "base: {set: required}\n"
        "packages: [apt, 'curl (>= 7)', less]\n"
        "exclude: [nano, vim]\n"
        "fragments: [frags/one]\n"
        "config: {hostname: base, services: {enable: [ssh]}}\n"
        "run: [echo base]\n")
    (tmp_path / "top.yaml").write_text(
        "name: top\n"
        "include: common/base.yaml\n"
        "repositories:\n"
        "  - {name: debian, uri: 'http://x.invalid/debian', keyring: k.gpg}\n"
        "base: {image: root.tar}\n"
        "packages: ['curl (= 8.0)', wget]\n"
        "exclude: [vim, emacs]\n"
        "fragments: [frags/two]\n"
        "config: {hostname: top, services: {enable: [nginx]}}\n"
        "run: [echo top]\n")
    m = show("top.yaml", "--fact", "arch=amd64", cwd=tmp_path)
    base = tmp_path / "common"
    assert m["include"] == [str(base / "base.yaml")]
    assert m["arch"] == "arm64"  # from the include; the fact only fills in a missing arch
    debian, extra = m["repositories"]
    assert debian == {"name": "debian", "type": "deb", "uri": "http://x.invalid/debian",
                      "suites": ["bookworm"], "components": ["main"],
                      "keyring": str(tmp_path / "k.gpg"), "priority": 5,
                      "check_valid_until": True}
    assert extra["keyring"] == str(base / "keys" / "extra.gpg")
    assert m["base"] == {"image": str(tmp_path / "root.tar")}
    assert m["packages"] == [{"name": "apt"}, {"name": "curl", "op": "=", "version": "8.0"},
                             {"name": "less"}, {"name": "wget"}]
    assert m["exclude"] == ["nano", "vim", "emacs"]
    assert m["fragments"] == [{"path": str(base / "frags" / "one"), "dev": False},
                              {"path": str(tmp_path / "frags" / "two"), "dev": False}]
    assert m["config"] == {"hostname": "top", "services": {"enable": ["ssh", "nginx"]}}
    assert [(s["command"], s["file"], s["line"]) for s in m["run"]] == [
        ("echo base", str(base / "base.yaml"), 11), ("echo top", str(tmp_path / "top.yaml"), 10)]
