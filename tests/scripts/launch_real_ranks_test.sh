#!/usr/bin/env bash
# scripts/launch_cluster.sh with the real `esper`: launch_real_ranks_test.sh ESPER [SLOTS]
# SLOTS ranks (default 2) on this machine (--rsh local) train a small teacher task with
# checkpoints (Gloo on CPU; on a machine with SLOTS GPUs, one GPU per rank over NCCL); the last
# rank is killed with SIGKILL mid-run; the others must fail instead of hanging, the launcher must
# restart every rank from the newest checkpoint, and the restarted job must finish with identical
# seed-table digests on all ranks.
set -uo pipefail
esper=${1:?usage: launch_real_ranks_test.sh ESPER [SLOTS]}
slots=${2:-2}
max_steps=${MAX_STEPS:-6000}
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/real_ranks_lib.sh"
launcher="$here/../../scripts/launch_cluster.sh"
tmp="$(mktemp -d)"
trap 'pkill -KILL -f "kasmina --config $tmp/c.yaml" 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; tail -5 "$tmp/out.log" >&2; exit 1; }

echo "localhost slots=$slots" >"$tmp/hosts"
cat >"$tmp/c.yaml" <<YAML
run: {seed: 5, epochs: 0, max_steps: $max_steps, telemetry_interval_steps: 20, checkpoint_every_steps: 500}
data:
  dataset: teacher
  batch_size: 64
  teacher: {train_samples: 4096, test_samples: 512, features: 16, classes: 4, hidden: 32}
model: {hidden: [32, 32], activation: gelu, seeds_per_layer: 4}
YAML
"$launcher" --hostfile "$tmp/hosts" --rsh local --config "$tmp/c.yaml" --run-dir "$tmp/run" \
    --bus-port-base "$(free_port_base 4)" --esper "$esper" --max-restarts 1 --grace-s 3 >"$tmp/out.log" 2>&1 &
launcher_pid=$!
kill_rank_and_check "$launcher_pid" "$max_steps"
echo "PASS: restarted after a killed rank; final ${digests[0]}"
