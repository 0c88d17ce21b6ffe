#!/usr/bin/env bash
# Sanitizer builds of the tests (`.ci/run` runs it after scripts/test.sh unless
# ESPER_CI_SANITIZE=0; its measured cost is in docs/fuzzing.md):
#  1. ASan+UBSan (clang, CUDA off, undefined behaviour fatal) of the unit tests, the bus, agents
#     and fault-injection integration tests, and the fuzz harnesses (one build: the harnesses carry
#     the same sanitizers); runs those tests, then every fuzzer for FUZZ_SECONDS (default 10).
#  2. TSan (clang) of the bus and agents unit tests, which own the threads (event loop, async RPC,
#     supervisor); runs them with tests/sanitizers/tsan.supp.
# Only the binaries named here are built, at -O1. Every step runs; the exit code is the first
# failing step's.
# Environment: JOBS (default all cores), FUZZ_SECONDS (10; 0 = replay the corpora only),
# ASAN_BUILD_DIR (build-asan), TSAN_BUILD_DIR (build-tsan), SANITIZE_STEPS ("asan tsan").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-deps.sh
JOBS=${JOBS:-$(nproc)}
ASAN_DIR=${ASAN_BUILD_DIR:-build-asan}
TSAN_DIR=${TSAN_BUILD_DIR:-build-tsan}
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
STEPS=${SANITIZE_STEPS:-asan tsan}
export CC=clang CXX=clang++
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# -O1, as the sanitizers' documentation advises: it compiles faster than Release's -O3 (CI builds
# from scratch) and keeps the reports' stacks exact.
opt=(-DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG")

t0=$(date +%s)
stamp() { echo "== sanitize.sh: $* ($(( $(date +%s) - t0 )) s)"; }

failed=0  # the first failing step's exit code; every step still runs, so one CI run shows all
fail() { echo "sanitize.sh: $1 failed (exit $2)" >&2; [ "$failed" -ne 0 ] || failed=$2; }

# BUILD_DIR BINARY...: each test binary of the build, directly ([gpu] cases skip: exit 4 when
# nothing else ran). Catch2 prints each case's duration into the log (-d yes), which is how the
# cases too slow for a sanitizer build were found (docs/fuzzing.md).
run_tests() {
  local dir=$1 rc
  shift
  for b in "$@"; do
    stamp "$b"
    set +e
    "$dir/bin/$b" --use-colour no -d yes >"$dir/$b.log" 2>&1
    rc=$?
    set -e
    tail -n 3 "$dir/$b.log"
    if [ $rc -ne 0 ] && [ $rc -ne 4 ]; then
      grep -n -m 5 -A 30 "ERROR: AddressSanitizer\|runtime error\|WARNING: ThreadSanitizer\|FAILED" \
        "$dir/$b.log" >&2 || tail -n 60 "$dir/$b.log" >&2
      fail "$b" $rc
    fi
  done
}

if [[ " $STEPS " == *" asan "* ]]; then
  stamp "ASan+UBSan build"
  cmake -S . -B "$ASAN_DIR" "${opt[@]}" -DESPER_ENABLE_CUDA=OFF \
    -DESPER_SANITIZE_ADDRESS=ON -DESPER_SANITIZE_UNDEFINED=ON -DESPER_FUZZ=ON "${launcher[@]}" \
    >/dev/null
  ASAN_TESTS=(esper_core_tests esper_bus_tests esper_tamiyo_tests esper_agents_tests
              esper_kernels_tests esper_kasmina_tests esper_integration_tests
              esper_agents_integration_tests esper_faults_tests)
  FUZZERS=(envelope command tamiyo_ingest config policy manifest pub_json)
  cmake --build "$ASAN_DIR" -j "$JOBS" --target esper "${ASAN_TESTS[@]}" \
    $(printf 'esper_fuzz_%s ' "${FUZZERS[@]}")
  # Leaks are reported (each binary exits non-zero on one); a failed allocation of an absurd size
  # throws std::bad_alloc as in production instead of aborting.
  export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:abort_on_error=0
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  run_tests "$ASAN_DIR" "${ASAN_TESTS[@]}"
  stamp "fuzzers, ${FUZZ_SECONDS} s each"
  if [ "$FUZZ_SECONDS" -gt 0 ]; then
    FUZZ_BUILD_DIR="$ASAN_DIR" FUZZ_SKIP_BUILD=1 scripts/fuzz.sh "$FUZZ_SECONDS" "${FUZZERS[@]}" ||
      fail "scripts/fuzz.sh" $?
  else
    for f in "${FUZZERS[@]}"; do
      "$ASAN_DIR/bin/esper_fuzz_$f" -runs=0 "tests/fuzz/corpus/$f" || fail "esper_fuzz_$f" $?
    done
  fi
  unset ASAN_OPTIONS UBSAN_OPTIONS
fi

if [[ " $STEPS " == *" tsan "* ]]; then
  stamp "TSan build"
  cmake -S . -B "$TSAN_DIR" "${opt[@]}" -DESPER_ENABLE_CUDA=OFF \
    -DESPER_SANITIZE_THREAD=ON "${launcher[@]}" >/dev/null
  TSAN_TESTS=(esper_bus_tests esper_agents_tests)
  cmake --build "$TSAN_DIR" -j "$JOBS" --target "${TSAN_TESTS[@]}"
  # libzmq and Cap'n Proto are not built with TSan: tests/sanitizers/tsan.supp says what that hides.
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/tests/sanitizers/tsan.supp"
  run_tests "$TSAN_DIR" "${TSAN_TESTS[@]}"
fi
stamp "done"
exit $failed
