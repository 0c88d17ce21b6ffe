#!/usr/bin/env bash
# Runs every libFuzzer harness of tests/fuzz for SECONDS each (default 30), one after another,
# from its committed seed corpus (tests/fuzz/corpus/<target>) plus what earlier runs found (kept in
# $FUZZ_BUILD_DIR/corpus). Builds the harnesses first with clang, ASan+UBSan and coverage
# instrumentation (CUDA off). Prints one line per target (executions, seconds, result) and exits
# non-zero when a harness found a crash; the input is left under $FUZZ_BUILD_DIR/artifacts.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (targets: envelope command tamiyo_ingest
# config policy manifest pub_json; docs/fuzzing.md). Environment: FUZZ_BUILD_DIR (build-fuzz),
# JOBS (build jobs, default all cores), FUZZ_SKIP_BUILD=1 (use the binaries as they are),
# FUZZ_PARALLEL=1 (run the targets at once instead of one after another), FUZZ_TIMEOUT (seconds
# of wall time one input may take, default 60: generous, as a loaded shared machine stretches it).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-30}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(envelope command tamiyo_ingest config policy manifest pub_json)
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
JOBS=${JOBS:-$(nproc)}

if [ "${FUZZ_SKIP_BUILD:-0}" != 1 ]; then
  command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (scripts/setup-deps.sh)" >&2; exit 2; }
  CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DESPER_ENABLE_CUDA=OFF -DESPER_FUZZ=ON -DESPER_SANITIZE_ADDRESS=ON \
    -DESPER_SANITIZE_UNDEFINED=ON >/dev/null
  cmake --build "$BUILD_DIR" -j "$JOBS" --target $(printf 'esper_fuzz_%s ' "${TARGETS[@]}")
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$BUILD_DIR/artifacts" "$BUILD_DIR/logs"

run_one() {  # TARGET: fuzzes it for SECONDS_EACH; writes its log and a one-line summary
  local t=$1 bin="$BUILD_DIR/bin/esper_fuzz_$1" work="$BUILD_DIR/corpus/$1"
  local log="$BUILD_DIR/logs/$1.log" start result execs cpu
  mkdir -p "$work"
  start=$(date +%s)
  # -rss_limit_mb bounds what one input may make the code under test allocate; -max_len covers
  # every seed (the largest is a few KiB) with room to grow.
  local timer=()  # CPU seconds as well as wall time, where GNU time is installed
  [ -x /usr/bin/time ] && timer=(/usr/bin/time -f '%U %S' -o "$log.time")
  rm -f "$log.time"
  if "${timer[@]}" "$bin" -max_total_time="$SECONDS_EACH" \
      -print_final_stats=1 -rss_limit_mb=2048 -max_len=65536 -timeout="${FUZZ_TIMEOUT:-60}" \
      -artifact_prefix="$BUILD_DIR/artifacts/$t-" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    result=ok
  else
    result="FOUND (see $log and $BUILD_DIR/artifacts/$t-*)"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cpu='?'
  [ -s "$log.time" ] && cpu=$(awk 'END {printf "%.0f", $1 + $2}' "$log.time")
  printf '%-14s %12s %8s %8s %s\n' "$t" "${execs:-?}" "$(( $(date +%s) - start ))" "$cpu" \
    "$result" >"$log.summary"
}

# FUZZ_PARALLEL=1 runs every target at once (each still gets SECONDS of wall time).
if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then
  for t in "${TARGETS[@]}"; do run_one "$t" & done
  wait
else
  for t in "${TARGETS[@]}"; do run_one "$t"; done
fi
printf '%-14s %12s %8s %8s %s\n' target executions wall_s cpu_s result
status=0
for t in "${TARGETS[@]}"; do
  cat "$BUILD_DIR/logs/$t.log.summary"
  grep -q ' ok$' "$BUILD_DIR/logs/$t.log.summary" || status=1
done
exit $status
