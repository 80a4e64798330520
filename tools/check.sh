#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what is needed, build twice (plain, and with
# AddressSanitizer + UndefinedBehaviorSanitizer), run the C unit tests in both builds, the
# integration tests (real mounts, real keys, real Debian packages) against the plain build, and
# the quick integration tests again against the sanitizer build.
# Ends with one line: "check: N passed, N failed, N skipped". Run as root on Debian bookworm.
# Set MOSAIC_QUICK=1 to skip tests marked slow (network, large inputs).
set -uo pipefail
cd "$(dirname "$0")/.."

bash tools/setup.sh || exit 1

configure() {
	local dir=$1
	shift
	if [ -f "$dir/build.ninja" ]; then
		meson configure "$dir" "$@" >/dev/null
	else
		meson setup "$dir" "$@" >/dev/null
	fi && ninja -C "$dir" >/dev/null
}
configure build || { echo "check: build failed" >&2; exit 1; }
configure build-asan -Db_sanitize=address,undefined -Db_lundef=false ||
	{ echo "check: sanitizer build failed" >&2; exit 1; }

export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1
status=0
meson test -C build --print-errorlogs || status=1
meson test -C build-asan --print-errorlogs || status=1

marker=()
[ "${MOSAIC_QUICK:-0}" = 1 ] && marker=(-m "not slow")
/usr/bin/python3 -m pytest tests/integration -p no:cacheprovider -q -rs "${marker[@]}" \
	--junitxml=build/pytest.xml
rc=$?
# pytest exits 5 when no test ran: that is a failure of the suite, not a pass.
[ $rc -ne 0 ] && status=1

# The quick integration tests once more against the sanitizer build's mosaic: a memory error or
# undefined behaviour in the CLI, the parsers or the daemon aborts it. Leak checking stays with
# the unit tests: a daemon stopped by SIGTERM exits with the kernel's open files still
# allocated, which LeakSanitizer would report.
MOSAIC_BIN=$PWD/build-asan/tools/mosaic ASAN_OPTIONS=detect_leaks=0 \
	/usr/bin/python3 -m pytest tests/integration -p no:cacheprovider -q -m "not slow" \
	--junitxml=build-asan/pytest.xml || status=1

/usr/bin/python3 - <<'PY' || status=1
import json, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for log in ("build/meson-logs/testlog.json", "build-asan/meson-logs/testlog.json"):
    with open(log) as f:
        for line in f:
            r = json.loads(line)["result"]
            if r in ("OK", "EXPECTEDFAIL"):
                passed += 1
            elif r == "SKIP":
                skipped += 1
            else:
                failed += 1
for xml in ("build/pytest.xml", "build-asan/pytest.xml"):
    try:
        root = ET.parse(xml).getroot()
        for s in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
            t, f, e, sk = (int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
            passed += t - f - e - sk
            failed += f + e
            skipped += sk
    except (OSError, ET.ParseError):
        failed += 1
print(f"check: {passed} passed, {failed} failed, {skipped} skipped")
raise SystemExit(1 if failed or passed == 0 else 0)
PY
exit $status
