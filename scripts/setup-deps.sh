#!/usr/bin/env bash
# Installs every Debian package Esper needs to build, test and run. Idempotent and fast when
# everything is already present (no apt-get update then). Needs root or sudo.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git clang-format
  libzmq3-dev cppzmq-dev capnproto libcapnp-dev
  libboost-dev libyaml-cpp-dev libopenblas-dev libgloo-dev zlib1g-dev libssl-dev
  nlohmann-json3-dev libfmt-dev catch2 dataset-fashion-mnist python3 python3-zmq iproute2 procps
  patchelf libelf-dev
  # multi-node tests (tests/scripts): a real Slurm (controller, node daemon, munge) and Open MPI
  slurmctld slurmd slurm-client munge openmpi-bin
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup-deps: missing packages (${missing[*]}) and not root; install them or rerun as root" >&2
    exit 1
  fi
fi
echo "setup-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup-deps: done" >&2
