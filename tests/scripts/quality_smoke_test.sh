#!/usr/bin/env bash
# Smoke test of bench/quality/run_quality.py (the learning-quality benchmark, DESIGN §12): a few
# steps of every fashion variant path (static narrow, grown under esper run, an extra grown
# variant, the matched host built from its final size) with one seed, and of the text task's static host. It
# checks the table, the JSON summary (FLOPs from the metrics, compute-to-target, the matched
# host's parameter count) and the SVG plot; it does not measure quality. Exit 4: skipped (no
# Fashion-MNIST or text corpus on this machine).
set -euo pipefail
esper=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
[[ -d /usr/share/datasets/fashion-mnist ]] || { echo "skipped: no Fashion-MNIST"; exit 4; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

python3 "$root/bench/quality/run_quality.py" --esper "$esper" --seeds 1 --max-steps 60 \
    --variants narrow grown matched --match fp --extra fp=$root/bench/quality/ablation/narrow_fp.yaml:$root/bench/quality/ablation/fp_at_25.yaml \
    --out "$out/fashion" > "$out/fashion.txt"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
lines = open(f"{out}/fashion.txt").read().splitlines()
assert lines[0].startswith("| variant | test accuracy"), lines[0]
s = json.loads(lines[-1])
v = s["variants"]
assert set(v) == {"narrow", "grown", "matched", "fp"}, v.keys()
assert s["eval_every_steps"] == 3, s["eval_every_steps"]
n, g, m, fp = v["narrow"], v["grown"], v["matched"], v["fp"]
assert n["params"] == 50890, n["params"]
# 6 FLOPs per parameter and sample, 128 samples, 60 steps of the static narrow host.
assert abs(n["train_gflops"] - 6 * 50890 * 128 * 60 / 1e9) < 1e-6, n["train_gflops"]
# The fp variant germinates at step 25: it ends larger and costs more than the narrow host.
assert fp["params"] > n["params"] and fp["train_gflops"] > n["train_gflops"], fp
# The matched host is a static MLP as large as the grown run (fp, --match) at its end (within
# half a width step of 795 parameters): 159,626 -> 784-201-10.
assert fp["params"] == 159626 and m["params"] == 159805, (m["params"], fp["params"])
assert g["params"] <= fp["params"], g
for name, r in v.items():
    run = r["runs"][0]
    assert len(run["curve"]) >= 20, (name, len(run["curve"]))  # every <= 5 % of the run
    assert "to_target_gflops" in run
assert m["runs"][0]["to_target_gflops"] is not None or m["quality_std"] == 0.0
svg = open(f"{out}/fashion/quality_fashion.svg").read()
assert svg.startswith("<svg") and svg.count("<polyline") == 4, svg[:200]
PY

if [[ -f /usr/local/share/esper/kjv.txt ]]; then
    python3 "$root/bench/quality/run_quality.py" --task text --esper "$esper" --seeds 1 \
        --max-steps 20 --variants static --out "$out/text" > "$out/text.txt"
    python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
s = json.loads(open(f"{out}/text.txt").read().splitlines()[-1])
r = s["variants"]["static"]
assert r["quality_mean"] > 0 and r["train_gflops"] > 0, r
assert open(f"{out}/text/quality_text.svg").read().startswith("<svg")
PY
fi
echo "quality smoke: ok"
