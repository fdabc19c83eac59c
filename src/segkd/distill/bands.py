"""Band decompositions x = low + high of (..., H, W) maps for frequency-band distillation.

Every split is linear and real: ``split(x) -> (low, high)`` with high = x - low, in float32 with
autocast off, whatever the input's dtype. `BANDS` maps option `band` to the class.

Frequencies are normalised per axis: on an axis of n samples bin k (FFT order) has frequency
k/n cycles per pixel, written u = 2k/n in [-1, 1) so that 1 is the axis's Nyquist frequency. Each
band reads option `ratio` (with `ratio_mode`) as a cutoff in these units:

* ``box``: keep |u_h| <= a and |u_w| <= a, a = ratio (axis) or sqrt(ratio) (area: the box covers
  the fraction `ratio` of the 2-D spectrum).
* ``dct``: the same cutoff a on the DCT's frequencies (coefficient k is k / (2n) cycles per
  pixel, u = k / n): keep the top-left floor(a n) + 1 coefficients on each axis (5 x 7 on 24 x 32
  at ratio 0.2, as the box).
* ``radial``: keep u_h^2 + u_w^2 <= rho^2 (a disc, an ellipse in bins on non-square maps),
  rho = ratio (axis: the disc inscribed in the box) or 2 sqrt(ratio / pi) (area: the disc's area
  pi rho^2 is the fraction `ratio` of the spectrum's area 4; past ratio = pi/4 the disc leaves the
  square and keeps less).
* ``gaussian``, ``butterworth``: smooth gains of rho' = sqrt(u_h^2 + u_w^2) that are 1/2 at the
  radial cutoff rho: 2^-(rho'/rho)^2 and 1 / (1 + (rho'/rho)^(2 order)).

At ratio 0 every band keeps the mean (DC) only.

``box``, ``dct`` and ``radial`` are orthogonal projections onto the span of a real orthonormal
basis (`ProjectionSplit`): low = synthesis(coefficients(x)), and ||low(x)||^2 equals
||coefficients(x)||^2, so a loss on the low band can be computed on a few coefficients. Maps
stored channels-last (the models' layout) are transformed in that layout, without copies.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

RATIO_MODES = ("axis", "area")


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


def axis_cutoff(ratio: float, ratio_mode: str) -> float:
    """Per-axis cutoff a of the box and DCT bands (module docstring)."""
    return ratio if ratio_mode == "axis" else math.sqrt(ratio)


def radial_cutoff(ratio: float, ratio_mode: str) -> float:
    """Normalised radius rho of the radial, Gaussian and Butterworth bands (module docstring)."""
    return ratio if ratio_mode == "axis" else 2 * math.sqrt(ratio / math.pi)


def normalised_radius(h: int, w: int, device=None) -> torch.Tensor:
    """(h, w) float64 sqrt(u_h^2 + u_w^2) in FFT order (DC at [0, 0]); 1 = an axis's Nyquist."""
    u_h = 2 * torch.fft.fftfreq(h, dtype=torch.float64, device=device)
    u_w = 2 * torch.fft.fftfreq(w, dtype=torch.float64, device=device)
    return (u_h[:, None] ** 2 + u_w[None, :] ** 2).sqrt()


