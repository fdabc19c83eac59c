"""`segkd probe`: the low-pass probe, how much of a trained model's accuracy lives in the low
frequencies of one of its features.

Frequency-band distillation rests on a premise taken from FFR (Frequency Feature Rectification): a
segmentation model's accuracy is carried by the low frequencies of its decoder feature, so a student
should be taught the teacher's low band and not its high band. The probe measures the premise on
every trained model of a study instead of assuming it: the run's final model is evaluated on its
held-out fold as `segkd train` evaluated it (the same images, batches and precision), once per ratio
of a grid with the tapped feature (the `freq` term's tap, the decoder feature by default) replaced by
its low band (pass ``low``), and once per ratio with it replaced by its high band (pass ``high``).
Both passes use one split of `segkd.distill.bands`, built as the `freq` term builds it, so
low + high is the feature at every ratio.

Where a band keeps every frequency of the map (``box`` and ``dct`` at ratio 1), its low band is the
feature itself. The probe then passes the feature through untouched, and the high band is zero,
instead of computing the identity as a projection, whose float rounding could flip an argmax
somewhere: that row of the table is the run's own evaluation, bit for bit (tests/test_probe.py).

Cost: one model load and the fold's held-out images; per batch, the encoder runs once and each
(pass, ratio) re-runs only the decode head from the cached stage maps (taps ``decoder`` and
``logits``). A stage tap changes the stages after it too, so there every (pass, ratio) is a whole
forward pass.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from segkd.errors import UserError

DEFAULT_RATIOS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
PASSES = ("low", "high")  # which band of the feature the model is left with
TAPS = ("decoder", "stage1", "stage2", "stage3", "stage4", "logits")  # the freq term's taps
METRICS = ("mIoU", "mPA", "aAcc")
#: the columns of a probe table: one row per (pass, ratio); metrics as fractions, as in metrics.json
COLUMNS = ["role", "teacher", "method", "model", "seed", "fold", "tap", "band", "ratio_mode", "pass", "ratio",
           *METRICS, "run_mIoU", "precision", "spec_hash"]


def make_split(band: str, ratio: float, ratio_mode: str = "axis"):
    """The `freq` term's split for `band` at `ratio` (Butterworth at its default order)."""
    from segkd.distill.bands import BANDS, RATIO_MODES

    if band not in BANDS:
        raise UserError(f"--band: expected one of {', '.join(BANDS)}, got {band!r}")
    if ratio_mode not in RATIO_MODES:
        raise UserError(f"--ratio-mode: expected one of {', '.join(RATIO_MODES)}, got {ratio_mode!r}")
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"--ratios: each ratio must be in [0, 1], got {ratio}")
    return BANDS[band](ratio, ratio_mode)


def keeps_everything(split, h: int, w: int, device) -> bool:
    """Whether the split's low band of an (h, w) map is the map itself (every frequency kept)."""
    from segkd.distill.bands import SeparableProjection

    if isinstance(split, SeparableProjection):
        u_h, u_w = split.bases(h, w, device)
        return u_h.shape[1] == h and u_w.shape[1] == w
    return bool((split.mask(h, w, device) == 1).all())


def bands_of(split, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) of a feature map, low + high = x: the split's own, or (x, 0) where it keeps everything
    (module docstring); float32 otherwise, as every split computes."""
    if keeps_everything(split, *x.shape[-2:], x.device):
        return x, torch.zeros_like(x)
    return split.split(x)


def parse_ratios(text: str) -> list[float]:
    """`--ratios 0.1,0.2,1` -> [0.1, 0.2, 1.0]."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--ratios: expected comma-separated numbers, got {text!r}") from None


def check_ratios(ratios) -> list[float]:
    ratios = [float(r) for r in ratios]
    if not ratios:
        raise UserError("--ratios: expected at least one ratio")
    if len(set(ratios)) != len(ratios):
        raise UserError(f"--ratios: repeated ratio in {ratios}")
    bad = [r for r in ratios if not 0.0 <= r <= 1.0]
    if bad:
        raise UserError(f"--ratios: each ratio must be in [0, 1], got {bad[0]}")
    return ratios


