#!/usr/bin/env python3
"""PyTorch reference for esper-bench-attention: torch.nn.functional.scaled_dot_product_attention,
bf16, causal, at the issue-13 shapes (B, H, T, D), with each backend PyTorch has on the GPU: its
default dispatch, sdpa_kernel(FLASH_ATTENTION) and sdpa_kernel(CUDNN_ATTENTION). Forward (inputs
that require grad, as in training) and forward+backward, median ms of timed iterations with CUDA
events, TFLOP/s with the same causal count as esper's bench (forward 2·B·H·T²·D, backward 2.5×).
Human lines on stderr, one JSON object on the last stdout line.
Usage: torch_attention.py [--iters N]
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [(16, 12, 256, 64), (8, 12, 1024, 64), (2, 12, 4096, 64), (4, 16, 2048, 128)]
PEAK_BF16_TFLOPS = 989.4  # dense bf16 tensor peak of the SXM Hopper parts (H100, H200)


def median_ms(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return ms[len(ms) // 2]


def run_case(shape, backend, iters):
    b, h, t, d = shape
    gen = torch.Generator(device="cuda").manual_seed(7)
    q, k, v, dout = (torch.rand(b, h, t, d, device="cuda", generator=gen, dtype=torch.bfloat16)
                     * 2 - 1 for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)

    def fwd():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fwd_bwd():
        out = fwd()
        out.backward(dout)

    if backend == "default":
        fwd_ms = median_ms(fwd, iters)
        both_ms = median_ms(fwd_bwd, iters)
    else:
        with sdpa_kernel(backend):
            fwd_ms = median_ms(fwd, iters)
            both_ms = median_ms(fwd_bwd, iters)
    fwd_flop = 2.0 * b * h * t * t * d
    tflops = 3.5 * fwd_flop / (both_ms * 1e-3) / 1e12
    return {"B": b, "H": h, "T": t, "D": d, "fwd_ms": fwd_ms, "fwd_bwd_ms": both_ms,
            "fwd_tflops": fwd_flop / (fwd_ms * 1e-3) / 1e12, "fwd_bwd_tflops": tflops,
            "fraction_of_peak": tflops / PEAK_BF16_TFLOPS}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    backends = {"default": "default", "flash": SDPBackend.FLASH_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    results = {}
    for name, backend in backends.items():
        rows = []
        for shape in SHAPES:
            try:
                r = run_case(shape, backend, args.iters)
            except RuntimeError as e:  # a backend that does not take this shape
                r = {"B": shape[0], "H": shape[1], "T": shape[2], "D": shape[3],
                     "error": str(e).splitlines()[0]}
            rows.append(r)
            if "error" in r:
                print(f"{name:8s} {shape}: {r['error']}", file=sys.stderr)
            else:
                print(f"{name:8s} {shape}: fwd {r['fwd_ms']:.3f} ms  fwd+bwd {r['fwd_bwd_ms']:.3f} ms "
                      f"({r['fwd_bwd_tflops']:.0f} TFLOP/s, {100 * r['fraction_of_peak']:.1f}% of peak)",
                      file=sys.stderr)
        results[name] = rows
    print(json.dumps({"bench": "torch_attention", "device": torch.cuda.get_device_name(),
                      "torch": torch.__version__, "dtype": "bf16", "causal": True,
                      "peak_bf16_tflops": PEAK_BF16_TFLOPS, "iters": args.iters,
                      "results": results}))


if __name__ == "__main__":
    main()
