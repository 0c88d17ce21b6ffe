#!/usr/bin/env bash
# Runs every command of docs/distributed.md and docs/bus.md that the docs show in a ```sh block,
# verbatim, as a user would from the top of a checkout with build/bin on PATH: each block is one
# `bash -e` script, run in the first of two network-namespace "hosts" (cluster_lib.sh) where a
# real Slurm runs and a stand-in `ssh` enters the namespaces; `hosts` names them. A block that
# submits a batch job waits for it to finish. Any block that fails fails the test (a doc example
# that does not run is a bug). Usage: docs_distributed_test.sh ESPER (the built binary; its
# directory's parent is the build directory). Exits 4 (ctest: skipped) without namespaces.
set -uo pipefail
esper=${1:?usage: docs_distributed_test.sh ESPER}
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="$(cd "$(dirname "$esper")/.." && pwd)"
tmp="$(mktemp -d /tmp/esper-docs.XXXXXX)"
chmod 755 "$tmp"
skip() { echo "skipped: $*" >&2; exit 4; }
fail() { echo "FAIL: $*" >&2; exit 1; }
. "$here/cluster_lib.sh"
trap 'cluster_cleanup; rm -rf "$tmp"' EXIT
command -v mpirun >/dev/null || skip "no mpirun (Debian: apt-get install openmpi-bin)"
cluster_netns 76
cluster_fake_ssh
cluster_slurm
export PATH="$build/bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # CI runs as root

# Stops what a block left running in the namespaces (brokers, ranks), never the Slurm daemons.
stop_leftovers() {
    local n p
    for n in "${ns[@]}"; do
        for p in $(ip netns pids "$n" 2>/dev/null); do
            tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qE '(^| |/)esper ' &&
                kill -KILL "$p" 2>/dev/null
        done
    done
    sleep 0.3
}

# Waits for every batch job a block submitted; fails on one that did not complete.
wait_jobs() {
    local log="$1" id state
    for id in $(sed -n 's/^Submitted batch job \([0-9]*\)$/\1/p' "$log"); do
        for _ in $(seq 1 900); do
            state="$(in_ns0 scontrol show job "$id" -o 2>/dev/null | grep -oE 'JobState=[A-Z_]+')"
            case "$state" in
                JobState=COMPLETED) break ;;
                JobState=PENDING|JobState=RUNNING|JobState=CONFIGURING|JobState=COMPLETING|"") sleep 0.2 ;;
                *) tail -n 30 esper-"$id".out >&2; fail "batch job $id ended $state" ;;
            esac
        done
        [[ "$state" == JobState=COMPLETED ]] || fail "batch job $id did not finish ($state)"
        grep -q "all ranks finished" "esper-$id.out" || fail "batch job $id: ranks did not finish"
        echo "  batch job $id completed"
    done
}

blocks=0
for doc in docs/distributed.md docs/bus.md; do
    work="$tmp/work-$(basename "$doc" .md)"
    mkdir -p "$work"
    ln -s "$repo/scripts" "$work/scripts"
    ln -s "$repo/examples" "$work/examples"
    ln -s "$repo/docs" "$work/docs"
    ln -s "$build" "$work/build"
    printf '%s slots=1 addr=%s\n%s slots=1 addr=%s\n' "${ns[0]}" "${addr[0]}" "${ns[1]}" \
        "${addr[1]}" >"$work/hosts"
    # The ```sh blocks, one file each.
    n=$(awk -v dir="$work" '
        /^```sh$/ { inside = 1; count++; file = dir "/block" count ".sh"; next }
        /^```/ { inside = 0; next }
        inside { print > file }
        END { print count + 0 }' "$repo/$doc")
    [[ $n -gt 0 ]] || fail "$doc has no sh blocks"
    for i in $(seq 1 "$n"); do
        echo "== $doc block $i"
        cat "$work/block$i.sh"
        (cd "$work" && in_ns0 timeout 300 bash -e "block$i.sh") >"$work/block$i.log" 2>&1
        rc=$?
        if ((rc != 0)); then
            tail -n 40 "$work/block$i.log" >&2
            fail "$doc block $i exited $rc"
        fi
        (cd "$work" && wait_jobs "block$i.log")
        stop_leftovers
        blocks=$((blocks + 1))
    done
done
# What the examples claim, checked on what they left behind.
w="$tmp/work-distributed"
[[ -f "$w/esper-bundle.tar.gz" && -x "$w/node/esper-bundle/bin/esper" ]] || fail "no bundle"
[[ -f "$w/runs/exp1/report.html" ]] || fail "launch_cluster.sh wrote no report"
grep -q "^\[${ns[1]}:rank1\] " "$w/block2.log" || fail "rank output is not labelled [host:rank]"
[[ -f "$w/runs/exp2/keys/agent.secret" ]] || fail "--secure made no keys"
grep -rq "security=curve" "$w/runs/exp2/launcher" || fail "--secure did not secure the broker"
grep -q "source=openmpi" "$w/block4.log" || fail "mpirun ranks did not read Open MPI's variables"
echo "PASS: $blocks doc blocks ran"
