#!/usr/bin/env python3
"""Fastest PyTorch version of the seed-layer forward we could write, for esper-bench-kernels.

Same math and shapes as bench/kernels: h[B, D] cut into S equal chunks, a fraction of seeds active
(per-chunk MLP w -> 2w -> w with relu, alpha blend), per-seed sum and sum of squares of h (the
telemetry). Variants: eager and torch.compile, each gathering the active chunks into a batched
[n_active, B, w] tensor, running two bmm's, and scattering back. Also times a copy of h into y.
Human lines on stderr, one JSON object on the last stdout line.
Usage: torch_seed_layer.py [--quick] [--iters N] [--no-compile] [--seeds S,S,...]
"""
import argparse
import json
import sys
import time

import torch


def seed_layer(h, idx, w1, b1, w2, b2, alpha, num_seeds):
    # h: [B, D]; idx: [n_active] active seed ids; w1: [n, w, 2w]; w2: [n, 2w, w]
    B, D = h.shape
    w = D // num_seeds
    hs = h.view(B, num_seeds, w)
    sums = hs.sum(dim=(0, 2))
    sumsq = (hs * hs).sum(dim=(0, 2))
    y = h.clone()
    if idx.numel() > 0:
        x = hs.index_select(1, idx).transpose(0, 1)  # [n, B, w]
        hid = torch.relu(torch.baddbmm(b1.unsqueeze(1), x, w1))
        r = torch.baddbmm(b2.unsqueeze(1), hid, w2)
        ys = y.view(B, num_seeds, w)
        ys.index_copy_(1, idx, (x + alpha * r).transpose(0, 1))
    return y, sums, sumsq


def time_us(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return 1000.0 * start.elapsed_time(end) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--seeds", default="", help="comma-separated seed counts: only these rows")
    args = ap.parse_args()
    only = {int(x) for x in args.seeds.split(",") if x}
    if not torch.cuda.is_available():
        print("torch_seed_layer.py: no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    total = (1 << 22) if args.quick else 4096 * 16384
    seed_counts = [16, 1024, 16384, 262144] if args.quick else [16, 64, 256, 1024, 4096, 16384,
                                                               65536, 262144, 1048576]
    compiled = None if args.no_compile else torch.compile(seed_layer, dynamic=False)
    results = []
    for S in seed_counts:
        if only and S not in only:
            continue
        D = 4096 if args.quick else 16384
        while D < S:
            D *= 4
        B = total // D
        w = D // S
        for pct in (0, 10, 100):
            n = 0 if pct == 0 else max(1, S * pct // 100)
            flops = n * B * 4.0 * w * 2 * w
            rec = {"batch": B, "width": D, "seeds": S, "active_pct": pct}
            if flops > 2e10:
                rec["skipped"] = True
                results.append(rec)
                continue
            g = torch.Generator(device=dev).manual_seed(S * 7 + pct)
            h = torch.rand(B, D, device=dev, generator=g) * 2 - 1
            idx = (torch.arange(n, device=dev) * S // max(n, 1)).to(torch.long)
            w1 = torch.randn(n, w, 2 * w, device=dev, generator=g) * 0.1
            b1 = torch.randn(n, 2 * w, device=dev, generator=g) * 0.1
            w2 = torch.randn(n, 2 * w, w, device=dev, generator=g) * 0.1
            b2 = torch.randn(n, w, device=dev, generator=g) * 0.1
            y = torch.empty_like(h)
            rec["copy_us"] = time_us(lambda: y.copy_(h), args.iters)
            try:
                rec["eager_us"] = time_us(lambda: seed_layer(h, idx, w1, b1, w2, b2, 0.5, S),
                                          args.iters)
            except RuntimeError as e:  # out of memory at the largest shapes
                rec["eager_error"] = str(e)[:200]
            # Compiling takes tens of seconds per shape: only the shapes the targets name.
            if compiled is not None and pct == 10 and S in (1024, 16384, 262144):
                try:
                    t0 = time.time()
                    compiled(h, idx, w1, b1, w2, b2, 0.5, S)
                    rec["compile_s"] = time.time() - t0
                    rec["compiled_us"] = time_us(lambda: compiled(h, idx, w1, b1, w2, b2, 0.5, S),
                                                 args.iters)
                except Exception as e:  # noqa: BLE001 - report and continue the sweep
                    rec["compiled_error"] = str(e)[:200]
            times = [v for k, v in rec.items() if k in ("eager_us", "compiled_us")]
            if times:
                rec["best_us"] = min(times)
                rec["best_fraction_of_copy"] = rec["copy_us"] / rec["best_us"]
            print(json.dumps(rec), file=sys.stderr)
            results.append(rec)
            del h, w1, b1, w2, b2, y
            torch.cuda.empty_cache()
    print(json.dumps({"bench": "torch_seed_layer", "device": torch.cuda.get_device_name(0),
                      "torch": torch.__version__, "iters": args.iters, "seed_forward": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
