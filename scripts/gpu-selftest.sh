#!/usr/bin/env bash
# Runs everything that needs a GPU from a bundle (scripts/bundle.sh) on a GPU node and writes the
# logs into OUT_DIR: the [gpu] kernel and kasmina tests (the transformer's among them), a short
# `esper run` on the CUDA backend with the Fashion-MNIST files in DATA_DIR (the node may lack
# Debian's package), a short transformer run on the GPU (bf16) over the text in ESPER_TEXT_PATH
# (default /usr/local/share/esper/kjv.txt), the data-parallel cases on two ranks (two GPUs, or
# two processes sharing one), and the attention and generation benchmarks.
#   [ESPER_TEXT_PATH=FILE] scripts/gpu-selftest.sh BUNDLE_DIR DATA_DIR OUT_DIR
# Exit status: the number of failed steps (0 = all passed).
set -uo pipefail
if [ $# -ne 3 ]; then
  echo "usage: scripts/gpu-selftest.sh BUNDLE_DIR DATA_DIR OUT_DIR" >&2
  exit 2
fi
bundle=$1 data=$2 out=$3
mkdir -p "$out"
failed=0
step() {  # step NAME CMD...: runs CMD with its output in OUT/NAME.log
  local name=$1; shift
  echo "== $name: $*"
  if "$@" >"$out/$name.log" 2>&1; then echo "   ok"; else echo "   FAILED (rc=$?)"; tail -20 "$out/$name.log"; failed=$((failed + 1)); fi
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt" 2>&1
step kernels_gpu "$bundle/bin/esper_kernels_tests" "[gpu]"
text=${ESPER_TEXT_PATH:-/usr/local/share/esper/kjv.txt}
export ESPER_TEXT_PATH=$text
ESPER_FASHION_MNIST_DIR=$data step kasmina_gpu "$bundle/bin/esper_kasmina_tests" "[gpu]"
sed "s|path: /usr/share/datasets/fashion-mnist|path: $data|; s|device: auto|device: cuda|" \
  "$(dirname "$0")/../examples/fashion_mnist.yaml" > "$out/run.yaml"
run_dir=$(mktemp -d)/run
step esper_run_cuda "$bundle/bin/esper" run --config "$out/run.yaml" --run-dir "$run_dir" --bus-port-base 0
cp "$run_dir/report.html" "$out/report.html" 2>/dev/null
grep -h "device=cuda" "$run_dir/logs/kasmina-0.log" >> "$out/esper_run_cuda.log" 2>/dev/null
# The transformer on the GPU: the bare host (the policy's germinations are refused there), 200 steps.
sed "s|device: auto .*|device: cuda|; s|max_steps: 1200|max_steps: 200|; s|checkpoint_every_steps: 400|checkpoint_every_steps: 0|; s|dataset: text .*|dataset: text\n  path: $text|" \
  "$(dirname "$0")/../examples/transformer_text.yaml" > "$out/transformer.yaml"
tdir=$(mktemp -d)/run
step esper_run_transformer_cuda "$bundle/bin/esper" kasmina --standalone --config "$out/transformer.yaml" --run-dir "$tdir"
cp "$tdir/metrics.jsonl" "$out/transformer_metrics.jsonl" 2>/dev/null
# Data parallelism over NCCL (the MLP's and the transformer's correctness cases): as threads on
# two GPUs, or as two processes sharing one (each its own NCCL_HOSTID; loopback sockets).
two_ranks() {  # two_ranks TEST-SPEC: both processes' logs; fails when either fails
  local dir rc=0 pids=()
  dir=$(mktemp -d)
  for r in 0 1; do
    ESPER_DIST_RANK=$r ESPER_DIST_WORLD=2 ESPER_DIST_DIR=$dir NCCL_HOSTID=esper-r$r \
      NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 "$bundle/bin/esper_kasmina_tests" "$1" \
      >"$dir/rank$r.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  cat "$dir"/rank*.log
  return $rc
}
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  step multi_gpu "$bundle/bin/esper_kasmina_tests" "two cuda ranks*"
else
  step two_ranks_one_gpu two_ranks "two cuda ranks*"
fi
[ -x "$bundle/bin/esper-bench-attention" ] && step bench_attention "$bundle/bin/esper-bench-attention"
[ -x "$bundle/bin/esper-bench-generate" ] && step bench_generate "$bundle/bin/esper-bench-generate" --tokens 256
echo "failed steps: $failed"
exit $failed
