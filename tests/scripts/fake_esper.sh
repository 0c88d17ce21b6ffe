#!/usr/bin/env bash
# Stand-in for the esper binary in launcher tests: `broker` (after its ready line) and `tamiyo`
# idle until stopped, `policy show`, `report` and `keygen` succeed;
# `kasmina` behaves per FAKE_FAIL_RANK: on attempt 0 that rank fails (after rank 0 wrote a
# checkpoint), on later attempts every rank records how it was started and exits 0.
set -u
cmd="$1"
shift
case "$cmd" in
    broker) echo "broker pub=tcp://fake:1 sub=tcp://fake:2 rpc=tcp://fake:3"; exec sleep 300 ;;
    tamiyo) exec sleep 300 ;;
    policy|report|keygen) exit 0 ;;  # readiness probe, the run's report, --secure keys
    kasmina) ;;
    *) echo "fake esper: unknown command $cmd" >&2; exit 2 ;;
esac
run_dir="" resume=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --run-dir) run_dir="$2"; shift 2 ;;
        --resume) resume="$2"; shift 2 ;;
        *) shift ;;
    esac
done
mkdir -p "$run_dir"
echo "rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK master=$MASTER_ADDR:$MASTER_PORT" \
     "attempt=$ESPER_ATTEMPT resume=$resume" >>"$run_dir/started.txt"
if [[ "$ESPER_ATTEMPT" == 0 ]]; then
    if [[ "$RANK" == 0 ]]; then
        mkdir -p "$run_dir/checkpoints/step-10"
        echo manifest >"$run_dir/checkpoints/step-10/manifest.bin"
    fi
    if [[ "$RANK" == "${FAKE_FAIL_RANK:--1}" ]]; then
        sleep 1
        exit 3
    fi
    exec sleep 300  # a healthy rank that the launcher must stop
fi
if [[ "${FAKE_NET:-0}" == 1 ]]; then
    # Ranks > 0 each send one line over TCP to rank 0 at MASTER_ADDR:MASTER_PORT, so traffic
    # really crosses from one "host" (namespace) to the other.
    if [[ "$RANK" == 0 ]]; then
        python3 - "$MASTER_ADDR" "$MASTER_PORT" "$((WORLD_SIZE - 1))" "$run_dir/net.txt" <<'PY' || exit 5
import socket, sys
addr, port, peers, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.create_server((addr, port))
s.settimeout(20)
with open(out, "a") as f:
    for _ in range(peers):
        c, peer = s.accept()
        f.write(c.makefile().readline().strip() + " via=" + peer[0] + "\n")
        c.close()
PY
    else
        for _ in $(seq 100); do
            if exec 3<>"/dev/tcp/$MASTER_ADDR/$MASTER_PORT" 2>/dev/null; then
                echo "rank=$RANK node=$ESPER_NODE_ADDR" >&3
                exec 3>&-
                break
            fi
            sleep 0.1
        done
    fi
fi
if [[ -n "${FAKE_GLOO_PROBE:-}" ]]; then
    "$FAKE_GLOO_PROBE" >>"$run_dir/gloo.txt" || exit 6
fi
echo "rank=$RANK resume=$resume" >>"$run_dir/finished.txt"
exit 0
