#!/usr/bin/env python3
"""Learning-quality benchmark (DESIGN.md §12): Fashion-MNIST with a static narrow host, a static
wide host, the grown host (narrow + seeds under the heuristic policy) and fixed-schedule growth,
several random seeds each. Prints a Markdown table and, as its last stdout line, JSON:
{"variants": {name: {"accuracy_mean", "accuracy_std", "params", "train_gflops", "runs"}}, ...}.

Training FLOPs are counted from the run's own metrics: each train line carries host_params and
blueprint_params, and one step costs 6 · params · batch FLOPs (forward 2, backward 4 per
parameter and sample, the usual dense-layer count).

usage: bench/quality/run_quality.py [--esper build/bin/esper] [--seeds 1 2 3] [--epochs 10]
                                    [--out runs/quality] [--variants narrow wide grown fixed]
                                    [--config bench/quality/narrow.yaml]
                                    [--wide-config bench/quality/wide.yaml]
                                    [--fixed-policy bench/quality/fixed_schedule.yaml]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def variants(esper, narrow_config, wide_config, fixed_policy):
    return {
        "narrow": [esper, "kasmina", "--standalone", "--config", narrow_config],
        "wide": [esper, "kasmina", "--standalone", "--config", wide_config],
        "grown": [esper, "run", "--config", narrow_config, "--policy", "heuristic"],
        "fixed": [esper, "run", "--config", narrow_config, "--policy", fixed_policy],
    }


def read_jsonl(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def summarize(run_dir, batch):
    metrics = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    tests = [m for m in metrics if m.get("split") == "test"]
    trains = [m for m in metrics if m.get("split") == "train"]
    if not tests:
        raise RuntimeError(f"{run_dir}: no test lines in metrics.jsonl")
    flops, prev_step, params = 0.0, 0, 0
    for m in trains:
        p = m.get("host_params", 0) + m.get("blueprint_params", 0)
        flops += 6.0 * p * batch * (m["step"] - prev_step)
        prev_step, params = m["step"], p
    return {"accuracy": tests[-1]["accuracy"], "params": params, "train_gflops": flops / 1e9}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--esper", default=os.path.join(ROOT, "build", "bin", "esper"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128, help="batch size of the configs (FLOP count)")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "quality"))
    ap.add_argument("--variants", nargs="+", default=["narrow", "wide", "grown", "fixed"])
    ap.add_argument("--port-base", type=int, default=0, help="0 = ephemeral broker ports")
    here = os.path.join(ROOT, "bench", "quality")
    ap.add_argument("--config", default=os.path.join(here, "narrow.yaml"),
                    help="the narrow host with seed layers (narrow, grown and fixed variants)")
    ap.add_argument("--wide-config", default=os.path.join(here, "wide.yaml"),
                    help="the static wide host")
    ap.add_argument("--fixed-policy", default=os.path.join(here, "fixed_schedule.yaml"),
                    help="the rules policy of the fixed-schedule variant")
    args = ap.parse_args()

    table = variants(args.esper, args.config, args.wide_config, args.fixed_policy)
    results = {}
    for name in args.variants:
        runs = []
        for seed in args.seeds:
            run_dir = os.path.join(args.out, f"{name}-seed{seed}")
            cmd = table[name] + ["--run-dir", run_dir, "--epochs", str(args.epochs), "--seed", str(seed)]
            if "run" in cmd[1:2]:
                cmd += ["--bus-port-base", str(args.port_base)]
            t0 = time.time()
            print(f"[quality] {name} seed {seed}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            r = summarize(run_dir, args.batch)
            r["seconds"] = time.time() - t0
            print(f"[quality]   accuracy {r['accuracy']:.4f} params {r['params']} in {r['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
            runs.append(r)
        accs = [r["accuracy"] for r in runs]
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / max(1, len(accs) - 1))
        results[name] = {"accuracy_mean": mean, "accuracy_std": std,
                         "params": max(r["params"] for r in runs),
                         "train_gflops": sum(r["train_gflops"] for r in runs) / len(runs),
                         "runs": runs}

    print("| variant | test accuracy (mean ± std) | parameters (final) | training GFLOPs |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | {r['params']} | "
              f"{r['train_gflops']:.1f} |")
    print(json.dumps({"seeds": args.seeds, "epochs": args.epochs, "variants": results}))


if __name__ == "__main__":
    main()
