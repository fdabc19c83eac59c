"""Train one run (a teacher, the no-KD baseline, or a distilled student) on one fold, then evaluate it.

The loop fits on a screen: sample a batch, augment it on the device, forward the student (and the
frozen teacher under inference mode), sum the task loss and the weighted distillation terms, step
AdamW and the poly schedule. Everything that decides the numbers (data order, augmentation, dropout,
drop path) is drawn from seeded generators whose states are checkpointed, so a run killed at any
point and resumed ends with exactly the metrics of an uninterrupted run (on CPU; on CUDA some
kernels, e.g. atomics in upsampling backward, are not bitwise deterministic).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from segkd.classes import IGNORE_INDEX, NUM_CLASSES
from segkd.data.augment import Augment
from segkd.distill.registry import build_distillation
from segkd.engine import checkpoint as ckpt_io
from segkd.engine.allocator import retain_freed_memory
from segkd.engine.batches import BatchSampler, load_fold
from segkd.engine.evaluate import autocast, evaluate, resolve_device, resolve_precision
from segkd.engine.optim import create_optimizer, create_scheduler
from segkd.errors import TrainingDiverged, UserError
from segkd.models import create_model

# partial.pt holds the periodic checkpoints of a run in progress; checkpoint.pt is written once, at the
# end. Workflow managers delete a failed job's declared outputs, so the resumable state must not be one.
CHECKPOINT, PARTIAL, METRICS = "checkpoint.pt", "partial.pt", "metrics.json"


def load_teacher(spec: dict, device: torch.device) -> torch.nn.Module:
    """The frozen teacher of a student run, after checking it was trained on the same data and fold."""
    path = spec["teacher_checkpoint"]
    if not path or not Path(path).is_file():
        raise UserError(f"teacher checkpoint not found: {path} (train the teacher {spec['teacher']} first)")
    ckpt = ckpt_io.load(path)
    t_spec = ckpt["spec"]
    if not ckpt.get("finished"):
        raise UserError(f"{path}: the teacher run is not finished (iteration {ckpt['iteration']})")
    for key, mine, theirs in (("dataset", spec["dataset"], t_spec["dataset"]), ("fold", spec["fold"], t_spec["fold"]),
                              ("model", spec["teacher"], t_spec["model"]),
                              ("num_classes", NUM_CLASSES, ckpt["num_classes"])):
        if mine != theirs:
            raise UserError(f"{path}: teacher {key} is {theirs!r}, the student run needs {mine!r}")
    teacher = create_model(t_spec["model"], num_classes=ckpt["num_classes"])
    teacher.load_state_dict(ckpt["model"])
    teacher.to(device).to(memory_format=torch.channels_last).eval().requires_grad_(False)
    return teacher


class Progress:
    """A tqdm bar on a terminal; plain periodic lines in logs (CI, cluster jobs)."""

    def __init__(self, total: int, start: int, name: str, every: int):
        self.tty = sys.stderr.isatty()
        self.every, self.total, self.name = every, total, name
        self.bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True) if self.tty else None

    def update(self, iteration: int, values: dict) -> None:
        text = {k: f"{v:.4g}" for k, v in values.items()}
        if self.bar is not None:
            self.bar.update(iteration - self.bar.n)
            self.bar.set_postfix(text, refresh=False)
        elif iteration % self.every == 0 or iteration == self.total:
            fields = " ".join(f"{k}={v}" for k, v in text.items())
            print(f"[{self.name}] it {iteration}/{self.total} {fields}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _tracker(spec: dict, run_id: str | None):
    if not spec.get("tracking", {}).get("enabled", True):
        return None
    from segkd import tracking  # mlflow is imported only where runs are logged

    return tracking.start_run_for(spec, run_id=run_id)


def step_losses(model, x: torch.Tensor, y: torch.Tensor, precision: str, teacher=None, distill=None) -> dict:
    """The loss terms of one training step (task cross-entropy, then each distillation term).

    One autocast block for student, teacher and terms, so adapters see the student's dtypes. The frozen
    teacher runs under inference mode (no autograd graph, no saved activations) and computes only the
    taps the terms read.
    """
    with autocast(x.device, precision):
        s_out = model(x)
        logits = F.interpolate(s_out.logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        terms = {"task": F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)}
        if teacher is not None:
            with torch.inference_mode():
                t_out = teacher(x, taps=distill.taps)
            terms.update(distill(s_out, t_out, y))
    return terms


def train(spec: dict, out: str | Path) -> dict:
    """Run `spec` in directory `out` (resuming from its checkpoint if present); return the metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = spec["train"]
    device = resolve_device(cfg["device"])
    precision = resolve_precision(cfg["precision"], device)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    if device.type == "cpu":
        retain_freed_memory()
    name = f"{spec['role']}:{spec['model']}" + (f"/{spec['method']}/seed{spec['seed']}" if spec["role"] == "student" else "")
    name += f"/fold{spec['fold']}"

    ckpt_io.seed_everything(spec["seed"] * 1000 + spec["fold"])
    data = load_fold(spec["prepared"], spec["folds_file"], spec["fold"], spec["dataset"], pin=device.type == "cuda")
    model = create_model(spec["model"], num_classes=NUM_CLASSES, drop_path_rate=cfg["drop_path"],
                         pretrained=spec.get("pretrained"))
    model.to(device).to(memory_format=torch.channels_last).train()
    teacher, distill = None, None
    if spec["terms"]:
        teacher = load_teacher(spec, device)
        distill = build_distillation(spec["terms"], model.feature_dims, teacher.feature_dims,
                                     where=f"methods.{spec['method']}").to(device)
    optimizer = create_optimizer(model, distill, cfg)
    scheduler = create_scheduler(optimizer, spec["iterations"], cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    sampler = BatchSampler(len(data.train_images), cfg["batch_size"], seed=spec["seed"])
    gen = torch.Generator(device=device).manual_seed(spec["seed"] + 10_000 * spec["fold"])
    augment = Augment(scale=tuple(cfg["augment"]["scale"]), flip=cfg["augment"]["flip"],
                      photometric=cfg["augment"]["photometric"], crop=cfg.get("crop"))

    start, history, elapsed, run_id = 0, [], 0.0, None
    ckpt_path, partial_path = out / CHECKPOINT, out / PARTIAL
    resume_from = next((p for p in (ckpt_path, partial_path) if p.exists()), None)
    if resume_from is not None:
        state = ckpt_io.load(resume_from)
        if state["spec"] != spec:
            raise UserError(f"{resume_from} was written by a different run spec; remove {out} to start afresh")
        model.load_state_dict(state["model"])
        if distill is not None:
            distill.load_state_dict(state["distill"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        gen.set_state(state["data_rng"])
        ckpt_io.restore_rng(state["rng"])
        start, history, elapsed, run_id = state["iteration"], state["history"], state["wall_time_s"], state["mlflow_run_id"]
        print(f"[{name}] resuming from iteration {start}", file=sys.stderr, flush=True)
    else:
        scheduler.step_update(0)

    tracker = _tracker(spec, run_id)
    run_id = tracker.run_id if tracker else None

    def save(iteration: int, finished: bool) -> None:
        ckpt_io.save_atomic({
            "spec": spec, "iteration": iteration, "finished": finished, "num_classes": NUM_CLASSES,
            "model": model.state_dict(), "distill": distill.state_dict() if distill is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "sampler": sampler.state_dict(), "data_rng": gen.get_state(), "rng": ckpt_io.capture_rng(),
            "history": history, "wall_time_s": elapsed, "mlflow_run_id": run_id,
        }, ckpt_path if finished else partial_path)

    progress = Progress(spec["iterations"], start, name, cfg["log_every"])
    status = "FAILED"
    try:
        tic, window_images = time.perf_counter(), 0
        for it in range(start, spec["iterations"]):
            idx = sampler.next()
            images = data.train_images[idx].to(device, non_blocking=True)
            labels = data.train_labels[idx].to(device, non_blocking=True)
            x, y = augment(images, labels, gen)
            x = x.contiguous(memory_format=torch.channels_last)
            terms = step_losses(model, x, y, precision, teacher, distill)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                raise TrainingDiverged(f"non-finite loss at iteration {it + 1}: {values}; "
                                       f"the last good checkpoint ({ckpt_path}) is kept")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step_update(it + 1)
            window_images += x.shape[0]
            done = it + 1
            if done % cfg["log_every"] == 0 or done == spec["iterations"]:
                now = time.perf_counter()
                elapsed += now - tic
                record = {"iteration": done, "lr": optimizer.param_groups[0]["lr"], "loss": loss.item(),
                          **{k: v.item() for k, v in terms.items()}, "images_per_s": window_images / (now - tic)}
                history.append(record)
                if tracker:
                    tracker.log_metrics(done, {k: v for k, v in record.items() if k != "iteration"})
                progress.update(done, {k: record[k] for k in ("loss", "lr", "images_per_s")})
                tic, window_images = time.perf_counter(), 0
            if done % cfg["checkpoint_every"] == 0 and done < spec["iterations"]:
                save(done, finished=False)
        progress.close()
        if start < spec["iterations"] or not ckpt_path.exists():
            save(spec["iterations"], finished=True)
        partial_path.unlink(missing_ok=True)

        metrics = evaluate(model, data.test_images, data.test_labels, batch_size=cfg["eval_batch_size"],
                           device=device, precision=precision)
        train_images = spec["iterations"] * cfg["batch_size"]
        result = {
            "study": spec["study"], "role": spec["role"], "model": spec["model"], "teacher": spec["teacher"],
            "method": spec["method"], "seed": spec["seed"], "fold": spec["fold"], "dataset": spec["dataset"]["name"],
            "precision": precision, "device": device.type, **metrics, "params": spec, "mlflow_run_id": run_id, "wall_time_s": elapsed,
            "images_per_s": train_images / elapsed if elapsed > 0 else math.nan,
            "iterations": spec["iterations"], "history": history,
        }
        tmp = out / f".{METRICS}.tmp"
        tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, out / METRICS)
        if tracker:
            tracker.log_final(result)
            tracker.log_artifact(out / METRICS)
            _log_confusion_plot(tracker, result, out)
        status = "FINISHED"
        return result
    finally:
        progress.close()
        if tracker:
            tracker.close(status)


def _log_confusion_plot(tracker, result: dict, out: Path) -> None:
    from segkd.report import plots

    path = out / "confusion.png"
    plots.confusion_matrix(result["confusion"], f"{result['model']} {result['method'] or ''} fold{result['fold']}",
                           path=path)
    tracker.log_artifact(path)
