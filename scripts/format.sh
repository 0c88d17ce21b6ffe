#!/usr/bin/env bash
# format.sh [--check]: formats every C, C++ and CUDA source of the project with the repo's
# .clang-format (Debian's clang-format 14). --check changes nothing and fails, naming each file
# that differs, when any would change (scripts/test.sh runs it first).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format >/dev/null 2>&1; then
  echo "format.sh: clang-format not found (scripts/setup-deps.sh installs it)" >&2
  exit 1
fi
list_sources() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -- '*.h' '*.cpp' '*.cu' '*.cuh' '*.c'
  else
    find core kernels bus kasmina tamiyo agents tests bench examples \
      -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.c'
  fi
}
mapfile -t files < <(list_sources)
if [ "${1:-}" = "--check" ]; then
  bad=()
  for f in "${files[@]}"; do
    clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
  done
  if [ ${#bad[@]} -gt 0 ]; then
    printf 'format.sh: not formatted (run scripts/format.sh): %s\n' "${bad[@]}" >&2
    exit 1
  fi
  echo "format.sh: ${#files[@]} files formatted"
else
  clang-format -i "${files[@]}"
fi
