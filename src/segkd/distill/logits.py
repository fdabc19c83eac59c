"""Distillation on the segmentation logits (1/4 resolution): pixel-wise KD and channel-wise CWD.

Both compute in float32 (autocast off): softmax at low temperature is where bf16 hurts most.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segkd.classes import IGNORE_INDEX
from segkd.distill.registry import DistillLoss, check_same_shape, register


def valid_mask(labels: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """Non-void pixels at the logits' `size`; labels at any resolution, resized by nearest."""
    if labels is None:
        return None
    if labels.dim() == 4:  # B,1,H,W
        labels = labels[:, 0]
    if tuple(labels.shape[-2:]) != tuple(size):
        labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0]
    return labels != IGNORE_INDEX


def pixel_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * mean over valid pixels of KL(softmax(t/T) || softmax(s/T)) over the class axis."""
    with torch.autocast(student.device.type, enabled=False):
        log_s = F.log_softmax(student.float() / temperature, dim=1)
        log_t = F.log_softmax(teacher.detach().float() / temperature, dim=1)
        kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)  # B,H,W: nats per pixel
        if valid is None:
            return kl.mean() * temperature**2
        return (kl * valid).sum() / valid.sum().clamp_min(1) * temperature**2


def channel_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2/(N*C) * sum over images n and channels c of KL(softmax_HW(t_nc/T) || softmax_HW(s_nc/T))."""
    n, c = student.shape[:2]
    with torch.autocast(student.device.type, enabled=False):
        log_s = F.log_softmax(student.float().flatten(2) / temperature, dim=2)
        log_t = F.log_softmax(teacher.detach().float().flatten(2) / temperature, dim=2)
        return (log_t.exp() * (log_t - log_s)).sum() * temperature**2 / (n * c)


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"option 'temperature': must be > 0, got {temperature}")


@register("kd")
class PixelKD(DistillLoss):
    """Pixel-wise logit KD (Hinton et al. 2015, "Distilling the knowledge in a neural network").

    loss = T^2 * (1/|V|) * sum_{p in V} KL(softmax(t_p / T) || softmax(s_p / T)),
    V = the non-void pixels of the 1/4-resolution logits (labels resized by nearest; without
    labels every pixel counts). Normalisation: KL is *summed* over the 11 classes and *averaged*
    over pixels and images, i.e. nats per pixel, the same scale as the per-pixel cross-entropy of
    the task loss. So weight 0.01 adds 1% of a per-pixel KL (times T^2, which keeps the gradient
    scale independent of T) to a task loss of about one nat per pixel.
    Options: temperature (T, default 1.0); term weight default 0.01.
    """

    taps = frozenset({"logits"})
    default_weight = 0.01
    defaults = {"temperature": 1.0}

    def __init__(self, student_dims: dict, teacher_dims: dict, temperature: float = 1.0):
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.check_dims(student_dims, teacher_dims)

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        check_same_shape(student.logits.shape, teacher.logits.shape, "logits")
        valid = valid_mask(labels, student.logits.shape[-2:])
        return pixel_kl(student.logits, teacher.logits, self.temperature, valid)


@register("cwd")
class ChannelWiseKD(DistillLoss):
    """Channel-wise distillation (Shu et al. 2021, "Channel-wise knowledge distillation for dense prediction").

    Each class channel of the logits becomes a distribution over the H*W pixels:
    phi(y_c) = softmax over pixels of y_c / T. loss = T^2 / (N*C) * sum_{n,c} KL(phi(t_nc) || phi(s_nc)),
    i.e. the KL is *summed* over pixels and *averaged* over images and channels (the paper's
    normalisation; their weight 3 at T=4 carries over). Void pixels are not masked (as in the paper).
    Options: temperature (T, default 4.0); term weight default 3.0.
    """

    taps = frozenset({"logits"})
    default_weight = 3.0
    defaults = {"temperature": 4.0}

    def __init__(self, student_dims: dict, teacher_dims: dict, temperature: float = 4.0):
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.check_dims(student_dims, teacher_dims)

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        check_same_shape(student.logits.shape, teacher.logits.shape, "logits")
        return channel_kl(student.logits, teacher.logits, self.temperature)
