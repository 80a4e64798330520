#!/usr/bin/python3
# The module boundaries of DESIGN.md, checked on the source: a module includes another only
# through its public header and only downwards; no library includes tools/; no command file
# (tools/cmd-*.c) defines a function another one calls. Prints TAP; run by meson test.
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

# Each library module, its public headers, and the modules it may use (besides common/).
MODULES = {
    "common": ({"common.h", "deb822.h", "rpmlog.h"}, set()),
    "manifests": ({"manifest.h"}, set()),
    "fragments": ({"fragment.h"}, set()),
    "providers": ({"providers.h"}, {"fragments"}),
    "compose": ({"compose.h"}, {"fragments"}),
    "fusefs": ({"fusefs.h"}, {"compose", "fragments"}),
    "configure": ({"configure.h"}, {"compose", "fragments"}),
    "export": ({"export.h"}, {"compose", "fragments", "providers"}),
    "pipeline": ({"pipeline.h"},
                 {"manifests", "providers", "fragments", "compose", "fusefs", "configure",
                  "export"}),
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
# A function defined at file scope: "type name(" at the start of a line, not static.
DEFINITION = re.compile(r"^(?!static\b)[A-Za-z_][\w \*]*?\b([a-z_]\w*)\s*\([^;]*$", re.M)

results = []


def check(ok, what):
    results.append((ok, what))


def sources(folder):
    d = os.path.join(ROOT, folder)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith((".c", ".h")))


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


for mod, (public, allowed) in MODULES.items():
    for path in sources(mod):
        rel = os.path.relpath(path, ROOT)
        bad = []
        for inc in INCLUDE.findall(read(path)):
            other, _, header = inc.partition("/")
            if other == mod or other not in MODULES and other != "tools":
                continue
            if other == "tools":
                bad.append(f"{inc} (a library must not include tools/)")
            elif other != "common" and other not in allowed:
                bad.append(f"{inc} ({mod}/ may not use {other}/)")
            elif header not in MODULES[other][0]:
                bad.append(f"{inc} (not {other}/'s public header)")
        check(not bad, f"{rel} includes only public headers of the modules below it" +
              ("" if not bad else ": " + ", ".join(bad)))

cmds = [p for p in sources("tools") if os.path.basename(p).startswith("cmd-")]
defined = {}
for path in cmds:
    for name in DEFINITION.findall(read(path)):
        defined.setdefault(name, os.path.basename(path))
for path in cmds:
    base = os.path.basename(path)
    text = read(path)
    calls = [f"{name}() of {owner}" for name, owner in sorted(defined.items())
             if owner != base and re.search(rf"\b{name}\s*\(", text)]
    check(not calls, f"tools/{base} calls no function of another command file" +
          ("" if not calls else ": " + ", ".join(calls)))
for name, owner in sorted(defined.items()):
    check(name.startswith("cmd_"),
          f"tools/{owner}: {name}() is a command entry point (cmd_*), nothing else is shared")
cli_h = read(os.path.join(ROOT, "tools", "cli.h"))
check(not re.search(r"\b(int|void|char|bool)\s+\**(?!cli_|cmd_)[a-z_]\w*\s*\(", cli_h),
      "tools/cli.h declares only cli_* helpers and cmd_* entry points")

for i, (ok, what) in enumerate(results, 1):
    print(f"{'ok' if ok else 'not ok'} {i} - {what}")
print(f"1..{len(results)}")
sys.exit(0 if all(ok for ok, _ in results) else 1)
