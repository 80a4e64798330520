#!/bin/bash
# Builds the libFuzzer targets under tests/fuzz in their own clang build directory and runs them.
#
#   tools/fuzz.sh [TARGET|all] [SECONDS]     (default: all targets, 60 s each)
#
# Each target runs over a working copy of its seed corpus (tests/fuzz/corpus/<target>/, copied to
# build-fuzz/fuzz-corpus/<target>/, where what the fuzzer finds accumulates between runs), with
# tests/fuzz/<target>.dict when there is one. Crashing inputs land in
# build-fuzz/fuzz-artifacts/<target>/. Extra libFuzzer flags may be given in $FUZZ_ARGS (for
# example FUZZ_ARGS="-max_len=65536"). Exits 1 if any target crashed, 2 on bad usage.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-fuzz"
targets_all=(fuzz-descriptor fuzz-deb822 fuzz-index fuzz-manifest fuzz-deb-metadata
	fuzz-rpm-metadata fuzz-generation)

usage() {
	echo "usage: $0 [TARGET|all] [SECONDS]  (targets: ${targets_all[*]})" >&2
	exit 2
}

target=${1:-all}
seconds=${2:-60}
[[ $# -le 2 ]] || usage
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || usage
if [[ $target == all ]]; then
	targets=("${targets_all[@]}")
else
	target=${target#tests/fuzz/}
	target=${target%.c}
	[[ $target == fuzz-* ]] || target="fuzz-$target"
	[[ " ${targets_all[*]} " == *" $target "* ]] || usage
	targets=("$target")
fi

if [[ ! -f $build/build.ninja ]]; then
	echo "fuzz: configuring $build (clang, -Dfuzzing=true)"
	CC=clang meson setup "$build" "$root" -Dfuzzing=true -Db_sanitize=none \
		-Dbuildtype=debugoptimized >"$build.setup.log" 2>&1 || {
		cat "$build.setup.log" >&2
		exit 1
	}
	rm -f "$build.setup.log"
fi
# Only what the fuzzers need: the rest of the project is built by the ordinary build directory.
ninja -C "$build" "${targets[@]/#/tests/}" >/dev/null

# Errors from the sanitizers are crashes; leaks too. Symbolised stacks for the report.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
if [[ -z ${ASAN_SYMBOLIZER_PATH:-} ]] && command -v llvm-symbolizer-14 >/dev/null; then
	ASAN_SYMBOLIZER_PATH=$(command -v llvm-symbolizer-14)
	export ASAN_SYMBOLIZER_PATH
fi

failed=0
for t in "${targets[@]}"; do
	corpus="$build/fuzz-corpus/$t"
	artifacts="$build/fuzz-artifacts/$t/"
	log="$build/fuzz-logs/$t.log"
	mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
	cp -n "$root/tests/fuzz/corpus/$t/"* "$corpus/" 2>/dev/null || true
	before=$(find "$artifacts" -type f | wc -l)

	dict=()
	[[ -f $root/tests/fuzz/$t.dict ]] && dict=(-dict="$root/tests/fuzz/$t.dict")

	rc=0
	# shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
	"$build/tests/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$artifacts" "${dict[@]}" ${FUZZ_ARGS:-} "$corpus" \
		>"$log" 2>&1 </dev/null || rc=$?

	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2 || true)
	ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2 || true)
	files=$(find "$corpus" -type f | wc -l)
	after=$(find "$artifacts" -type f | wc -l)
	if [[ $rc -ne 0 || $after -gt $before ]]; then
		failed=1
		newest=$(find "$artifacts" -type f -printf '%T@ %f\n' | sort -n | tail -n1 | cut -d' ' -f2-)
		pattern='ERROR: [A-Za-z]+Sanitizer: [^ ]+|runtime error: .*|ERROR: libFuzzer: [a-z-]+'
		what=$(grep -m1 -oE "$pattern" "$log" || echo "exit $rc")
		echo "$t: CRASH after ${runs:-?} runs: $what; input ${artifacts}${newest:-?}; log $log"
	else
		echo "$t: ok, ${runs:-?} runs in ${seconds}s, cov ${cov:-?} ft ${ft:-?}, corpus $files files"
	fi
done
exit $failed
