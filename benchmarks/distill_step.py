"""Step time of every distillation method against the plain student step, side by side in one run.

A step is what `segkd train` does per iteration: student forward + task loss, the frozen teacher's
forward under inference mode, the method's terms, backward and the AdamW update; batch 8,
channels_last, fp32 and bf16 autocast. Methods alternate within each repeat so that load from other
processes hits all alike; the table shows medians after warm-up and the ratio to the plain step.

    .venv/bin/python benchmarks/distill_step.py [--size 96 128] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from segkd.distill.registry import build_distillation
from segkd.engine.evaluate import autocast
from segkd.engine.optim import create_optimizer
from segkd.models import create_model

METHODS = {
    "baseline (no teacher)": None,
    "kd": {"kd": {"weight": 0.01}},
    "at": {"at": {"weight": 1000.0}},
    "sp": {"sp": {"weight": 1.0}},
    "fitnet": {"fitnet": {"weight": 1.0}},
    "cwd": {"cwd": {"weight": 3.0}},
    "freq (regularize)": {"freq": {"weight": 0.1, "ratio": 0.2, "high": "regularize"}},
    "freq (kd)": {"freq": {"weight": 0.1, "ratio": 0.2, "high": "kd"}},
}
TRAIN = {"lr": 6e-4, "head_lr_mult": 10.0, "weight_decay": 0.01}


def make_step(student, teacher, terms, x, y, precision):
    device = torch.device("cpu")
    distill = build_distillation(terms, student.feature_dims, teacher.feature_dims) if terms else None
    optimizer = create_optimizer(student, distill, TRAIN)

    def step():
        with autocast(device, precision):
            out = student(x)
            logits = F.interpolate(out.logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits.float(), y, ignore_index=255)
        if distill is not None:
            with torch.inference_mode(), autocast(device, precision):
                t_out = teacher(x)
            with autocast(device, precision):
                loss = loss + sum(distill(out, t_out, y).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = args.size
    x = torch.randn(8, 3, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 11, (8, h, w))
    teacher = create_model("segformer_b2", num_classes=11).to(memory_format=torch.channels_last).eval()
    teacher.requires_grad_(False)
    print(f"batch 8, {h}x{w}, {args.threads} thread(s), median of {args.repeats} after {args.warmup} warm-up steps\n")
    print("| precision | method | step (s) | images/s | x plain student step |")
    print("|---|---|---:|---:|---:|")
    for precision in args.precisions:
        steps = {}
        for name, terms in METHODS.items():
            student = create_model("segformer_b0", num_classes=11, drop_path_rate=0.1)
            steps[name] = make_step(student.to(memory_format=torch.channels_last).train(), teacher, terms, x, y, precision)
        times = {name: [] for name in steps}
        for r in range(args.warmup + args.repeats):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step()
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["baseline (no teacher)"])
        for name, values in times.items():
            med = statistics.median(values)
            print(f"| {precision} | {name} | {med:.3f} | {8 / med:.1f} | {med / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