def _channels_last(x: torch.Tensor) -> bool:
    """A 4-D map whose (H, W, C) block is contiguous and not also NCHW-contiguous."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- orthogonal projections


class ProjectionSplit(BandSplit):
    """low = orthogonal projection onto a subspace of maps with a real orthonormal basis.

    `coefficients(x)` are x's coordinates in that basis and `synthesis` maps them back, so
    low = synthesis(coefficients(x)) and ||low(x)|| = ||coefficients(x)|| (both per map).
    """

    def __init__(self):
        self._cache: dict[tuple[int, int, torch.device], object] = {}

    def cached(self, h: int, w: int, device, make):
        key = (h, w, torch.device(device))
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @abstractmethod
    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H, W) float32 -> coordinates (..., *coefficient shape)."""

    @abstractmethod
    def synthesis(self, c: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Coordinates -> the (..., H, W) map they describe (`size` = (H, W))."""

    def synthesis_add(self, c: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out += synthesis(c), in place; returns out."""
        return out.add_(self.synthesis(c, out.shape[-2:]))

    def low(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            return self.synthesis(self.coefficients(x), x.shape[-2:])


def separable(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a^T x b over the last two axes; channels-last 4-D maps stay channels-last (no copy).
    With `out` (the result's shape), the product is added to it in place by the last matmul."""
    if not _channels_last(x):
        return a.mT @ x @ b if out is None else out.add_(a.mT @ x @ b)
    n, e, h, w = x.shape
    y = a.mT @ x.permute(0, 2, 3, 1).reshape(n, h, w * e)  # (n, h', w * e)
    y = y.view(n * a.shape[1], w, e)
    if out is not None and _channels_last(out):
        out.permute(0, 2, 3, 1).view(n * a.shape[1], b.shape[1], e).baddbmm_(b.mT.expand(y.shape[0], -1, -1), y)
        return out
    y = (b.mT @ y).view(n, a.shape[1], b.shape[1], e).permute(0, 3, 1, 2)  # (n * h', w', e) as NCHW
    return y if out is None else out.add_(y)


class SeparableProjection(ProjectionSplit):
    """Projection onto U_h (x) U_w: coefficients U_h^T x U_w (k_h x k_w per map), low U_h C U_w^T."""

    @abstractmethod
    def basis(self, n: int, device) -> torch.Tensor:
        """(n, k) float32 orthonormal columns kept on an axis of n samples."""

    def bases(self, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(U_h, U_w), cached per (H, W, device)."""
        return self.cached(h, w, device, lambda: (self.basis(h, device), self.basis(w, device)))

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        u_h, u_w = self.bases(*x.shape[-2:], x.device)
        return separable(x, u_h, u_w)

    def synthesis(self, c: torch.Tensor, size) -> torch.Tensor:
        u_h, u_w = self.bases(*size, c.device)
        return separable(c, u_h.mT, u_w.mT)

    def synthesis_add(self, c: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        u_h, u_w = self.bases(*out.shape[-2:], c.device)
        return separable(c, u_h.mT, u_w.mT, out=out)


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


class BoxFFTSplit(SeparableProjection):
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

    `ratio` (``ratio_mode: axis``, default): the kept fraction of each frequency axis. On an axis
    of n samples the mask keeps |k/n| <= ratio/2, i.e. |k| <= r = floor(ratio * n / 2): DC plus r
    frequencies on each side, 2r + 1 bins (at most n). The count is always odd, so the mask is its
    own mirror image about DC (m[k] = m[-k mod n]) for odd and even n; for even n the Nyquist bin
    (k = -n/2, its own mirror) is kept only at ratio = 1. Example: ratio 0.2 on 24 x 32 keeps
    5 x 7 bins (r = 2 and 3). ``ratio_mode: area``: the box covers the fraction `ratio` of the
    2-D spectrum's area, i.e. each axis keeps the fraction sqrt(ratio) as above.
    """

    def __init__(self, ratio: float, ratio_mode: str = "axis"):
        super().__init__()
        self.ratio, self.ratio_mode = ratio, ratio_mode
        self.axis_ratio = axis_cutoff(ratio, ratio_mode)
        self._masks: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def mask(self, h: int, w: int, device) -> torch.Tensor:
        """Full (h, w) mask in FFT order, cached."""
        key = (h, w, torch.device(device))
        if key not in self._masks:
            self._masks[key] = box_mask(h, w, self.axis_ratio, device)
        return self._masks[key]

    def basis(self, n: int, device) -> torch.Tensor:
        return fourier_basis(n, kept_radius(n, self.axis_ratio), device)


def dct_matrix(n: int) -> torch.Tensor:
    """(n, n) float64 orthonormal DCT-II: D[k, j] = s_k cos(pi k (2j + 1) / (2n)), s_0 = sqrt(1/n),
    s_k = sqrt(2/n); D x = scipy.fft.dct(x, norm='ortho')."""
    j = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * j[:, None] * (2 * j[None, :] + 1) / (2 * n)) * math.sqrt(2 / n)
    d[0] = 1 / math.sqrt(n)
    return d


class DCTSplit(SeparableProjection):
    """DCT low-pass: low = idctn(top-left k_h x k_w of dctn(x)), orthonormal DCT-II (norm='ortho').

    The DCT treats the map as mirrored at its borders instead of periodic, so the low band has no
    wrap-around between opposite edges. `ratio`: coefficient k of an axis of n samples has
    frequency k / (2n) cycles per pixel; the same cutoff as the box, k / (2n) <= a / 2, keeps
    k_n = min(n, floor(a n) + 1) coefficients, a = ratio (axis) or sqrt(ratio) (area).
    Computed as the projection U_h U_h^T x U_w U_w^T with U = the first k_n rows of `dct_matrix`,
    transposed.
    """

    def __init__(self, ratio: float, ratio_mode: str = "axis"):
        super().__init__()
        self.ratio, self.ratio_mode = ratio, ratio_mode
        self.axis_ratio = axis_cutoff(ratio, ratio_mode)

    def kept(self, n: int) -> int:
        """Coefficients kept on an axis of n samples."""
        return min(n, math.floor(self.axis_ratio * n + 1e-9) + 1)

    def basis(self, n: int, device) -> torch.Tensor:
        return dct_matrix(n)[: self.kept(n)].T.to(device=device, dtype=torch.float32)


def fourier_basis_2d(mask: torch.Tensor) -> torch.Tensor:
    """(H*W, K) float32 orthonormal real basis of the 2-D DFT modes where the 0/1 `mask` is 1.

    The mask must be symmetric about DC. Each pair of kept bins {k, -k} gives sqrt(2/HW) cos and
    sin of 2 pi (k_h j_h / H + k_w j_w / W); a bin that is its own mirror (DC, Nyquist) gives
    cos / sqrt(HW). K = the number of kept bins.
    """
    h, w = mask.shape
    k_h, k_w = torch.nonzero(mask.cpu(), as_tuple=True)
    index, mirror = k_h * w + k_w, (-k_h % h) * w + (-k_w % w)
    j_h, j_w = (j.reshape(-1, 1) for j in torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                                         torch.arange(w, dtype=torch.float64), indexing="ij"))
    angle = 2 * math.pi * (j_h * k_h / h + j_w * k_w / w)  # (H*W, kept bins)
    self_mirror, pair = index == mirror, index < mirror
    columns = [angle[:, self_mirror].cos() / math.sqrt(h * w),
               angle[:, pair].cos() * math.sqrt(2 / (h * w)), angle[:, pair].sin() * math.sqrt(2 / (h * w))]
    return torch.cat(columns, dim=1).to(device=mask.device, dtype=torch.float32)


class RadialSplit(ProjectionSplit):
    """Ideal circular low-pass: low = real(ifft2(mask * fft2(x))), mask = (rho' <= rho).

    rho' = sqrt(u_h^2 + u_w^2) in normalised frequency (module docstring), so the mask depends on
    u^2 only and is symmetric about DC for odd and even sizes. `ratio`: rho = ratio (axis: the disc
    inscribed in the box of the same ratio) or 2 sqrt(ratio / pi) (area). The mask is not separable;
    the projection uses the real basis of `fourier_basis_2d` (H*W x K, K = kept bins, about 24 on
    24 x 32 at ratio 0.2), coefficients (..., K).
    """

    def __init__(self, ratio: float, ratio_mode: str = "axis"):
        super().__init__()
        self.ratio, self.ratio_mode = ratio, ratio_mode
        self.radius = radial_cutoff(ratio, ratio_mode)

    def mask(self, h: int, w: int, device) -> torch.Tensor:
        """(h, w) float32 0/1 mask in FFT order."""
        return (normalised_radius(h, w, device) <= self.radius + 1e-9).float()

    def basis(self, h: int, w: int, device) -> torch.Tensor:
        """(H*W, K) basis, cached per (H, W, device)."""
        return self.cached(h, w, device, lambda: fourier_basis_2d(self.mask(h, w, device)))

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        v = self.basis(*x.shape[-2:], x.device)
        if _channels_last(x):
            n, e, h, w = x.shape
            return (v.mT @ x.permute(0, 2, 3, 1).reshape(n, h * w, e)).mT  # (n, e, K) view
        return x.flatten(-2) @ v

    def synthesis(self, c: torch.Tensor, size) -> torch.Tensor:
        h, w = size
        v = self.basis(h, w, c.device)
        if c.dim() == 3 and not c.is_contiguous() and c.mT.is_contiguous():  # from a channels-last map
            n, e, _ = c.shape
            return (v @ c.mT).view(n, h, w, e).permute(0, 3, 1, 2)
        return (c @ v.mT).unflatten(-1, (h, w))


# ---------------------------------------------------------------- smooth masks


class SmoothSplit(BandSplit):
    """low = real(ifft2(g * fft2(x))) for a smooth gain g(rho') in [0, 1], g(0) = 1; high = x - low.

    g depends on rho' only, so it is symmetric about DC and low is real: computed with rfft2 /
    irfft2, the same operator on half the spectrum. Not a projection: the bands overlap near the
    cutoff (low + high = x still holds exactly).
    """

    def __init__(self, ratio: float, ratio_mode: str = "axis"):
        self.ratio, self.ratio_mode = ratio, ratio_mode
        self.radius = radial_cutoff(ratio, ratio_mode)
        self._masks: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    @abstractmethod
    def gain(self, rho: torch.Tensor) -> torch.Tensor:
        """g at normalised radius rho / cutoff (float64), for a cutoff > 0."""

    def mask(self, h: int, w: int, device) -> torch.Tensor:
        """(h, w) float32 gain in FFT order, cached; at ratio 0 the mean (DC) only."""
        key = (h, w, torch.device(device))
        if key not in self._masks:
            rho = normalised_radius(h, w, device)
            g = self.gain(rho / self.radius) if self.radius > 0 else (rho == 0).double()
            self._masks[key] = g.float()
        return self._masks[key]

    def low(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            h, w = x.shape[-2:]
            g = self.mask(h, w, x.device)[:, : w // 2 + 1]
            return torch.fft.irfft2(g * torch.fft.rfft2(x), s=(h, w))


class GaussianSplit(SmoothSplit):
    """Gaussian low-pass g = 2^-(rho'/rho)^2 = exp(-ln 2 rho'^2 / rho^2): 1/2 at the radial cutoff
    rho of `ratio` (as the radial band; the Gaussian's sigma is rho / sqrt(2 ln 2)). No ringing."""

    def gain(self, rho: torch.Tensor) -> torch.Tensor:
        return torch.exp2(-rho.square())


class ButterworthSplit(SmoothSplit):
    """Butterworth low-pass g = 1 / (1 + (rho'/rho)^(2 order)): 1/2 at the radial cutoff rho of
    `ratio`; a higher `order` (default 2) is a sharper edge, tending to the radial band."""

    def __init__(self, ratio: float, ratio_mode: str = "axis", order: float = 2.0):
        super().__init__(ratio, ratio_mode)
        self.order = order

    def gain(self, rho: torch.Tensor) -> torch.Tensor:
        return 1 / (1 + rho.pow(2 * self.order))


#: splits that are a gain on the DFT, low = real(ifft2(mask * fft2(x))) with `mask(h, w, device)` in [0, 1]
FOURIER_BANDS = (BoxFFTSplit, RadialSplit, SmoothSplit)

#: option `band` -> split class, built as cls(ratio, ratio_mode) (Butterworth also takes `order`)
BANDS: dict[str, type[BandSplit]] = {"box": BoxFFTSplit, "radial": RadialSplit, "gaussian": GaussianSplit,
                                     "butterworth": ButterworthSplit, "dct": DCTSplit}
