#!/usr/bin/env python3
"""Learning-quality benchmark (DESIGN.md §12): does growth pay against the honest alternative, a
static network of the grown network's final size trained from scratch for the same steps?

Per task, several random seeds of each variant:
  fashion (Fashion-MNIST MLP, CPU): narrow (static host), grown (esper run, heuristic policy),
    fixed (esper run, a fixed-schedule rules policy), matched (a static MLP built from the grown
    runs' final parameter count: the hidden widths of the narrow host scaled until the static
    host has as many parameters), wide (static 784-256-10);
  text (byte-level transformer LM, CPU): static (the host, nothing germinated), grown (esper run
    with the config's policy), matched (the static host with the grown runs' final extra units
    and heads per block in use from step 0: model.transformer.initial_extra_{units,heads}).
Extra grown variants (ablations) come from --extra NAME=CONFIG[:POLICY]; POLICY `standalone`
runs the config without a controller (`esper kasmina --standalone`: growth the config schedules
itself, e.g. model.transformer.grow_depth).

Every run evaluates at least every --eval-fraction of its steps (run.eval_every_steps is set in a
copy of the config under OUT/configs/). Training FLOPs are read from the run's own metrics: every
train line carries the step's `flops` (Model::train_flops: host + live blueprints, forward and
backward, attention included). Quality is test accuracy (fashion) or validation bits per byte
(text). Compute-to-target is the training FLOPs at which a run's evaluation first reaches the
matched variant's mean final quality; it is reported as a fraction of the matched runs' mean
training FLOPs ("—" where a run never reaches it). Wall-clock seconds are measured around each
process (on a shared machine: a load-dependent figure).

Writes OUT/quality_<task>.svg (quality against training FLOPs, every run of every variant),
OUT/quality_<task>.json, prints a Markdown table and, as its last stdout line, the JSON summary.

usage: bench/quality/run_quality.py [--task fashion|text] [--esper build/bin/esper]
           [--seeds 1 2 3] [--epochs 10 | --max-steps N] [--out runs/quality] [--jobs 1]
           [--variants narrow grown fixed matched wide] [--extra NAME=CONFIG[:POLICY] ...]
           [--config ...] [--wide-config ...] [--fixed-policy ...] [--matched-config ...]
           [--reference OUT/quality_<task>.json] [--jobs N] [--reuse]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "bench", "quality")
FASHION_TRAIN, FASHION_IN, FASHION_CLASSES = 60000, 784, 10
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]


# ---- configs ----

def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def total_steps(cfg, task, epochs, max_steps):
    run = cfg.get("run", {})
    if max_steps:
        return max_steps
    if task == "text" or run.get("max_steps"):
        return int(run.get("max_steps", 0)) or 1000
    batch = int(cfg.get("data", {}).get("batch_size", 128))
    return int(epochs or run.get("epochs", 1)) * (FASHION_TRAIN // batch)


def prepared_config(src, out_dir, name, eval_every, edit=None):
    """A copy of `src` with run.eval_every_steps set (relative policy paths made absolute)."""
    cfg = load_yaml(src)
    cfg.setdefault("run", {})["eval_every_steps"] = eval_every
    pol = cfg.get("tamiyo", {}).get("policy")
    if pol and pol != "heuristic" and not os.path.isabs(pol):
        cfg["tamiyo"]["policy"] = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(src)), pol))
    if edit:
        edit(cfg)
    os.makedirs(os.path.join(out_dir, "configs"), exist_ok=True)
    path = os.path.join(out_dir, "configs", f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


def mlp_params(hidden, n_in=FASHION_IN, classes=FASHION_CLASSES):
    n, prev = 0, n_in
    for h in hidden:
        n += (prev + 1) * h
        prev = h
    return n + (prev + 1) * classes


def matched_hidden(narrow_hidden, params):
    """Hidden widths of the narrow host scaled by one factor until the parameter count is closest."""
    best = None
    for k in range(1, 64 * 16 + 1):
        s = k / 64.0
        hidden = [max(1, round(h * s)) for h in narrow_hidden]
        d = abs(mlp_params(hidden) - params)
        if best is None or d < best[0]:
            best = (d, hidden)
    return best[1]


def transformer_params(t, units=0, heads=0, vocab=256):
    """Parameters of a transformer host (kasmina/model/transformer.cpp) with `units` extra MLP
    units and `heads` extra heads in use in every block."""
    C, L, T = int(t.get("d_model", 128)), int(t.get("n_layer", 4)), int(t.get("context", 64))
    Dh = C // int(t.get("n_head", 4))
    block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    n = vocab * C + T * C + L * block + 2 * C + (0 if t.get("tie_embeddings", True) else vocab * C)
    return n + L * (units * (2 * C + 1) + heads * (4 * Dh * C + 3 * Dh))


def matched_room(t, params):
    """(extra units, extra heads) per block whose static host comes closest to `params`."""
    best = None
    for h in range(int(t.get("max_extra_heads", 2)) + 1):
        for u in range(int(t.get("max_extra_units", 64)) + 1):
            d = abs(transformer_params(t, u, h) - params)
            if best is None or d < best[0]:
                best = (d, u, h)
    return best[1], best[2]


# ---- runs ----

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


def summarize(run_dir, task):
    """Final quality, final parameters, FLOPs and the (FLOPs, quality) curve of one run."""
    metrics = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    tests = [m for m in metrics if m.get("split") == "test"]
    if not tests:
        raise RuntimeError(f"{run_dir}: no test lines in metrics.jsonl")
    key = "accuracy" if task == "fashion" else "bits_per_byte"
    flops_at, flops, params = {}, 0.0, 0
    for m in metrics:
        if m.get("split") == "train":
            flops += m.get("flops") or 0.0
            params = m.get("host_params", 0) + m.get("blueprint_params", 0)
            flops_at[m["step"]] = flops
    curve = []
    for t in tests:
        if t.get(key) is None:
            continue
        f = flops_at.get(t["step"], 0.0)
        if curve and curve[-1][0] == f:
            curve[-1] = (f, t[key])  # the same step evaluated twice (epoch end)
        else:
            curve.append((f, t[key]))
    return {"quality": curve[-1][1], "params": params, "train_gflops": flops / 1e9,
            "curve": [(f / 1e9, q) for f, q in curve]}


def better(task, a, b):
    return a >= b if task == "fashion" else a <= b


def first_reach(curve, target, task):
    for f, q in curve:
        if better(task, q, target):
            return f
    return None


def mean_std(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1))


# ---- plot (plain SVG) ----

def write_svg(path, task, results):
    W, H, L, R, T, B = 760, 460, 70, 180, 30, 50
    pts = [p for r in results.values() for run in r["runs"] for p in run["curve"]]
    if not pts:
        return
    qs = sorted(q for _, q in pts)
    # Early evaluations are far off; show the range where the variants differ.
    lo_q = qs[len(qs) // 4] if task == "fashion" else qs[0]
    hi_q = qs[-1] if task == "fashion" else qs[(3 * len(qs)) // 4]
    x_max = max(f for f, _ in pts) or 1.0
    pad = (hi_q - lo_q) * 0.05 or 0.01
    lo_q, hi_q = lo_q - pad, hi_q + pad

    def X(f):
        return L + (W - L - R) * f / x_max

    def Y(q):
        q = min(max(q, lo_q), hi_q)
        return T + (H - T - B) * (hi_q - q) / (hi_q - lo_q)

    label = "test accuracy" if task == "fashion" else "validation bits per byte"
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="18">{task}: {label} against training GFLOPs (every run of every variant)</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
         f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">training GFLOPs</text>']
    for i in range(6):
        f = x_max * i / 5
        q = lo_q + (hi_q - lo_q) * i / 5
        s.append(f'<text x="{X(f):.1f}" y="{H - B + 16}" text-anchor="middle">{f:.0f}</text>')
        s.append(f'<text x="{L - 6}" y="{Y(q) + 4:.1f}" text-anchor="end">{q:.4f}</text>')
        s.append(f'<line x1="{L}" y1="{Y(q):.1f}" x2="{W - R}" y2="{Y(q):.1f}" stroke="#eee"/>')
    target = results.get("matched", {}).get("quality_mean")
    if target is not None:
        s.append(f'<line x1="{L}" y1="{Y(target):.1f}" x2="{W - R}" y2="{Y(target):.1f}" '
                 f'stroke="black" stroke-dasharray="4 3"/>')
        s.append(f'<text x="{L + 4}" y="{Y(target) - 4:.1f}">matched final</text>')
        f70 = 0.7 * results["matched"]["train_gflops"]
        s.append(f'<line x1="{X(f70):.1f}" y1="{T}" x2="{X(f70):.1f}" y2="{H - B}" stroke="black" '
                 f'stroke-dasharray="2 4"/>')
        s.append(f'<text x="{X(f70) + 3:.1f}" y="{T + 12}">70 % of matched</text>')
    for i, (name, r) in enumerate(results.items()):
        c = COLORS[i % len(COLORS)]
        for run in r["runs"]:
            d = " ".join(f"{X(f):.1f},{Y(q):.1f}" for f, q in run["curve"])
            s.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="1.3" opacity="0.8"/>')
        y = T + 30 + 18 * i
        s.append(f'<line x1="{W - R + 4}" y1="{y}" x2="{W - R + 24}" y2="{y}" stroke="{c}" stroke-width="2"/>')
        s.append(f'<text x="{W - R + 28}" y="{y + 4}">{name}</text>')
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")


# ---- main ----

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["fashion", "text"], default="fashion")
    ap.add_argument("--esper", default=os.path.join(ROOT, "build", "bin", "esper"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=None, help="fashion (default: 10)")
    ap.add_argument("--max-steps", type=int, default=None, help="override run.max_steps")
    ap.add_argument("--out", default=None, help="default: runs/quality/<task>")
    ap.add_argument("--variants", nargs="*", default=None)
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=CONFIG[:POLICY]",
                    help="an extra grown variant: esper run with CONFIG and POLICY (default heuristic; "
                         "standalone: esper kasmina --standalone, no controller)")
    ap.add_argument("--match", default="grown", help="the grown variant whose final size the matched one takes")
    ap.add_argument("--eval-fraction", type=float, default=0.05,
                    help="evaluate at least this often (fraction of the run's steps)")
    ap.add_argument("--reference", default=None, metavar="JSON",
                    help="take the variants of an earlier run's quality_<task>.json (its matched one is the "
                         "target) instead of running them again")
    ap.add_argument("--reuse", action="store_true",
                    help="summarize the runs already finished in OUT (quality_run.json) instead of running them")
    ap.add_argument("--jobs", type=int, default=1, help="seeds of a variant run side by side")
    ap.add_argument("--port-base", type=int, default=0, help="0 = ephemeral broker ports")
    ap.add_argument("--config", default=None, help="the host config (static, grown and fixed variants)")
    ap.add_argument("--wide-config", default=os.path.join(HERE, "wide.yaml"))
    ap.add_argument("--fixed-policy", default=os.path.join(HERE, "fixed_schedule.yaml"))
    ap.add_argument("--grown-policy", default=None, help="default: heuristic (fashion), the config's (text)")
    ap.add_argument("--matched-config", default=None,
                    help="a static config for the matched variant (default: built from the grown runs)")
    args = ap.parse_args()

    task = args.task
    if args.config is None:
        args.config = os.path.join(HERE, "narrow.yaml" if task == "fashion" else "text_small.yaml")
    if args.epochs is None and task == "fashion" and not args.max_steps:
        args.epochs = 10
    if args.out is None:
        args.out = os.path.join(ROOT, "runs", "quality", task)
    if args.variants is None:
        args.variants = (["narrow", "grown", "fixed", "matched", "wide"] if task == "fashion"
                         else ["static", "grown", "matched"])
    extras = {}
    for e in args.extra:
        name, _, rest = e.partition("=")
        cfg, _, pol = rest.partition(":")
        extras[name] = (cfg, pol or args.grown_policy or "heuristic")
        if name not in args.variants:
            args.variants.append(name)
    if "matched" in args.variants and not args.matched_config:  # it needs the grown size: last
        args.variants = [v for v in args.variants if v != "matched"] + ["matched"]
    os.makedirs(args.out, exist_ok=True)

    base = load_yaml(args.config)
    steps = total_steps(base, task, args.epochs, args.max_steps)
    eval_every = max(1, int(steps * args.eval_fraction))
    grown_policy = args.grown_policy or ("heuristic" if task == "fashion" else None)

    def cmd_for(name, results):
        """(command, config) of a variant; the matched one is built from `results`."""
        if name in ("narrow", "static"):
            cfg = prepared_config(args.config, args.out, name, eval_every)
            return [args.esper, "kasmina", "--standalone", "--config", cfg]
        if name == "wide":
            cfg = prepared_config(args.wide_config, args.out, name, eval_every)
            return [args.esper, "kasmina", "--standalone", "--config", cfg]
        if name == "matched":
            if args.matched_config:
                cfg = prepared_config(args.matched_config, args.out, name, eval_every)
            else:
                grown = results.get(args.match)
                if not grown:
                    raise SystemExit(f"matched: run the variant '{args.match}' first")
                p = round(sum(r["params"] for r in grown["runs"]) / len(grown["runs"]))
                if task == "fashion":
                    hidden = matched_hidden(base["model"]["hidden"], p)
                    print(f"[quality] matched: {args.match} ends at {p} parameters -> hidden "
                          f"{hidden} ({mlp_params(hidden)} parameters)", file=sys.stderr, flush=True)

                    def edit(c):
                        c["model"]["hidden"] = hidden
                else:  # the host's reserved room in use from step 0, as the grown run ends
                    t = base["model"]["transformer"]
                    units, heads = matched_room(t, p)
                    print(f"[quality] matched: {args.match} ends at {p} parameters -> "
                          f"{units} extra units and {heads} extra heads per block "
                          f"({transformer_params(t, units, heads)} parameters)",
                          file=sys.stderr, flush=True)

                    def edit(c):
                        c["model"]["transformer"]["initial_extra_units"] = units
                        c["model"]["transformer"]["initial_extra_heads"] = heads
                cfg = prepared_config(args.config, args.out, name, eval_every, edit)
            return [args.esper, "kasmina", "--standalone", "--config", cfg]
        if name == "grown":
            cfg = prepared_config(args.config, args.out, name, eval_every)
            return [args.esper, "run", "--config", cfg] + (["--policy", grown_policy] if grown_policy else [])
        if name == "fixed":
            cfg = prepared_config(args.config, args.out, name, eval_every)
            return [args.esper, "run", "--config", cfg, "--policy", args.fixed_policy]
        if name in extras:
            src, pol = extras[name]
            cfg = prepared_config(src, args.out, name, eval_every)
            if pol == "standalone":  # no bus, no controller: what the config alone does
                return [args.esper, "kasmina", "--standalone", "--config", cfg]
            return [args.esper, "run", "--config", cfg, "--policy", pol]
        raise SystemExit(f"unknown variant {name}")

    results = {}
    if args.reference:
        with open(args.reference) as f:
            results.update(json.load(f)["variants"])
    for name in args.variants:
        # The seeds of one variant run side by side (--jobs); wall time is per process.
        pending, running, done = list(args.seeds), [], {}
        while pending or running:
            while pending and len(running) < args.jobs:
                seed = pending.pop(0)
                run_dir = os.path.join(args.out, f"{name}-seed{seed}")
                stamp = os.path.join(run_dir, "quality_run.json")
                if args.reuse and os.path.exists(stamp):
                    with open(stamp) as f:
                        done[seed] = dict(summarize(run_dir, task), **json.load(f))
                    continue
                if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
                    os.remove(os.path.join(run_dir, "metrics.jsonl"))  # the log appends
                cmd = cmd_for(name, results) + ["--run-dir", run_dir, "--seed", str(seed)]
                if args.epochs:
                    cmd += ["--epochs", str(args.epochs)]
                if args.max_steps:
                    cmd += ["--max-steps", str(args.max_steps)]
                if cmd[1] == "run":
                    cmd += ["--bus-port-base", str(args.port_base)]
                print(f"[quality] {name} seed {seed}: {' '.join(cmd)}", file=sys.stderr, flush=True)
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
                running.append((seed, run_dir, proc, time.time(), cmd))
            time.sleep(0.2)
            for item in list(running):
                seed, run_dir, proc, t0, cmd = item
                # wait4: the process's CPU time, its reaped children (broker, controller) included.
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid == 0:
                    continue
                running.remove(item)
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    raise SystemExit(f"{name} seed {seed}: exit status {code}")
                r = summarize(run_dir, task)
                r["seconds"] = time.time() - t0
                r["cpu_seconds"] = usage.ru_utime + usage.ru_stime
                r["seed"] = seed
                with open(os.path.join(run_dir, "quality_run.json"), "w") as f:
                    json.dump({"seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"], "seed": seed,
                               "command": cmd}, f)
                print(f"[quality]   {name} seed {seed}: quality {r['quality']:.4f} params {r['params']} "
                      f"{r['train_gflops']:.1f} GFLOPs in {r['seconds']:.0f} s", file=sys.stderr, flush=True)
                done[seed] = r
        runs = [done[s] for s in args.seeds]
        qm, qs = mean_std([r["quality"] for r in runs])
        sm, ss = mean_std([r["seconds"] for r in runs])
        cpu = [r["cpu_seconds"] for r in runs if r.get("cpu_seconds") is not None]
        results[name] = {"quality_mean": qm, "quality_std": qs,
                         "params": max(r["params"] for r in runs),
                         "train_gflops": sum(r["train_gflops"] for r in runs) / len(runs),
                         "seconds_mean": sm, "seconds_std": ss,
                         "cpu_seconds_mean": (sum(cpu) / len(cpu)) if len(cpu) == len(runs) else None,
                         "runs": runs}

    # Compute-to-target against the matched variant's mean final quality.
    ref = results.get("matched")
    if ref:
        target, ref_flops = ref["quality_mean"], ref["train_gflops"]
        ref_secs = ref["seconds_mean"]
        for r in results.values():
            for run in r["runs"]:
                f = first_reach(run["curve"], target, task)
                run["to_target_gflops"] = f
                # Seconds to target: the run's wall time scaled by its FLOPs fraction.
                run["to_target_seconds"] = None if f is None else run["seconds"] * f / run["train_gflops"]
            hits = [run["to_target_gflops"] for run in r["runs"] if run["to_target_gflops"] is not None]
            r["reached"] = len(hits)
            r["to_target_fraction"] = (sum(hits) / len(hits) / ref_flops) if hits else None
            secs = [run["to_target_seconds"] for run in r["runs"] if run["to_target_seconds"] is not None]
            r["to_target_seconds_fraction"] = (sum(secs) / len(secs) / ref_secs) if secs else None

    qname = "test accuracy" if task == "fashion" else "val. bits/byte"
    print(f"| variant | {qname} (mean ± std) | parameters (final) | training GFLOPs | "
          f"compute to target (× matched FLOPs; runs that reach it) | wall s (mean ± std) | "
          f"wall to target (× matched) | CPU s (mean) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ctt = wtt = "—"
        if ref:
            if r["to_target_fraction"] is not None:
                ctt = f"{r['to_target_fraction']:.2f} ({r['reached']}/{len(r['runs'])})"
            else:
                ctt = f"not reached (0/{len(r['runs'])})"
            if r["to_target_seconds_fraction"] is not None:
                wtt = f"{r['to_target_seconds_fraction']:.2f}"
        print(f"| {name} | {r['quality_mean']:.4f} ± {r['quality_std']:.4f} | {r['params']} | "
              f"{r['train_gflops']:.1f} | {ctt} | {r['seconds_mean']:.0f} ± {r['seconds_std']:.0f} | {wtt} | "
              f"{'—' if r.get('cpu_seconds_mean') is None else round(r['cpu_seconds_mean'])} |")
    summary = {"task": task, "seeds": args.seeds, "epochs": args.epochs, "max_steps": args.max_steps,
               "eval_every_steps": eval_every, "variants": results}
    with open(os.path.join(args.out, f"quality_{task}.json"), "w") as f:
        json.dump(summary, f)
    write_svg(os.path.join(args.out, f"quality_{task}.svg"), task, results)
    print(f"[quality] wrote {os.path.join(args.out, f'quality_{task}.svg')}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
