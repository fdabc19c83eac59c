"""Train one run (a teacher, the no-KD baseline, or a distilled student) on one fold, then evaluate it;
or train a cohort: the students of several methods that share a teacher, seed and fold, together.

The loop fits on a screen: sample a batch, augment it on the device, forward the frozen teacher under
inference mode, then for each student: forward, sum the task loss and the weighted distillation
terms, step AdamW and the poly schedule. Everything that decides the numbers (data order,
augmentation, dropout, drop path) is drawn from seeded generators whose states are checkpointed, so a
run killed at any point and resumed ends with exactly the metrics of an uninterrupted run (on CPU; on
CUDA some kernels, e.g. atomics in upsampling backward, are not bitwise deterministic).

At a few log points a distilled student also weighs its terms (`term_strength`): each weighted term's
share of the loss and its gradient norm against the task loss's, from gradients taken on the step's own
graph before its backward, so that nothing the run computes changes.

Why a cohort is free to take: the batch stream (order and augmentation) is drawn from generators
seeded by seed and fold alone, so every method of a (teacher, seed, fold) sees the same batches, on
which its teacher computes the same forward. A cohort draws each batch once and runs the teacher once,
for the union of the taps its students read; each student keeps its own global generators (dropout,
drop path), swapped in around its step, and its own run directory, checkpoint, metrics.json and
MLflow run. A run alone is a cohort of one, through the same loop.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from dataclasses import dataclass, field
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
    """A tqdm bar on a terminal (a line per run of a cohort); plain periodic lines in logs (CI, cluster jobs)."""

    def __init__(self, total: int, start: int, name: str, every: int, position: int = 0):
        self.tty = sys.stderr.isatty()
        self.every, self.total, self.name = every, total, name
        self.bar = (tqdm(total=total, initial=start, desc=name, dynamic_ncols=True, position=position)
                    if self.tty else None)

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


def teacher_forward(teacher, x: torch.Tensor, taps: set[str], precision: str):
    """The frozen teacher's `taps` for a batch (only those are computed), under inference mode: no
    autograd graph, no saved activations."""
    with autocast(x.device, precision), torch.inference_mode():
        return teacher(x, taps=taps)


def student_losses(model, x: torch.Tensor, y: torch.Tensor, precision: str, t_out=None, distill=None) -> dict:
    """The loss terms of one student step: task cross-entropy, then each distillation term against the
    teacher's taps `t_out`. One autocast block for student and terms, so adapters see the student's dtypes."""
    with autocast(x.device, precision):
        s_out = model(x)
        logits = F.interpolate(s_out.logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        terms = {"task": F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)}
        if distill is not None:
            terms.update(distill(s_out, t_out, y))
    return terms


def step_losses(model, x: torch.Tensor, y: torch.Tensor, precision: str, teacher=None, distill=None) -> dict:
    """The loss terms of one step of a run alone: the teacher's taps its terms read, then the student's losses."""
    t_out = teacher_forward(teacher, x, distill.taps, precision) if teacher is not None else None
    return student_losses(model, x, y, precision, t_out, distill)


@dataclass
class TrainingState:
    """Everything a run's numbers depend on between two steps; a checkpoint holds exactly this."""

    model: torch.nn.Module
    distill: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    sampler: BatchSampler  # the batch stream: shared by the runs of a cohort
    data_rng: torch.Generator
    shape_rng: torch.Generator | None = None  # on a GPU: the host's draws of batch scale and crops (Augment)

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(),
                 "distill": self.distill.state_dict() if self.distill is not None else None,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "sampler": self.sampler.state_dict(),
                 "data_rng": self.data_rng.get_state(), "rng": ckpt_io.capture_rng()}
        if self.shape_rng is not None:
            state["shape_rng"] = self.shape_rng.get_state()
        return state

    def weights(self) -> dict:
        """What a finished run keeps: the student's weights and its terms' adapters."""
        return {"model": self.model.state_dict(),
                "distill": self.distill.state_dict() if self.distill is not None else None}

    def load_weights(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.distill is not None:
            self.distill.load_state_dict(state["distill"])

    def load_state_dict(self, state: dict, stream: bool = True) -> None:
        """`stream=False` leaves the batch stream alone: a cohort loads it once, from its run furthest behind."""
        self.load_weights(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if stream:
            self.load_stream(state)
        ckpt_io.restore_rng(state["rng"])

    def load_stream(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.data_rng.set_state(state["data_rng"])
        if self.shape_rng is not None:
            self.shape_rng.set_state(state["shape_rng"])

    def stream_at(self, state: dict) -> bool:
        """Whether the batch stream stands where checkpoint `state` saved it."""
        mine, saved = self.sampler.state_dict(), state["sampler"]
        return (mine["position"] == saved["position"] and torch.equal(mine["order"], saved["order"])
                and torch.equal(mine["generator"], saved["generator"])
                and torch.equal(self.data_rng.get_state(), state["data_rng"])
                and (self.shape_rng is None or torch.equal(self.shape_rng.get_state(), state["shape_rng"])))


def check_cohort(specs: list[dict]) -> None:
    """A cohort's runs differ in method and terms alone (same teacher, seed, fold, data and schedule):
    only then do they see the same batches and the same teacher forward."""
    if not specs:
        raise UserError("a cohort needs at least one run spec")
    same = [{k: v for k, v in spec.items() if k not in ("method", "terms")} for spec in specs]
    for spec, other in zip(specs[1:], same[1:]):
        keys = sorted(k for k in same[0].keys() | other.keys() if same[0].get(k) != other.get(k))
        if keys:
            raise UserError(f"a cohort's runs may differ only in method and terms: {spec['method']} differs "
                            f"from {specs[0]['method']} in {', '.join(keys)}")
    methods = [spec["method"] for spec in specs]
    if len(set(methods)) < len(methods):
        raise UserError(f"a cohort names a method twice: {', '.join(methods)}")


def build_states(specs: list[dict], data: FoldData, device: torch.device, precision: str):
    """(states, each run's global generator state, frozen teacher or None) of a cohort's runs, each
    built exactly as it would be alone.

    Alone, a run seeds the global generator, then creates (each drawing initial weights from it) the
    student, its teacher (whose random weights its checkpoint then replaces) and its terms' adapters.
    The runs of a cohort share seed, fold and student, so each reaches its teacher with the generator
    in the same state: the teacher is loaded once, and every later run goes on from the state that
    loading left, as it would have alone. The batch stream (sampler, data generator) is one, shared.
    """
    spec0, cfg = specs[0], specs[0]["train"]
    sampler = BatchSampler(len(data.train_images), cfg["batch_size"], seed=spec0["seed"])
    data_rng = torch.Generator(device=device).manual_seed(spec0["seed"] + 10_000 * spec0["fold"])
    shape_rng = (torch.Generator().manual_seed(spec0["seed"] + 10_000 * spec0["fold"])
                 if device.type != "cpu" else None)  # on the CPU the one stream of today's runs
    teacher, after_teacher, states, rngs = None, None, [], []
    for spec in specs:
        ckpt_io.seed_everything(spec["seed"] * 1000 + spec["fold"])
        model = create_model(spec["model"], num_classes=NUM_CLASSES, drop_path_rate=cfg["drop_path"],
                             pretrained=spec.get("pretrained"))
        model.to(device).to(memory_format=torch.channels_last).train()
        if cfg.get("compile"):
            model.compile()  # in place: the module, its parameters and its state_dict keys stay as they are
        distill = None
        if spec["terms"]:
            if teacher is None:
                teacher = load_teacher(spec, device, data.identity)
                if cfg.get("compile"):
                    teacher.compile()
                after_teacher = ckpt_io.capture_rng()
            else:
                ckpt_io.restore_rng(after_teacher)
            distill = build_distillation(spec["terms"], model.feature_dims, teacher.feature_dims,
                                         where=f"methods.{spec['method']}").to(device)
        optimizer = create_optimizer(model, distill, cfg)
        states.append(TrainingState(
            model=model, distill=distill, optimizer=optimizer,
            scheduler=create_scheduler(optimizer, spec["iterations"], cfg),
            scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
            sampler=sampler, data_rng=data_rng, shape_rng=shape_rng))
        rngs.append(ckpt_io.capture_rng())
    return states, rngs, teacher


def code_fingerprint(spec: dict) -> str:
    """The fingerprint of the code this run executes (segkd.fingerprint): a checkpoint written by other
    code is not resumed, since the resumed run would mix two versions of the computation."""
    from segkd import fingerprint

    return fingerprint.fingerprint(fingerprint.JOB_CODE["student" if spec["terms"] else "train"])


@dataclass
class Member:
    """One run of a cohort (a run alone is a cohort of one) and where it stands."""

    spec: dict
    out: Path
    state: TrainingState
    rng: dict  # its global generators (dropout, drop path) between its own steps
    code: str
    name: str
    start: int = 0  # the iteration it resumes from
    saved: dict | None = None  # the checkpoint it resumed from
    history: list = field(default_factory=list)
    elapsed: float = 0.0  # training seconds
    tracker: object = None
    run_id: str | None = None
    progress: Progress | None = None
    last: tuple | None = None  # (loss, terms) of its last step
    error: Exception | None = None
    status: str = "FAILED"  # of its MLflow run, when the job ends
    watch: FiniteWatch = field(default_factory=lambda: FiniteWatch())  # (defined below)
    strength_at: frozenset = frozenset()  # the iterations at which its terms are weighed (strength_points)
    strength: dict | None = None  # what the last weighing found, until its log point records it

    @contextlib.contextmanager
    def own_rng(self, swap: bool):
        """Run the block on this run's own global generators (`swap`: in a cohort of several runs)."""
        if swap:
            ckpt_io.restore_rng(self.rng)
        try:
            yield
        finally:
            if swap:
                self.rng = ckpt_io.capture_rng()


def resume(m: Member, data_identity: dict, replace_stale: bool) -> dict | None:
    """The run's last checkpoint to go on from, None for a new run.

    A checkpoint written by other code or for other data is not resumed (the run would mix two
    computations): it is removed and the run starts afresh. One of another run spec is refused (a
    mistaken --out) unless `replace_stale`: a workflow's run directories are its own, and there a
    changed spec means the run is to be trained again.
    """
    for path in (m.out / layout.CHECKPOINT, m.out / layout.PARTIAL):
        if not path.exists():
            continue
        saved = ckpt_io.load(path)
        if saved["spec"] != m.spec and not replace_stale:
            raise UserError(f"{path} was written by a different run spec; remove {m.out} to start afresh")
        stale = ("a different run spec" if saved["spec"] != m.spec
                 else f"other code (fingerprint {saved['code']}, now {m.code})" if saved.get("code", m.code) != m.code
                 else "other prepared data or another split" if saved.get("data", data_identity) != data_identity
                 else None)
        if stale is None:
            print(f"[{m.name}] resuming from iteration {saved['iteration']}", file=sys.stderr, flush=True)
            return saved
        print(f"[{m.name}] {path.name} was written by {stale}; removed, starting afresh", file=sys.stderr, flush=True)
        path.unlink()
    return None


def open_tracker(spec: dict, out: Path, finished: bool) -> tuple[object, str | None]:
    """(the run's MLflow logger, its run id); (None, None) when tracking is off.

    The run is the one an earlier, interrupted attempt of the same spec created, else a new one,
    recorded in the run directory at once so that a job killed before its first checkpoint is
    continued by its retry instead of left RUNNING beside a second run. A `finished` run that is only
    evaluated again (its cohort re-runs for another method) keeps its FINISHED MLflow run untouched:
    (None, its id).
    """
    if not spec.get("tracking", {}).get("enabled", True):
        return None, None
    from segkd import tracking  # mlflow is imported only where runs are logged

    recorded = rundir.recorded_mlflow_run(out, spec)
    if finished and recorded is not None and tracking.is_finished(spec, recorded):
        return None, recorded
    tracker = tracking.start_run_for(spec, run_id=recorded)
    rundir.record_mlflow_run(out, spec, tracker.run_id)
    return tracker, tracker.run_id


def run_name(spec: dict) -> str:
    name = f"{spec['role']}:{spec['model']}"
    if spec["role"] == "student":
        name += f"/{spec['method']}/seed{spec['seed']}"
    return f"{name}/fold{spec['fold']}"


def next_batch(state: TrainingState, data: FoldData, augment: Augment, device: torch.device):
    """The next (images, labels) of the run's seeded order, augmented on the device."""
    idx = state.sampler.next().to(data.train_images.device)  # the fold is kept on the training device
    x, y = augment(data.train_images[idx], data.train_labels[idx], state.data_rng, state.shape_rng)
    return x.contiguous(memory_format=torch.channels_last), y


class FiniteWatch:
    """The first iteration at which a run's loss was not finite, and its terms then, kept on the device.

    Checking the loss in the step (``if not torch.isfinite(loss)``) would make the host wait for the
    device at every step; the watch is read at log and checkpoint points instead, before anything is
    logged or saved, so no checkpoint holds weights updated after a non-finite loss and the error still
    names the first bad iteration. The steps in between are wasted, not kept.
    """

    def __init__(self):
        self.first: torch.Tensor | None = None  # 0 while every loss was finite
        self.values: torch.Tensor | None = None

    def record(self, iteration: int, loss: torch.Tensor, terms: dict) -> None:
        values = torch.stack([v.detach().float() for v in terms.values()])
        if self.first is None:
            self.first, self.values = torch.zeros((), dtype=torch.long, device=loss.device), values
        new = ~torch.isfinite(loss) & (self.first == 0)
        self.first = torch.where(new, iteration, self.first)
        self.values = torch.where(new, values, self.values)

    def check(self, names, kept: Path) -> None:
        """TrainingDiverged if a loss so far was not finite (reads the device: call at log points)."""
        if self.first is not None and (first := int(self.first)):
            values = ", ".join(f"{k}={v:.4g}" for k, v in zip(names, self.values.tolist()))
            raise TrainingDiverged(f"non-finite loss at iteration {first}: {values}; "
                                   f"the last good checkpoint ({kept}) is kept")


#: history keys of a term's effective strength: its share of the loss and its gradient-norm ratio
SHARE, GRAD_RATIO = "share.", "grad_ratio."


def strength_points(iterations: int, log_every: int) -> frozenset[int]:
    """The log points at which a student's terms are weighed against its task loss: the first one and
    the first at or after each quarter of the schedule (at most five, whatever the schedule's length,
    so the cost of the extra backward passes stays a few steps' worth)."""
    def log_point(i: int) -> int:
        return min(iterations, math.ceil(i / log_every) * log_every)

    return frozenset(log_point(max(1, math.ceil(iterations * q / 4))) for q in range(5))


class SavedCopies(torch.autograd.graph.saved_tensors_hooks):
    """Saved-tensor hooks under which a step's graph can be walked backward more than once without
    touching what its real backward reads.

    A backward may overwrite what it saved (the frequency loss's hand-written backward scales its
    saved sign in place), so a second walk of the same graph would fail or read altered values.
    While `copying`, every saved tensor is handed out as a copy; once the measurement is done the
    step's own backward reads the tensors the forward saved, as it does without the measurement.
    """

    def __init__(self):
        self.copying = True
        super().__init__(lambda t: t, lambda t: t.clone() if self.copying else t)


def term_strength(model: torch.nn.Module, terms: dict, scaler: torch.amp.GradScaler,
                  copies: SavedCopies) -> dict[str, torch.Tensor]:
    """What each weighted distillation term meant in this step: its share of the total loss, and the
    ratio of its gradient norm to the task loss's over the student's parameters.

    A weight means nothing across losses of different normalisations (the same KD is used at 1.0
    and at 0.01); these two numbers say what it did. Gradients come from `torch.autograd.grad`, which
    leaves `.grad`, the optimiser, the generators and the BN statistics alone, before the step's own
    backward (`copies`: the graph the forward built under it). Losses are scaled as the step scales
    them (fp16), so no gradient underflows that the step's does not; the ratio does not see the scale.
    Kept on the device: read at the log point.
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def grad_norm(loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(scaler.scale(loss), params, retain_graph=True, allow_unused=True,
                                    materialize_grads=True)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    total = sum(terms.values()).detach()
    task = grad_norm(terms["task"])
    out = {}
    for name, value in terms.items():
        if name != "task":
            out[SHARE + name] = value.detach() / total
            out[GRAD_RATIO + name] = grad_norm(value) / task
    copies.copying = False
    return out


def optimise(state: TrainingState, terms: dict) -> torch.Tensor:
    """One optimiser step on the sum of the loss terms; the loss (its finiteness: FiniteWatch)."""
    loss = sum(terms.values())
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return loss


def train(spec: dict, out: str | Path, *, replace_stale: bool = False, strength: bool = True) -> dict:
    """Run `spec` in directory `out` (resuming from its checkpoint if present); return the metrics."""
    return train_cohort([spec], [out], replace_stale=replace_stale, strength=strength)[0]


def train_cohort(specs: list[dict], outs: list[str | Path], *, replace_stale: bool = False,
                 strength: bool = True) -> list[dict]:
    """Train the runs `specs` (one teacher, seed and fold; see check_cohort) in directories `outs`
    together, each resuming from its own checkpoint; return their metrics, in order.

    `strength`: a distilled student weighs its terms at `strength_points` (`term_strength`, recorded in
    its history). It changes no number of the run, so it is no part of a run spec; it is off under
    `train.compile`, whose compiled graphs are not walked backward twice here.
    """
    check_cohort(specs)
    cfg = specs[0]["train"]
    device = resolve_device(cfg["device"])
    precision = resolve_precision(cfg["precision"], device)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    members, data, teacher = start_cohort(specs, [Path(o) for o in outs], device, replace_stale)
    augment = Augment(scale=tuple(cfg["augment"]["scale"]), flip=cfg["augment"]["flip"],
                      photometric=cfg["augment"]["photometric"], crop=cfg.get("crop"))
    iterations, swap = specs[0]["iterations"], len(members) > 1
    weighed = strength_points(iterations, cfg["log_every"]) if strength and not cfg.get("compile") else frozenset()
    for i, m in enumerate(members):
        m.progress = Progress(iterations, m.start, m.name, cfg["log_every"], position=i)
        m.strength_at = weighed if m.state.distill is not None else frozenset()
    try:
        lead = min(members, key=lambda m: m.start)  # the batch stream stands where it stands
        tic, window_images = time.perf_counter(), 0
        for it in range(lead.start, iterations):
            active = joined(members, lead, it)
            if not active:
                break
            x, y = next_batch(lead.state, data, augment, device)
            cohort_step(active, x, y, teacher, precision, it + 1, swap)
            done, window_images = it + 1, window_images + x.shape[0]
            logs = done % cfg["log_every"] == 0 or done == iterations
            saves = done % cfg["checkpoint_every"] == 0 and done < iterations
            if logs or saves:  # the host reads the device here only
                active = check_finite(active)
            if logs:
                now = time.perf_counter()
                for m in active:
                    log_point(m, done, now - tic, window_images)
                tic, window_images = time.perf_counter(), 0
            if saves:
                for m in active:
                    with m.own_rng(swap):
                        save(m, data, done, finished=False)
        results = []
        for m in members:
            if m.error is None:
                with m.own_rng(swap):
                    results.append(end_run(m, data, device, precision))
        label = f"cohort {'+'.join(m.spec['method'] for m in members)}" if swap else members[0].name
        print(f"[{label}] peak memory {peak_memory_mb(device):.0f} MB", file=sys.stderr, flush=True)
        failed = [m for m in members if m.error is not None]
        if failed:
            raise TrainingDiverged("; ".join(f"{m.name}: {m.error}" for m in failed) if swap else str(failed[0].error))
        return results
    finally:
        for m in members:
            m.progress.close()
            if m.tracker:
                m.tracker.close(m.status)


def joined(members: list[Member], lead: Member, it: int) -> list[Member]:
    """The runs that step at iteration `it`: a run killed further on (between two runs' checkpoint
    writes) joins the run furthest behind where its checkpoint stands, on the stream it saved."""
    for m in members:
        if m.start == it > lead.start and not lead.state.stream_at(m.saved):
            raise RuntimeError(f"[{m.name}] the batch stream at iteration {it} is not the one its checkpoint saved")
    return [m for m in members if m.start <= it and m.error is None]


def cohort_step(active: list[Member], x, y, teacher, precision: str, iteration: int, swap: bool) -> None:
    """One teacher forward for the union of the runs' taps, then each run's own step on its own
    generators. A run whose loss is not finite stops here; the others go on (the job fails at the end)."""
    taps = set().union(*(m.state.distill.taps for m in active if m.state.distill is not None))
    t_out = teacher_forward(teacher, x, taps, precision) if taps else None
    for m in active:
        with m.own_rng(swap):
            copies = SavedCopies() if iteration in m.strength_at else None
            with copies or contextlib.nullcontext():
                terms = student_losses(m.state.model, x, y, precision, t_out, m.state.distill)
            if copies is not None:
                m.strength = term_strength(m.state.model, terms, m.state.scaler, copies)
            loss = optimise(m.state, terms)
            m.state.scheduler.step_update(iteration)
            m.watch.record(iteration, loss, terms)
            m.last = loss, terms


def check_finite(active: list[Member]) -> list[Member]:
    """The runs whose losses were finite so far; a run whose loss was not stops here (see FiniteWatch),
    the others go on (the job fails at the end)."""
    for m in active:
        try:
            m.watch.check(m.last[1].keys(), m.out / layout.PARTIAL)
        except TrainingDiverged as err:
            m.error = err
            print(f"[{m.name}] {err}", file=sys.stderr, flush=True)
    return [m for m in active if m.error is None]


def peak_memory_mb(device: torch.device) -> float:
    """The process's peak memory so far: allocated on a GPU, resident on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def start_cohort(specs: list[dict], outs: list[Path], device: torch.device, replace_stale: bool):
    """(members, fold data, frozen teacher or None): each run built, resumed from its checkpoint and
    given its MLflow run; the shared batch stream resumed where the run furthest behind left it."""
    precision = resolve_precision(specs[0]["train"]["precision"], device)
    with contextlib.ExitStack() as directories:
        for out in outs:
            directories.enter_context(rundir.run_directory(out))
        spec0 = specs[0]
        data = load_fold(spec0["prepared"], spec0["folds_file"], spec0["fold"], spec0["dataset"], device=device)
        states, rngs, teacher = build_states(specs, data, device, precision)
        members = [Member(spec, out, state, rng, code_fingerprint(spec), run_name(spec))
                   for spec, out, state, rng in zip(specs, outs, states, rngs)]
        swap = len(members) > 1
        for m in members:
            with m.own_rng(swap):
                m.saved = resume(m, data.identity, replace_stale)
                if m.saved is None:
                    m.state.scheduler.step_update(0)
                    continue
                if m.saved["finished"]:  # evaluated again, not trained: its weights are all it needs
                    m.state.load_weights(m.saved)
                else:
                    m.state.load_state_dict(m.saved, stream=False)
                m.start, m.history, m.elapsed = m.saved["iteration"], m.saved["history"], m.saved["wall_time_s"]
        lead = min(members, key=lambda m: m.start)
        if lead.saved is not None and not lead.saved["finished"]:
            lead.state.load_stream(lead.saved)
        for m in members:
            m.tracker, m.run_id = open_tracker(m.spec, m.out, finished=bool(m.saved and m.saved["finished"]))
            if m.tracker:
                m.tracker.log_history(m.history)  # what an interrupted attempt had not got into the store yet
    return members, data, teacher


def log_point(m: Member, done: int, seconds: float, images: int) -> None:
    """Record the run's losses, learning rate and speed (of its cohort: the runs step together)."""
    m.elapsed += seconds
    loss, terms = m.last
    record = {"iteration": done, "lr": m.state.optimizer.param_groups[0]["lr"], "loss": loss.item(),
              **{k: v.item() for k, v in terms.items()}, "images_per_s": images / seconds}
    if m.strength is not None:  # weighed in this very step (strength points are log points)
        record.update({k: v.item() for k, v in m.strength.items()})
        m.strength = None
    m.history.append(record)
    if m.tracker:
        m.tracker.log_history([record])
    rundir.write_progress(m.out, m.spec, done, m.elapsed)
    m.progress.update(done, {k: record[k] for k in ("loss", "lr", "images_per_s")})


def save(m: Member, data: FoldData, iteration: int, finished: bool) -> None:
    """A periodic checkpoint (partial.pt) holds all a bit-exact resume needs. The final one
    (checkpoint.pt) holds the weights alone beside the spec and history: nothing trains on from a
    finished run (a changed spec trains afresh), and the optimiser's moments would make every
    final checkpoint three times its weights, in the run directories and in DVC's cache."""
    ckpt_io.save_atomic({
        "spec": m.spec, "iteration": iteration, "finished": finished, "num_classes": NUM_CLASSES,
        "data": data.identity, "code": m.code, **(m.state.weights() if finished else m.state.state_dict()),
        "history": m.history, "wall_time_s": m.elapsed, "mlflow_run_id": m.run_id,
    }, m.out / (layout.CHECKPOINT if finished else layout.PARTIAL))


def end_run(m: Member, data: FoldData, device: torch.device, precision: str) -> dict:
    """Write the run's final checkpoint, evaluate it, and close its MLflow run with the result."""
    m.progress.close()
    iterations = m.spec["iterations"]
    if m.start < iterations or not (m.out / layout.CHECKPOINT).exists():
        save(m, data, iterations, finished=True)
    (m.out / layout.PARTIAL).unlink(missing_ok=True)
    result = finish(m.spec, m.out, m.state.model, data, device, precision, m.history, m.elapsed, m.run_id)
    if m.run_id is not None:
        plot = confusion_plot(result, m.out)
        if m.tracker:
            m.tracker.log_final(result)
            m.tracker.log_artifact(m.out / layout.METRICS)
            m.tracker.log_artifact(plot)
    m.status = "FINISHED"
    return result


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

    return plots.confusion_matrix(result["confusion"], confusion_title(result), path=out / layout.CONFUSION_PLOT)


def confusion_title(result: dict) -> str:
    """What the figure is of, read alone: model, role (teacher, baseline, or method and teacher), seed, fold."""
    if result["role"] == "teacher":
        who = f"{result['model']} teacher"
    elif result["teacher"] is None:
        who = f"{result['model']} {result['method']} (no teacher)"
    else:
        who = f"{result['model']} {result['method']} from {result['teacher']}"
    return f"{who}, seed {result['seed']}, fold {result['fold']}"
