"""Evaluate a model on the held-out images of a fold: whole-image inference, metrics from a confusion matrix.

The final model is evaluated (no model selection on the test fold). Logits are upsampled to label
size inside the confusion-matrix update; the matrix is accumulated on the device.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch

from segkd.classes import IGNORE_INDEX, NUM_CLASSES
from segkd.data.augment import normalize
from segkd.engine.metrics import ConfusionMatrix
from segkd.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware computes it fast, else fp32 (bf16 emulated on an AVX2-only
    CPU is ~10x slower than fp32). The resolved value is recorded with every run."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AMX tiles or AVX512-BF16).

    torch has no public query for these (`torch.backends.cpu.get_cpu_capability()` stops at AVX512),
    so this reads torch.cpu's private probes, here alone; tests/test_precision.py fails loudly if torch
    renames them.
    """
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on the device; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
             device: torch.device, precision: str = "fp32", num_classes: int = NUM_CLASSES) -> dict:
    """Per-class IoU, mIoU, mPA and aAcc of `model` on uint8 images (N,H,W,3) and labels (N,H,W)."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes=num_classes, ignore_index=IGNORE_INDEX, device=device)
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device, non_blocking=True))
        x = x.contiguous(memory_format=torch.channels_last)
        y = labels[start:start + batch_size].to(device, non_blocking=True).long()
        with autocast(device, precision):
            logits = model(x).logits
        cm.update(logits.float(), y)
    model.train(was_training)
    return cm.compute()


def evaluate_checkpoint(path, *, fold=None, prepared=None, folds_file=None, device="auto") -> dict:
    """Evaluate a saved run on a fold (default: the fold, data and precision it was trained with).

    The data given is checked against the run first: evaluating on prepared data of another size or
    content would give a wrong mIoU without a word, which `segkd train` already refuses to do.
    """
    from segkd.engine import checkpoint
    from segkd.engine.batches import load_fold
    from segkd.models import create_model

    ckpt = checkpoint.load_run_checkpoint(path)
    spec = ckpt["spec"]
    model = create_model(spec["model"], num_classes=ckpt["num_classes"])
    checkpoint.load_model_state(model, ckpt, path)
    fold = spec["fold"] if fold is None else fold
    folds_file = folds_file or spec["folds_file"]
    data = load_fold(prepared or spec["prepared"], folds_file, fold, spec["dataset"])
    check_trained_data(path, ckpt, data.identity)
    leak = held_out_leak(ckpt, data.identity, folds_file)
    if leak:
        print(f"segkd evaluate: warning: {leak}", file=sys.stderr)
    dev = resolve_device(device)
    model.to(dev).to(memory_format=torch.channels_last)
    precision = resolve_precision(spec["train"]["precision"], dev)
    metrics = evaluate(model, data.test_images, data.test_labels, batch_size=spec["train"]["eval_batch_size"],
                       device=dev, precision=precision, num_classes=ckpt["num_classes"])
    return {"checkpoint": str(path), "fold": fold, **metrics}


def _short(value) -> str:
    """A checksum cut to 12 hex digits (enough to tell two apart in a message), other values as they are."""
    return value[:12] if isinstance(value, str) and len(value) == 64 else repr(value)


def _differences(trained: dict, given: dict, keys, prefix: str = "") -> list[str]:
    """`key run-value vs given-value` for each differing key; a mapping (the checksums of the arrays)
    is compared entry by entry, so the message names the array that differs."""
    out = []
    for key in keys:
        mine, theirs = trained.get(key), given.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            out += _differences(mine, theirs, sorted(mine.keys() | theirs.keys()), f"{prefix}{key}.")
        elif mine != theirs:
            out.append(f"{prefix}{key} {_short(mine)} vs {_short(theirs)}")
    return out


def check_trained_data(path, ckpt: dict, given: dict) -> None:
    """Refuse data other than the run's: the same arrays always, the same split on the run's own fold.

    `given` is the identity of the fold about to be evaluated (see engine.batches.data_identity). A
    checkpoint from before identities were stored has none; its dataset name and size are checked by
    `load_fold`, which is all that can be.
    """
    trained = ckpt.get("data")
    if trained is None:
        return
    keys = ["dataset", "height", "width", "arrays_sha256"]
    if given["fold"] == trained.get("fold"):
        keys.append("fold_sha256")
    diffs = _differences(trained, given, keys)
    if diffs:
        raise UserError(f"{path}: prepared data differs from the data the run was trained on "
                        f"({', '.join(diffs)}; run vs given); evaluate with --prepared/--folds-file of the "
                        "run, or re-train")


def held_out_leak(ckpt: dict, given: dict, folds_file) -> str | None:
    """A warning when the fold evaluated holds images the run trained on, else None.

    With --fold of another fold, the held-out images of that fold are usually training images of the
    run's own fold (K-fold splits share their images), so its "test" metrics are training metrics.
    """
    from segkd.data.folds import load_folds
    from segkd.engine.batches import data_identity

    run_fold, fold = ckpt["spec"]["fold"], given["fold"]
    if fold == run_fold:
        return None
    folds = load_folds(folds_file)
    trained = ckpt.get("data")
    # is this folds file's run fold the split the run trained on? (`given` holds the manifest fields
    # data_identity reads, and its arrays are the run's: check_trained_data passed)
    known = 0 <= run_fold < len(folds["folds"]) and (
        trained is None or data_identity(given, folds, run_fold)["fold_sha256"] == trained.get("fold_sha256"))
    if not known:
        return (f"cannot tell whether the held-out images of fold {fold} were training images of the run: "
                f"fold {run_fold} of {folds_file} is not the split it was trained on")
    test = set(folds["folds"][fold]["test"])
    seen = test & set(folds["folds"][run_fold]["train"])
    if not seen:
        return None
    return (f"{len(seen)} of the {len(test)} held-out images of fold {fold} were training images of the run "
            f"(trained on fold {run_fold}); these metrics are not held-out metrics")


def check_output(path, option: str = "--out") -> None:
    """Refuse an output file that could not be written, before the work that produces it."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise UserError(f"{option}: {path} is a directory")
    if not parent.is_dir():
        raise UserError(f"{option}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option}: directory {parent} is not writable")
