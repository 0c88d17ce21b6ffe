#!/usr/bin/env bash
# Checks scripts/launch_cluster.sh without a cluster. Usage: launch_cluster_test.sh CASE
#   dry_run      a 2-host hostfile gives the broker, tamiyo and one kasmina per slot with the
#                right RANK/LOCAL_RANK/WORLD_SIZE values
#   bad_hostfile a bad line is refused with exit 2, naming file:line
#   restart      --rsh local with a fake esper: a failed rank stops everyone and the job
#                restarts from the newest checkpoint; with no restarts left it exits 1
#   netns        two network namespaces joined by a veth pair as hosts (needs root and ip);
#                exits 4 (ctest: skipped) with a message when namespaces cannot be made.
#                With PROBE (esper_gloo_probe) as second argument the ranks also all-reduce
#                over Gloo across the veth link.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
launcher="$here/../../scripts/launch_cluster.sh"
fake="$here/fake_esper.sh"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

case "${1:-}" in
dry_run)
    printf '# cluster\nnode-a slots=2 addr=10.9.0.1\n\n  node-b   slots=3   # gpu box\n' >"$tmp/hosts"
    out="$("$launcher" --hostfile "$tmp/hosts" --dry-run --run-id t --config cfg.yaml)" ||
        fail "dry run exited $?"
    echo "$out"
    [[ $(grep -c ' kasmina ' <<<"$out") == 5 ]] || fail "expected 5 kasmina commands"
    [[ $(grep -c ' broker ' <<<"$out") == 1 ]] || fail "expected 1 broker command"
    [[ $(grep -c ' tamiyo ' <<<"$out") == 1 ]] || fail "expected 1 tamiyo command"
    for r in 0 1 2 3 4; do
        line="$(grep " RANK=$r " <<<"$out")" || fail "no command with RANK=$r"
        grep -q "WORLD_SIZE=5 " <<<"$line" || fail "RANK=$r: WORLD_SIZE is not 5"
        grep -q "MASTER_ADDR=10.9.0.1 " <<<"$line" || fail "RANK=$r: MASTER_ADDR is not host 0's addr"
        grep -q -- "--config cfg.yaml" <<<"$line" || fail "RANK=$r: --config missing"
        grep -q -- "--bus tcp://10.9.0.1:5557" <<<"$line" || fail "RANK=$r: --bus not the rpc port"
    done
    grep " RANK=1 " <<<"$out" | grep -q "node-a .*LOCAL_RANK=1 " || fail "rank 1 not local 1 on node-a"
    grep " RANK=2 " <<<"$out" | grep -q "node-b .*LOCAL_RANK=0 " || fail "rank 2 not local 0 on node-b"
    grep " RANK=4 " <<<"$out" | grep -q "node-b .*LOCAL_RANK=2 " || fail "rank 4 not local 2 on node-b"
    grep ' broker ' <<<"$out" | grep -q "node-a" || fail "broker not on the first host"
    out="$("$launcher" --hostfile "$tmp/hosts" --dry-run --run-id t --rsh 'ip netns exec')"
    grep -q "^ip netns exec node-b sh -c" <<<"$out" || fail "--rsh did not replace ssh"
    # No --config: the ranks run esper's embedded config; flags after -- reach every rank.
    grep ' kasmina ' <<<"$out" | grep -q -- "--config" && fail "a --config appeared from nowhere"
    out="$("$launcher" --hostfile "$tmp/hosts" --dry-run --run-id t --secure -- --epochs 3 --seed 7)"
    [[ $(grep ' kasmina ' <<<"$out" | grep -c -- "--epochs 3 --seed 7") == 5 ]] ||
        fail "flags after -- did not reach every rank"
    [[ $(grep -c -- "--keys runs/t/keys" <<<"$out") == 7 ]] || fail "--secure: not every process has --keys"
    grep ' broker ' <<<"$out" | grep -q -- "--insecure" && fail "--secure still binds --insecure"
    grep -q "keygen --out runs/t/keys --all" <<<"$out" || fail "--secure: no keygen step shown"
    grep -q "report runs/t" <<<"$out" || fail "the report step is not shown"
    ;;
bad_hostfile)
    printf 'node-a slots=2\n# fine\nnode-b slots=two\n' >"$tmp/hosts"
    err="$("$launcher" --hostfile "$tmp/hosts" --dry-run 2>&1 >/dev/null)"
    rc=$?
    echo "$err"
    [[ $rc == 2 ]] || fail "exit status $rc, expected 2"
    grep -q "$tmp/hosts:3" <<<"$err" || fail "error does not name line 3"
    printf 'node-a slots=1 colour=blue\n' >"$tmp/hosts"
    err="$("$launcher" --hostfile "$tmp/hosts" --dry-run 2>&1 >/dev/null)"
    [[ $? == 2 ]] && grep -q "hosts:1: unknown field 'colour=blue'" <<<"$err" || fail "unknown field: $err"
    printf 'node-a\nnode-a slots=2\n' >"$tmp/hosts"
    err="$("$launcher" --hostfile "$tmp/hosts" --dry-run 2>&1 >/dev/null)"
    [[ $? == 2 ]] && grep -q "hosts:2: host 'node-a' is listed twice" <<<"$err" || fail "dup: $err"
    printf '# nothing\n\n' >"$tmp/hosts"
    "$launcher" --hostfile "$tmp/hosts" --dry-run >/dev/null 2>&1
    [[ $? == 2 ]] || fail "empty hostfile accepted"
    ;;
