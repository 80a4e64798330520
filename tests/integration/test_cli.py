"""The command line: --help everywhere, --version, and exit codes 0 / 1 / 2."""

import os

import pytest

from conftest import MOSAIC, run

COMMANDS = [[], ["fragment"], ["fragment", "create"], ["fragment", "verify"],
            ["fragment", "inspect"], ["store"], ["store", "add"], ["store", "list"],
            ["store", "show"], ["store", "verify"], ["store", "gc"], ["compose"], ["mount"],
            ["umount"], ["status"], ["generations"], ["generations", "diff"],
            ["generations", "gc"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "mosaic")
def test_help(cmd):
    p = run([MOSAIC, *cmd, "--help"])
    assert p.stdout.startswith("Usage: mosaic") and p.stderr == ""


def test_version():
    assert run([MOSAIC, "--version"]).stdout.startswith("mosaic ")


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["fragment"], ["fragment", "create"],
                                  ["fragment", "create", "x"], ["fragment", "create", "--bogus"],
                                  ["fragment", "create", "x", "-o", "s", "--kind", "blob"],
                                  ["fragment", "create", "x", "-o", "s", "--owner", "me"],
                                  ["fragment", "inspect"], ["store", "frob"], ["compose"],
                                  ["compose", "--list"], ["mount"], ["mount", "x"],
                                  ["mount", "--writable=sometimes", "x", "y"], ["umount"],
                                  ["status"], ["generations"], ["generations", "gc", "t"]])
def test_bad_usage_exits_2(args):
    p = run([MOSAIC, *args], check=False)
    assert p.returncode == 2 and p.stderr.startswith("mosaic: ")


def test_missing_source_exits_1(tmp_path, env):
    p = run([MOSAIC, "fragment", "create", tmp_path / "nothing", "-o", tmp_path / "s"], env=env,
            check=False)
    assert p.returncode == 1 and "nothing" in p.stderr


# Every command that reads $SOURCE_DATE_EPOCH refuses one that is not a date, before it makes,
# mounts or changes anything (one reader: common's mosaic_source_date_epoch).
EPOCH_COMMANDS = {
    "build": lambda t: ["build", t / "m.yaml", "-s", t / "store", "--sign", "0" * 40],
    "export": lambda t: ["export", t / "m.yaml", "--format", "tar", "-o", t / "out.tar"],
    "commit": lambda t: ["commit", t, "-o", t / "store", "--sign", "0" * 40],
    "configure": lambda t: ["configure", t],
    "fragment create": lambda t: ["fragment", "create", t / "src", "-o", t / "store"],
}


@pytest.mark.parametrize("value", ["abc", "12abc", "-5", " 12"])
@pytest.mark.parametrize("cmd", sorted(EPOCH_COMMANDS))
def test_malformed_source_date_epoch_exits_2(cmd, value, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    (tmp_path / "m.yaml").write_text("name: m\nrepositories: []\n")
    env = dict(os.environ, MOSAIC_CACHE_DIR=str(tmp_path / "cache"), SOURCE_DATE_EPOCH=value)
    p = run([MOSAIC, *EPOCH_COMMANDS[cmd](tmp_path)], env=env, check=False)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("mosaic: ") and "SOURCE_DATE_EPOCH" in p.stderr
    assert f"'{value}'" in p.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "out.tar").exists()
