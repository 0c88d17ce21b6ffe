#!/usr/bin/env bash
# The main job: installs dependencies, builds, and runs `esper run` on its embedded default
# (Fashion-MNIST, broker + Tamiyo + Kasmina on this machine). Arguments go to `esper run`,
# e.g. scripts/run.sh --epochs 1 --run-dir runs/demo. See `build/bin/esper run --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh >&2
exec build/bin/esper run "$@"
