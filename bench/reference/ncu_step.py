#!/usr/bin/env python3
"""Where one training step's GPU time goes, from an Nsight Compute CSV.

usage: ncu --clock-control none --metrics gpu__time_duration.sum --csv \\
           esper-bench-transformer --precision bf16 --graph off --iters 1 > step.csv
       python3 bench/reference/ncu_step.py step.csv

Takes the kernels of the last step (after the last-but-one AdamW launch, up to and including the
last one), sums their times by group (GEMMs, bias/GELU and bias gradients, LayerNorm, attention,
optimizer, other) and lists the 25 longest kernels. Each kernel ran alone under ncu, so the sum is
kernel time without launch gaps (docs/benchmarks.md, "Transformer on CUDA").
"""
import collections
import csv
import sys

UNIT_NS = {"ns": 1, "nsecond": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6}


def group(kernel):
    k = kernel.lower()
    if any(s in k for s in ("nvjet", "gemm", "cublas", "splitk")):
        return "gemm"
    if any(s in k for s in ("bias", "gelu", "act")):
        return "bias_act"
    if "ln_" in k or "layernorm" in k:
        return "layernorm"
    if any(s in k for s in ("cudnn", "sdpa", "flash", "attn", "fmha")):
        return "attention"
    if any(s in k for s in ("adam", "clip", "norm")):
        return "optim"
    return "other"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's own log lines are not CSV
    rows = []
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        ns = float(r["Metric Value"].replace(",", "")) * UNIT_NS.get(r.get("Metric Unit", ""), 1)
        rows.append((r["Kernel Name"], ns))
    if not rows:
        sys.exit(f"{sys.argv[1]}: no gpu__time_duration.sum rows (was ncu run with --csv and that metric?)")
    adamw = [i for i, (k, _) in enumerate(rows) if "adamw" in k.lower()]
    step = rows[adamw[-2] + 1:adamw[-1] + 1] if len(adamw) >= 2 else rows
    total, count, per = collections.defaultdict(float), collections.Counter(), collections.defaultdict(float)
    for k, ns in step:
        g = group(k)
        total[g] += ns
        count[g] += 1
        per[k.split("(")[0][:80]] += ns
    all_ns = sum(total.values())
    print(f"kernels {len(step)} total {all_ns / 1e6:.3f} ms")
    for g, ns in sorted(total.items(), key=lambda x: -x[1]):
        print(f"  {g:10s} {ns / 1e6:8.3f} ms {100 * ns / all_ns:5.1f}% ({count[g]})")
    for k, ns in sorted(per.items(), key=lambda x: -x[1])[:25]:
        print(f"    {ns / 1e6:8.3f} {k}")


if __name__ == "__main__":
    main()
