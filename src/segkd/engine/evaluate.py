"""Evaluate a model on the held-out images of a fold: whole-image inference, metrics from a confusion matrix.

The final model is evaluated (no model selection on the test fold). Logits are upsampled to label
size inside the confusion-matrix update; the matrix is accumulated on the device.
"""

from __future__ import annotations

import contextlib

import torch

from segkd.classes import IGNORE_INDEX, NUM_CLASSES
from segkd.data.augment import normalize
from segkd.engine.metrics import ConfusionMatrix


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from segkd.errors import UserError

        raise UserError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware computes it fast, else fp32 (bf16 emulated on an AVX2-only
    CPU is ~10x slower than fp32). The resolved value is recorded with every run."""
    if precision == "fp16" and device.type != "cuda":
        from segkd.errors import UserError

        raise UserError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    fast_bf16 = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return "bf16" if fast_bf16 else "fp32"


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
    """Evaluate a saved run on a fold (default: the fold, data and precision it was trained with)."""
    from segkd.engine import checkpoint
    from segkd.engine.batches import load_fold
    from segkd.models import create_model

    ckpt = checkpoint.load(path)
    spec = ckpt["spec"]
    dev = resolve_device(device)
    model = create_model(spec["model"], num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    model.to(dev).to(memory_format=torch.channels_last)
    fold = spec["fold"] if fold is None else fold
    data = load_fold(prepared or spec["prepared"], folds_file or spec["folds_file"], fold)
    precision = resolve_precision(spec["train"]["precision"], dev)
    metrics = evaluate(model, data.test_images, data.test_labels, batch_size=spec["train"]["eval_batch_size"],
                       device=dev, precision=precision, num_classes=ckpt["num_classes"])
    return {"checkpoint": str(path), "fold": fold, **metrics}
