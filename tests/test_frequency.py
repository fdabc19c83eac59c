"""Frequency-band distillation: every band split (box, radial, Gaussian, Butterworth, DCT) against
numpy / scipy, the loss and its gradients against the straightforward computation, and the options."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from segkd.distill import LOSSES, build_distillation, frequency
from segkd.distill.bands import BANDS, DCTSplit, RadialSplit
from segkd.distill.frequency import (
    BoxFFTSplit,
    FrequencyKD,
    band_loss,
    box_mask,
    fourier_basis,
    kept_radius,
    standardized,
)
from segkd.errors import UserError

B0 = {"stages": [32, 64, 160, 256], "decoder": 256, "logits": 11}
B2 = {"stages": [64, 128, 320, 512], "decoder": 768, "logits": 11}
SIZES = [(24, 32), (7, 9), (8, 5), (1, 6), (96, 128)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small maps: threads only add synchronisation (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def feature(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def np_box_mask(h, w, axis_ratio):
    """Independent construction: keep |frequency| <= axis_ratio / 2 cycles per pixel on each axis."""
    def axis(n):
        return np.abs(np.fft.fftfreq(n)) <= axis_ratio / 2 + 1e-12
    return np.outer(axis(h), axis(w)).astype(np.float32)


@pytest.mark.parametrize("h, w", SIZES)
@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 0.75, 1.0])
def test_mask_is_symmetric_about_dc_and_keeps_the_axis_fraction(h, w, ratio):
    mask = box_mask(h, w, ratio).numpy()
    mirrored = mask[(-np.arange(h)) % h][:, (-np.arange(w)) % w]  # m[-k1, -k2]
    np.testing.assert_array_equal(mask, mirrored)
    np.testing.assert_array_equal(mask, np_box_mask(h, w, ratio))
    centred = np.fft.fftshift(mask)  # DC at (h // 2, w // 2): the kept box is centred on it
    assert centred[h // 2, w // 2] == 1
    rows, cols = np.nonzero(centred.any(axis=1))[0], np.nonzero(centred.any(axis=0))[0]
    kept_h, kept_w = (min(n, 2 * int(np.floor(ratio * n / 2 + 1e-9)) + 1) for n in (h, w))
    assert len(rows) == kept_h and len(cols) == kept_w and mask.sum() == kept_h * kept_w
    for n, kept, idx in ((h, kept_h, rows), (w, kept_w, cols)):
        if kept < n:  # the box spans DC +- r, odd or even n
            r = kept // 2
            assert list(idx) == list(range(n // 2 - r, n // 2 + r + 1))


def test_ratio_examples_and_area_mode():
    assert box_mask(24, 32, 0.2).sum() == 5 * 7
    assert box_mask(24, 32, 1.0).sum() == 24 * 32  # even sizes: Nyquist kept only at ratio 1
    assert box_mask(24, 32, 0.99).sum() == 23 * 31
    area = BoxFFTSplit(0.25, "area")
    assert area.axis_ratio == pytest.approx(0.5)
    assert area.mask(24, 32, "cpu").sum() == 13 * 17  # about a quarter of the 24 * 32 bins


def test_mask_and_bases_are_cached_per_size_and_device():
    split = BoxFFTSplit(0.2)
    assert split.mask(24, 32, "cpu") is split.mask(24, 32, torch.device("cpu"))
    assert split.mask(24, 32, "cpu") is not split.mask(32, 24, "cpu")
    assert split.bases(24, 32, "cpu") is split.bases(24, 32, torch.device("cpu"))
    assert [u.shape for u in split.bases(24, 32, "cpu")] == [(24, 5), (32, 7)]


@pytest.mark.parametrize("n", [1, 2, 5, 8, 24, 32])
@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 0.99, 1.0])
def test_fourier_basis_spans_the_kept_bins(n, ratio):
    """U U^T is the projector F^-1 diag(m) F of the axis mask (built here with numpy's FFT)."""
    r = kept_radius(n, ratio)
    u = fourier_basis(n, r).double().numpy()
    np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-6)
    m = np_box_mask(n, 1, ratio)[:, 0]
    projector = np.real(np.fft.ifft(m[:, None] * np.fft.fft(np.eye(n), axis=0), axis=0))
    np.testing.assert_allclose(u @ u.T, projector, atol=1e-6)