restart)
    printf 'hostA slots=2\nhostB slots=1\n' >"$tmp/hosts"
    start=$SECONDS
    FAKE_FAIL_RANK=2 "$launcher" --hostfile "$tmp/hosts" --rsh local --esper "$fake" \
        --run-dir "$tmp/run" --run-id r --max-restarts 1 --grace-s 2 --bus-port-base 20000
    rc=$?
    cat "$tmp/run/started.txt" >&2
    [[ $rc == 0 ]] || fail "launcher exited $rc, expected 0 after one restart"
    (( SECONDS - start < 60 )) || fail "took $((SECONDS - start)) s"
    [[ $(grep -c "attempt=1 resume=$tmp/run/checkpoints/step-10" "$tmp/run/started.txt") == 3 ]] ||
        fail "not every rank restarted with --resume of the newest checkpoint"
    [[ $(wc -l <"$tmp/run/finished.txt") == 3 ]] || fail "not every rank finished"
    ls "$tmp/run/launcher/attempt-1/rank2.log" >/dev/null || fail "no logs for attempt 1"
    # With no restart left the same failure ends the launcher with status 1, no hang.
    rm -rf "$tmp/run"
    FAKE_FAIL_RANK=1 "$launcher" --hostfile "$tmp/hosts" --rsh local --esper "$fake" \
        --run-dir "$tmp/run" --run-id r --grace-s 2 --bus-port-base 20010
    rc=$?
    [[ $rc == 1 ]] || fail "launcher exited $rc, expected 1 with --max-restarts 0"
    [[ ! -e "$tmp/run/finished.txt" ]] || fail "a rank finished although the job failed"
    ;;
netns)
    skip() { echo "skipped: $*" >&2; exit 4; }
    [[ $(id -u) == 0 ]] || skip "network namespaces need root"
    command -v ip >/dev/null || skip "no 'ip' command (iproute2)"
    ns0="esper_t0_$$" ns1="esper_t1_$$"
    cleanup() { ip netns del "$ns0" 2>/dev/null; ip netns del "$ns1" 2>/dev/null; rm -rf "$tmp"; }
    trap cleanup EXIT
    ip netns add "$ns0" 2>/dev/null || skip "cannot create network namespaces here"
    ip netns add "$ns1" 2>/dev/null || skip "cannot create a second network namespace"
    ip link add "ve0_$$" type veth peer name "ve1_$$" 2>/dev/null || skip "cannot create a veth pair"
    ip link set "ve0_$$" netns "$ns0" && ip link set "ve1_$$" netns "$ns1" || skip "cannot move veth"
    ip -n "$ns0" addr add 10.77.0.1/24 dev "ve0_$$" && ip -n "$ns0" link set "ve0_$$" up &&
        ip -n "$ns0" link set lo up || fail "cannot configure $ns0"
    ip -n "$ns1" addr add 10.77.0.2/24 dev "ve1_$$" && ip -n "$ns1" link set "ve1_$$" up &&
        ip -n "$ns1" link set lo up || fail "cannot configure $ns1"
    printf '%s slots=1 addr=10.77.0.1\n%s slots=2 addr=10.77.0.2\n' "$ns0" "$ns1" >"$tmp/hosts"
    probe="${2:-}"
    FAKE_GLOO_PROBE="$probe" ESPER_KV_DIR="$tmp/kv" \
    FAKE_NET=1 FAKE_FAIL_RANK=1 "$launcher" --hostfile "$tmp/hosts" --rsh 'ip netns exec' \
        --esper "$fake" \
        --run-dir "$tmp/run" --run-id n --max-restarts 1 --grace-s 2
    rc=$?
    cat "$tmp/run/started.txt" >&2
    [[ $rc == 0 ]] || fail "launcher exited $rc over namespaces"
    [[ $(grep -c "attempt=1 resume=$tmp/run/checkpoints/step-10" "$tmp/run/started.txt") == 3 ]] ||
        fail "ranks in namespaces did not restart from the checkpoint"
    cat "$tmp/run/net.txt" >&2
    [[ $(grep -c "via=10.77.0.2" "$tmp/run/net.txt") == 2 ]] ||
        fail "rank 0 in $ns0 did not hear from both ranks in $ns1 over the veth link"
    if [[ -n "$probe" ]]; then
        cat "$tmp/run/gloo.txt" >&2
        [[ $(grep -c "world=3 node=10.77.0.[12] leader=10.77.0.1 sum=ok" "$tmp/run/gloo.txt") == 3 ]] ||
            fail "gloo all-reduce across the namespaces did not succeed on all 3 ranks"
    fi
    ;;
*)
    echo "usage: $0 dry_run|bad_hostfile|restart|netns" >&2
    exit 2
    ;;
esac
echo "ok: $1"
