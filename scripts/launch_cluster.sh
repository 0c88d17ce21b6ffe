#!/usr/bin/env bash
# Launches one Esper job on a cluster described by an mpirun-style hostfile (`host slots=N`):
# the broker and Tamiyo on the first host, one `esper kasmina` per slot everywhere, each with
# RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set, started through an rsh agent (ssh by
# default; `--rsh 'ip netns exec'` makes "hosts" network namespaces). It watches the ranks; when
# one fails it stops every process and restarts the job from the newest checkpoint
# (`--resume DIR`) up to --max-restarts times. Every process's output is echoed with a
# `[host:name]` label and kept in RUN_DIR/launcher/attempt-N/<name>.log; at the end the run's
# report.html is written on the first host. Arguments after `--` go to every `esper kasmina`.
# `--secure` makes a key set (esper keygen) and runs the bus on CURVE. Run with --help for flags
# and exit codes; docs/distributed.md explains ports, addresses and the failure model.
set -uo pipefail

usage() {
    cat <<'EOF'
usage: scripts/launch_cluster.sh --hostfile FILE [options] [-- KASMINA_FLAGS...]

  --hostfile FILE       lines "host [slots=N] [addr=IP]"; '#' starts a comment; slots default 1;
                        addr is the address other hosts use to reach this one (default: host)
  --config FILE         run config passed to every kasmina and to tamiyo (default: the config
                        embedded in esper, examples/fashion_mnist.yaml)
  --run-dir DIR         run directory (default runs/<run-id>); checkpoints in DIR/checkpoints
  --run-id ID           run id (default cluster-<date>-<time>)
  --dry-run             print every command that would run, then exit 0
  --rsh CMD             remote-shell agent (default "ssh -o BatchMode=yes"); "local" runs
                        everything on this machine and ignores host names
  --max-restarts K      restarts after a rank failure (default 0)
  --bus-port-base N     broker ports N (pub), N+1 (sub), N+2 (rpc) on the first host (default 5555)
  --master-port P       rendezvous port on the first host (default bus-port-base + 3)
  --policy P            Tamiyo policy (default heuristic)
  --esper PATH          esper binary on the nodes (default: this checkout's build/bin/esper,
                        or the bin/esper of a scripts/bundle.sh tarball unpacked on every node)
  --grace-s S           seconds between SIGTERM and SIGKILL when stopping (default 10)
  --secure              CURVE on the bus: keys made in RUN_DIR/keys on the first host (broker.pub
                        and agent.secret copied to the others); the broker binds all interfaces
                        without --insecure; tools then need --keys RUN_DIR/keys
  --quiet               do not echo the processes' output (it is still in the logs)
  -h, --help            this text
  -- FLAGS...           passed to every `esper kasmina`, e.g. -- --epochs 3 --seed 7

exit status: 0 every rank finished; 1 the job failed and no restart was left; 2 usage or
hostfile error; 3 a process could not be started; 130 interrupted (everything was stopped).
EOF
}

die_usage() {
    echo "launch_cluster.sh: $*" >&2
    echo "run 'scripts/launch_cluster.sh --help' for usage" >&2
    exit 2
}

# ---- flags ----
hostfile=""
config=""
run_dir=""
run_id=""
dry_run=0
rsh="ssh -o BatchMode=yes"
max_restarts=0
bus_port_base=5555
master_port=""
policy="heuristic"
esper=""
grace_s=10
secure=0
quiet=0
kasmina_extra=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die_usage "$1 needs a value"; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --hostfile) need_value "$@"; hostfile="$2"; shift 2 ;;
        --config) need_value "$@"; config="$2"; shift 2 ;;
        --run-dir) need_value "$@"; run_dir="$2"; shift 2 ;;
        --run-id) need_value "$@"; run_id="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        --rsh) need_value "$@"; rsh="$2"; shift 2 ;;
        --max-restarts) need_value "$@"; max_restarts="$2"; shift 2 ;;
        --bus-port-base) need_value "$@"; bus_port_base="$2"; shift 2 ;;
        --master-port) need_value "$@"; master_port="$2"; shift 2 ;;
        --policy) need_value "$@"; policy="$2"; shift 2 ;;
        --esper) need_value "$@"; esper="$2"; shift 2 ;;
        --grace-s) need_value "$@"; grace_s="$2"; shift 2 ;;
        --secure) secure=1; shift ;;
        --quiet) quiet=1; shift ;;
        --) shift; kasmina_extra=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) die_usage "unknown argument '$1'" ;;
    esac