@contextlib.contextmanager
def replaced(model, tap: str, replace):
    """Within the block, the model's `tap` is replace(tap's map) in every forward pass.

    A forward hook on the module that outputs the tap: the decoder feature is the input of the head's
    Dropout2d (the identity at evaluation, called by both head paths), a stage map the output of its
    encoder stage (so the later stages see the replaced map, as they would in the model), the logits
    the second output of the head.
    """
    head = model.decode_head
    if tap == "decoder":
        module, hook = head.dropout, lambda _m, _args, out: replace(out)
    elif tap == "logits":
        module, hook = head, lambda _m, _args, out: (out[0], replace(out[1]))
    else:
        module, hook = model.encoder.stages[int(tap[-1]) - 1], lambda _m, _args, out: replace(out)
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def probe_model(model, images: torch.Tensor, labels: torch.Tensor, *, ratios, band: str = "box",
                ratio_mode: str = "axis", tap: str = "decoder", batch_size: int, device: torch.device,
                precision: str = "fp32", num_classes: int) -> pd.DataFrame:
    """mIoU, mPA and aAcc of `model` on uint8 images (N,H,W,3) and labels (N,H,W) with its `tap` replaced
    by its low band, then by its high band, at each ratio: one row per (pass, ratio), pass-major.

    The batches, normalisation, layout, autocast and confusion matrix are those of
    `engine.evaluate.evaluate`, so the identity band gives the numbers `segkd train` wrote.
    """
    from segkd.classes import IGNORE_INDEX
    from segkd.data.augment import normalize
    from segkd.engine.evaluate import autocast
    from segkd.engine.metrics import ConfusionMatrix

    if tap not in TAPS:
        raise UserError(f"--tap: expected one of {', '.join(TAPS)}, got {tap!r}")
    ratios = check_ratios(ratios)
    splits = {r: make_split(band, r, ratio_mode) for r in ratios}
    cases = [(p, r) for p in PASSES for r in ratios]
    matrices = {case: ConfusionMatrix(num_classes=num_classes, ignore_index=IGNORE_INDEX, device=device)
                for case in cases}
    was_training = model.training
    model.eval()
    cached_stages = tap in ("decoder", "logits")  # the encoder's output does not depend on the replacement
    try:
        for start in range(0, len(images), batch_size):
            x = normalize(images[start:start + batch_size].to(device, non_blocking=True))
            x = x.contiguous(memory_format=torch.channels_last)
            y = labels[start:start + batch_size].to(device, non_blocking=True).long()
            stages = None
            if cached_stages:
                with autocast(device, precision):
                    stages = model.forward_stages(x)
            for kind, ratio in cases:
                index = PASSES.index(kind)
                with replaced(model, tap, lambda m: bands_of(splits[ratio], m)[index]):
                    with autocast(device, precision):
                        # SegFormer.forward with every tap: the stages, then the head with its logits
                        logits = model(x).logits if stages is None else model.decode_head(stages, logits=True)[1]
                matrices[(kind, ratio)].update(logits.float(), y)
    finally:
        model.train(was_training)
    rows = []
    for (kind, ratio), cm in matrices.items():
        m = cm.compute()
        rows.append({"pass": kind, "ratio": ratio, **{k: m[k] for k in METRICS}})
    return pd.DataFrame(rows)


