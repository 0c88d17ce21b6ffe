#!/usr/bin/env bash
# Installs dependencies, builds, and runs the test suite (ctest). The exit code is ctest's.
# [gpu] tests report "Skipped" without a CUDA device; hidden [.slow]/[.integration] tests are
# not part of this run except those registered explicitly (see tests/integration).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh "$@"
BUILD_DIR=${BUILD_DIR:-build}
cd "$BUILD_DIR"
exec ctest --output-on-failure -j "${JOBS:-$(nproc)}"
