#!/usr/bin/env bash
# Installs dependencies, configures and builds Esper into build/ (binaries in build/bin/).
# Extra arguments go to cmake's configure step, e.g. scripts/build.sh -DESPER_ENABLE_CUDA=OFF.
# Environment: BUILD_DIR (default build), JOBS (default: all cores), ESPER_WERROR (ON in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
WERROR=${ESPER_WERROR:-$([ -n "${CI:-}" ] && echo ON || echo OFF)}
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null 2>&1; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} -DESPER_WERROR="$WERROR" "$@" >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