def read_run(run_dir: Path) -> tuple[dict, dict]:
    """(metrics.json, checkpoint) of a finished run, or one clear UserError."""
    from segkd import layout
    from segkd.engine import checkpoint

    if not run_dir.is_dir():
        raise UserError(f"--run: run directory not found: {run_dir}")
    path = run_dir / layout.METRICS
    if not path.is_file():
        raise UserError(f"{run_dir}: no {layout.METRICS} (not a finished run)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        absent = [key for key in ("params", "mIoU", "precision") if key not in metrics]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
        raise UserError(f"{path}: not the metrics of a training run ({err})") from None
    if absent:
        raise UserError(f"{path}: not the metrics of a training run (no {', '.join(absent)})")
    spec = metrics["params"]
    ckpt = checkpoint.load_run_checkpoint(run_dir / layout.CHECKPOINT)
    if json.loads(json.dumps(ckpt["spec"])) != spec:
        raise UserError(f"{run_dir}: {layout.METRICS} and {layout.CHECKPOINT} were written by different run specs")
    return metrics, ckpt


def probe(run_dir, *, ratios=DEFAULT_RATIOS, band: str = "box", ratio_mode: str = "axis", tap: str = "decoder",
          device: str = "auto") -> pd.DataFrame:
    """The probe table (`COLUMNS`) of a finished run, evaluated on its own fold and data."""
    from segkd.config import spec_hash
    from segkd.engine import checkpoint
    from segkd.engine.batches import load_fold
    from segkd.engine.evaluate import check_trained_data, resolve_device, resolve_precision
    from segkd.models import create_model

    run_dir = Path(run_dir)
    ratios = check_ratios(ratios)
    make_split(band, ratios[0], ratio_mode)  # a bad band or mode fails before the model loads
    if tap not in TAPS:
        raise UserError(f"--tap: expected one of {', '.join(TAPS)}, got {tap!r}")
    metrics, ckpt = read_run(run_dir)
    spec = ckpt["spec"]
    model = create_model(spec["model"], num_classes=ckpt["num_classes"])
    checkpoint.load_model_state(model, ckpt, run_dir / "checkpoint.pt")
    data = load_fold(spec["prepared"], spec["folds_file"], spec["fold"], spec["dataset"])
    check_trained_data(run_dir, ckpt, data.identity)
    dev = resolve_device(device)
    model.to(dev).to(memory_format=torch.channels_last)
    # the precision the run was evaluated in, where it was evaluated on this kind of device
    precision = (metrics["precision"] if metrics.get("device") == dev.type
                 else resolve_precision(spec["train"]["precision"], dev))
    table = probe_model(model, data.test_images, data.test_labels, ratios=ratios, band=band,
                        ratio_mode=ratio_mode, tap=tap, batch_size=spec["train"]["eval_batch_size"], device=dev,
                        precision=precision, num_classes=ckpt["num_classes"])
    identity = {"role": spec["role"], "teacher": spec["teacher"], "method": spec["method"], "model": spec["model"],
                "seed": spec["seed"], "fold": spec["fold"], "tap": tap, "band": band, "ratio_mode": ratio_mode}
    for key, value in identity.items():
        table[key] = value
    table["run_mIoU"] = metrics["mIoU"]
    table["precision"] = precision
    table["spec_hash"] = spec_hash(spec)
    return table[COLUMNS]


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """The table as CSV, floats written exactly (shortest round-trip repr), atomically."""
    from segkd.jsonfiles import write_text

    write_text(Path(path), table.to_csv(index=False, lineterminator="\n"))
    return Path(path)


def main_probe(run, out=None, ratios=DEFAULT_RATIOS, band="box", ratio_mode="axis", tap="decoder",
               device="auto") -> Path:
    """`segkd probe`: the table of one run, written to `out` (default <run>/probe.csv)."""
    from segkd.engine.evaluate import check_output

    if not Path(run).is_dir():
        raise UserError(f"--run: run directory not found: {run}")
    out = Path(out) if out else Path(run) / "probe.csv"
    check_output(out, "--out")  # before the work
    table = probe(run, ratios=ratios, band=band, ratio_mode=ratio_mode, tap=tap, device=device)
    write_table(table, out)
    print(f"segkd probe: {run}: {len(table)} rows -> {out}", file=sys.stderr)
    return out
