"""`segkd estimate`: what a study costs, measured on this machine before it is launched.

A study is days of training; its cost should be known before the first job starts. The estimate times
the study's own work on the current device, a few steps of each job kind at the study's sizes (random
weights and images: the speed of a step does not depend on their values):

- a training step of each teacher; of the baseline; of each method's student with each teacher
  (its teacher's forward included, as the job computes it), all through the training loop's own
  functions (segkd.engine.train), with the threads a workflow job gets;
- a job's fixed cost, in a fresh process as a job starts: imports, MLflow store and run, the
  confusion figure; then its evaluation (the held-out images at eval_batch_size) and its checkpoint
  writes;
- the data jobs (prepare and split, run for real into a temporary directory when the study's data
  is not prepared yet) and the report jobs (aggregate, band figures).

Per-job times follow (fixed cost + iterations x step + evaluation + checkpoints), then the study's
compute hours, and its wall time at the workflow's parallelism: the jobs are scheduled over the slots
as Snakemake does, teachers first (their priority), each student after its teacher, the report last.
With train.share_teacher a cohort job per (teacher, seed, fold) replaces the student jobs: one
teacher forward per step for all its methods.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from segkd import layout
from segkd.config import Study
from segkd.runs import expected_runs
from segkd.status import duration

TRAINING_THREADS = 1  # the threads a training job gets from the workflow (workflow/rules/train.smk)
TEACHER_PRIORITY = 10  # the teacher rule's priority (workflow/rules/train.smk)

# A job's fixed cost, timed in a fresh interpreter as a job would pay it: imports, the MLflow store
# and one run with the spec's params, and the confusion figure.
FIXED_COST_SCRIPT = r"""
import json, sys, tempfile, time
t0 = time.perf_counter()
import torch, timm
import segkd.engine.train, segkd.report.plots
spec, tracking = json.loads(sys.argv[1]), sys.argv[2] == "1"
if tracking:
    from mlflow.tracking import MlflowClient
    from segkd import tracking as tr
    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{d}/mlflow.db"
        t_store = time.perf_counter()
        tr.init_store(uri, study="estimate")  # created once per study (onstart): not a job's cost
        store_s = time.perf_counter() - t_store
        client = MlflowClient(tracking_uri=uri)
        run = client.create_run(client.get_experiment_by_name("estimate").experiment_id)
        client.log_batch(run.info.run_id, params=[__import__("mlflow").entities.Param(k, v)
                                                  for k, v in list(tr.flatten_params(spec).items())[:100]])
        client.set_terminated(run.info.run_id)
else:
    store_s = 0.0
from segkd.report import plots
with tempfile.TemporaryDirectory() as d:
    plots.confusion_matrix([[1] * 11 for _ in range(11)], "estimate", path=f"{d}/confusion.png")
print(json.dumps({"seconds": time.perf_counter() - t0 - store_s, "store_s": store_s}))
"""


@dataclass
class JobKind:
    """One kind of training job: what one of its steps costs, and how many jobs of it the study has."""

    name: str  # teacher segformer_b2, baseline, student segformer_b2/kd, cohort segformer_b2
    iterations: int
    step_s: float
    eval_s: float
    checkpoint_s: float
    checkpoints: int
    jobs: int
    fixed_s: float = 0.0

    @property
    def job_s(self) -> float:
        return self.fixed_s + self.iterations * self.step_s + self.eval_s + self.checkpoints * self.checkpoint_s


@dataclass(order=True)
class Job:
    """A job of the study's DAG, for the wall-time schedule."""

    sort_key: tuple
    name: str = field(compare=False)
    seconds: float = field(compare=False)
    needs: list = field(default_factory=list, compare=False)


@dataclass
class Estimate:
    kinds: list[JobKind]
    other: dict[str, float]  # data and report jobs: name -> seconds
    jobs: list[Job]
    slots: int
    device: str
    precision: str
    workflow_s: float  # Snakemake's start (reading the study, planning) and the MLflow store's creation

    @property
    def compute_s(self) -> float:
        return sum(k.jobs * k.job_s for k in self.kinds) + sum(self.other.values())

    @property
    def wall_s(self) -> float:
        return self.workflow_s + schedule(self.jobs, self.slots)


