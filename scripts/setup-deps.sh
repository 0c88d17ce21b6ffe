#!/usr/bin/env bash
# Installs every Debian package Esper needs to build, test and run. Idempotent and fast when
# everything is already present (no apt-get update then). Needs root or sudo.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git clang-format
  libzmq3-dev cppzmq-dev capnproto libcapnp-dev
  libboost-dev libyaml-cpp-dev libopenblas-dev libgloo-dev zlib1g-dev libssl-dev
  nlohmann-json3-dev libfmt-dev catch2 dataset-fashion-mnist python3 python3-yaml python3-zmq iproute2 procps
  patchelf libelf-dev bible-kjv
  # multi-node tests (tests/scripts): a real Slurm (controller, node daemon, munge) and Open MPI
  slurmctld slurmd slurm-client munge openmpi-bin
  # the dashboard's tests: a real browser (headless, DevTools protocol) and Prometheus' parser
  chromium python3-websocket python3-prometheus-client
  clang libclang-rt-14-dev  # scripts/sanitize.sh and scripts/fuzz.sh (ASan/UBSan/TSan, libFuzzer)
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# The default text corpus of the transformer host (`data.dataset: text`): the King James Bible
# from Debian's bible-kjv, extracted once to plain text (verse numbers dropped).
CORPUS=/usr/local/share/esper/kjv.txt
extract_corpus() {
  [ -s "$CORPUS" ] && return 0
  command -v bible >/dev/null 2>&1 || return 0
  $SUDO mkdir -p "$(dirname "$CORPUS")"
  bible "gen1:1-rev22:21" | sed -E 's/^ +[0-9]+ //' | $SUDO tee "$CORPUS.tmp" >/dev/null
  $SUDO mv "$CORPUS.tmp" "$CORPUS"
  echo "setup-deps: extracted the default text corpus to $CORPUS" >&2
}

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

if [ ${#missing[@]} -eq 0 ]; then
  extract_corpus
  exit 0
fi

if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
  echo "setup-deps: missing packages (${missing[*]}) and not root; install them or rerun as root" >&2
  exit 1
fi
echo "setup-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
extract_corpus
echo "setup-deps: done" >&2