@pytest.mark.parametrize("h, w", SIZES)
def test_inverse_fft_is_real_and_the_projection_equals_it(h, w):
    x = feature((2, 3, h, w), seed=h * w)
    split = BoxFFTSplit(0.4)
    full = torch.fft.ifft2(split.mask(h, w, "cpu") * torch.fft.fft2(x))
    assert full.imag.norm() / full.real.norm().clamp_min(1e-30) < 1e-5
    low, high = split.split(x)
    torch.testing.assert_close(low, full.real, rtol=0, atol=1e-5)
    torch.testing.assert_close(low + high, x)
    # an ideal projection: bands are orthogonal, and low-passing twice changes nothing
    assert (low * high).sum().abs() < 1e-4 * x.pow(2).sum()
    torch.testing.assert_close(split.low(low), low, rtol=0, atol=1e-5)


def test_low_band_of_known_signals():
    split = BoxFFTSplit(0.2)  # on 24 x 32: keeps |k_h| <= 2, |k_w| <= 3
    y, x = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    slow = torch.cos(2 * np.pi * 2 * y / 24) * torch.cos(2 * np.pi * 3 * x / 32)
    fast = torch.cos(2 * np.pi * 3 * y / 24) + torch.sin(2 * np.pi * 4 * x / 32)
    low, high = split.split((slow + fast + 1.5)[None, None])
    torch.testing.assert_close(low[0, 0], slow + 1.5, rtol=0, atol=1e-5)
    torch.testing.assert_close(high[0, 0], fast, rtol=0, atol=1e-5)


def np_freq_loss(s, t, ratio, high):
    mask = np_box_mask(*s.shape[-2:], ratio)
    low = lambda f: np.real(np.fft.ifft2(mask * np.fft.fft2(f)))  # noqa: E731
    loss = ((low(s) - low(t)) ** 2).mean()
    if high == "kd":
        loss += (((s - low(s)) - (t - low(t))) ** 2).mean()
    elif high == "regularize":
        loss += np.abs(s - low(s)).mean()
    return loss


@pytest.mark.parametrize("high", ["regularize", "kd", "none"])
def test_loss_matches_numpy(high):
    s = feature((2, 4, 6, 10), seed=1).double()
    t = feature((2, 4, 6, 10), seed=2).double()
    expected = np_freq_loss(s.numpy(), t.numpy(), 0.5, high)
    assert band_loss(s, t, BoxFFTSplit(0.5), high).item() == pytest.approx(expected, rel=1e-5)
    assert band_loss(t, t, BoxFFTSplit(0.5), high).item() == pytest.approx(
        np_freq_loss(t.numpy(), t.numpy(), 0.5, high), abs=1e-6)


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.6])
def test_kd_mode_is_weight_times_full_feature_mse(ratio):
    """Parseval: the bands are orthogonal, so MSE(low) + MSE(high) = MSE(x)."""
    distillation = build_distillation({"freq": {"weight": 0.1, "ratio": ratio, "high": "kd"}}, B0, B2)
    student = SimpleNamespace(decoder=feature((2, 256, 24, 32), seed=1))
    with torch.inference_mode():
        teacher = SimpleNamespace(decoder=feature((2, 768, 24, 32), seed=2))
    loss = distillation(student, teacher)["freq"]
    adapted = distillation.terms["freq"].adapter(student.decoder)
    full = 0.1 * (adapted - teacher.decoder.clone()).pow(2).mean()
    assert loss.item() == pytest.approx(full.item(), rel=1e-5)


