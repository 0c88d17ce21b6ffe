# Shared by the launcher tests with real ranks (sourced): kill the newest rank once the step-500
# checkpoint exists, wait for the launcher, and check that it restarted from a checkpoint and that
# every rank finished with one seed-table digest. Needs $tmp (with c.yaml, run/, out.log) and fail().
# free_port_base picks the ports for a test's broker.

# free_port_base [COUNT]: a port P such that P … P+COUNT-1 (default 4) are below the kernel's
# ephemeral range (where Gloo's pair sockets and every test's port-0 broker get their ports) and
# not in use by any TCP socket now (/proc/net/tcp{,6}); two tests picking at once can still meet,
# with odds of about COUNT in 12,000.
free_port_base() {
    local count=${1:-4} lo hi used base p clash
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
    hi=$(( lo < 32768 ? lo : 32768 ))
    (( hi - count > 20000 )) || { echo 20000; return; }
    used=" $(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | while read -r _ local _; do
        [[ $local == *:* ]] && printf '%d ' "$((16#${local##*:}))"; done) "
    for _ in $(seq 1 100); do
        base=$(( 20000 + RANDOM % (hi - count - 20000) ))
        clash=0
        for (( p = base; p < base + count; p++ )); do
            [[ $used == *" $p "* ]] && { clash=1; break; }
        done
        (( clash )) || { echo "$base"; return; }
    done
    echo "$base"
}

# kill_rank_and_check LAUNCHER_PID MAX_STEPS
kill_rank_and_check() {
    local launcher_pid=$1 max_steps=$2
    for _ in $(seq 1 600); do
        [ -f "$tmp/run/checkpoints/500/manifest.bin" ] && break
        sleep 0.1
    done
    [ -f "$tmp/run/checkpoints/500/manifest.bin" ] || fail "no checkpoint at step 500"
    local victim
    victim=$(pgrep -f "kasmina --config $tmp/c.yaml" | tail -1)  # the newest rank
    [ -n "$victim" ] || fail "no rank process found"
    kill -KILL "$victim"
    wait "$launcher_pid"
    local rc=$?
    cat "$tmp/out.log"
    [ "$rc" -eq 0 ] || fail "launcher exited $rc"
    grep -q "resuming from $tmp/run/checkpoints/" "$tmp/out.log" || fail "no restart from a checkpoint"
    mapfile -t digests < <(grep -rhoE "step=$max_steps final digest=[0-9]+" "$tmp/run/launcher" | sort -u)
    [ "${#digests[@]}" -eq 1 ] || fail "ranks ended with different digests: ${digests[*]:-none}"
}
