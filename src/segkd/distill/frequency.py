"""Frequency-band distillation (segkd's method).

A feature map x (option `tap`: the decoder feature by default) is split into a low and a high
band, x = low + high (option `band`, see `segkd.distill.bands`). The low band carries the layout
of the scene (which the teacher knows better); the high band carries edges and texture, where a
small student mostly copies noise. The student's map first goes through a learned 1x1 adapter A
to the teacher's width (as in FitNet); logits need none (same class count).

    loss = low_weight * MSE(low(A s), low(t)) + high_weight * high term
    high term = mean |high(s)|                          (high: regularize, default)
              = MSE(high(A s), high(t))                 (high: kd)
              = MSE(|F high(A s)|, |F high(t)|)         (high: amplitude)
              = 0                                       (high: none)

MSE is the mean over (B, E, H, W) of the full maps at the teacher's width E; the term weight
(lambda, default 0.1) multiplies the whole loss.

* ``regularize`` is an L1 penalty on the student's *own* high band, at the student's width, before
  the adapter (mean over (B, E_s, H, W)): the adapter only exists to compare with the teacher, and
  the penalty smooths the student's feature, not a learned image of it.
* ``amplitude`` matches only the amplitude spectrum of the high band, phase-free: F is the
  orthonormal 2-D DFT per map (``norm='ortho'``), so by Parseval the term is at most the ``kd``
  term, equal when the phases agree; with the DFT bands (all but ``dct``) it ignores circular
  shifts of either map.
* ``standardize: true`` replaces each model's map by its per-channel standardisation before
  anything else (the two models' feature scales differ): x' = (x - mean_c) / sqrt(var_c + 1e-5),
  mean and biased variance of channel c over (B, H, W) of the batch, at each model's own width
  (the student's before the adapter). The student's statistics carry gradients (as in batch
  norm); the teacher's are constants. With batch 1 this removes every channel's image mean (DC).

Cost. A commutes with any spatial linear split (low(A s) = A low(s)), and ``box``, ``dct`` and
``radial`` are orthogonal projections with orthonormal coefficients C (5 x 7 instead of 24 x 32
at ratio 0.2), so ||low(A s) - low(t)||^2 = ||A C(s) + b C(1) - C(t)||^2 exactly: with
``regularize`` and ``none`` the adapter runs on the coefficients only, a small fraction of the
cost of running it on the full map. ``kd``, ``amplitude`` and the ``gaussian`` / ``butterworth``
bands (not projections) need the adapted full map, as FitNet does. The README's Performance section
gives the measured costs (benchmarks/train_step.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segkd.distill.bands import (  # noqa: F401  (re-exported)
    BANDS,
    FOURIER_BANDS,
    RATIO_MODES,
    BandSplit,
    BoxFFTSplit,
    ProjectionSplit,
    box_mask,
    fourier_basis,
    kept_radius,
)
from segkd.distill.feature import adapter as make_adapter
from segkd.distill.registry import DistillLoss, check_same_shape, register
from segkd.terms import FREQ_LOSS

HIGH_MODES = ("regularize", "kd", "amplitude", "none")
#: option `tap` -> SegOutput field
FREQ_TAPS = {"decoder": "decoder", "stage1": "stages", "stage2": "stages", "stage3": "stages",
             "stage4": "stages", "logits": "logits"}


def standardized(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(x - mean_c) / sqrt(var_c + eps), statistics per channel over (B, H, W), biased variance:
    batch norm in training mode without affine parameters or running statistics (its fused
    kernels are several times faster than var_mean and autograd here)."""
    return F.batch_norm(x, None, None, training=True, eps=eps)


def mean_of(x: torch.Tensor) -> torch.Tensor:
    """x.sum() / x.numel(): unlike x.mean(), its gradient stays a broadcast scalar, so the backward
    pass of a channels-last map stays channels-last (no layout copies)."""
    return x.sum() / x.numel()


def amplitude_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over all entries of (|F x| - |F y|)^2, F the orthonormal 2-D DFT of each map."""
    amplitude = lambda m: torch.fft.fft2(m, norm="ortho").abs()  # noqa: E731
    return mean_of((amplitude(x) - amplitude(y)).pow(2))


def spectral_terms(a: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, high: str):
    """(low term, kd or amplitude term) for a band that is a gain g on the DFT, from rfft2 only.

    F orthonormal: F low(x) = g F x and F high(x) = (1 - g) F x with 0 <= g <= 1, so
    ||low(a) - low(t)||^2 = sum g^2 |F(a - t)|^2, ||high(a) - high(t)||^2 = sum (1 - g)^2 |F(a - t)|^2
    and the amplitude term is sum (1 - g)^2 (|F a| - |F t|)^2. rfft2 keeps one bin of each mirror
    pair (k, -k), which counts twice, except in column 0 and (even widths) column w/2.
    """
    w = a.shape[-1]
    g = mask[:, : w // 2 + 1]
    pairs = torch.full((w // 2 + 1,), 2.0, device=a.device)
    pairs[0] = 1.0
    if w % 2 == 0:
        pairs[-1] = 1.0
    total = lambda weight, x: (pairs * weight * x).sum() / t.numel()  # noqa: E731
    if high == "amplitude":
        fa, ft = torch.fft.rfft2(a, norm="ortho"), torch.fft.rfft2(t, norm="ortho")
        power = torch.view_as_real(fa - ft).square().sum(-1)
        return total(g.square(), power), total((1 - g).square(), (fa.abs() - ft.abs()).square())
    power = torch.view_as_real(torch.fft.rfft2(a - t, norm="ortho")).square().sum(-1)
    return total(g.square(), power), total((1 - g).square(), power)


def adapt_map(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for the 1x1 adapter, as one matrix product over channels (faster than the CPU conv)."""
    return F.linear(x.movedim(1, -1), conv.weight.flatten(1), conv.bias).movedim(-1, 1)