done

[[ -n "$hostfile" ]] || die_usage "--hostfile is required"
[[ -r "$hostfile" ]] || die_usage "--hostfile $hostfile: cannot read the file"
is_uint "$max_restarts" || die_usage "--max-restarts '$max_restarts': not a non-negative integer"
is_uint "$grace_s" || die_usage "--grace-s '$grace_s': not a non-negative integer"
is_uint "$bus_port_base" && (( bus_port_base >= 1 && bus_port_base <= 65530 )) ||
    die_usage "--bus-port-base '$bus_port_base': must be an integer in [1, 65530]"
[[ -n "$master_port" ]] || master_port=$((bus_port_base + 3))
is_uint "$master_port" && (( master_port >= 1 && master_port <= 65535 )) ||
    die_usage "--master-port '$master_port': must be an integer in [1, 65535]"
if [[ -n "$config" && $dry_run -eq 0 && ! -r "$config" ]]; then
    die_usage "--config $config: cannot read the file"
fi
[[ -n "$run_id" ]] || run_id="cluster-$(date +%Y%m%d-%H%M%S)"
[[ "$run_id" =~ ^[A-Za-z0-9._-]+$ ]] || die_usage "--run-id '$run_id': use letters, digits, . _ -"
[[ -n "$run_dir" ]] || run_dir="runs/$run_id"
keys_dir="$run_dir/keys"
if [[ -z "$esper" ]]; then
    esper="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/bin/esper"
fi

# ---- hostfile ----
hosts=()
slots=()
addrs=()
lineno=0
while IFS= read -r raw || [[ -n "$raw" ]]; do
    lineno=$((lineno + 1))
    line="${raw%%#*}"
    read -r -a words <<<"$line"
    [[ ${#words[@]} -eq 0 ]] && continue
    where="hostfile $hostfile:$lineno"
    host="${words[0]}"
    [[ "$host" =~ ^[A-Za-z0-9._:-]+$ && "$host" != *=* ]] ||
        die_usage "$where: '$host' is not a host name (expected 'host slots=N')"
    n=1
    addr="$host"
    for word in "${words[@]:1}"; do
        case "$word" in
            slots=*|max_slots=*)
                value="${word#*=}"
                is_uint "$value" && (( value >= 1 && value <= 1024 )) ||
                    die_usage "$where: '$word': slots must be an integer in [1, 1024]"
                [[ "$word" == slots=* ]] && n="$value" ;;
            addr=*)
                addr="${word#addr=}"
                [[ "$addr" =~ ^[A-Za-z0-9._:-]+$ ]] || die_usage "$where: '$word': bad address" ;;
            *) die_usage "$where: unknown field '$word' (expected 'host slots=N [addr=IP]')" ;;
        esac
    done
    for existing in "${hosts[@]}"; do
        [[ "$existing" == "$host" ]] && die_usage "$where: host '$host' is listed twice"
    done
    hosts+=("$host")
    slots+=("$n")
    addrs+=("$addr")
