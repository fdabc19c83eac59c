"""Segmentation scores from a confusion matrix: per-class IoU and accuracy, mIoU, mPA, aAcc.

The matrix is accumulated on the model's device (one `bincount` per batch, no host sync per pixel),
so evaluation costs one small transfer at the end. Scores follow the usual segmentation convention
(as in mmsegmentation): a class that appears neither in the ground truth nor in the prediction has
no IoU (NaN) and is left out of mIoU; a class absent from the ground truth has no pixel accuracy
(NaN) and is left out of mPA. NaN is written as None so the result is valid JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segkd.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


def _or_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def scores(confusion, class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Scores of a (C, C) confusion matrix, rows = ground truth, cols = prediction, void excluded.

    Returns ``{"iou": {name: float|None}, "acc": {name: float|None}, "mIoU", "mPA", "aAcc",
    "confusion": [[int]]}``; fractions in [0, 1].
    - IoU_c = TP / (TP + FP + FN); NaN (None) when class c is absent from prediction and ground truth.
    - acc_c = TP / (TP + FN), the per-class pixel accuracy; NaN (None) when c is absent from ground truth.
    - mIoU, mPA: means over the classes whose value is not NaN; aAcc = sum(TP) / labelled pixels.
    Usable on summed matrices too (e.g. pooled over folds).
    """
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(class_names)} classes")
    total = int(cm.sum())
    if total == 0:
        raise ValueError("confusion matrix is empty: no labelled (non-void) pixels were evaluated")
    tp = np.diag(cm).astype(np.float64)
    gt = cm.sum(axis=1).astype(np.float64)
    pred = cm.sum(axis=0).astype(np.float64)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    # union > 0 for some class whenever total > 0, and gt > 0 likewise, so the means are defined.
    return {
        "iou": {name: _or_none(v) for name, v in zip(class_names, iou)},
        "acc": {name: _or_none(v) for name, v in zip(class_names, acc)},
        "mIoU": float(np.nanmean(iou)),
        "mPA": float(np.nanmean(acc)),
        "aAcc": float(tp.sum() / total),
        "confusion": cm.tolist(),
    }


class ConfusionMatrix:
    """Accumulates a (num_classes, num_classes) int64 confusion matrix over batches.

    Rows are ground truth, columns prediction; pixels labelled `ignore_index` (void) are skipped.
    See `scores` for how absent classes are treated (NaN, left out of the means).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX,
                 device: torch.device | str = "cpu", class_names: Sequence[str] | None = None):
        if class_names is None:
            class_names = CLASS_NAMES if num_classes == NUM_CLASSES else [str(i) for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, logits_or_pred: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: logits (B, C, h, w) or predicted labels (B, H, W); labels (B, H, W).

        Logits smaller than the labels (SegFormer predicts at 1/4 resolution) are upsampled
        bilinearly (align_corners=False) to the label size before the argmax, as at evaluation.
        """
        labels = labels.to(logits_or_pred.device, non_blocking=True).long()
        if labels.dim() != 3:
            raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
        if logits_or_pred.dim() == 4:
            logits = logits_or_pred
            if logits.shape[1] != self.num_classes:
                raise ValueError(f"logits have {logits.shape[1]} channels, expected {self.num_classes}")
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear",
                                       align_corners=False)
            pred = logits.argmax(dim=1)
        elif logits_or_pred.dim() == 3:
            pred = logits_or_pred.long()
            if pred.numel() and (pred.min() < 0 or pred.max() >= self.num_classes):
                raise ValueError(f"predictions must be in 0..{self.num_classes - 1}")
        else:
            raise ValueError(f"expected logits (B, C, h, w) or predictions (B, H, W), "
                             f"got shape {tuple(logits_or_pred.shape)}")
        if pred.shape != labels.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(labels.shape)}")
        valid = labels != self.ignore_index
        c = self.num_classes
        counts = torch.bincount(c * labels[valid] + pred[valid], minlength=c * c)
        if counts.numel() != c * c:  # a label outside 0..C-1 that is not void
            raise ValueError(f"labels must be in 0..{c - 1} or {self.ignore_index} (void)")
        self.matrix += counts.view(c, c).to(self.matrix.device)

    def compute(self) -> dict:
        """Scores of everything accumulated so far (see `scores`)."""
        return scores(self.matrix.cpu().numpy(), self.class_names)
