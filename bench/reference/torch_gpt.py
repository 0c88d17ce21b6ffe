#!/usr/bin/env python3
"""PyTorch reference for esper-bench-transformer: the same byte-level GPT (pre-LayerNorm blocks,
causal multi-head attention through scaled_dot_product_attention, GELU (tanh) MLP of 4·C, learned
positions, head tied to the token embedding, init N(0, 0.02) with the projections scaled by
1/√(2L)), AdamW (fused, weight decay 0.1, grad-norm clip 1.0), bf16 autocast; eager and
torch.compile. One step = zero_grad, forward, loss, backward, clip, step, with the loss read back
(.item()) as esper's Trainer does. Tokens/s, MFU (same FLOP count as esper's bench) and peak
memory (torch.cuda.max_memory_allocated; also the allocator's peak reserve and the device memory the
run took, free memory before the model minus after the timed steps, as esper's bench measures it).
Human lines on stderr, JSON on the last stdout line.
Usage: torch_gpt.py [--iters N] [--layers L --width C --heads H --context T --batch B]
"""
import argparse
import gc
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_BF16 = 989.4e12


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.ln2 = nn.LayerNorm(c)
        self.fc = nn.Linear(c, 4 * c)
        self.fc2 = nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, c))
        return x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, c, h, t):
        super().__init__()
        self.wte = nn.Embedding(256, c)
        self.wpe = nn.Embedding(t, c)
        self.blocks = nn.ModuleList(Block(c, h) for _ in range(layers))
        self.lnf = nn.LayerNorm(c)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.lnf(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.float().view(-1, 256), targets.view(-1))


def run(mode, args):
    # Device memory the run takes, measured as esper-bench-transformer measures it (free device
    # memory before the model and after the timed steps: the caching allocator's reserve, cuBLAS
    # workspaces and kernels loaded on first use included); the previous mode's cache is emptied.
    gc.collect()
    torch.cuda.empty_cache()
    free0 = torch.cuda.mem_get_info()[0]
    torch.manual_seed(1)
    model = GPT(args.layers, args.width, args.heads, args.context).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    fwd = torch.compile(model) if mode == "compile" else model
    idx = torch.randint(0, 256, (args.batch, args.context), device="cuda")
    tgt = torch.randint(0, 256, (args.batch, args.context), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(5 if mode == "eager" else 10):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        loss = step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / args.iters
    tokens = args.batch * args.context
    flops_per_token = 6 * n_params + 6 * args.layers * args.context * args.width
    r = {"mode": mode, "params": n_params, "step_ms": step_s * 1e3, "tokens_per_s": tokens / step_s,
         "mfu": tokens / step_s * flops_per_token / PEAK_BF16,
         "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
         "reserved_mem_gib": torch.cuda.max_memory_reserved() / 2**30,
         "device_mem_gib": (free0 - torch.cuda.mem_get_info()[0]) / 2**30, "loss": loss}
    print(f"{mode:8s}: {r['step_ms']:.2f} ms/step, {r['tokens_per_s']:.0f} tokens/s, "
          f"MFU {100 * r['mfu']:.1f}%, peak {r['peak_mem_gib']:.2f} GiB allocated, "
          f"{r['reserved_mem_gib']:.2f} GiB reserved, {r['device_mem_gib']:.2f} GiB of the device",
          file=sys.stderr)
    return r


def main():
    ap = argparse.ArgumentParser()
    for k, v in (("iters", 30), ("layers", 6), ("width", 384), ("heads", 6), ("context", 256),
                 ("batch", 64)):
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--modes", default="eager,compile")
    args = ap.parse_args()
    results = [run(m, args) for m in args.modes.split(",")]
    print(json.dumps({"bench": "torch_gpt", "device": torch.cuda.get_device_name(),
                      "torch": torch.__version__, "layers": args.layers, "width": args.width,
                      "context": args.context, "batch": args.batch, "results": results}))


if __name__ == "__main__":
    main()
