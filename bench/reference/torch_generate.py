#!/usr/bin/env python3
"""PyTorch reference for esper-bench-generate: a plain KV-cache decode loop of the same byte-level
GPT as torch_gpt.py (its GPT and Block modules, random init), weights in bf16, batch 1 and 8,
greedy, `--tokens` bytes after a 16-byte prompt: the prompt is one forward that fills the cache,
then one forward of one position per byte (q of the newest position against the cached K, V
with explicit softmax(q·Kᵀ/√D)·V: scaled_dot_product_attention builds a new cuDNN plan for every
new key length, which made an earlier version of this loop run at ~23 tokens/s), the next byte
chosen on the device (argmax) and fed back without a host sync per byte. Tokens/s of the decode loop. Human lines on stderr, JSON on the last
stdout line. Usage: torch_generate.py [--tokens N] [--layers L --width C --heads H --context T]
(default: both 12x768 and 6x384 at context 1024)
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt import GPT  # noqa: E402


def block_step(blk, x, kc, vc, pos):
    """x [B, t, C] at positions pos..pos+t-1; kc, vc [B, H, T, D] caches, filled in place."""
    b, t, c = x.shape
    h = blk.h
    q, k, v = blk.qkv(blk.ln1(x)).split(c, dim=2)
    q, k, v = (z.view(b, t, h, c // h).transpose(1, 2) for z in (q, k, v))
    kc[:, :, pos:pos + t] = k
    vc[:, :, pos:pos + t] = v
    keys, vals = kc[:, :, :pos + t], vc[:, :, :pos + t]
    if t == 1:
        a = torch.softmax((q @ keys.transpose(-2, -1)).float() * (c // h) ** -0.5, dim=-1)
        a = a.to(vals.dtype) @ vals
    else:  # the prompt (pos == 0): causal
        a = F.scaled_dot_product_attention(q, keys, vals, is_causal=True)
    x = x + blk.proj(a.transpose(1, 2).reshape(b, t, c))
    return x + blk.fc2(F.gelu(blk.fc(blk.ln2(x)), approximate="tanh"))


@torch.no_grad()
def generate(model, prompt, tokens, caches):
    b, t = prompt.shape
    x = model.wte(prompt) + model.wpe(torch.arange(t, device=prompt.device))
    for blk, (kc, vc) in zip(model.blocks, caches):
        x = block_step(blk, x, kc, vc, 0)
    nxt = (model.lnf(x[:, -1:]) @ model.wte.weight.t()).argmax(-1)
    out = [nxt]
    for i in range(tokens - 1):
        pos = t + i
        x = model.wte(nxt) + model.wpe.weight[pos]
        for blk, (kc, vc) in zip(model.blocks, caches):
            x = block_step(blk, x, kc, vc, pos)
        nxt = (model.lnf(x) @ model.wte.weight.t()).argmax(-1)
        out.append(nxt)
    return torch.cat(out, dim=1)


def run(layers, width, heads, context, batch, tokens):
    torch.manual_seed(1)
    model = GPT(layers, width, heads, context).cuda().to(torch.bfloat16).eval()
    d = width // heads
    caches = [(torch.zeros(batch, heads, context, d, device="cuda", dtype=torch.bfloat16),
               torch.zeros(batch, heads, context, d, device="cuda", dtype=torch.bfloat16))
              for _ in range(layers)]
    prompt = torch.tensor([[97 + i % 26 for i in range(16)]] * batch, device="cuda")
    generate(model, prompt, 32, caches)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    generate(model, prompt, 1, caches)  # the prefill alone, to subtract
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    generate(model, prompt, tokens, caches)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    decode_s = (t2 - t1) - (t1 - t0)
    tok_s = batch * (tokens - 1) / decode_s
    r = {"layers": layers, "width": width, "heads": heads, "context": context, "batch": batch,
         "tokens": tokens, "tokens_per_s": tok_s, "step_us": 1e6 * decode_s / (tokens - 1)}
    print(f"torch {layers}x{width} B={batch}: {tok_s:.0f} tokens/s "
          f"({r['step_us']:.1f} us/step)", file=sys.stderr)
    return r


def main():
    ap = argparse.ArgumentParser()
    for k, v in (("tokens", 512), ("layers", 0), ("width", 0), ("heads", 0), ("context", 1024)):
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    models = [(12, 768, 12), (6, 384, 6)] if args.layers == 0 else [
        (args.layers, args.width, args.heads)]
    results = [run(l, c, h, args.context, int(b), args.tokens) for (l, c, h) in models
               for b in args.batches.split(",")]
    print(json.dumps({"bench": "torch_generate", "device": torch.cuda.get_device_name(),
                      "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
