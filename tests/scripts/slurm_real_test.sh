#!/usr/bin/env bash
# scripts/slurm/esper.sbatch under a real Slurm (tests/scripts/cluster_lib.sh: munged, slurmctld
# and two slurmd, the nodes n0 and n1 being network namespaces with their own addresses) and the
# real `esper` (first argument): sbatch allocates both nodes, the script starts the broker and
# Tamiyo on n0 and one Gloo rank per node with srun --label; the rank on n1 is killed after the
# step-500 checkpoint, the step fails, the script reruns it from that checkpoint, and both ranks
# finish with one seed-table digest; report.html is written. ESPER_SECURE=1: the script makes the
# run's keys and every process talks CURVE (the plain bus under Slurm runs in
# docs_distributed_test.sh, the documented sbatch example). Exits 4 (ctest: skipped) where
# namespaces or the Slurm packages are missing.
set -uo pipefail
esper=${1:?usage: slurm_real_test.sh ESPER}
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tmp="$(mktemp -d /tmp/esper-slurm.XXXXXX)"
chmod 755 "$tmp"
skip() { echo "skipped: $*" >&2; exit 4; }
fail() {
    echo "FAIL: $*" >&2
    tail -n 30 "$tmp"/esper-*.out "$tmp/slurm/slurmctld.log" 2>/dev/null >&2
    exit 1
}
. "$here/cluster_lib.sh"
trap 'cluster_cleanup; rm -rf "$tmp"' EXIT
cluster_netns 79
cluster_slurm

cat >"$tmp/c.yaml" <<'YAML'
run: {seed: 5, epochs: 0, max_steps: 3000, telemetry_interval_steps: 20, checkpoint_every_steps: 500, device: cpu}
data:
  dataset: teacher
  batch_size: 64
  teacher: {train_samples: 4096, test_samples: 512, features: 16, classes: 4, hidden: 32}
model: {hidden: [32, 32], activation: gelu, seeds_per_layer: 4}
YAML
cd "$tmp"
in_ns0 env ESPER_BIN="$esper" ESPER_CONFIG="$tmp/c.yaml" ESPER_RUN_DIR="$tmp/run" \
    ESPER_RUN_ID=slurmtest ESPER_MAX_RESTARTS=1 ESPER_SECURE=1 ESPER_BUS_PORT_BASE=27555 \
    timeout 240 sbatch --wait --nodes=2 --ntasks-per-node=1 --output="$tmp/esper-%j.out" \
    "$repo/scripts/slurm/esper.sbatch" -- --seed 11 >"$tmp/sbatch.out" 2>&1 &
sbatch_pid=$!
for _ in $(seq 1 600); do
    [[ -f "$tmp/run/checkpoints/500/manifest.bin" ]] && break
    kill -0 "$sbatch_pid" 2>/dev/null || break
    sleep 0.1
done
[[ -f "$tmp/run/checkpoints/500/manifest.bin" ]] || fail "no checkpoint at step 500"
victim=""
for p in $(pgrep -f "kasmina .*--run-id slurmtest"); do
    [[ "$(ip netns identify "$p" 2>/dev/null)" == "${ns[1]}" ]] && victim=$p
done
[[ -n "$victim" ]] || fail "no rank running in ${ns[1]} (node n1)"
kill -KILL "$victim"
wait "$sbatch_pid"
rc=$?
out="$(ls "$tmp"/esper-*.out)"
cat "$out"
[[ $rc == 0 ]] || fail "sbatch --wait exited $rc"
grep -q "broker and tamiyo are up" "$out" || fail "the script did not check broker and tamiyo"
grep -q "restarting (.*/checkpoints/" "$out" || fail "no restart from a checkpoint"
grep -qE "^1: .*rank=1 world=2 " "$out" || fail "no labelled output of task 1"
grep -q "nodes=n0=${addr[0]},n1=${addr[1]}" "$out" || fail "node addresses not from Slurm"
grep -q "rendezvous=broker tcp://${addr[0]}:27557" "$out" || fail "ranks did not meet at n0's broker"
mapfile -t digests < <(grep -oE "step=3000 final digest=[0-9]+" "$out" | sort -u)
[[ ${#digests[@]} == 1 ]] || fail "ranks ended with different digests: ${digests[*]:-none}"
[[ $(grep -cE "^[01]: .*step=3000 final digest=" "$out") -ge 2 ]] || fail "not every rank finished"
[[ -f "$tmp/run/report.html" ]] || fail "no report.html"
[[ $(stat -c %a "$tmp/run/keys/agent.secret") == 600 ]] || fail "ESPER_SECURE=1 made no agent key"
grep -q "security=curve" "$tmp/run/broker.log" || fail "ESPER_SECURE=1 did not secure the broker"
echo "PASS: sbatch on two Slurm nodes, a killed rank restarted from the checkpoint; ${digests[0]}"
