"""FitNet hints on the decoder feature (Romero et al. 2015, "FitNets: hints for thin deep nets", ICLR).

The student's decoder feature (B, E_s, H/4, W/4) goes through a learned 1x1 convolution
(the *regressor*, here `adapter`: E_s -> E_t, e.g. 256 -> 768 for B0 -> B2) and is matched to
the teacher's decoder feature: loss = mean over (B, E_t, H/4, W/4) of (adapter(f_s) - f_t)^2.
The adapter trains with the student but belongs to the distillation, not to the deployed student.
"""

from __future__ import annotations

import torch
from torch import nn

from segkd.distill.registry import DistillLoss, check_same_shape, register


def adapter(student_channels: int, teacher_channels: int) -> nn.Conv2d:
    """1x1 convolution mapping the student's channels onto the teacher's."""
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


def check_adapter(conv: nn.Conv2d, student_dims: dict, teacher_dims: dict) -> None:
    """ValueError unless the adapter maps the student's decoder width to the teacher's."""
    want = (student_dims["decoder"], teacher_dims["decoder"])
    if (conv.in_channels, conv.out_channels) != want:
        raise ValueError(f"adapter maps {conv.in_channels} -> {conv.out_channels} channels, but the "
                         f"decoder features have {want[0]} (student) and {want[1]} (teacher)")


@register("fitnet")
class FitNet(DistillLoss):
    """FitNet hint loss on the decoder feature through a 1x1 adapter; no options; weight default 1.0."""

    taps = frozenset({"decoder"})
    default_weight = 1.0
    defaults = {}

    def __init__(self, student_dims: dict, teacher_dims: dict):
        super().__init__()
        super().check_dims(student_dims, teacher_dims)
        self.adapter = adapter(student_dims["decoder"], teacher_dims["decoder"])

    def check_dims(self, student_dims: dict, teacher_dims: dict) -> None:
        super().check_dims(student_dims, teacher_dims)
        check_adapter(self.adapter, student_dims, teacher_dims)

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        s = self.adapter(student.decoder)
        with torch.autocast(s.device.type, enabled=False):
            s, t = s.float(), teacher.decoder.detach().float()
            check_same_shape(s.shape, t.shape, "adapted decoder feature")
            # (s - t).pow(2), not F.mse_loss(s, t): mse_loss would save t, an inference tensor.
            return (s - t).pow(2).mean()