def test_high_modes_order_and_student_only_regularizer():
    student = SimpleNamespace(decoder=feature((2, 256, 12, 16), seed=1).requires_grad_())
    with torch.inference_mode():
        teacher = SimpleNamespace(decoder=feature((2, 768, 12, 16), seed=2))
    torch.manual_seed(0)
    losses = {mode: LOSSES["freq"].from_options({"high": mode}, B0, B2) for mode in ("none", "kd", "regularize")}
    for mode in ("kd", "regularize"):
        losses[mode].adapter.load_state_dict(losses["none"].adapter.state_dict())
    values = {mode: loss(student, teacher) for mode, loss in losses.items()}
    assert 0 < values["none"] < values["kd"] and values["none"] < values["regularize"]
    # the regulariser does not look at the teacher's high band
    smoother = SimpleNamespace(decoder=BoxFFTSplit(0.2).low(teacher.decoder))
    assert (losses["regularize"](student, smoother) - losses["none"](student, smoother)).item() == pytest.approx(
        (values["regularize"] - values["none"]).item(), rel=1e-5)
    values["regularize"].backward()
    assert torch.isfinite(student.decoder.grad).all() and student.decoder.grad.abs().sum() > 0


def test_split_runs_in_float32_under_bf16_autocast():
    split = BoxFFTSplit(0.2)
    x = feature((2, 8, 24, 32), seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, high = split.split(x.bfloat16())
        alone = split.low(x.bfloat16())
    assert low.dtype == high.dtype == alone.dtype == torch.float32
    torch.testing.assert_close(low, split.low(x.bfloat16().float()))
    torch.testing.assert_close(alone, low)
    torch.testing.assert_close(split.low(x.bfloat16()), low)  # bf16 input, autocast off: cast inside


# ---------------------------------------------------------------- every band

BAND_NAMES = ["box", "radial", "gaussian", "butterworth", "dct"]
HIGHS = ["regularize", "kd", "amplitude", "none"]


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


def np_radius(h, w):
    """Independent normalised radius: |frequency| / Nyquist per axis, combined Euclidean."""
    return np.hypot(*np.meshgrid(2 * np.fft.fftfreq(h), 2 * np.fft.fftfreq(w), indexing="ij"))


def np_mask(band, h, w, ratio, order=2.0):
    """The Fourier gain of a band, built from the definitions in numpy (box, radial, smooth)."""
    if band == "box":
        return np_box_mask(h, w, ratio)
    rho, cut = np_radius(h, w), ratio
    if band == "radial":
        return (rho <= cut + 1e-12).astype(np.float64)
    if cut == 0:
        return (rho == 0).astype(np.float64)
    return 2.0 ** -((rho / cut) ** 2) if band == "gaussian" else 1 / (1 + (rho / cut) ** (2 * order))


def np_dct(n):
    """(n, n) orthonormal DCT-II matrix from scipy: D @ x = dct(x, norm='ortho')."""
    return scipy.fft.dct(np.eye(n), norm="ortho", axis=0)


def naive_low(band, x, ratio):
    """Straightforward float64 low band: torch.fft with the numpy mask, or scipy's DCT matrices."""
    h, w = x.shape[-2:]
    if band == "dct":
        d_h, d_w = torch.from_numpy(np_dct(h)), torch.from_numpy(np_dct(w))
        keep = torch.zeros(h, w, dtype=torch.float64)
        keep[: min(h, int(np.floor(ratio * h + 1e-9)) + 1), : min(w, int(np.floor(ratio * w + 1e-9)) + 1)] = 1
        return d_h.T @ (keep * (d_h @ x @ d_w.T)) @ d_w
    mask = torch.from_numpy(np.asarray(np_mask(band, h, w, ratio), dtype=np.float64))
    return torch.fft.ifft2(mask * torch.fft.fft2(x)).real


def naive_loss(band, high, s, t, conv, ratio, low_weight=1.0, high_weight=1.0, standardize=False):
    """The documented loss the straightforward way, float64: adapter on the full map, then the bands."""
    if standardize:
        s, t = (((x - x.mean((0, 2, 3), keepdim=True)) / (x.var((0, 2, 3), unbiased=False, keepdim=True)
                                                          + 1e-5).sqrt()) for x in (s, t))
    a = F.conv2d(s, conv.weight.double(), conv.bias.double()) if conv is not None else s
    low_a, low_t = naive_low(band, a, ratio), naive_low(band, t, ratio)
    loss = low_weight * (low_a - low_t).pow(2).mean()
    if high == "regularize":
        loss = loss + high_weight * (s - naive_low(band, s, ratio)).abs().mean()
    elif high == "kd":
        loss = loss + high_weight * ((a - low_a) - (t - low_t)).pow(2).mean()
    elif high == "amplitude":
        amp = lambda x: torch.fft.fft2(x, norm="ortho").abs()  # noqa: E731
        loss = loss + high_weight * (amp(a - low_a) - amp(t - low_t)).pow(2).mean()
    return loss


@pytest.mark.parametrize("band", BAND_NAMES)
@pytest.mark.parametrize("h, w", [(24, 32), (7, 9), (8, 5), (1, 6)])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_every_band_splits_exactly_into_real_float32_bands_in_any_layout(band, h, w, ratio):
    split = BANDS[band](ratio, "axis")
    x = feature((2, 3, h, w), seed=h + w)
    low, high = split.split(x)
    assert low.dtype == high.dtype == torch.float32 and not low.is_complex() and low.shape == x.shape
    torch.testing.assert_close(low + high, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(low, naive_low(band, x.double(), ratio).float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(split.low(channels_last(x)), low, rtol=0, atol=1e-5)
    torch.testing.assert_close(split.low(x[0, 0]), low[0, 0], rtol=0, atol=1e-5)  # a single (H, W) map
    if ratio == 0:  # every band keeps the mean only
        torch.testing.assert_close(low, x.mean((-2, -1), keepdim=True).expand_as(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("h, w", SIZES)
@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 1.0])
def test_radial_mask_is_a_disc_symmetric_about_dc(h, w, ratio):
    mask = RadialSplit(ratio).mask(h, w, "cpu").numpy()
    mirrored = mask[(-np.arange(h)) % h][:, (-np.arange(w)) % w]
    np.testing.assert_array_equal(mask, mirrored)
    np.testing.assert_array_equal(mask, np_mask("radial", h, w, ratio))
    assert mask[0, 0] == 1
    inside_box = np_box_mask(h, w, ratio)  # the disc is inscribed in the box of the same ratio
    assert (mask <= inside_box).all()
    area = RadialSplit(0.25, "area")
    assert area.radius == pytest.approx(2 * np.sqrt(0.25 / np.pi))


@pytest.mark.parametrize("h, w", [(24, 32), (7, 9), (8, 8), (1, 6)])
def test_radial_basis_is_orthonormal_and_projects_onto_the_disc(h, w):
    split = RadialSplit(0.5)
    v = split.basis(h, w, "cpu").double()
    assert v.shape[1] == split.mask(h, w, "cpu").sum()
    torch.testing.assert_close(v.T @ v, torch.eye(v.shape[1], dtype=torch.float64), rtol=0, atol=1e-6)
    x = feature((2, 3, h, w), seed=5)
    full = torch.fft.ifft2(split.mask(h, w, "cpu") * torch.fft.fft2(x))
    assert full.imag.abs().max() < 1e-5
    torch.testing.assert_close(split.low(x), full.real, rtol=0, atol=1e-5)
    c = split.coefficients(x)  # Parseval: coefficients carry the low band's energy
    torch.testing.assert_close(c.pow(2).sum(), split.low(x).pow(2).sum(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("band", ["gaussian", "butterworth"])
@pytest.mark.parametrize("h, w", [(24, 32), (7, 9), (8, 8)])
def test_smooth_masks_are_monotone_in_the_unit_interval_and_half_at_the_cutoff(band, h, w):
    split = BANDS[band](0.5, "axis")
    mask, rho = split.mask(h, w, "cpu").double().numpy(), np_radius(h, w)
    assert mask.min() >= 0 and mask.max() <= 1 and mask[0, 0] == 1
    order = np.argsort(rho, axis=None, kind="stable")
    assert (np.diff(mask.ravel()[order]) <= 1e-7).all()  # non-increasing with the radius
    np.testing.assert_allclose(mask, np_mask(band, h, w, 0.5), rtol=1e-6, atol=1e-7)
    mirrored = mask[(-np.arange(h)) % h][:, (-np.arange(w)) % w]
    np.testing.assert_array_equal(mask, mirrored)
    if h == w == 8:  # bin 2 of 8 is u = 0.5, the cutoff
        assert mask[2, 0] == pytest.approx(0.5) and mask[0, 2] == pytest.approx(0.5)
    x = feature((2, 3, h, w), seed=7)
    full = torch.fft.ifft2(split.mask(h, w, "cpu") * torch.fft.fft2(x))
    assert full.imag.abs().max() < 1e-5
    torch.testing.assert_close(split.low(x), full.real, rtol=0, atol=1e-5)


def test_butterworth_order_sharpens_towards_the_radial_band():
    radial = RadialSplit(0.5).mask(24, 32, "cpu")
    gaps = [(BANDS["butterworth"](0.5, "axis", order=n).mask(24, 32, "cpu") - radial).abs().mean()
            for n in (1, 2, 8)]
    assert gaps[0] > gaps[1] > gaps[2]


@pytest.mark.parametrize("h, w", [(24, 32), (7, 9), (1, 6), (5, 1)])
@pytest.mark.parametrize("ratio, mode", [(0.0, "axis"), (0.2, "axis"), (0.5, "axis"), (1.0, "axis"),
                                         (0.25, "area")])
def test_dct_split_matches_scipy(h, w, ratio, mode):
    split = DCTSplit(ratio, mode)
    a = ratio if mode == "axis" else np.sqrt(ratio)
    k_h, k_w = (min(n, int(np.floor(a * n + 1e-9)) + 1) for n in (h, w))
    assert split.bases(h, w, "cpu")[0].shape == (h, k_h) and split.bases(h, w, "cpu")[1].shape == (w, k_w)
    x = feature((2, 3, h, w), seed=11).double().numpy()
    coefficients = scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")
    kept = np.zeros_like(coefficients)
    kept[..., :k_h, :k_w] = coefficients[..., :k_h, :k_w]
    expected = scipy.fft.idctn(kept, axes=(-2, -1), norm="ortho")
    xt = torch.from_numpy(x).float()
    np.testing.assert_allclose(split.low(xt).numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(split.coefficients(xt).numpy(), coefficients[..., :k_h, :k_w], rtol=0, atol=1e-5)
    assert [u.shape[1] for u in DCTSplit(0.2).bases(24, 32, "cpu")] == [5, 7]  # as the box at ratio 0.2


# ---------------------------------------------------------------- the loss against the naive computation


def loss_inputs(seed, layout, dims=(6, 10), size=(12, 16), batch=2):
    s = feature((batch, dims[0], *size), seed=seed)
    with torch.inference_mode():
        t = feature((batch, dims[1], *size), seed=seed + 1) * 3 + 1
    if layout == "channels_last":
        s = channels_last(s)
        with torch.inference_mode():
            t = channels_last(t)
    return s.requires_grad_(), t


def small_term(**options):
    """A freq term between 6-channel student and 10-channel teacher decoder maps."""
    return LOSSES["freq"].from_options(options, {"decoder": 6}, {"decoder": 10})


def value_of(term, s, t):
    return term(SimpleNamespace(decoder=s), SimpleNamespace(decoder=t))


@pytest.mark.parametrize("band", BAND_NAMES)
@pytest.mark.parametrize("high", HIGHS)
@pytest.mark.parametrize("layout, size", [("contiguous", (12, 16)), ("channels_last", (12, 16)),
                                          ("channels_last", (7, 9))])
def test_loss_and_gradients_equal_the_naive_computation(band, high, layout, size):
    term = small_term(band=band, high=high, ratio=0.4, low_weight=0.7, high_weight=1.3)
    s, t = loss_inputs(seed=3, layout=layout, size=size)
    value = value_of(term, s, t)
    value.backward()
    s64 = s.detach().double().requires_grad_()
    conv = torch.nn.Conv2d(6, 10, 1).double()
    conv.load_state_dict(term.adapter.state_dict())
    expected = naive_loss(band, high, s64, t.double(), conv, 0.4, 0.7, 1.3)
    expected.backward()
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    for got, want in ((s.grad, s64.grad), (term.adapter.weight.grad, conv.weight.grad),
                      (term.adapter.bias.grad, conv.bias.grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("band", ["box", "radial", "gaussian", "dct"])
@pytest.mark.parametrize("high", ["regularize", "amplitude"])
def test_standardized_loss_equals_the_naive_computation(band, high):
    term = small_term(band=band, high=high, standardize=True)
    s, t = loss_inputs(seed=8, layout="channels_last")
    value = value_of(term, s, t)
    value.backward()
    s64 = s.detach().double().requires_grad_()
    conv = torch.nn.Conv2d(6, 10, 1).double()
    conv.load_state_dict(term.adapter.state_dict())
    expected = naive_loss(band, high, s64, t.double(), conv, 0.2, standardize=True)
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-4 * s64.grad.abs().max().item())


@pytest.mark.parametrize("band", ["box", "radial", "dct"])
@pytest.mark.parametrize("high", ["regularize", "none"])
def test_projection_bands_never_adapt_a_full_map(band, high, monkeypatch):
    """With regularize / none the adapter runs on the coefficients only (its forward is never called)."""
    term = LOSSES["freq"].from_options({"band": band, "high": high}, B0, B2)

    def refuse(*args):
        raise AssertionError("adapter applied to a full map")

    monkeypatch.setattr(term.adapter, "forward", refuse)
    monkeypatch.setattr(frequency, "adapt_map", refuse)
    s, t = loss_inputs(seed=1, layout="channels_last", dims=(256, 768), size=(24, 32))
    term(SimpleNamespace(decoder=s), SimpleNamespace(decoder=t)).backward()
    assert term.adapter.weight.grad.abs().sum() > 0 and s.grad.is_contiguous(memory_format=torch.channels_last)


def test_a_second_backward_through_the_regularizer_fails_loudly():
    """Its backward scales the saved sign in place, so reusing the graph must raise, not mislead."""
    term = small_term(high="regularize")
    s, t = loss_inputs(seed=5, layout="channels_last")
    value = value_of(term, s, t)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        value.backward()


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("band", ["box", "gaussian"])
def test_regularizer_is_the_students_own_high_band_before_the_adapter(band):
    s, t = loss_inputs(seed=4, layout="contiguous")
    expected = 2.0 * BANDS[band](0.2, "axis").split(s)[1].abs().mean().item()  # at the student's width
    terms = {mode: small_term(band=band, high=mode, high_weight=2.0) for mode in ("regularize", "none")}
    for scale in (1.0, 3.0):  # whatever the adapter
        with torch.no_grad():
            terms["regularize"].adapter.weight.mul_(scale)
        terms["none"].adapter.load_state_dict(terms["regularize"].adapter.state_dict())
        difference = value_of(terms["regularize"], s, t) - value_of(terms["none"], s, t)
        assert difference.item() == pytest.approx(expected, rel=1e-5)


def test_low_and_high_weights_scale_their_terms():
    s, t = loss_inputs(seed=6, layout="contiguous")
    values = {}
    for lw, hw in ((1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.5, 3.0)):
        torch.manual_seed(0)
        values[lw, hw] = value_of(small_term(high="kd", low_weight=lw, high_weight=hw), s, t).item()
    low, high = values[1.0, 0.0], values[0.0, 1.0]
    assert values[1.0, 1.0] == pytest.approx(low + high, rel=1e-6)
    assert values[0.5, 3.0] == pytest.approx(0.5 * low + 3.0 * high, rel=1e-6)
    terms = {"freq": {"weight": 0.1, "high": "kd", "low_weight": 0.5, "high_weight": 3.0}}
    assert build_distillation(terms, {"decoder": 6}, {"decoder": 10}).weights == {"freq": 0.1}


def test_standardize_makes_the_loss_blind_to_each_channels_scale_and_offset():
    s, t = loss_inputs(seed=9, layout="contiguous")
    scale = torch.linspace(0.2, 50.0, 10).view(1, -1, 1, 1)
    stretched = t * scale - 7.0
    terms = {flag: small_term(standardize=flag, high="kd") for flag in (True, False)}
    terms[False].adapter.load_state_dict(terms[True].adapter.state_dict())
    value = lambda flag, student, teacher: value_of(terms[flag], student, teacher).item()  # noqa: E731
    assert value(True, s, stretched) == pytest.approx(value(True, s, t), rel=1e-4)
    assert value(True, s * 5.0 + 2.0, t) == pytest.approx(value(True, s, t), rel=1e-4)
    assert value(False, s, stretched) != pytest.approx(value(False, s, t), rel=1e-2)
    z = standardized(stretched)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(10), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.var((0, 2, 3), unbiased=False), torch.ones(10), rtol=1e-3, atol=0)
    teacher = t.clone().requires_grad_()  # the teacher's statistics are constants: no gradient reaches it
    terms[True](SimpleNamespace(decoder=s), SimpleNamespace(decoder=teacher)).backward()
    assert teacher.grad is None and s.grad.abs().sum() > 0
    dead = torch.zeros(2, 6, 12, 16)  # a dead (all-zero) channel stays finite
    assert torch.isfinite(standardized(dead)).all()


@pytest.mark.parametrize("band", ["box", "radial", "gaussian", "dct"])
def test_amplitude_is_phase_free_and_at_most_the_kd_term(band):
    split = BANDS[band](0.3, "axis")
    s = feature((2, 4, 12, 16), seed=12)
    t = feature((2, 4, 12, 16), seed=13)
    term = lambda x, y, high: band_loss(x, y, split, high, low_weight=0.0).item()  # noqa: E731
    assert 0 < term(s, t, "amplitude") <= term(s, t, "kd")
    if band != "dct":  # Fourier bands commute with circular shifts, which only change the phase
        shifted = torch.roll(s, shifts=(3, -5), dims=(-2, -1))
        assert term(s, shifted, "amplitude") < 1e-10 < 1e-3 < term(s, shifted, "kd")
    same_phase = s * 2.0  # equal phases: the amplitude term is the kd term
    assert term(same_phase, s, "amplitude") == pytest.approx(term(same_phase, s, "kd"), rel=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"ratio": 1.5}, "option 'ratio'"),
    ({"ratio": -0.1}, "option 'ratio'"),
    ({"ratio_mode": "radial"}, "option 'ratio_mode'"),
    ({"band": "wavelet"}, "option 'band'"),
    ({"high": "sharp"}, "option 'high'"),
    ({"tap": "encoder"}, "option 'tap'"),
    ({"tap": "stage5"}, "option 'tap'"),
    ({"band": "butterworth", "order": 0}, "option 'order'"),
    ({"band": "butterworth", "order": -2.0}, "option 'order'"),
    ({"band": "gaussian", "order": 4}, "option 'order'"),
    ({"low_weight": -1.0}, "option 'low_weight'"),
    ({"high_weight": -0.5}, "option 'high_weight'"),
])
def test_bad_option_values_name_the_option(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FrequencyKD(B0, B2, **{**FrequencyKD.defaults, **options})
    with pytest.raises(UserError, match=re.escape(f"methods.m.freq: {message}")):
        build_distillation({"freq": {"weight": 0.1, **options}}, B0, B2, where="methods.m")


def test_wrong_option_types_name_the_key():
    with pytest.raises(UserError, match=r"methods\.m\.freq\.standardize: expected a bool"):
        build_distillation({"freq": {"standardize": "yes"}}, B0, B2, where="methods.m")
    with pytest.raises(UserError, match=r"methods\.m\.freq\.order: expected a float"):
        build_distillation({"freq": {"band": "butterworth", "order": "high"}}, B0, B2, where="methods.m")


@pytest.mark.parametrize("tap, field, widths", [
    ("decoder", "decoder", (256, 768)), ("stage1", "stages", (32, 64)), ("stage4", "stages", (256, 512)),
    ("logits", "logits", None),
])
def test_taps_read_their_map_with_a_matching_adapter(tap, field, widths):
    distillation = build_distillation({"f": {"loss": "freq", "tap": tap, "high": "kd"}}, B0, B2)
    term = distillation.terms["f"]
    assert term.tap == tap and term.taps == {field} and distillation.taps == {field}
    assert type(term).taps == {"decoder"}  # per instance, not on the class
    if widths is None:
        assert isinstance(term.adapter, torch.nn.Identity) and not list(term.parameters())
    else:
        assert (term.adapter.in_channels, term.adapter.out_channels) == widths

    def output(dims, seed):
        g = torch.Generator().manual_seed(seed)
        maps = lambda c, stride: torch.randn(2, c, 16 // stride, 24 // stride, generator=g)  # noqa: E731
        return SimpleNamespace(logits=maps(dims["logits"], 1), decoder=maps(dims["decoder"], 1),
                               stages=[maps(c, 2**i) for i, c in enumerate(dims["stages"])])

    student, teacher = output(B0, 1), output(B2, 2)
    picked = term.feature(student)
    assert picked is (student.stages[int(tap[-1]) - 1] if tap.startswith("stage") else getattr(student, tap))
    value = distillation(student, teacher)["f"]
    split = term.band
    a = term.adapter(picked)
    t = term.feature(teacher)
    assert value.item() == pytest.approx(0.1 * (a - t).pow(2).mean().item(), rel=1e-4)  # kd: Parseval
    low, high = split.split(a)
    assert low.shape == a.shape


def test_missing_stage_fails_before_training():
    two_stages = {"stages": [32, 64], "decoder": 256, "logits": 11}
    with pytest.raises(UserError, match=r"methods\.m\.freq: option 'tap': stage3 needs encoder stage 3"):
        build_distillation({"freq": {"tap": "stage3"}}, two_stages, B2, where="methods.m")


@pytest.mark.parametrize("band", BAND_NAMES)
@pytest.mark.parametrize("high", ["regularize", "amplitude"])
def test_bf16_inputs_are_computed_in_float32(band, high):
    split = BANDS[band](0.3, "axis")
    x = feature((2, 8, 12, 16), seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, high_band = split.split(x.bfloat16())
    assert low.dtype == high_band.dtype == torch.float32
    torch.testing.assert_close(low, split.low(x.bfloat16().float()))
    term = LOSSES["freq"].from_options({"band": band, "high": high}, {"decoder": 8}, {"decoder": 16})
    s = channels_last(feature((2, 8, 12, 16), seed=4)).bfloat16().requires_grad_()
    with torch.inference_mode():
        t = channels_last(feature((2, 16, 12, 16), seed=5)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = term(SimpleNamespace(decoder=s), SimpleNamespace(decoder=t))
    assert value.dtype == torch.float32
    expected = term(SimpleNamespace(decoder=s.detach().float()), SimpleNamespace(decoder=t.float()))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert s.grad.dtype == torch.bfloat16 and torch.isfinite(s.grad.float()).all() and s.grad.abs().sum() > 0
