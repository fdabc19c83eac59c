"""Frequency-band distillation: the box mask, the FFT split, Parseval, and the loss's values."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segkd.distill import LOSSES, build_distillation
from segkd.distill.frequency import BoxFFTSplit, band_loss, box_mask, fourier_basis, kept_radius

B0 = {"stages": [32, 64, 160, 256], "decoder": 256, "logits": 11}
B2 = {"stages": [64, 128, 320, 512], "decoder": 768, "logits": 11}
SIZES = [(24, 32), (7, 9), (8, 5), (1, 6), (96, 128)]


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
