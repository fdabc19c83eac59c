"""Cohort step against the solo steps it replaces, side by side in one run.

A cohort step (`segkd.engine.train`: one batch drawn and augmented, one teacher forward for the
union of its students' taps, then each student's step) against the sum of the solo steps of the same
students (each draws and augments its batch and runs `step_losses`: its own teacher forward, for its
own taps), at one size, batch 8, for each teacher. The
students are kd, at, sp and freq with high = kd / regularize / none, with the study's weights. Both
run the trainer's functions (`teacher_forward`, `student_losses`, `step_losses`) and the trainer's
optimiser; each repeat times the cohort step and the six solo steps back to back, so drift hits both
alike; the ratio is the median of the per-repeat ratios, after one warm-up repeat. The teacher
forward alone (all taps) is timed too, to show where the saving comes from.

Memory: the peak resident set (VmHWM) of this process after all steps, and the teacher's and
students' parameter and optimiser memory.

    .venv/bin/python benchmarks/cohort_step.py [--size 180x240] [--teachers segformer_b2 segformer_b4]
                                              [--threads 1] [--repeats 5] [--precision auto]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import torch

from segkd.data.augment import Augment
from segkd.distill.registry import build_distillation
from segkd.engine.allocator import retain_freed_memory
from segkd.engine.evaluate import resolve_precision
from segkd.engine.optim import create_optimizer
from segkd.engine.train import step_losses, student_losses, teacher_forward
from segkd.models import create_model

# the study's weights, as train_step.py benchmarks them; freq with each of its high modes
from models import cpu_name  # noqa: E402  (sibling scripts)
from train_step import BATCH, TRAIN, METHODS as STEP_METHODS  # noqa: E402

METHODS = {name: terms for name, terms in STEP_METHODS.items() if name != "freq"} | {
    f"freq-{high}": {"freq": {**STEP_METHODS["freq"]["freq"], "high": high}} for high in ("kd", "regularize", "none")}


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024


class Student:
    """A B0 student with its terms and optimiser, stepped the way the trainer steps it."""

    def __init__(self, terms: dict, teacher):
        self.model = create_model("segformer_b0", drop_path_rate=0.1).to(memory_format=torch.channels_last).train()
        self.distill = build_distillation(terms, self.model.feature_dims, teacher.feature_dims)
        self.optimizer = create_optimizer(self.model, self.distill, TRAIN)

    def update(self, losses: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizer.step()


def timed(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def measure(teacher_name: str, size: tuple[int, int], repeats: int, precision: str) -> dict:
    torch.manual_seed(0)
    teacher = create_model(teacher_name).to(memory_format=torch.channels_last).eval().requires_grad_(False)
    students = {name: Student(terms, teacher) for name, terms in METHODS.items()}
    pool = torch.randint(0, 256, (64, *size, 3), dtype=torch.uint8), torch.randint(0, 11, (64, *size))
    augment, rng = Augment(), torch.Generator().manual_seed(0)  # the study's augmentation

    def batch():  # as `next_batch`: a draw from the fold's images, augmented
        idx = torch.randperm(len(pool[0]), generator=rng)[:BATCH]
        x, y = augment(pool[0][idx], pool[1][idx], rng)
        return x.contiguous(memory_format=torch.channels_last), y

    taps = set().union(*(s.distill.taps for s in students.values()))

    def cohort():
        x, y = batch()
        t_out = teacher_forward(teacher, x, taps, precision)
        for s in students.values():
            s.update(student_losses(s.model, x, y, precision, t_out, s.distill))

    def solo(s):
        def step():
            x, y = batch()
            s.update(step_losses(s.model, x, y, precision, teacher, s.distill))
        return step

    rows = []
    for r in range(repeats + 1):  # the first is warm-up
        x, _ = batch()
        row = {"cohort": timed(cohort), "teacher": timed(lambda: teacher_forward(teacher, x, taps, precision))}
        row.update({name: timed(solo(s)) for name, s in students.items()})
        if r:
            rows.append(row)
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    ratio = statistics.median(row["cohort"] / sum(row[name] for name in METHODS) for row in rows)
    return {"median": med, "ratio": ratio, "solo_sum": sum(med[name] for name in METHODS)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="180x240", help="HxW (default: %(default)s)")
    p.add_argument("--teachers", nargs="+", default=["segformer_b2", "segformer_b4"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", default="auto", help="auto (the trainer's default) | fp32 | bf16")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as a training process does
    size = tuple(int(v) for v in args.size.split("x"))
    precision = resolve_precision(args.precision, torch.device("cpu"))
    print(f"# cohort step vs the solo steps it replaces: B0 students {', '.join(METHODS)}; batch {BATCH}, "
          f"{args.size}, {args.threads} thread(s), {precision}, {args.repeats} repeats (+1 warm-up); {cpu_name()}, "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'teacher':<14}{'teacher fwd s':>14}{'solo sum s':>12}{'cohort s':>10}{'cohort/solo':>13}")
    for name in args.teachers:
        got = measure(name, size, args.repeats, precision)
        med = got["median"]
        print(f"{name:<14}{med['teacher']:>14.3f}{got['solo_sum']:>12.3f}{med['cohort']:>10.3f}{got['ratio']:>13.3f}")
        print("  solo steps s: " + ", ".join(f"{m} {med[m]:.3f}" for m in METHODS))
    print(f"peak resident memory of this process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
