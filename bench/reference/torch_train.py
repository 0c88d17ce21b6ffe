#!/usr/bin/env python3
"""PyTorch eager reference for esper-bench-train: the same MLPs, loss and optimizer, same shapes.

784-128-128-10 at batch 128 (launch-bound) and 784-4096-4096-10 at batch 4096 (compute-bound),
ReLU, softmax cross-entropy, SGD with momentum 0.9 and weight decay 1e-4, fp32 with TF32 off.
One step = forward, loss, backward, optimizer.step() (zero_grad(set_to_none=True) first); the
data sits on the GPU already, and no step reads the loss back (as esper's pipelined figure).
Human lines on stderr, one JSON object on the last stdout line.
Usage: torch_train.py [--quick] [--iters N]
"""
import argparse
import json
import sys
import time

import torch


def make_model(width):
    return torch.nn.Sequential(
        torch.nn.Linear(784, width), torch.nn.ReLU(),
        torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, 10)).cuda()


def time_case(width, batch, iters, warmup):
    torch.manual_seed(1)
    model = make_model(width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.rand(batch, 784, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        loss = step()
    torch.cuda.synchronize()
    us = (time.perf_counter() - t0) * 1e6 / iters
    return us, float(loss.item())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iters", type=int, default=0)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cases = [("default", 128, 128), ("large", 4096, 4096)]
    results = []
    for name, width, batch in cases:
        iters = args.iters or ((10 if args.quick else 50) if width > 1024 else (50 if args.quick else 500))
        warmup = 5 if width > 1024 else 50
        us, loss = time_case(width, batch, iters, warmup)
        print(f"{name:8s} 784-{width}-{width}-10 batch {batch}: {us:.1f} us/step "
              f"({batch * 1e6 / us:.0f} samples/s)", file=sys.stderr)
        results.append({"model": name, "layers": f"784-{width}-{width}-10", "batch": batch,
                        "iters": iters, "us_per_step": round(us, 2),
                        "samples_per_s": round(batch * 1e6 / us, 1), "last_loss": loss})
    print(json.dumps({"bench": "torch_train", "torch": torch.__version__,
                      "device": torch.cuda.get_device_name(0), "precision": "fp32",
                      "tf32": False, "results": results}))


if __name__ == "__main__":
    main()
