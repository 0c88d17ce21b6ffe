# Sourced by the multi-node tests: two "nodes" as network namespaces joined by a veth pair, a
# stand-in `ssh` that runs a command in the namespace named by its host argument, and a real
# Slurm (munged, slurmctld and one slurmd per node) bound to the namespaces' addresses. Everything
# lives under $tmp and is stopped by cluster_cleanup. Needs: $tmp, skip(), fail().
#
#   cluster_netns NET           namespaces ${ns[0]} ${ns[1]} with 10.NET.0.1 and 10.NET.0.2
#   cluster_fake_ssh            $tmp/bin/ssh: `ssh [-o X] HOST CMD...` = ip netns exec HOST sh -c
#   cluster_slurm               munged + slurmctld (node n0) + slurmd n0 and n1; exports SLURM_CONF
#   in_ns0 CMD...               runs CMD in the first namespace (where sbatch reaches slurmctld)

ns=()
addr=()
cluster_pids=()

cluster_cleanup() {
    local p
    for p in "${cluster_pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${cluster_pids[@]}"; do wait "$p" 2>/dev/null; done
    [[ -f "$tmp/munge/pid" ]] && kill "$(cat "$tmp/munge/pid")" 2>/dev/null
    local n
    for n in "${ns[@]}"; do
        # Whatever a test left running in its namespaces (jobs, ranks) goes with them.
        for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        ip netns del "$n" 2>/dev/null
    done
}

cluster_netns() {
    local net=$1 tag=$$
    [[ $(id -u) == 0 ]] || skip "network namespaces need root"
    command -v ip >/dev/null || skip "no 'ip' command (iproute2)"
    ns=("esper_c${net}a_$tag" "esper_c${net}b_$tag")
    addr=("10.$net.0.1" "10.$net.0.2")
    ip netns add "${ns[0]}" 2>/dev/null || skip "cannot create network namespaces here"
    ip netns add "${ns[1]}" 2>/dev/null || skip "cannot create a second network namespace"
    ip link add "vc${net}a_$tag" type veth peer name "vc${net}b_$tag" 2>/dev/null ||
        skip "cannot create a veth pair"
    ip link set "vc${net}a_$tag" netns "${ns[0]}" && ip link set "vc${net}b_$tag" netns "${ns[1]}" ||
        skip "cannot move the veth ends"
    local i
    for i in 0 1; do
        local dev="vc${net}$([[ $i == 0 ]] && echo a || echo b)_$tag"
        ip -n "${ns[$i]}" addr add "${addr[$i]}/24" dev "$dev" &&
            ip -n "${ns[$i]}" link set "$dev" up && ip -n "${ns[$i]}" link set lo up ||
            fail "cannot configure ${ns[$i]}"
    done
}

cluster_fake_ssh() {
    mkdir -p "$tmp/bin"
    cat >"$tmp/bin/ssh" <<'SSH'
#!/usr/bin/env bash
# Test stand-in for ssh: the "host" is a network namespace of this machine. Like ssh, the remote
# command is the rest of the arguments joined by spaces, run by a shell.
while [[ "${1:-}" == -* ]]; do [[ "$1" == -o ]] && shift; shift; done
host="$1"
shift
exec ip netns exec "$host" sh -c "$*"
SSH
    chmod +x "$tmp/bin/ssh"
    export PATH="$tmp/bin:$PATH"
}

# nsenter switches only the network namespace; `ip netns exec` would also remount /sys, hiding
# the cgroup hierarchy slurmd initializes at startup.
in_ns() {
    local n="$1"
    shift
    nsenter --net="/var/run/netns/$n" "$@"
}
in_ns0() { in_ns "${ns[0]}" "$@"; }

cluster_slurm() {
    local c
    for c in slurmctld slurmd sbatch srun scontrol sinfo munged; do
        command -v "$c" >/dev/null ||
            skip "no $c (Debian: apt-get install slurmctld slurmd slurm-client munge)"
    done
    mkdir -p "$tmp/munge" "$tmp/slurm/state" "$tmp/slurm/spool"
    chmod 700 "$tmp/munge"
    dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 status=none
    chmod 600 "$tmp/munge/munge.key"
    munged --force --key-file="$tmp/munge/munge.key" --socket="$tmp/munge/sock" \
        --pid-file="$tmp/munge/pid" --log-file="$tmp/munge/log" --seed-file="$tmp/munge/seed" ||
        fail "munged did not start: $(tail -3 "$tmp/munge/log" 2>/dev/null)"
    local cpus
    cpus=$(nproc)
    export SLURM_CONF="$tmp/slurm/slurm.conf"
    cat >"$SLURM_CONF" <<CONF
ClusterName=esper
SlurmctldHost=$(hostname -s)(${addr[0]})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/munge/sock
StateSaveLocation=$tmp/slurm/state
SlurmdSpoolDir=$tmp/slurm/spool/%n
SlurmctldPidFile=$tmp/slurm/slurmctld.pid
SlurmdPidFile=$tmp/slurm/slurmd-%n.pid
SlurmctldLogFile=$tmp/slurm/slurmctld.log
SlurmdLogFile=$tmp/slurm/slurmd-%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=3
InactiveLimit=0
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=n0 NodeAddr=${addr[0]} CPUs=$cpus State=UNKNOWN
NodeName=n1 NodeAddr=${addr[1]} CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=n0,n1 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
    mkdir -p "$tmp/slurm/spool/n0" "$tmp/slurm/spool/n1"
    in_ns0 slurmctld -D -c -f "$SLURM_CONF" >"$tmp/slurm/slurmctld.out" 2>&1 &
    cluster_pids+=($!)
    in_ns "${ns[0]}" slurmd -D -N n0 -f "$SLURM_CONF" >"$tmp/slurm/slurmd-n0.out" 2>&1 &
    cluster_pids+=($!)
    in_ns "${ns[1]}" slurmd -D -N n1 -f "$SLURM_CONF" >"$tmp/slurm/slurmd-n1.out" 2>&1 &
    cluster_pids+=($!)
    local i
    for i in $(seq 1 100); do
        [[ $(in_ns0 timeout 5 sinfo -h -N -o '%T' 2>/dev/null | grep -c idle) == 2 ]] && return 0
        sleep 0.3
    done
    tail -5 "$tmp/slurm/slurmctld.log" "$tmp/slurm/slurmd-n0.log" "$tmp/slurm/slurmd-n1.log" >&2
    fail "slurm nodes did not come up: $(in_ns0 sinfo -N 2>&1)"
}
