"""Frequency-band distillation on the decoder feature (segkd's method).

The decoder feature x (B, E, H/4, W/4; after linear_fuse, before dropout) is split into a low
and a high band, x = low + high. The low band carries the layout of the scene (which the teacher
knows better); the high band carries edges and texture, where a small student mostly copies noise.
The student's feature first goes through a learned 1x1 adapter to the teacher's width (as in FitNet).

    loss = MSE(low_s, low_t) + high term,   high term = MSE(high_s, high_t)  (high: kd)
                                                       = mean |high_s|        (high: regularize, default)
                                                       = 0                    (high: none)

MSE is the mean over (B, E, H, W); the term weight (lambda, default 0.1) multiplies the sum.
Band splits are linear, so with `kd` and `none` the loss splits the difference x_s - x_t once
(low(x_s) - low(x_t) = low(x_s - x_t)) instead of each map.

Band splits are classes with ``split(x) -> (low, high)`` registered in `BANDS` (option `band`).
Implemented: ``box``, an ideal separable low-pass in the 2-D FFT domain,
low = real(ifft2(mask * fft2(x))), high = x - low, with a binary mask symmetric about DC
(computed as the equivalent real projection, see `BoxFFTSplit`).
Radial, Gaussian, Butterworth or DCT splits are further `BandSplit` subclasses.

Meaning of `ratio` (``ratio_mode: axis``, default): the kept fraction of each frequency axis.
On an axis of n samples the frequencies are k/n cycles per pixel, k = -floor(n/2) .. ceil(n/2)-1;
the mask keeps |k/n| <= ratio/2, i.e. |k| <= r = floor(ratio * n / 2): DC plus r frequencies on
each side, 2r + 1 bins (at most n). The count is always odd, so the mask is its own mirror
image about DC (m[k] = m[-k mod n]) for odd and even n; for even n the Nyquist bin (k = -n/2,
its own mirror) is kept only at ratio = 1. Example: ratio 0.2 on 24 x 32 keeps 5 x 7 bins
(r = 2 and 3). ``ratio_mode: area``: the box covers the fraction `ratio` of the 2-D spectrum's
area, i.e. each axis keeps the fraction sqrt(ratio) as above.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from segkd.distill.feature import adapter, check_adapter, check_same_map
from segkd.distill.registry import DistillLoss, register

RATIO_MODES = ("axis", "area")
HIGH_MODES = ("regularize", "kd", "none")


class BandSplit(ABC):
    """A linear split x = low + high of (..., H, W) maps, computed in float32 with autocast off."""

    @abstractmethod
    def low(self, x: torch.Tensor) -> torch.Tensor:
        """The low band of x, float32, same shape."""

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) with high = x - low (float32)."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            low = self.low(x)
            return low, x - low


def kept_radius(n: int, axis_ratio: float) -> int:
    """r such that |k| <= r is kept on an axis of n bins: floor(axis_ratio * n / 2), at most n // 2."""
    return min(n // 2, math.floor(axis_ratio * n / 2 + 1e-9))


def box_mask(h: int, w: int, axis_ratio: float, device=None) -> torch.Tensor:
    """(h, w) float32 0/1 mask in FFT order (DC at [0, 0], low frequencies in the corners)."""
    def axis(n: int) -> torch.Tensor:
        k = torch.arange(n, device=device)
        return (torch.minimum(k, n - k) <= kept_radius(n, axis_ratio)).float()

    return axis(h)[:, None] * axis(w)[None, :]


def fourier_basis(n: int, r: int, device=None) -> torch.Tensor:
    """(n, 2r+1 or n) float32 orthonormal real basis of the DFT modes |k| <= r on n samples.

    Columns: 1/sqrt(n); sqrt(2/n) cos(2 pi k j / n) and sqrt(2/n) sin(2 pi k j / n) for k = 1..r
    (k < n/2); for even n with r = n/2 also the Nyquist mode (-1)^j / sqrt(n).
    """
    j = torch.arange(n, dtype=torch.float64)
    k = torch.arange(1, min(r, (n - 1) // 2) + 1, dtype=torch.float64)
    angle = 2 * math.pi * j[:, None] * k[None, :] / n
    columns = [torch.full((n, 1), 1 / math.sqrt(n), dtype=torch.float64),
               math.sqrt(2 / n) * torch.cos(angle), math.sqrt(2 / n) * torch.sin(angle)]
    if n % 2 == 0 and r >= n // 2:
        columns.append(((-1.0) ** j)[:, None] / math.sqrt(n))
    return torch.cat(columns, dim=1).to(device=device, dtype=torch.float32)


class BoxFFTSplit(BandSplit):
    """Ideal box low-pass: low = real(ifft2(mask * fft2(x))) with the symmetric `box_mask`.

    Computed exactly, without complex numbers, as low = U_h (U_h^T x U_w) U_w^T. Why this is the
    same operator: the mask is separable, m = m_h (x) m_w, and fft2 is a 1-D DFT along each axis,
    so ifft2(m * fft2(x)) = P_h x P_w^T with P = F^-1 diag(m) F, the orthogonal projection onto
    the kept modes e^{2 pi i k j / n}, |k| <= r. That set is closed under k -> -k (the mask is
    symmetric about DC), so the span has the real orthonormal basis U of `fourier_basis` and
    P = U U^T: real, hence the imaginary part is exactly zero. Cost per map: O(HW (k_h + k_w))
    multiply-adds for k = 2r+1 kept modes, e.g. 5 x 7 of 24 x 32, against O(HW log HW) complex
    work for the FFT pair. The projection runs in float32 with autocast off (exact float32 unless
    TF32 matmuls are switched on globally, torch.backends.cuda.matmul.allow_tf32, off by default);
    bases (and the mask, which states the definition) are cached per (H, W, device).
    """

    def __init__(self, ratio: float, ratio_mode: str = "axis"):
        self.ratio, self.ratio_mode = ratio, ratio_mode
        self.axis_ratio = ratio if ratio_mode == "axis" else math.sqrt(ratio)
        self._masks: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self._bases: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def mask(self, h: int, w: int, device) -> torch.Tensor:
        """Full (h, w) mask in FFT order, cached."""
        key = (h, w, torch.device(device))
        if key not in self._masks:
            self._masks[key] = box_mask(h, w, self.axis_ratio, device)
        return self._masks[key]

    def bases(self, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(U_h, U_w): orthonormal real bases of the kept rows and columns of the mask, cached."""
        key = (h, w, torch.device(device))
        if key not in self._bases:
            self._bases[key] = tuple(fourier_basis(n, kept_radius(n, self.axis_ratio), device)
                                     for n in (h, w))
        return self._bases[key]

    def low(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            u_h, u_w = self.bases(*x.shape[-2:], x.device)
            return u_h @ (u_h.mT @ x @ u_w) @ u_w.mT


#: option `band` -> split class, built as cls(ratio, ratio_mode)
BANDS: dict[str, type[BandSplit]] = {"box": BoxFFTSplit}


def band_loss(student: torch.Tensor, teacher: torch.Tensor, band: BandSplit, high: str) -> torch.Tensor:
    """MSE(low_s, low_t) + high term (see the module docstring), float32.

    Uses linearity to transform as little as possible: with the regulariser, low_t = low(t) has no
    gradient; otherwise the bands of the difference s - t give both MSEs in one split.
    """
    with torch.autocast(student.device.type, enabled=False):
        s, t = student.float(), teacher.detach().float()
        check_same_map(s, t)
        if high == "regularize":
            low_s, high_s = band.split(s)
            return (low_s - band.low(t)).pow(2).mean() + high_s.abs().mean()
        if high == "none":
            return band.low(s - t).pow(2).mean()
        low_d, high_d = band.split(s - t)
        return low_d.pow(2).mean() + high_d.pow(2).mean()


@register("freq")
class FrequencyKD(DistillLoss):
    """Frequency-band KD on the decoder feature (module docstring); term weight default 0.1.

    Options: ratio (0.2; in [0, 1]), ratio_mode (axis | area), high (regularize | kd | none),
    band (box).
    """

    taps = frozenset({"decoder"})
    default_weight = 0.1
    defaults = {"ratio": 0.2, "ratio_mode": "axis", "high": "regularize", "band": "box"}

    def __init__(self, student_dims: dict, teacher_dims: dict, ratio: float = 0.2,
                 ratio_mode: str = "axis", high: str = "regularize", band: str = "box"):
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"option 'ratio': must be in [0, 1], got {ratio}")
        for option, value, choices in (("ratio_mode", ratio_mode, RATIO_MODES),
                                       ("high", high, HIGH_MODES), ("band", band, tuple(BANDS))):
            if value not in choices:
                raise ValueError(f"option {option!r}: expected one of {', '.join(choices)}, got {value!r}")
        self.high = high
        self.band = BANDS[band](ratio, ratio_mode)
        super().check_dims(student_dims, teacher_dims)
        self.adapter = adapter(student_dims["decoder"], teacher_dims["decoder"])

    def check_dims(self, student_dims: dict, teacher_dims: dict) -> None:
        super().check_dims(student_dims, teacher_dims)
        check_adapter(self.adapter, student_dims, teacher_dims)

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        return band_loss(self.adapter(student.decoder), teacher.decoder, self.band, self.high)