def schedule(jobs: list[Job], slots: int) -> float:
    """Wall time of `jobs` on `slots` parallel slots: each free slot takes the ready job of the highest
    priority (then the most dependants, then study order), as Snakemake's scheduler does."""
    by_name = {j.name: j for j in jobs}
    waiting = {j.name: set(j.needs) for j in jobs}
    dependants: dict[str, list[str]] = {j.name: [] for j in jobs}
    for j in jobs:
        for n in j.needs:
            dependants[n].append(j.name)
    ready = [by_name[n] for n, needs in waiting.items() if not needs]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now = 0.0
    while ready or running:
        while ready and len(running) < slots:
            job = heapq.heappop(ready)
            heapq.heappush(running, (now + job.seconds, job.name))
        now, name = heapq.heappop(running)
        for d in dependants[name]:
            waiting[d].discard(name)
            if not waiting[d]:
                heapq.heappush(ready, by_name[d])
    return now


def _fixed_cost(spec: dict) -> tuple[float, float]:
    """(a training job's fixed seconds, the MLflow store's creation, paid once by the workflow)."""
    tracking = spec["tracking"]["enabled"]
    out = subprocess.run([sys.executable, "-c", FIXED_COST_SCRIPT, json.dumps(spec), "1" if tracking else "0"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"], result["store_s"]


def _start_cost(*modules: str) -> float:
    """Seconds for a fresh interpreter to import `modules`: the start of a data, report or workflow process."""
    code = f"import time; t = time.perf_counter(); import {', '.join(modules)}; print(time.perf_counter() - t)"
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return time.perf_counter() - tic


def _held_out_images(study: Study) -> tuple[int, int]:
    """(train, held-out) images of a fold: from the folds file when the data is split, else from the
    dataset's definition (synthetic: sequences x frames over k folds; CamVid: its official split)."""
    folds_file = layout.folds_file(study.dataset["name"])
    if folds_file.is_file():
        fold = json.loads(folds_file.read_text())["folds"][0]
        return len(fold["train"]), len(fold["test"])
    ds, f = study.dataset, study.params["folds"]
    if ds["name"] == "synthetic":
        total = ds["synthetic"]["sequences"] * ds["synthetic"]["frames"]
    else:
        total = 701  # CamVid (SegNet version): 367 train + 101 val + 233 test
    if f["strategy"] == "official":
        return 367 + 101, 233
    return total - total // f["k"], total // f["k"]


class StepTimer:
    """Times the training loop's steps at a study's sizes, with random weights and images."""

    def __init__(self, study: Study, steps: int, warmup: int):
        import torch

        from segkd.engine.evaluate import resolve_device, resolve_precision

        spec = expected_runs(study)[0].spec(study)
        self.cfg, self.steps, self.warmup = spec["train"], steps, warmup
        self.device = resolve_device(self.cfg["device"])
        self.precision = resolve_precision(self.cfg["precision"], self.device)
        self.height, self.width = spec["dataset"]["height"], spec["dataset"]["width"]
        self.teachers: dict[str, torch.nn.Module] = {}
        gen = torch.Generator().manual_seed(0)
        b = self.cfg["batch_size"]
        self.images = torch.randint(0, 256, (b, self.height, self.width, 3), dtype=torch.uint8, generator=gen)
        self.labels = torch.randint(0, 11, (b, self.height, self.width), generator=gen)

    def _batch(self, augment, rng):
        import torch

        x, y = augment(self.images.to(self.device), self.labels.to(self.device), rng)
        return x.contiguous(memory_format=torch.channels_last), y

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def teacher(self, name: str):
        import torch

        from segkd.models import create_model

        if name not in self.teachers:
            self.teachers[name] = (create_model(name).to(self.device).to(memory_format=torch.channels_last)
                                   .eval().requires_grad_(False))
        return self.teachers[name]

    def step_s(self, model_name: str, terms: dict, teacher_name: str | None, iterations: int) -> float:
        """Seconds per optimiser step of a run of `model_name` with `terms` against `teacher_name`."""
        import torch

        from segkd.classes import NUM_CLASSES
        from segkd.data.augment import Augment
        from segkd.distill.registry import build_distillation
        from segkd.engine.optim import create_optimizer, create_scheduler
        from segkd.engine.train import TrainingState, optimise, step_losses
        from segkd.models import create_model

        cfg = self.cfg
        model = create_model(model_name, num_classes=NUM_CLASSES, drop_path_rate=cfg["drop_path"])
        model.to(self.device).to(memory_format=torch.channels_last).train()
        teacher = self.teacher(teacher_name) if terms else None
        distill = (build_distillation(terms, model.feature_dims, teacher.feature_dims).to(self.device)
                   if terms else None)
        optimizer = create_optimizer(model, distill, cfg)
        state = TrainingState(model=model, distill=distill, optimizer=optimizer,
                              scheduler=create_scheduler(optimizer, iterations, cfg),
                              scaler=torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16"),
                              sampler=None, data_rng=torch.Generator(device=self.device).manual_seed(0))
        augment = Augment(scale=tuple(cfg["augment"]["scale"]), flip=cfg["augment"]["flip"],
                          photometric=cfg["augment"]["photometric"], crop=cfg.get("crop"))
        times = []
        for i in range(self.warmup + self.steps):
            self._sync()
            tic = time.perf_counter()
            x, y = self._batch(augment, state.data_rng)
            terms_out = step_losses(model, x, y, self.precision, teacher, distill)
            optimise(state, terms_out)
            state.scheduler.step_update(i + 1)
            self._sync()
            times.append(time.perf_counter() - tic)
        return sorted(times[self.warmup:])[len(times[self.warmup:]) // 2]  # the median step

    def teacher_forward_s(self, teacher_name: str, taps: set[str]) -> float:
        import torch

        from segkd.data.augment import Augment
        from segkd.engine.train import teacher_forward

        augment = Augment(scale=(1.0, 1.0), flip=False, photometric=False)
        x, _ = self._batch(augment, torch.Generator(device=self.device).manual_seed(0))
        teacher, times = self.teacher(teacher_name), []
        for _ in range(self.warmup + self.steps):
            self._sync()
            tic = time.perf_counter()
            teacher_forward(teacher, x, taps, self.precision)
            self._sync()
            times.append(time.perf_counter() - tic)
        return sorted(times[self.warmup:])[len(times[self.warmup:]) // 2]

    def eval_s(self, model_name: str, images: int) -> float:
        """Seconds to evaluate `model_name` on `images` held-out images (the run's final evaluation)."""
        import torch

        from segkd.engine.evaluate import evaluate
        from segkd.models import create_model

        bs = self.cfg["eval_batch_size"]
        model = create_model(model_name).to(self.device).to(memory_format=torch.channels_last)
        n = min(images, bs)
        imgs, labels = self.images[:1].expand(n, -1, -1, -1).contiguous(), self.labels[:1].expand(n, -1, -1).contiguous()
        evaluate(model, imgs, labels, batch_size=bs, device=self.device, precision=self.precision)  # warm-up
        self._sync()
        tic = time.perf_counter()
        evaluate(model, imgs, labels, batch_size=bs, device=self.device, precision=self.precision)
        self._sync()
        return (time.perf_counter() - tic) * math.ceil(images / n)

    def checkpoint_s(self, model_name: str) -> float:
        """Seconds to write a run's checkpoint (model and AdamW state) to disk."""
        import torch

        from segkd.engine.checkpoint import save_atomic
        from segkd.engine.optim import create_optimizer
        from segkd.models import create_model

        model = create_model(model_name)
        optimizer = create_optimizer(model, None, self.cfg)
        for group in optimizer.param_groups:  # AdamW's moments, as a checkpoint holds them
            for p in group["params"]:
                optimizer.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p),
                                      "exp_avg_sq": torch.zeros_like(p)}
        with tempfile.TemporaryDirectory() as d:
            tic = time.perf_counter()
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, Path(d) / "c.pt")
            return time.perf_counter() - tic


def _data_jobs_s(study: Study, fixed_s: float) -> dict[str, float]:
    """prepare and split: nothing when the study's data is prepared and split, else run for real."""
    prepared = layout.prepared_dir(study.dataset["name"])
    if (prepared / "manifest.json").is_file() and layout.folds_file(study.dataset["name"]).is_file():
        return {}
    from segkd.data.folds import split
    from segkd.data.prepare import prepare

    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(sys.stderr):  # split prints its tables
        tic = time.perf_counter()
        prepare(study.dataset, Path(d) / "prepared")
        prepare_s = time.perf_counter() - tic
        f = study.params["folds"]
        tic = time.perf_counter()
        split(Path(d) / "prepared", Path(d) / "folds.json", strategy=f["strategy"], k=f.get("k", 2),
              guard=f.get("guard", 2))
        split_s = time.perf_counter() - tic
    return {"prepare": fixed_s + prepare_s, "split": fixed_s + split_s}


def estimate(study: Study, *, steps: int = 5, warmup: int = 2, slots: int | None = None,
             progress=lambda text: None) -> Estimate:
    """Time the study's job kinds on this machine and schedule its jobs over `slots` (default: the
    workflow's, one training job per core on the CPU)."""
    import torch

    torch.set_num_threads(TRAINING_THREADS)
    timer = StepTimer(study, steps, warmup)
    cfg, p = timer.cfg, study.params
    if slots is None:
        slots = (os.cpu_count() or 1) // TRAINING_THREADS if timer.device.type == "cpu" else 1
    _, held_out = _held_out_images(study)
    runs = expected_runs(study)
    progress("fixed cost of a job (a fresh process)")
    fixed_s, store_s = _fixed_cost(runs[0].spec(study))
    data_start_s = _start_cost("segkd.cli", "segkd.data.prepare", "segkd.data.folds")
    # the workflow's own start: Snakemake reads the study (segkd's config, torch for the losses' options)
    # and, once, creates the MLflow store
    workflow_s = _start_cost("snakemake.api", "segkd.config", "segkd.distill") + store_s
    iters_t, iters_s = p["train"]["iterations"]["teacher"], p["train"]["iterations"]["student"]
    every = cfg["checkpoint_every"]
    ckpts = lambda iterations: iterations // every + (iterations % every != 0)

    kinds: dict[str, JobKind] = {}
    eval_cache: dict[str, float] = {}
    ckpt_cache: dict[str, float] = {}

    def kind(name, model, terms, teacher, iterations, jobs):
        progress(f"{name}: {steps} steps")
        if model not in eval_cache:
            eval_cache[model], ckpt_cache[model] = timer.eval_s(model, held_out), timer.checkpoint_s(model)
        kinds[name] = JobKind(name, iterations, timer.step_s(model, terms, teacher, iterations),
                              eval_cache[model], ckpt_cache[model], ckpts(iterations), jobs, fixed_s)
        return kinds[name]

    n_folds, n_seeds = len(study.folds), len(study.seeds)
    for t in study.teachers:
        kind(f"teacher {t}", t, {}, None, iters_t, n_folds)
    kind("baseline", study.student, {}, None, iters_s, n_seeds * n_folds)
    share = p["train"]["share_teacher"]
    for t in study.teachers:
        for m, terms in study.methods.items():
            kind(f"student {t}/{m}", study.student, terms, t, iters_s, 0 if share else n_seeds * n_folds)
        if share:  # one teacher forward per step for all methods: each student step less its own forward
            from segkd.distill.registry import build_distillation  # noqa: F401  (taps of each method)

            fwd = timer.teacher_forward_s(t, {"logits", "stages", "decoder"})
            members = [kinds[f"student {t}/{m}"] for m in study.methods]
            step = sum(k.step_s for k in members) - (len(members) - 1) * fwd
            kinds[f"cohort {t}"] = JobKind(f"cohort {t}", iters_s, step, len(members) * members[0].eval_s,
                                           members[0].checkpoint_s * len(members), ckpts(iters_s),
                                           n_seeds * n_folds, fixed_s)

    progress("data and report jobs")
    other = _data_jobs_s(study, data_start_s)
    bands_s = fixed_s + 2 * timer.eval_s(study.student, min(held_out, 4))  # a band figure: a few images
    freq_variants = [name for name, v in study.variants.items() if _draws_bands(v.terms)]
    other.update({f"bands {t}/{m}": bands_s for t in study.teachers for m in freq_variants})
    other["aggregate"] = _start_cost("segkd.cli", "segkd.report.aggregate", "segkd.report.plots")

    jobs = _dag(study, kinds, other, share)
    return Estimate(list(kinds.values()), other, jobs, slots, timer.device.type, timer.precision, workflow_s)


def _draws_bands(terms: dict) -> bool:
    from segkd.terms import freq_term

    return freq_term(terms) is not None


def _dag(study: Study, kinds: dict[str, JobKind], other: dict[str, float], share: bool) -> list[Job]:
    """The study's jobs and what each waits for, as the Snakefile wires them."""
    order = iter(range(10**9))
    jobs: list[Job] = []

    def add(name, seconds, needs, priority=0):
        jobs.append(Job((-priority, next(order)), name, seconds, list(needs)))

    data = [n for n in ("prepare", "split") if n in other]
    if "prepare" in other:
        add("prepare", other["prepare"], [])
        add("split", other["split"], ["prepare"])
    training = []
    for t in study.teachers:
        for f in study.folds:
            add(f"teacher {t} fold{f}", kinds[f"teacher {t}"].job_s, data[-1:], TEACHER_PRIORITY)
    for s in study.seeds:
        for f in study.folds:
            add(f"baseline seed{s} fold{f}", kinds["baseline"].job_s, data[-1:])
            training.append(f"baseline seed{s} fold{f}")
    for t in study.teachers:
        for s in study.seeds:
            for f in study.folds:
                if share:
                    add(f"cohort {t} seed{s} fold{f}", kinds[f"cohort {t}"].job_s, [f"teacher {t} fold{f}"])
                    training.append(f"cohort {t} seed{s} fold{f}")
                    continue
                for m in study.methods:
                    add(f"student {t}/{m} seed{s} fold{f}", kinds[f"student {t}/{m}"].job_s,
                        [f"teacher {t} fold{f}"])
                    training.append(f"student {t}/{m} seed{s} fold{f}")
    s0, f0 = study.seeds[0], study.folds[0]
    bands = []
    for name, seconds in other.items():
        if name.startswith("bands "):
            t, m = name[len("bands "):].split("/", 1)
            first = f"cohort {t} seed{s0} fold{f0}" if share else f"student {t}/{m} seed{s0} fold{f0}"
            add(name, seconds, [first])
            bands.append(name)
    teachers = [j.name for j in jobs if j.name.startswith("teacher ")]
    add("aggregate", other["aggregate"], training + teachers + bands)
    return jobs


def render(est: Estimate, study: Study, machine: str) -> str:
    lines = [f"# {study.name}: estimate on {machine} ({est.device}, {est.precision}, "
             f"{TRAINING_THREADS} thread(s) per training job)", "",
             f"{'job kind':34} {'step':>9} {'iters':>6} {'per job':>9} {'jobs':>5} {'compute':>9}"]
    for k in est.kinds:
        if k.jobs:
            lines.append(f"{k.name:34} {k.step_s * 1000:7.1f}ms {k.iterations:6d} {duration(k.job_s):>9} "
                         f"{k.jobs:5d} {duration(k.jobs * k.job_s):>9}")
    for name, s in est.other.items():
        lines.append(f"{name:34} {'':>9} {'':>6} {duration(s):>9} {1:5d} {duration(s):>9}")
    fixed = est.kinds[0].fixed_s if est.kinds else 0.0
    lines += ["", f"per job: {fixed:.1f} s fixed (start, imports, MLflow, figure) + steps + evaluation "
              "+ checkpoint writes",
              f"compute: {est.compute_s / 3600:.2f} h in {len(est.jobs)} jobs ({duration(est.compute_s)})",
              f"wall:    {duration(est.wall_s)} with {est.slots} training job(s) at once "
              f"(workflow start {est.workflow_s:.0f} s included)"]
    return "\n".join(lines)


def as_json(est: Estimate, study: Study) -> dict:
    return {"study": study.name, "device": est.device, "precision": est.precision, "slots": est.slots,
            "kinds": [{"name": k.name, "step_s": k.step_s, "iterations": k.iterations, "job_s": k.job_s,
                       "jobs": k.jobs, "fixed_s": k.fixed_s, "eval_s": k.eval_s} for k in est.kinds if k.jobs],
            "other": est.other, "compute_s": est.compute_s, "workflow_s": est.workflow_s, "wall_s": est.wall_s}


def machine_name() -> str:
    """The CPU model (lscpu) and torch's CPU capability, or the GPU's name: what every figure is of."""
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or "CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model} x{os.cpu_count()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
