"""Attention transfer on the encoder stages (Zagoruyko & Komodakis 2017, "Paying more attention
to attention", ICLR).

For a stage feature f (B, C, H, W): the attention map a(f) = vec(mean_c f_c^2) / ||vec(mean_c f_c^2)||_2,
one L2-normalised vector of H*W values per image, so it does not depend on the channel count and
student/teacher stages of different widths compare directly.
loss = sum over the 4 stages of mean_{b,p} (a(f_s)_bp - a(f_t)_bp)^2.
Normalisation: the squared difference is *averaged* over images and pixels (the authors' code),
*summed* over stages; that is why the usual weight is 1000 (the paper's beta = 1e3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segkd.distill.registry import DistillLoss, register


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """(B, H*W) L2-normalised channel mean of the squared feature."""
    return F.normalize(feature.float().pow(2).mean(dim=1).flatten(1), dim=1)


def attention_transfer(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Sum over stages of the mean squared difference of attention maps (float32)."""
    with torch.autocast(student[0].device.type, enabled=False):
        total = student[0].new_zeros((), dtype=torch.float32)
        for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
            if s.shape[-2:] != t.shape[-2:]:
                raise ValueError(f"stage {i + 1}: student {tuple(s.shape[-2:])} and teacher "
                                 f"{tuple(t.shape[-2:])} maps differ in size")
            total = total + (attention_map(s) - attention_map(t.detach())).pow(2).mean()
        return total


@register("at")
class AttentionTransfer(DistillLoss):
    """Attention transfer over all encoder stages; no options; term weight default 1000."""

    taps = frozenset({"stages"})
    default_weight = 1000.0
    defaults = {}

    def __init__(self, student_dims: dict, teacher_dims: dict):
        super().__init__()
        self.check_dims(student_dims, teacher_dims)

    def check_dims(self, student_dims: dict, teacher_dims: dict) -> None:
        super().check_dims(student_dims, teacher_dims)
        if len(student_dims["stages"]) != len(teacher_dims["stages"]):
            raise ValueError(f"student has {len(student_dims['stages'])} encoder stages, teacher "
                             f"{len(teacher_dims['stages'])}; attention transfer pairs them one to one")

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        return attention_transfer(list(student.stages), list(teacher.stages))
