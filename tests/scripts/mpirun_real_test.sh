#!/usr/bin/env bash
# `mpirun -np 2 esper kasmina` with Debian's Open MPI and the real `esper` (first argument): the
# ranks take rank, world and local rank from OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK (log line
# "source=openmpi") and meet through a broker's kv service. Rank 1 is killed after the step-500
# checkpoint; mpirun fails, and the job is rerun as docs/distributed.md shows (ESPER_ATTEMPT=1,
# --resume the newest checkpoint); both ranks finish with one seed-table digest. Exits 4
# (ctest: skipped) without mpirun.
set -uo pipefail
esper=${1:?usage: mpirun_real_test.sh ESPER}
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/real_ranks_lib.sh"
tmp="$(mktemp -d)"
broker_pid=""
trap '[[ -n "$broker_pid" ]] && kill "$broker_pid" 2>/dev/null; pkill -KILL -f "kasmina --config $tmp/c.yaml" 2>/dev/null; rm -rf "$tmp"' EXIT
skip() { echo "skipped: $*" >&2; exit 4; }
fail() { echo "FAIL: $*" >&2; tail -n 20 "$tmp"/*.log >&2; exit 1; }
command -v mpirun >/dev/null || skip "no mpirun (Debian: apt-get install openmpi-bin)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # CI runs as root
cat >"$tmp/c.yaml" <<'YAML'
run: {seed: 5, epochs: 0, max_steps: 3000, telemetry_interval_steps: 20, checkpoint_every_steps: 500, device: cpu}
data:
  dataset: teacher
  batch_size: 64
  teacher: {train_samples: 4096, test_samples: 512, features: 16, classes: 4, hidden: 32}
model: {hidden: [32, 32], activation: gelu, seeds_per_layer: 4}
YAML
base=$(free_port_base 3)
"$esper" broker --pub-port "$base" --sub-port $((base + 1)) --rpc-port $((base + 2)) \
    >"$tmp/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 50); do grep -q '^broker pub=' "$tmp/broker.log" && break; sleep 0.1; done
grep -q '^broker pub=' "$tmp/broker.log" || fail "broker did not start"
ranks() {  # ranks ATTEMPT [--resume DIR]
    local attempt=$1
    shift
    timeout 240 mpirun -np 2 -x ESPER_ATTEMPT="$attempt" "$esper" kasmina --config "$tmp/c.yaml" \
        --run-dir "$tmp/run" --run-id mpi --bus "tcp://127.0.0.1:$((base + 2))" \
        --bus-pub "tcp://127.0.0.1:$base" "$@" >"$tmp/attempt$attempt.log" 2>&1
}
ranks 0 &
job=$!
for _ in $(seq 1 600); do
    [[ -f "$tmp/run/checkpoints/500/manifest.bin" ]] && break
    sleep 0.1
done
[[ -f "$tmp/run/checkpoints/500/manifest.bin" ]] || fail "no checkpoint at step 500"
victim=""
for p in $(pgrep -f "kasmina --config $tmp/c.yaml"); do
    grep -qz '^OMPI_COMM_WORLD_RANK=1$' "/proc/$p/environ" 2>/dev/null && victim=$p
done
[[ -n "$victim" ]] || fail "no process with OMPI_COMM_WORLD_RANK=1"
kill -KILL "$victim"
wait "$job" && fail "mpirun exited 0 although rank 1 was killed"
grep -c "source=openmpi" "$tmp/attempt0.log" | grep -qx 2 || fail "ranks did not use Open MPI's variables"
ckpt="$(ls -d "$tmp"/run/checkpoints/*/ | sort -V | tail -1)"
ckpt="${ckpt%/}"
[[ -f "$ckpt/manifest.bin" ]] || fail "no complete checkpoint to resume from"
ranks 1 --resume "$ckpt" || fail "the rerun from $ckpt failed"
cat "$tmp/attempt1.log"
mapfile -t digests < <(grep -oE "step=3000 final digest=[0-9]+" "$tmp/attempt1.log" | sort -u)
[[ ${#digests[@]} == 1 ]] || fail "ranks ended with different digests: ${digests[*]:-none}"
[[ $(grep -c "step=3000 final digest=" "$tmp/attempt1.log") == 2 ]] || fail "not both ranks finished"
echo "PASS: mpirun -np 2, rank 1 killed, rerun from $ckpt; ${digests[0]}"