def adapt_coefficients(conv: nn.Conv2d, c: torch.Tensor, c_one: torch.Tensor) -> torch.Tensor:
    """C(A s) from c = C(s): W c + b C(1), for coefficients (B, E_s, ...) and C(1) = C(ones)."""
    out = F.linear(c.movedim(1, -1), conv.weight.flatten(1)) + c_one[..., None] * conv.bias
    return out.movedim(-1, 1)


class CoefficientsAndHighL1(torch.autograd.Function):
    """(c, mean |x - synthesis(c)|) with c = coefficients(x) of a projection band: the low band's
    coordinates and the regulariser, with one gradient map for both.

    Written by hand because at decoder size the cost is memory traffic. P = synthesis . coefficients
    is symmetric, so with g = sign(high) dL/dl1 / N the gradient is g - P g + synthesis(dL/dc)
    = g + synthesis(dL/dc - coefficients(g)), the synthesis added into g's buffer, which is the
    saved sign's: one full-size buffer in all, against autograd's chain (sub, abs, sign, mul, neg,
    the coefficients' backward and the sum of the two gradients).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, band: ProjectionSplit):
        c = band.coefficients(x)
        neg_high = band.synthesis(c, x.shape[-2:]).sub_(x)  # low - x, in synthesis's own buffer
        value = torch.linalg.vector_norm(neg_high, 1) / x.numel()
        ctx.band = band
        ctx.save_for_backward(neg_high.sign_())
        return c, value

    @staticmethod
    def backward(ctx, grad_c: torch.Tensor, grad_value: torch.Tensor):
        (neg_sign,) = ctx.saved_tensors
        # sign(high) dL/dl1 / N, in the saved buffer: a second backward through this graph
        # (retain_graph) fails autograd's version check instead of reading the scaled sign.
        g = neg_sign.mul_(-grad_value / neg_sign.numel())
        return ctx.band.synthesis_add(grad_c - ctx.band.coefficients(g), out=g), None


def band_loss(student: torch.Tensor, teacher: torch.Tensor, band: BandSplit, high: str, *,
              adapter: nn.Conv2d | None = None, low_weight: float = 1.0, high_weight: float = 1.0,
              standardize: bool = False) -> torch.Tensor:
    """The loss of the module docstring in float32, for a student map (before `adapter`, which maps
    its channels onto the teacher's; None if they already match) and a teacher map.

    Transforms as little as possible: projection bands with ``regularize`` / ``none`` work on
    coefficients (module docstring); ``gaussian`` / ``butterworth``, and ``amplitude`` on ``box`` /
    ``radial``, get both terms from the spectrum (`spectral_terms`); otherwise the split of A s - t
    (one split, the bands are linear), or of each map for ``amplitude`` on the DCT.
    """
    with torch.autocast(student.device.type, enabled=False):
        s, t = student.float(), teacher.detach().float()
        if standardize:
            s, t = standardized(s), standardized(t)
        width = adapter.out_channels if adapter is not None else s.shape[1]
        check_same_shape((s.shape[0], width, *s.shape[2:]), t.shape, "adapted decoder feature")
        if isinstance(band, ProjectionSplit) and high in ("regularize", "none"):
            if high == "regularize":
                c_s, high_term = CoefficientsAndHighL1.apply(s, band)
            else:
                c_s, high_term = band.coefficients(s), 0.0
            c_t = band.coefficients(t)
            c_adapted = c_s
            if adapter is not None:
                c_one = band.coefficients(torch.ones(t.shape[-2:], device=t.device))
                c_adapted = adapt_coefficients(adapter, c_s, c_one)
            low = (c_adapted - c_t).square().sum() / t.numel()
            return low_weight * low + high_weight * high_term
        a = adapt_map(adapter, s) if adapter is not None else s
        if isinstance(band, FOURIER_BANDS) and (high == "amplitude" or not isinstance(band, ProjectionSplit)):
            low, high_term = spectral_terms(a, t, band.mask(*t.shape[-2:], t.device), high)
        elif high == "amplitude":  # dct
            (low_a, high_a), (low_t, high_t) = band.split(a), band.split(t)
            low, high_term = mean_of((low_a - low_t).square()), amplitude_mse(high_a, high_t)
        else:  # kd on a projection: its split beats the FFT pair
            low_d, high_d = band.split(a - t)
            low, high_term = mean_of(low_d.square()), mean_of(high_d.square())
        if high == "regularize":
            high_term = mean_of((s - band.low(s)).abs())
        elif high == "none":
            high_term = 0.0
        return low_weight * low + high_weight * high_term


@register(FREQ_LOSS)
class FrequencyKD(DistillLoss):
    """Frequency-band KD (module docstring); term weight default 0.1.

    Options: ratio (0.2; in [0, 1]; its meaning per band in `segkd.distill.bands`), ratio_mode
    (axis | area), band (box | radial | gaussian | butterworth | dct), order (2; Butterworth only,
    > 0), high (regularize | kd | amplitude | none), low_weight and high_weight (1.0; >= 0),
    standardize (false), tap (decoder | stage1 .. stage4 | logits).
    Attributes: `band` (the split), `adapter` (1x1 conv, student -> teacher width; identity on
    logits), `tap` (the option), `taps` (the SegOutput field it reads).
    """

    taps = frozenset({"decoder"})
    default_weight = 0.1
    defaults = {"ratio": 0.2, "ratio_mode": "axis", "high": "regularize", "band": "box", "order": 2.0,
                "low_weight": 1.0, "high_weight": 1.0, "standardize": False, "tap": "decoder"}

    def __init__(self, student_dims: dict, teacher_dims: dict, ratio: float = 0.2, ratio_mode: str = "axis",
                 high: str = "regularize", band: str = "box", order: float = 2.0, low_weight: float = 1.0,
                 high_weight: float = 1.0, standardize: bool = False, tap: str = "decoder"):
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"option 'ratio': must be in [0, 1], got {ratio}")
        for option, value, choices in (("ratio_mode", ratio_mode, RATIO_MODES), ("high", high, HIGH_MODES),
                                       ("band", band, tuple(BANDS)), ("tap", tap, tuple(FREQ_TAPS))):
            if value not in choices:
                raise ValueError(f"option {option!r}: expected one of {', '.join(choices)}, got {value!r}")
        if not order > 0:
            raise ValueError(f"option 'order': must be > 0, got {order}")
        if band != "butterworth" and order != self.defaults["order"]:
            raise ValueError(f"option 'order': applies to band butterworth only, not {band!r}")
        for option, value in (("low_weight", low_weight), ("high_weight", high_weight)):
            if not value >= 0:
                raise ValueError(f"option {option!r}: must be >= 0, got {value}")
        self.high, self.standardize = high, standardize
        self.low_weight, self.high_weight = low_weight, high_weight
        extra = {"order": order} if band == "butterworth" else {}
        self.band = BANDS[band](ratio, ratio_mode, **extra)
        self.tap = tap
        self.taps = frozenset({FREQ_TAPS[tap]})
        super().check_dims(student_dims, teacher_dims)
        if tap == "logits":
            self.adapter = nn.Identity()
        else:
            self.adapter = make_adapter(self.width(student_dims, "student"), self.width(teacher_dims, "teacher"))

    def width(self, dims: dict, role: str) -> int:
        """Channels of the tapped map in a model's feature dims (ValueError if it has no such stage)."""
        if self.tap.startswith("stage"):
            index = int(self.tap[-1]) - 1
            if index >= len(dims["stages"]):
                raise ValueError(f"option 'tap': {self.tap} needs encoder stage {index + 1}, but the {role} "
                                 f"has {len(dims['stages'])} stages")
            return dims["stages"][index]
        return dims[self.tap]

    def check_dims(self, student_dims: dict, teacher_dims: dict) -> None:
        super().check_dims(student_dims, teacher_dims)
        if isinstance(self.adapter, nn.Conv2d):
            want = (self.width(student_dims, "student"), self.width(teacher_dims, "teacher"))
            if (self.adapter.in_channels, self.adapter.out_channels) != want:
                raise ValueError(f"adapter maps {self.adapter.in_channels} -> {self.adapter.out_channels} "
                                 f"channels, but the {self.tap} maps have {want[0]} (student) and {want[1]} "
                                 f"(teacher)")

    def feature(self, output) -> torch.Tensor:
        """The tapped map of a SegOutput."""
        if self.tap.startswith("stage"):
            return output.stages[int(self.tap[-1]) - 1]
        return getattr(output, self.tap)

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        adapter = self.adapter if isinstance(self.adapter, nn.Conv2d) else None
        return band_loss(self.feature(student), self.feature(teacher), self.band, self.high, adapter=adapter,
                         low_weight=self.low_weight, high_weight=self.high_weight, standardize=self.standardize)