done <"$hostfile"
[[ ${#hosts[@]} -gt 0 ]] || die_usage "hostfile $hostfile: no hosts"

world=0
for n in "${slots[@]}"; do world=$((world + n)); done
first_host="${hosts[0]}"
first_addr="${addrs[0]}"
pub_ep="tcp://$first_addr:$bus_port_base"
sub_ep="tcp://$first_addr:$((bus_port_base + 1))"
rpc_ep="tcp://$first_addr:$((bus_port_base + 2))"

# ---- building commands ----
read -r -a rsh_words <<<"$rsh"
rsh_is_ssh=0
[[ "$(basename "${rsh_words[0]}")" == ssh ]] && rsh_is_ssh=1

# Prints the argv that starts "$@" (already env-prefixed) on host $1. The wrapper echoes the
# remote pid first, so the launcher can later stop exactly that process on that host.
# ssh joins its arguments into one string for the remote shell, so it gets one quoted string;
# exec-style agents (ip netns exec, local) get an argv.
remote_argv() {
    local host="$1"
    shift
    local wrapper='echo esper-pid=$$; exec "$@"'
    local -a inner=(sh -c "$wrapper" esper-launch "$@")
    if [[ "$rsh" == local ]]; then
        printf '%s\0' "${inner[@]}"
    elif (( rsh_is_ssh )); then
        local quoted
        quoted="$(printf '%q ' "${inner[@]}")"
        printf '%s\0' "${rsh_words[@]}" "$host" "${quoted% }"
    else
        printf '%s\0' "${rsh_words[@]}" "$host" "${inner[@]}"
    fi
}

# Fills the global arrays names[], targets[] and cmds[] (NUL-joined argv) for one attempt.
build_commands() {
    local resume="$1" attempt="$2"
    names=()
    targets=()
    cmds=()
    local -a common_env=(ESPER_RUN_ID="$run_id" ESPER_ATTEMPT="$attempt")
    [[ -n "${ESPER_LOG:-}" ]] && common_env+=(ESPER_LOG="$ESPER_LOG")
    local -a bind_args=(--bind 0.0.0.0 --insecure) key_args=() config_args=()
    if (( secure )); then
        bind_args=(--bind 0.0.0.0)
        key_args=(--keys "$keys_dir")
    fi
    [[ -n "$config" ]] && config_args=(--config "$config")
    names+=(broker)
    targets+=("$first_host")
    cmds+=("$(remote_argv "$first_host" env "${common_env[@]}" "$esper" broker \
        "${bind_args[@]}" "${key_args[@]}" --pub-port "$bus_port_base" \
        --sub-port "$((bus_port_base + 1))" --rpc-port "$((bus_port_base + 2))" | tr '\0' '\1')")
    names+=(tamiyo)
    targets+=("$first_host")
    cmds+=("$(remote_argv "$first_host" env "${common_env[@]}" "$esper" tamiyo \
        --bus-pub "$pub_ep" --bus-sub "$sub_ep" --bus "$rpc_ep" --run-id "$run_id" \
        --policy "$policy" --run-dir "$run_dir" "${config_args[@]}" "${key_args[@]}" |
        tr '\0' '\1')")
    local rank=0 h local_rank
    for h in "${!hosts[@]}"; do
        for ((local_rank = 0; local_rank < slots[h]; local_rank++)); do
            local -a kargs=("$esper" kasmina "${config_args[@]}")
            kargs+=(--run-dir "$run_dir" --run-id "$run_id" --bus "$rpc_ep" --bus-pub "$pub_ep"
                --bus-sub "$sub_ep" "${key_args[@]}")
            [[ -n "$resume" ]] && kargs+=(--resume "$resume")
            kargs+=("${kasmina_extra[@]}")
            names+=("rank$rank")
            targets+=("${hosts[h]}")
            cmds+=("$(remote_argv "${hosts[h]}" env "${common_env[@]}" RANK="$rank" \
                WORLD_SIZE="$world" LOCAL_RANK="$local_rank" LOCAL_WORLD_SIZE="${slots[h]}" \
                MASTER_ADDR="$first_addr" MASTER_PORT="$master_port" \
                ESPER_NODE_ADDR="${addrs[h]}" "${kargs[@]}" | tr '\0' '\1')")
            rank=$((rank + 1))
        done
    done
}

# One-off commands on a host (key set, readiness, report): the rsh agent's argv, run here.
on_host() {
    local host="$1"
    shift
    local -a argv
    mapfile -d '' argv < <(remote_argv "$host" "$@")
    "${argv[@]}"
}

# cmds[] entries are argv joined with \x01 (bash strings cannot hold NUL).
argv_of() { IFS=$'\1' read -r -a argv <<<"$1"; }

# Shell-quotes one word for display: bare when safe, else in single quotes.
quote_word() {
    if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

print_command() {
    argv_of "$1"
    local out="" w
    for w in "${argv[@]}"; do out+="$(quote_word "$w") "; done
    echo "${out% }"
}

newest_checkpoint() {
    local dir="$run_dir/checkpoints"
    [[ -d "$dir" ]] || return 0
    # Newest complete checkpoint: a directory holding manifest.bin (directories appear atomically).
    local best="" best_t=0 d t
    for d in "$dir"/*/; do
        [[ -f "$d/manifest.bin" ]] || continue
        t=$(stat -c %Y "$d/manifest.bin" 2>/dev/null || echo 0)
        if [[ -z "$best" || $t -ge $best_t ]]; then
            best="${d%/}"
            best_t=$t
        fi
    done
    echo "$best"
}

if (( dry_run )); then
    echo "# esper cluster launch (dry run): run-id=$run_id world=$world hosts=${#hosts[@]}"
    echo "# bus on $first_host: pub=$pub_ep sub=$sub_ep rpc=$rpc_ep;" \
         "rendezvous $first_addr:$master_port"
    echo "# on a rank failure: stop all, restart with --resume <newest $run_dir/checkpoints/*>," \
         "at most $max_restarts time(s)"
    (( secure )) && echo "# keys: $esper keygen --out $keys_dir --all on $first_host;" \
        "broker.pub and agent.secret copied to the other hosts"
    build_commands "" 0
    for i in "${!cmds[@]}"; do print_command "${cmds[$i]}"; done
    echo "# at the end, on $first_host: $esper report $run_dir"
    exit 0
fi

# ---- running ----
log() { echo "launch_cluster: $*" >&2; }

pids=()      # local pid of each rsh client, index-aligned with names[]
logs=()
stop_requested=0
trap 'stop_requested=1' INT TERM

remote_pid_of() { sed -n 's/^esper-pid=\([0-9]*\)$/\1/p' "$1" 2>/dev/null | tail -n1; }

signal_one() {
    local i="$1" sig="$2" rpid
    rpid="$(remote_pid_of "${logs[$i]}")"
    if [[ -n "$rpid" ]]; then
        if [[ "$rsh" == local ]]; then
            kill "-$sig" "$rpid" 2>/dev/null
        else
            "${rsh_words[@]}" "${targets[$i]}" kill "-$sig" "$rpid" >/dev/null 2>&1
        fi
    fi
    kill "-$sig" "${pids[$i]}" 2>/dev/null
}

stop_all() {
    local i deadline
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -0 "${pids[$i]}" 2>/dev/null && signal_one "$i" TERM
    done
    deadline=$((SECONDS + grace_s))
    for i in "${!pids[@]}"; do
        while kill -0 "${pids[$i]}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            log "${names[$i]} on ${targets[$i]} ignored SIGTERM; sending SIGKILL"
            signal_one "$i" KILL
        fi
        wait "${pids[$i]}" 2>/dev/null
    done
}

# Copies the whole process output into its log and, unless --quiet, to our stdout with a
# "[host:name]" label per line.
label() {
    local prefix="$1" log="$2"
    if (( quiet )); then
        cat >>"$log"
    else
        # Line by line as it comes (awk implementations may read their input in blocks).
        local line
        while IFS= read -r line || [[ -n "$line" ]]; do
            printf '%s\n' "$line" >>"$log"
            printf '%s %s\n' "$prefix" "$line"
        done
    fi
}

# Waits up to $2 seconds for process $1 to be ready: the broker's "broker pub=" line in its
# log, Tamiyo answering `esper policy show` on the first host. Fails when the process died.
wait_ready() {
    local i="$1" timeout_s="$2"
    local deadline=$((SECONDS + timeout_s))
    while ((SECONDS < deadline)); do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            why="${names[$i]} on ${targets[$i]} exited before it was ready (log ${logs[$i]})"
            return 1
        fi
        case "${names[$i]}" in
            broker) grep -q '^broker pub=' "${logs[$i]}" 2>/dev/null && return 0 ;;
            tamiyo)
                local -a probe=("$esper" policy show --bus "$rpc_ep" --timeout-ms 500)
                (( secure )) && probe+=(--keys "$keys_dir")
                on_host "$first_host" "${probe[@]}" >/dev/null 2>&1 && return 0 ;;
            *) return 0 ;;
        esac
        sleep 0.2
    done
    why="${names[$i]} on ${targets[$i]} not ready within ${timeout_s} s (log ${logs[$i]})"
    return 1
}

start_all() {
    local attempt_dir="$1" i
    pids=()
    logs=()
    mkdir -p "$attempt_dir" || return 1
    for i in "${!cmds[@]}"; do
        argv_of "${cmds[$i]}"
        logs[i]="$attempt_dir/${names[$i]}.log"
        : >"${logs[$i]}"
        print_command "${cmds[$i]}" >"$attempt_dir/${names[$i]}.cmd"
        "${argv[@]}" </dev/null > >(label "[${targets[$i]}:${names[$i]}]" "${logs[$i]}") 2>&1 &
        pids[i]=$!
        # The broker must be bound, and Tamiyo registered, before the ranks start.
        if [[ "${names[$i]}" == broker || "${names[$i]}" == tamiyo ]]; then
            wait_ready "$i" 60 || return 1
        fi
    done
    return 0
}

# --secure: a run's key set on the first host; the other hosts get broker.pub and agent.secret
# unless they already see the directory (a shared file system, or the same machine).
make_keys() {
    on_host "$first_host" "$esper" keygen --out "$keys_dir" --all >/dev/null || return 1
    local h f
    for h in "${hosts[@]:1}"; do
        for f in broker.pub agent.secret; do
            # shellcheck disable=SC2016
            on_host "$first_host" cat "$keys_dir/$f" | sed '/^esper-pid=/d' | on_host "$h" sh -c \
                'umask 077; mkdir -p "$1" && { test -e "$1/$2" || cat >"$1/$2"; } && cat >/dev/null' \
                sh "$keys_dir" "$f" | grep -v '^esper-pid=' || true
        done
    done
}

# Returns 0 when every rank finished with status 0, 1 on the first failure (names it in $why).
monitor() {
    local i st done_count
    local -A finished=()
    why=""
    while :; do
        (( stop_requested )) && { why="interrupted"; return 2; }
        done_count=0
        for i in "${!pids[@]}"; do
            if [[ -n "${finished[$i]:-}" ]]; then
                [[ "${names[$i]}" == rank* ]] && done_count=$((done_count + 1))
                continue
            fi
            kill -0 "${pids[$i]}" 2>/dev/null && continue
            wait "${pids[$i]}"
            st=$?
            if [[ "${names[$i]}" == tamiyo ]] && (( ! stop_requested )); then
                # Executors keep training without the controller; bring it back on its own.
                log "tamiyo exited with status $st; restarting it (ranks keep running)"
                argv_of "${cmds[$i]}"
                "${argv[@]}" </dev/null > >(label "[${targets[$i]}:${names[$i]}]" "${logs[$i]}") 2>&1 &
                pids[i]=$!
                sleep 1
                continue
            fi
            finished[$i]=$st
            if [[ "${names[$i]}" != rank* ]]; then
                why="${names[$i]} on ${targets[$i]} exited with status $st (log ${logs[$i]})"
                return 1
            fi
            if ((st != 0)); then
                why="${names[$i]} on ${targets[$i]} exited with status $st (log ${logs[$i]})"
                return 1
            fi
            done_count=$((done_count + 1))
        done
        ((done_count == world)) && return 0
        sleep 0.5
    done
}

mkdir -p "$run_dir" || { log "cannot create run dir $run_dir"; exit 3; }
trap 'stop_all' EXIT  # whatever ends the launcher, it leaves no process behind
if (( secure )); then
    make_keys || { log "cannot make the key set in $keys_dir on $first_host"; exit 3; }
    log "keys in $keys_dir; steer with: $esper ctl --keys $keys_dir --bus $rpc_ep ..."
fi

# The run's report.html, written where rank 0 wrote its files (the first host).
write_report() {
    local out rc
    out="$(on_host "$first_host" "$esper" report "$run_dir" 2>&1)"
    rc=$?
    grep -v '^esper-pid=' <<<"$out" >&2
    ((rc == 0)) || log "no report written (esper report exited $rc)"
}
attempt=0
resume=""
while :; do
    build_commands "$resume" "$attempt"
    log "attempt $attempt: world=$world on ${#hosts[@]} host(s)${resume:+, resuming from $resume}"
    if ! start_all "$run_dir/launcher/attempt-$attempt"; then
        log "cannot start processes: ${why:-spawn failed} (logs under $run_dir/launcher)"
        stop_all
        exit 3
    fi
    monitor
    outcome=$?
    if ((outcome == 0)); then
        log "all $world ranks finished; stopping broker and tamiyo"
        stop_all
        write_report
        exit 0
    fi
    log "$why; stopping every process"
    stop_all
    ((outcome == 2)) && exit 130
    if ((attempt >= max_restarts)); then
        log "job failed and no restart is left (--max-restarts $max_restarts)"
        write_report
        exit 1
    fi
    attempt=$((attempt + 1))
    resume="$(newest_checkpoint)"
    if [[ -z "$resume" ]]; then
        log "no checkpoint under $run_dir/checkpoints yet; restarting from scratch"
    fi
done
