#!/usr/bin/env bash
# scripts/launch_cluster.sh across two "hosts" made as network namespaces joined by a veth pair,
# with the real `esper` (first argument): the broker and Tamiyo in the first namespace, one Gloo
# rank in each, so bus, rendezvous and Gloo traffic cross the veth link. The rank in the second
# namespace is killed after the step-500 checkpoint; the launcher must restart both ranks from it
# and the job must finish with one seed-table digest. Exits 4 (ctest: skipped) where namespaces
# cannot be made.
set -uo pipefail
esper=${1:?usage: launch_netns_real_test.sh ESPER}
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/real_ranks_lib.sh"
launcher="$here/../../scripts/launch_cluster.sh"
tmp="$(mktemp -d)"
skip() { echo "skipped: $*" >&2; exit 4; }
fail() { echo "FAIL: $*" >&2; tail -8 "$tmp/out.log" >&2; exit 1; }
[[ $(id -u) == 0 ]] || skip "network namespaces need root"
command -v ip >/dev/null || skip "no 'ip' command (iproute2)"
ns0="esper_r0_$$" ns1="esper_r1_$$"
cleanup() {
    pkill -KILL -f "kasmina --config $tmp/c.yaml" 2>/dev/null
    ip netns del "$ns0" 2>/dev/null; ip netns del "$ns1" 2>/dev/null; rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$ns0" 2>/dev/null || skip "cannot create network namespaces here"
ip netns add "$ns1" 2>/dev/null || skip "cannot create a second network namespace"
ip link add "vr0_$$" type veth peer name "vr1_$$" 2>/dev/null || skip "cannot create a veth pair"
ip link set "vr0_$$" netns "$ns0" && ip link set "vr1_$$" netns "$ns1" || skip "cannot move veth"
ip -n "$ns0" addr add 10.78.0.1/24 dev "vr0_$$" && ip -n "$ns0" link set "vr0_$$" up &&
    ip -n "$ns0" link set lo up || fail "cannot configure $ns0"
ip -n "$ns1" addr add 10.78.0.2/24 dev "vr1_$$" && ip -n "$ns1" link set "vr1_$$" up &&
    ip -n "$ns1" link set lo up || fail "cannot configure $ns1"
printf '%s slots=1 addr=10.78.0.1\n%s slots=1 addr=10.78.0.2\n' "$ns0" "$ns1" >"$tmp/hosts"
cat >"$tmp/c.yaml" <<'YAML'
run: {seed: 5, epochs: 0, max_steps: 6000, telemetry_interval_steps: 20, checkpoint_every_steps: 500, device: cpu}
data:
  dataset: teacher
  batch_size: 64
  teacher: {train_samples: 4096, test_samples: 512, features: 16, classes: 4, hidden: 32}
model: {hidden: [32, 32], activation: gelu, seeds_per_layer: 4}
YAML
"$launcher" --hostfile "$tmp/hosts" --rsh 'ip netns exec' --config "$tmp/c.yaml" \
    --run-dir "$tmp/run" --esper "$esper" --max-restarts 1 --grace-s 3 >"$tmp/out.log" 2>&1 &
launcher_pid=$!
kill_rank_and_check "$launcher_pid" 6000
grep -rq "10.78.0.1" "$tmp/run/launcher" || fail "ranks did not use the first namespace's address"
echo "PASS: two namespaces, a killed rank restarted; final ${digests[0]}"
