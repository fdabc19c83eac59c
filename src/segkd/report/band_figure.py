"""`segkd bands`: what the frequency term of a student run compares, drawn for a few test images.

One row per image: the input; the teacher's tapped feature (the decoder's by default; standardised
when the term standardises) and the student's after the term's 1x1 adapter; their low and high bands (the term's own split); and the channel-wise L2 norms
|low_s - low_t| and |high_s - high_t|, the differences the loss is built from. A feature has
hundreds of channels, so it is shown as its first principal component over channels, with one
basis fitted on the teacher's features of all shown images: a colour means the same direction of
the teacher's feature space in every panel. Features and low bands are centred on the teacher's
channel mean, high bands are not (they carry no mean), so PC(low) + PC(high) = PC(feature), as
low + high = feature. Models run in float32 on the CPU: a few images take seconds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from segkd.errors import UserError
from segkd.report.plots import deterministic
from segkd.terms import FREQ_LOSS, freq_term

@dataclass
class BandMaps:
    """Float32 (N, E, h, w) maps at the teacher's width, and the shared principal direction."""

    images: np.ndarray  # (N, H, W, 3) uint8, the test images shown
    teacher: torch.Tensor
    student: torch.Tensor  # adapted to the teacher's width
    low_t: torch.Tensor
    high_t: torch.Tensor
    low_s: torch.Tensor
    high_s: torch.Tensor
    mean: torch.Tensor  # (E,) teacher channel mean over all shown pixels
    component: torch.Tensor  # (E,) unit first principal direction of the teacher's pixels

    def pc(self, name: str) -> np.ndarray:
        """(N, h, w) projection of a map on the component (centred unless it is a high band)."""
        x = getattr(self, name)
        if not name.startswith("high"):
            x = x - self.mean[:, None, None]
        return torch.einsum("nehw,e->nhw", x, self.component).numpy()

    def distance(self, band: str) -> np.ndarray:
        """(N, h, w) channel-wise L2 norm of student minus teacher band."""
        return torch.linalg.vector_norm(getattr(self, f"{band}_s") - getattr(self, f"{band}_t"), dim=1).numpy()


