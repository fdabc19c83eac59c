"""Similarity-preserving distillation (Tung & Mori 2019, "Similarity-preserving knowledge
distillation", ICCV).

For a feature f (b, C, H, W) flattened to Q (b, C*H*W): G = Q Q^T (b x b, image-to-image
similarities within the batch), each row L2-normalised. Student and teacher Gram matrices have
the same size whatever their widths.
loss = ||G_t - G_s||_F^2 / b^2 (the paper's normalisation: mean over the b^2 entries).
Tap: the last encoder stage (default) or, with option `tap: decoder`, the decoder feature.
A batch of one image always gives 0 (its normalised Gram matrix is [1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segkd.distill.registry import DistillLoss, register

#: option value -> (SegOutput field, which map of it)
SP_TAPS = {"last_stage": "stages", "decoder": "decoder"}


def similarity(feature: torch.Tensor) -> torch.Tensor:
    """Row-normalised batch Gram matrix (b, b) of a feature, in float32."""
    q = feature.float().flatten(1)
    return F.normalize(q @ q.T, dim=1)


def similarity_preserving(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||G_t - G_s||_F^2 / b^2."""
    with torch.autocast(student.device.type, enabled=False):
        b = student.shape[0]
        return (similarity(teacher.detach()) - similarity(student)).pow(2).sum() / b**2


@register("sp")
class SimilarityPreserving(DistillLoss):
    """Similarity-preserving KD; option tap: last_stage (default) | decoder; term weight default 1.0."""

    taps = frozenset({"stages"})
    default_weight = 1.0
    defaults = {"tap": "last_stage"}

    def __init__(self, student_dims: dict, teacher_dims: dict, tap: str = "last_stage"):
        super().__init__()
        if tap not in SP_TAPS:
            raise ValueError(f"option 'tap': expected one of {', '.join(SP_TAPS)}, got {tap!r}")
        self.tap = tap
        self.taps = frozenset({SP_TAPS[tap]})
        self.check_dims(student_dims, teacher_dims)

    def _feature(self, output) -> torch.Tensor:
        return output.stages[-1] if self.tap == "last_stage" else output.decoder

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        s, t = self._feature(student), self._feature(teacher)
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"student batch {s.shape[0]} and teacher batch {t.shape[0]} differ")
        return similarity_preserving(s, t)
