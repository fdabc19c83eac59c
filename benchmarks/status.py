"""How long `segkd status` takes on a study of 500+ runs, as a function call and as a command.

The run tree is written to a temporary directory: the CamVid schedule (a log point every 50 of its
40k steps, so 800 history records per metrics.json) with two teachers, five seeds and a 25-method
grid, its runs a fixed mix of done, stale, running, interrupted, failed and missing; every started
run has a log. Reading metrics.json in full is timed beside status's reader, which skips the history.
The command's time includes the interpreter, the study's validation (which imports torch, through the
distillation registry) and the preflight; the study load alone is timed beside it, so the difference
is status's own cost.

    .venv/bin/python benchmarks/status.py [--repeats N]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from segkd import layout
from segkd.classes import CLASS_NAMES
from segkd.config import Study, spec_hash, validate
from segkd.runs import expected_runs
from segkd.status import read_metrics, study_status

REPO = Path(__file__).resolve().parents[1]
SHARES = {"done": 0.5, "stale": 0.1, "running": 0.03, "interrupted": 0.05, "failed": 0.05}  # the rest missing


def bench_params() -> dict:
    """studies/camvid.yaml on synthetic data (no dataset root, no pretrained files to check), 5 seeds and a
    5 x 4 freq grid beside five other methods."""
    params = yaml.safe_load((REPO / "studies" / "camvid.yaml").read_text())
    params["dataset"] = {"name": "synthetic", "height": 360, "width": 480}
    params["models"]["pretrained"] = {}
    params["seeds"] = [0, 1, 2, 3, 4]
    params["methods"] = {
        "kd": {"kd": {"weight": 0.01}}, "at": {"at": {"weight": 1000.0}}, "sp": {"sp": {"weight": 1.0}},
        "fitnet": {"fitnet": {"weight": 1.0}}, "cwd": {"cwd": {"weight": 3.0}},
        "freq": {"freq": {"weight": 0.1, "ratio": [0.1, 0.2, 0.4, 0.6, 0.8], "high": ["kd", "regularize", "none",
                                                                                         "amplitude"]}},
    }
    return params


def bench_study() -> Study:
    return Study(validate(bench_params()))


def metrics_for(spec: dict, rng: random.Random) -> dict:
    """A metrics.json as train() writes it, history and confusion matrix included."""
    n = spec["iterations"] // spec["train"]["log_every"]
    terms = list(spec["terms"])
    history = [{"iteration": (i + 1) * spec["train"]["log_every"], "lr": rng.random() * 6e-5, "loss": rng.random(),
                "task": rng.random(), **{t: rng.random() for t in terms}, "images_per_s": 20 + rng.random()}
               for i in range(n)]
    iou = {name: rng.random() for name in CLASS_NAMES}
    speed = {"teacher": 12.0, "student": 30.0}[spec["role"]] * (0.9 + 0.2 * rng.random())
    images = spec["iterations"] * spec["train"]["batch_size"]
    return {
        "study": spec["study"], "role": spec["role"], "model": spec["model"], "teacher": spec["teacher"],
        "method": spec["method"], "seed": spec["seed"], "fold": spec["fold"], "dataset": spec["dataset"]["name"],
        "precision": "bf16", "device": "cuda", "iou": iou, "acc": dict(iou), "mIoU": 0.6, "mPA": 0.7, "aAcc": 0.9,
        "confusion": [[rng.randrange(10**7) for _ in CLASS_NAMES] for _ in CLASS_NAMES], "params": spec,
        "mlflow_run_id": "0" * 32, "wall_time_s": images / speed, "images_per_s": speed,
        "iterations": spec["iterations"], "history": history,
    }


def training_log(spec: dict, upto: int) -> str:
    every = spec["train"]["log_every"]
    return "".join(f"[{spec['role']}:{spec['model']}] it {i}/{spec['iterations']} loss=0.4321 lr=1.234e-05 "
                   f"images_per_s=29.87\n" for i in range(every, upto + 1, every))


def build_tree(study: Study, root: Path, seed: int = 0) -> dict[str, int]:
    """Write the run tree of `study` under root/runs and root/logs; returns the count of each state made."""
    rng = random.Random(seed)
    dead = subprocess.Popen(["true"])
    dead.wait()
    made = dict.fromkeys([*SHARES, "missing"], 0)
    for run in expected_runs(study):
        spec = run.spec(study)
        draw, state = rng.random(), "missing"
        for name, share in SHARES.items():
            if draw < share:
                state = name
                break
            draw -= share
        made[state] += 1
        if state == "missing":
            continue
        out, log = root / run.dir, root / run.log
        out.mkdir(parents=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        n = spec["iterations"]
        if state in ("done", "stale"):
            recorded = copy.deepcopy(spec)
            if state == "stale":
                recorded["train"]["lr"] = 1e-4
            (out / layout.METRICS).write_text(json.dumps(metrics_for(recorded, rng), indent=1, sort_keys=True) + "\n")
            log.write_text(training_log(spec, n))
            continue
        k = rng.randrange(1, n // 50) * 50
        progress = {"iteration": k, "iterations": n, "images_per_s": 29.5, "batch_size": spec["train"]["batch_size"],
                    "updated": time.time(), "pid": os.getpid() if state == "running" else dead.pid,
                    "host": socket.gethostname(), "spec_sha256": spec_hash(spec)}
        (out / layout.PROGRESS).write_text(json.dumps(progress))
        (out / layout.PARTIAL).write_bytes(b"")  # never opened by status
        text = training_log(spec, k)
        if state == "failed":
            text += ("Traceback (most recent call last):\n  File \"segkd/engine/train.py\", line 200, in train\n"
                     "    scaler.scale(loss).backward()\ntorch.OutOfMemoryError: CUDA out of memory. Tried to "
                     "allocate 2.00 GiB\n")
        log.write_text(text)
    return made


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    import torch

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    study = bench_study()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made = build_tree(study, root)
        (root / "params.yaml").write_text(yaml.safe_dump(bench_params()))
        metrics = sorted((root / "runs").rglob(layout.METRICS))
        size = statistics.mean(p.stat().st_size for p in metrics)
        print(f"{cpu_name()}")
        print(f"tree: {len(expected_runs(study))} runs: " + ", ".join(f"{v} {k}" for k, v in made.items()) +
              f"; {len(metrics)} metrics.json of {size / 1024:.0f} KB on average")

        full = median_time(lambda: [json.loads(p.read_bytes()) for p in metrics], args.repeats)
        cut = median_time(lambda: [read_metrics(p) for p in metrics], args.repeats)
        print(f"reading every metrics.json: {full * 1000:.0f} ms parsed in full, {cut * 1000:.0f} ms without history")

        status = study_status(study, root / "runs", root / "logs")
        assert {s: status.count(s) for s in made} == made, "the tree's states were not read back as written"
        function = median_time(lambda: study_status(study, root / "runs", root / "logs"), args.repeats)
        print(f"segkd.status.study_status: {function * 1000:.0f} ms (median of {args.repeats})")

        command = [sys.executable, "-m", "segkd", "status", "--params", "params.yaml"]
        load = [sys.executable, "-c", "from segkd.config import load_study; load_study('params.yaml', check_methods=False)"]
        cli = median_time(lambda: subprocess.run(command, cwd=root, check=True, capture_output=True), args.repeats)
        floor = median_time(lambda: subprocess.run(load, cwd=root, check=True, capture_output=True), args.repeats)
        print(f"`segkd status` command: {cli * 1000:.0f} ms (median of {args.repeats}); of which starting Python "
              f"and loading the study: {floor * 1000:.0f} ms")


if __name__ == "__main__":
    main()
