# Shared by the launcher tests with real ranks (sourced): kill the newest rank once the step-500
# checkpoint exists, wait for the launcher, and check that it restarted from a checkpoint and that
# every rank finished with one seed-table digest. Needs $tmp (with c.yaml, run/, out.log) and fail().

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
