#!/usr/bin/env bash
# Installs dependencies, checks the formatting of every source (scripts/format.sh --check),
# builds, and runs the test suite (ctest). The exit code is the format check's or ctest's.
# [gpu] tests report "Skipped" without a CUDA device; hidden [.slow]/[.integration] tests are
# not part of this run except those registered explicitly (see tests/integration).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-deps.sh
scripts/format.sh --check
scripts/build.sh "$@"
BUILD_DIR=${BUILD_DIR:-build}
cd "$BUILD_DIR"
exec ctest --output-on-failure -j "${JOBS:-$(nproc)}"