def principal_component(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel mean and first principal direction of (N, E, h, w) maps, each pixel a sample.

    The sign is fixed (largest entry positive) so that re-runs draw the same colours.
    """
    pixels = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).double()
    mean = pixels.mean(0)
    centred = pixels - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    u = vectors[:, -1]
    u = u * torch.sign(u[u.abs().argmax()])
    return mean.float(), u.float()


def read_run(run_dir: Path) -> tuple[dict, dict, str]:
    """(metrics.json, checkpoint, freq term name) of a finished student run, or one clear UserError."""
    from segkd.engine import checkpoint
    from segkd.engine.train import CHECKPOINT, METRICS

    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    path = run_dir / METRICS
    if not path.is_file():
        raise UserError(f"{run_dir}: no {METRICS} (not a finished run)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        spec = metrics["params"]
        terms = spec["terms"] or {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not the metrics of a training run ({err!r})") from err
    name = freq_term(terms)
    if name is None:
        raise UserError(f"{run_dir}: method {spec.get('method')!r} has no {FREQ_LOSS} term (terms: "
                        f"{', '.join(terms) or 'none'}); the band figure needs a frequency-distilled student")
    ckpt = checkpoint.load(run_dir / CHECKPOINT)
    if json.loads(json.dumps(ckpt.get("spec"))) != spec:
        raise UserError(f"{run_dir}: {METRICS} and {CHECKPOINT} were written by different run specs")
    return metrics, ckpt, name


@torch.no_grad()
def band_maps(run_dir: Path, images: int = 3) -> tuple[BandMaps, dict]:
    """The maps of the first `images` test images of the run's fold, and the run's metrics.json."""
    from segkd.data.augment import normalize
    from segkd.distill.frequency import standardized
    from segkd.distill.registry import build_distillation
    from segkd.engine.batches import load_fold
    from segkd.engine.train import load_teacher
    from segkd.models import create_model

    if images < 1:
        raise UserError(f"--images: expected at least 1, got {images}")
    metrics, ckpt, name = read_run(run_dir)
    spec, cpu = ckpt["spec"], torch.device("cpu")
    teacher = load_teacher(spec, cpu)
    student = create_model(spec["model"], num_classes=ckpt["num_classes"])
    student.load_state_dict(ckpt["model"])
    student.eval()
    distill = build_distillation(spec["terms"], student.feature_dims, teacher.feature_dims,
                                 where=f"methods.{spec['method']}")
    distill.load_state_dict(ckpt["distill"])
    term = distill.terms[name].eval()
    data = load_fold(spec["prepared"], spec["folds_file"], spec["fold"], spec["dataset"])
    shown = data.test_images[:images]
    x = normalize(shown)
    t, s = term.feature(teacher(x)).float(), term.feature(student(x)).float()
    if term.standardize:  # the maps the loss compares
        t, s = standardized(t), standardized(s)
    s = term.adapter(s).float()
    (low_t, high_t), (low_s, high_s) = term.band.split(t), term.band.split(s)
    mean, component = principal_component(t)
    return BandMaps(shown.numpy(), t, s, low_t, high_t, low_s, high_s, mean, component), metrics


COLUMNS = [("image", "input"), ("teacher", "teacher feature"), ("student", "student (adapted)"),
           ("low_t", "teacher low"), ("low_s", "student low"), ("high_t", "teacher high"),
           ("high_s", "student high"), ("low", "|low_s - low_t|"), ("high", "|high_s - high_t|")]


@deterministic
def figure(maps: BandMaps, title: str) -> Figure:
    """Rows: images; columns: `COLUMNS`. Each teacher/student pair shares a symmetric colour range,
    the two difference maps share one range, so low and high errors compare at a glance."""
    panels = {name: maps.pc(name) for name, _ in COLUMNS[1:7]}
    panels.update(low=maps.distance("low"), high=maps.distance("high"))
    groups = [("teacher", "student"), ("low_t", "low_s"), ("high_t", "high_s"), ("low", "high")]
    scale = {}
    for group in groups:
        bound = max(float(np.abs(panels[name]).max()) for name in group) or 1.0
        diverging = group[0] != "low"
        for name in group:
            scale[name] = dict(cmap="RdBu_r" if diverging else "magma", vmin=-bound if diverging else 0.0,
                               vmax=bound)
    n, (h, w) = len(maps.images), maps.images.shape[1:3]
    fig = Figure(figsize=(1.7 * len(COLUMNS), 1.7 * n * h / w + 1.4), layout="constrained")
    axes = fig.subplots(n, len(COLUMNS), squeeze=False)
    drawn = {}
    for i, row in enumerate(axes):
        for ax, (name, label) in zip(row, COLUMNS):
            if name == "image":
                ax.imshow(maps.images[i])
            else:
                drawn[name] = ax.imshow(panels[name][i], interpolation="nearest", **scale[name])
            ax.axis("off")
            if i == 0:
                ax.set_title(label, fontsize=8)
    for group, label in zip(groups, ("feature PC1", "low band PC1", "high band PC1", "channel L2 norm")):
        cols = [next(j for j, (name, _) in enumerate(COLUMNS) if name == g) for g in group]
        fig.colorbar(drawn[group[0]], ax=list(axes[:, cols].ravel()), location="bottom", shrink=0.8,
                     aspect=12, label=label)
    fig.suptitle(title, fontsize=9)
    return fig


def log_figure(metrics: dict, path: Path) -> bool:
    """Attach the figure to the student's own MLflow run (the id its metrics.json recorded)."""
    spec, run_id = metrics.get("params") or {}, metrics.get("mlflow_run_id")
    enabled = spec.get("tracking", {}).get("enabled", True)
    if not enabled or not run_id:
        why = "the run recorded no MLflow run" if enabled else "tracking is disabled for this run"
        print(f"segkd bands: {why}; {path} is not logged to MLflow", file=sys.stderr)
        return False
    from segkd.tracking import add_artifact  # mlflow is imported only there

    add_artifact(spec, run_id, path, "bands")  # the finished run stays the job's one run
    return True


def title(spec: dict) -> str:
    """The run and its freq term's band options (defaults filled), for the figure's title."""
    from segkd.distill.registry import LOSSES, parse_options

    term = freq_term(spec["terms"])
    options = parse_options(LOSSES[FREQ_LOSS], spec["terms"][term], f"methods.{spec['method']}.{term}")
    return (f"{spec['teacher']} -> {spec['model']}, {spec['method']}, seed {spec['seed']}, fold {spec['fold']}: "
            f"band {options['band']}, ratio {options['ratio']:g} ({options['ratio_mode']}), high {options['high']}")


def bands(run_dir: str | Path, images: int = 3, out: str | Path | None = None, log: bool = True) -> Path:
    """Draw the band figure of a student run to `out` (default <run>/bands.png); log it to MLflow."""
    run_dir = Path(run_dir)
    maps, metrics = band_maps(run_dir, images)
    out = Path(out) if out else run_dir / "bands.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    figure(maps, title(metrics["params"]), path=out)
    if log:
        log_figure(metrics, out)
    return out
