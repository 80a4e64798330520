"""The command line: --help everywhere, --version, and exit codes 0 / 1 / 2."""

import pytest

from conftest import MOSAIC, run

COMMANDS = [[], ["fragment"], ["fragment", "create"], ["fragment", "verify"],
            ["fragment", "inspect"], ["store"], ["store", "add"], ["store", "list"],
            ["store", "show"], ["store", "verify"], ["store", "gc"], ["compose"], ["mount"],
            ["umount"], ["status"]]


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
                                  ["status"]])
def test_bad_usage_exits_2(args):
    p = run([MOSAIC, *args], check=False)
    assert p.returncode == 2 and p.stderr.startswith("mosaic: ")


def test_missing_source_exits_1(tmp_path, env):
    p = run([MOSAIC, "fragment", "create", tmp_path / "nothing", "-o", tmp_path / "s"], env=env,
            check=False)
    assert p.returncode == 1 and "nothing" in p.stderr
