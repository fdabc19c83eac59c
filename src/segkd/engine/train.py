"""Train one run (a teacher, the no-KD baseline, or a distilled student) on one fold, then evaluate it.

The loop fits on a screen: sample a batch, augment it on the device, forward the student (and the
frozen teacher under inference mode), sum the task loss and the weighted distillation terms, step
AdamW and the poly schedule. Everything that decides the numbers (data order, augmentation, dropout,
drop path) is drawn from seeded generators whose states are checkpointed, so a run killed at any
point and resumed ends with exactly the metrics of an uninterrupted run (on CPU; on CUDA some
kernels, e.g. atomics in upsampling backward, are not bitwise deterministic).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from segkd import layout
from segkd.classes import IGNORE_INDEX, NUM_CLASSES
from segkd.data.augment import Augment
from segkd.distill.registry import build_distillation
from segkd.engine import checkpoint as ckpt_io
from segkd.engine import rundir
from segkd.engine.batches import BatchSampler, FoldData, load_fold
from segkd.engine.evaluate import autocast, evaluate, resolve_device, resolve_precision
from segkd.engine.optim import create_optimizer, create_scheduler
from segkd.errors import TrainingDiverged, UserError
from segkd.models import create_model

CHECKPOINT, PARTIAL, METRICS = layout.CHECKPOINT, layout.PARTIAL, layout.METRICS  # (see segkd.layout)


def load_teacher(spec: dict, device: torch.device, data_identity: dict | None = None) -> torch.nn.Module:
    """The frozen teacher of a student run, after checking it was trained on the same data and fold."""
    path = spec["teacher_checkpoint"]
    if not path or not Path(path).is_file():
        raise UserError(f"teacher checkpoint not found: {path} (train the teacher {spec['teacher']} first)")
    ckpt = ckpt_io.load_run_checkpoint(path)
    t_spec = ckpt["spec"]
    if not ckpt.get("finished"):
        raise UserError(f"{path}: the teacher run is not finished (iteration {ckpt['iteration']})")
    for key, mine, theirs in (("dataset", spec["dataset"], t_spec["dataset"]), ("fold", spec["fold"], t_spec["fold"]),
                              ("model", spec["teacher"], t_spec["model"]),
                              ("num_classes", NUM_CLASSES, ckpt["num_classes"])):
        if mine != theirs:
            raise UserError(f"{path}: teacher {key} is {theirs!r}, the student run needs {mine!r}")
    if data_identity is not None and ckpt.get("data", data_identity) != data_identity:
        raise UserError(f"{path}: the teacher was trained on other prepared data or another split of fold "
                        f"{spec['fold']}; re-train the teacher on this data")
    teacher = create_model(t_spec["model"], num_classes=ckpt["num_classes"])
    ckpt_io.load_model_state(teacher, ckpt, path)
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


@dataclass
class TrainingState:
    """Everything a run's numbers depend on between two steps; a checkpoint holds exactly this."""

    model: torch.nn.Module
    distill: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    sampler: BatchSampler
    data_rng: torch.Generator

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(),
                "distill": self.distill.state_dict() if self.distill is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "sampler": self.sampler.state_dict(),
                "data_rng": self.data_rng.get_state(), "rng": ckpt_io.capture_rng()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.distill is not None:
            self.distill.load_state_dict(state["distill"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.data_rng.set_state(state["data_rng"])
        ckpt_io.restore_rng(state["rng"])


def build_state(spec: dict, data: FoldData, device: torch.device, precision: str):
    """(state, frozen teacher or None): the student, its teacher and distillation terms, optimiser,
    schedule and seeded data order of a run, created in this order (each draws initial weights from
    the seeded global generator)."""
    cfg = spec["train"]
    model = create_model(spec["model"], num_classes=NUM_CLASSES, drop_path_rate=cfg["drop_path"],
                         pretrained=spec.get("pretrained"))
    model.to(device).to(memory_format=torch.channels_last).train()
    teacher, distill = None, None
    if spec["terms"]:
        teacher = load_teacher(spec, device, data.identity)
        distill = build_distillation(spec["terms"], model.feature_dims, teacher.feature_dims,
                                     where=f"methods.{spec['method']}").to(device)
    optimizer = create_optimizer(model, distill, cfg)
    state = TrainingState(
        model=model, distill=distill, optimizer=optimizer,
        scheduler=create_scheduler(optimizer, spec["iterations"], cfg),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        sampler=BatchSampler(len(data.train_images), cfg["batch_size"], seed=spec["seed"]),
        data_rng=torch.Generator(device=device).manual_seed(spec["seed"] + 10_000 * spec["fold"]),
    )
    return state, teacher


def code_fingerprint(spec: dict) -> str:
    """The fingerprint of the code this run executes (segkd.fingerprint): a checkpoint written by other
    code is not resumed, since the resumed run would mix two versions of the computation."""
    from segkd import fingerprint

    return fingerprint.fingerprint(fingerprint.JOB_CODE["student" if spec["terms"] else "train"])


def resume(out: Path, spec: dict, state: TrainingState, code: str, name: str) -> tuple[int, list, float]:
    """Load the run's last checkpoint into `state`: (iteration, history, training seconds) to go on from;
    (0, [], 0.0) for a new run."""
    path = next((p for p in (out / layout.CHECKPOINT, out / layout.PARTIAL) if p.exists()), None)
    if path is None:
        return 0, [], 0.0
    saved = ckpt_io.load(path)
    if saved["spec"] != spec:
        raise UserError(f"{path} was written by a different run spec; remove {out} to start afresh")
    if saved.get("code", code) != code:
        print(f"[{name}] {path.name} was written by other code (fingerprint {saved['code']}, now {code}); "
              "starting afresh", file=sys.stderr, flush=True)
        return 0, [], 0.0
    state.load_state_dict(saved)
    print(f"[{name}] resuming from iteration {saved['iteration']}", file=sys.stderr, flush=True)
    return saved["iteration"], saved["history"], saved["wall_time_s"]


def open_tracker(spec: dict, out: Path):
    """The run's MLflow run (None when tracking is off): the one an earlier, interrupted attempt of the
    same spec created, else a new one, recorded in the run directory at once so that a job killed
    before its first checkpoint is continued by its retry instead of left RUNNING beside a second run."""
    if not spec.get("tracking", {}).get("enabled", True):
        return None
    from segkd import tracking  # mlflow is imported only where runs are logged

    tracker = tracking.start_run_for(spec, run_id=rundir.recorded_mlflow_run(out, spec))
    rundir.record_mlflow_run(out, spec, tracker.run_id)
    return tracker


def run_name(spec: dict) -> str:
    name = f"{spec['role']}:{spec['model']}"
    if spec["role"] == "student":
        name += f"/{spec['method']}/seed{spec['seed']}"
    return f"{name}/fold{spec['fold']}"


def next_batch(state: TrainingState, data: FoldData, augment: Augment, device: torch.device):
    """The next (images, labels) of the run's seeded order, augmented on the device."""
    idx = state.sampler.next()
    images = data.train_images[idx].to(device, non_blocking=True)
    labels = data.train_labels[idx].to(device, non_blocking=True)
    x, y = augment(images, labels, state.data_rng)
    return x.contiguous(memory_format=torch.channels_last), y


def optimise(state: TrainingState, terms: dict, iteration: int, kept: Path) -> torch.Tensor:
    """One optimiser step on the sum of the loss terms (refused if it is not finite); the loss."""
    loss = sum(terms.values())
    if not torch.isfinite(loss):
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
        raise TrainingDiverged(f"non-finite loss at iteration {iteration}: {values}; "
                               f"the last good checkpoint ({kept}) is kept")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step_update(iteration)
    return loss


def train(spec: dict, out: str | Path) -> dict:
    """Run `spec` in directory `out` (resuming from its checkpoint if present); return the metrics."""
    out, cfg, name = Path(out), spec["train"], run_name(spec)
    device = resolve_device(cfg["device"])
    precision = resolve_precision(cfg["precision"], device)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    with rundir.run_directory(out):
        ckpt_io.seed_everything(spec["seed"] * 1000 + spec["fold"])
        data = load_fold(spec["prepared"], spec["folds_file"], spec["fold"], spec["dataset"], pin=device.type == "cuda")
        state, teacher = build_state(spec, data, device, precision)
        code = code_fingerprint(spec)
        start, history, elapsed = resume(out, spec, state, code, name)
        if start == 0:
            state.scheduler.step_update(0)
        tracker = open_tracker(spec, out)
    run_id = tracker.run_id if tracker else None
    if tracker:
        tracker.log_history(history)  # what an interrupted attempt had not got into the store yet
    augment = Augment(scale=tuple(cfg["augment"]["scale"]), flip=cfg["augment"]["flip"],
                      photometric=cfg["augment"]["photometric"], crop=cfg.get("crop"))
    model, optimizer = state.model, state.optimizer

    def save(iteration: int, finished: bool) -> None:
        ckpt_io.save_atomic({
            "spec": spec, "iteration": iteration, "finished": finished, "num_classes": NUM_CLASSES,
            "data": data.identity, "code": code, **state.state_dict(),
            "history": history, "wall_time_s": elapsed, "mlflow_run_id": run_id,
        }, out / (layout.CHECKPOINT if finished else layout.PARTIAL))

    progress = Progress(spec["iterations"], start, name, cfg["log_every"])
    status = "FAILED"
    try:
        tic, window_images = time.perf_counter(), 0
        for it in range(start, spec["iterations"]):
            x, y = next_batch(state, data, augment, device)
            terms = step_losses(model, x, y, precision, teacher, state.distill)
            loss = optimise(state, terms, it + 1, out / layout.PARTIAL)
            window_images += x.shape[0]
            done = it + 1
            if done % cfg["log_every"] == 0 or done == spec["iterations"]:
                now = time.perf_counter()
                elapsed += now - tic
                record = {"iteration": done, "lr": optimizer.param_groups[0]["lr"], "loss": loss.item(),
                          **{k: v.item() for k, v in terms.items()}, "images_per_s": window_images / (now - tic)}
                history.append(record)
                if tracker:
                    tracker.log_history([record])
                rundir.write_progress(out, spec, done, elapsed)
                progress.update(done, {k: record[k] for k in ("loss", "lr", "images_per_s")})
                tic, window_images = time.perf_counter(), 0
            if done % cfg["checkpoint_every"] == 0 and done < spec["iterations"]:
                save(done, finished=False)
        progress.close()
        if start < spec["iterations"] or not (out / layout.CHECKPOINT).exists():
            save(spec["iterations"], finished=True)
        (out / layout.PARTIAL).unlink(missing_ok=True)
        result = finish(spec, out, model, data, device, precision, history, elapsed, run_id)
        if tracker:
            tracker.log_final(result)
            tracker.log_artifact(out / layout.METRICS)
            tracker.log_artifact(confusion_plot(result, out))
        status = "FINISHED"
        return result
    finally:
        progress.close()
        if tracker:
            tracker.close(status)


def finish(spec: dict, out: Path, model, data, device, precision: str, history: list, elapsed: float,
           run_id: str | None) -> dict:
    """Evaluate the final model on the held-out fold and write metrics.json (the run's result)."""
    metrics = evaluate(model, data.test_images, data.test_labels, batch_size=spec["train"]["eval_batch_size"],
                       device=device, precision=precision)
    train_images = spec["iterations"] * spec["train"]["batch_size"]
    result = {
        "study": spec["study"], "role": spec["role"], "model": spec["model"], "teacher": spec["teacher"],
        "method": spec["method"], "seed": spec["seed"], "fold": spec["fold"], "dataset": spec["dataset"]["name"],
        "precision": precision, "device": device.type, **metrics, "params": spec, "mlflow_run_id": run_id,
        "wall_time_s": elapsed, "images_per_s": train_images / elapsed if elapsed > 0 else math.nan,
        "iterations": spec["iterations"], "history": history,
    }
    rundir.write_result(out, result)
    return result


def confusion_plot(result: dict, out: Path) -> Path:
    """The run's confusion matrix as a figure (an MLflow artifact; not a result: nothing depends on it)."""
    from segkd.report import plots

    title = f"{result['model']} {result['method'] or ''} fold{result['fold']}"
    return plots.confusion_matrix(result["confusion"], title, path=out / layout.CONFUSION_PLOT)
