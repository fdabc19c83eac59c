"""Distillation losses: known values (hand-computed and numpy/scipy), gradients, inference-mode
teachers, bf16 autocast, and the registry's errors."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from scipy.special import log_softmax as np_log_softmax
from scipy.special import softmax as np_softmax

from segkd.classes import IGNORE_INDEX
from segkd.distill import LOSSES, Distillation, build_distillation, check_terms
from segkd.distill.attention import attention_transfer
from segkd.distill.logits import channel_kl, pixel_kl
from segkd.distill.similarity import similarity_preserving
from segkd.errors import UserError

B0 = {"stages": [32, 64, 160, 256], "decoder": 256, "logits": 11}
B2 = {"stages": [64, 128, 320, 512], "decoder": 768, "logits": 11}
EVERY_LOSS = {
    "kd": {"weight": 0.01, "temperature": 2.0},
    "at": {"weight": 1000.0},
    "sp": {"weight": 1.0},
    "sp_decoder": {"loss": "sp", "weight": 1.0, "tap": "decoder"},
    "fitnet": {"weight": 1.0},
    "cwd": {"weight": 3.0},
    "freq": {"weight": 0.1},
    "freq_kd": {"loss": "freq", "weight": 0.1, "high": "kd"},
}


def fake_output(dims, batch=2, h=8, w=16, seed=0, requires_grad=False, dtype=torch.float32):
    """A SegOutput stand-in: logits and decoder at (h, w) (= 1/4 input), stages at 1/4 .. 1/32."""
    g = torch.Generator().manual_seed(seed)

    def tensor(channels, stride):
        x = torch.randn(batch, channels, h // stride, w // stride, generator=g).to(dtype)
        return x.requires_grad_(requires_grad)

    return SimpleNamespace(logits=tensor(dims["logits"], 1),
                           stages=[tensor(c, 2**i) for i, c in enumerate(dims["stages"])],
                           decoder=tensor(dims["decoder"], 1))


def student_leaves(output):
    return [output.logits, output.decoder, *output.stages]


# ---------------------------------------------------------------- known values


def np_pixel_kl(s, t, temperature, valid=None):
    log_s = np_log_softmax(s / temperature, axis=1)
    log_t = np_log_softmax(t / temperature, axis=1)
    kl = (np.exp(log_t) * (log_t - log_s)).sum(axis=1)
    valid = np.ones_like(kl, dtype=bool) if valid is None else valid
    return kl[valid].mean() * temperature**2


def test_kd_hand_computed_single_pixel():
    s = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)
    t = torch.tensor([np.log(3.0), 0.0]).view(1, 2, 1, 1)  # softmax = [0.75, 0.25]
    expected = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    assert pixel_kl(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # T = 2: softmax(t/2) = [sqrt3, 1] / (sqrt3 + 1), times T^2 = 4
    p = np.array([np.sqrt(3), 1.0]) / (np.sqrt(3) + 1)
    assert pixel_kl(s, t, 2.0).item() == pytest.approx(4 * (p * np.log(p / 0.5)).sum(), rel=1e-6)


def test_kd_identical_is_zero_and_matches_numpy_with_void():
    student, teacher = fake_output(B0, seed=1), fake_output(B2, seed=2)
    loss = LOSSES["kd"].from_options({"temperature": 2.0}, B0, B2)
    assert loss(student, student).item() == pytest.approx(0.0, abs=1e-7)

    # full-resolution labels (4x the logits), void in whole 4x4 blocks so nearest is unambiguous
    rng = np.random.default_rng(0)
    small = rng.integers(0, 11, size=(2, 8, 16))
    small[rng.random(small.shape) < 0.3] = IGNORE_INDEX
    labels = torch.from_numpy(np.repeat(np.repeat(small, 4, axis=1), 4, axis=2))
    expected = np_pixel_kl(student.logits.numpy(), teacher.logits.numpy(), 2.0, small != IGNORE_INDEX)
    assert loss(student, teacher, labels).item() == pytest.approx(expected, rel=1e-5)
    assert loss(student, teacher, labels[:, ::4, ::4]).item() == pytest.approx(expected, rel=1e-5)

    # changing the logits of a void pixel does not change the loss
    void = np.argwhere(small == IGNORE_INDEX)[0]
    moved = SimpleNamespace(**vars(student))
    moved.logits = student.logits.clone()
    moved.logits[void[0], :, void[1], void[2]] += 5.0
    assert loss(moved, teacher, labels).item() == pytest.approx(expected, rel=1e-5)


def test_cwd_matches_scipy():
    s = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(3))
    t = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(4))
    temperature = 4.0
    p_s = np_softmax(s.numpy().reshape(2, 3, -1) / temperature, axis=2)
    p_t = np_softmax(t.numpy().reshape(2, 3, -1) / temperature, axis=2)
    expected = (p_t * np.log(p_t / p_s)).sum() * temperature**2 / (2 * 3)
    assert channel_kl(s, t, temperature).item() == pytest.approx(expected, rel=1e-5)
    assert channel_kl(t, t, temperature).item() == pytest.approx(0.0, abs=1e-7)


def np_attention(f):
    a = (f**2).mean(axis=1).reshape(f.shape[0], -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_at_hand_computed_and_numpy():
    s = torch.tensor([[[[1.0, 1.0]]]])  # attention [1, 1] / sqrt 2
    t = torch.tensor([[[[2.0, 0.0]]], ]).repeat(1, 3, 1, 1)  # 3 channels, attention [1, 0]
    expected = ((1 / np.sqrt(2) - 1) ** 2 + 0.5) / 2
    assert attention_transfer([s], [t]).item() == pytest.approx(expected, rel=1e-6)

    student, teacher = fake_output(B0, seed=1), fake_output(B2, seed=2)
    expected = sum(((np_attention(a.numpy()) - np_attention(b.numpy())) ** 2).mean()
                   for a, b in zip(student.stages, teacher.stages))
    loss = LOSSES["at"].from_options({}, B0, B2)
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    # the channel count does not matter: a teacher stage that repeats the student's channels
    same = SimpleNamespace(stages=[f.repeat(1, 2, 1, 1) for f in student.stages])
    assert loss(student, same).item() == pytest.approx(0.0, abs=1e-7)


def np_similarity(f):
    q = f.reshape(f.shape[0], -1)
    g = q @ q.T
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def test_sp_matches_numpy_and_ignores_scale():
    student, teacher = fake_output(B0, batch=4, seed=1), fake_output(B2, batch=4, seed=2)
    s, t = student.stages[-1].numpy().astype(np.float64), teacher.stages[-1].numpy().astype(np.float64)
    expected = ((np_similarity(t) - np_similarity(s)) ** 2).sum() / 4**2
    loss = LOSSES["sp"].from_options({}, B0, B2)
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    scaled = SimpleNamespace(stages=[f * 7.0 for f in student.stages])
    assert loss(student, scaled).item() == pytest.approx(0.0, abs=1e-6)
    on_decoder = LOSSES["sp"].from_options({"tap": "decoder"}, B0, B2)
    assert on_decoder.taps == {"decoder"}
    d_s, d_t = student.decoder.numpy().astype(np.float64), teacher.decoder.numpy().astype(np.float64)
    expected = ((np_similarity(d_t) - np_similarity(d_s)) ** 2).sum() / 16
    assert on_decoder(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    # a batch of one image carries no similarity structure
    assert similarity_preserving(student.stages[-1][:1], teacher.stages[-1][:1]).item() == 0.0


def test_fitnet_matches_numpy_through_the_adapter():
    student, teacher = fake_output(B0, seed=1), fake_output(B2, seed=2)
    loss = LOSSES["fitnet"].from_options({}, B0, B2)
    w = loss.adapter.weight.detach().numpy()[:, :, 0, 0]  # 768 x 256
    b = loss.adapter.bias.detach().numpy()
    adapted = np.einsum("oc,bchw->bohw", w, student.decoder.numpy()) + b[None, :, None, None]
    expected = ((adapted - teacher.decoder.numpy()) ** 2).mean()
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- gradients, teachers, precision


@pytest.mark.parametrize("term", sorted(EVERY_LOSS))
def test_gradients_reach_the_student_not_the_teacher(term):
    distillation = build_distillation({term: EVERY_LOSS[term]}, B0, B2)
    student = fake_output(B0, seed=1, requires_grad=True)
    teacher = fake_output(B2, seed=2, requires_grad=True)  # not under no_grad: losses must detach
    loss = distillation(student, teacher)[term]
    assert loss.dtype == torch.float32 and loss.dim() == 0 and loss.item() > 0
    loss.backward()
    tapped = {"logits": [student.logits], "decoder": [student.decoder], "stages": student.stages}
    if term == "sp":
        tapped["stages"] = student.stages[-1:]
    for leaf in (x for tap in distillation.taps for x in tapped[tap]):
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    for leaf in student_leaves(teacher):
        assert leaf.grad is None
    for p in distillation.parameters():  # adapters learn
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_teacher_from_inference_mode_and_backward_outside():
    distillation = build_distillation(EVERY_LOSS, B0, B2)
    with torch.inference_mode():
        teacher = fake_output(B2, seed=2)
    assert teacher.decoder.is_inference()
    student = fake_output(B0, seed=1, requires_grad=True)
    losses = distillation(student, teacher, torch.zeros(2, 32, 64, dtype=torch.long))
    sum(losses.values()).backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in student_leaves(student))


def test_bf16_autocast_matches_float32():
    torch.manual_seed(0)
    distillation = build_distillation(EVERY_LOSS, B0, B2)
    student = fake_output(B0, seed=1, requires_grad=True)
    with torch.inference_mode():
        teacher = fake_output(B2, seed=2)
    reference = distillation(student, teacher)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        teacher16 = SimpleNamespace(logits=teacher.logits.bfloat16(), decoder=teacher.decoder.bfloat16(),
                                    stages=[f.bfloat16() for f in teacher.stages])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student16 = SimpleNamespace(logits=student.logits.bfloat16(), decoder=student.decoder.bfloat16(),
                                    stages=[f.bfloat16() for f in student.stages])
        losses = distillation(student16, teacher16)
    for term, value in losses.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(reference[term].item(), rel=5e-2), term
    sum(losses.values()).backward()
    assert all(torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
               for leaf in student_leaves(student))


# ---------------------------------------------------------------- registry


def test_terms_combine_weighted_by_name():
    terms = {"at": {"weight": 1000.0}, "lowpass": {"loss": "freq", "weight": 0.5, "ratio": 0.3}}
    distillation = build_distillation(terms, B0, B2, where="methods.at_freq")
    assert isinstance(distillation, Distillation)
    assert distillation.taps == {"stages", "decoder"}
    student, teacher = fake_output(B0, seed=1), fake_output(B2, seed=2)
    losses = distillation(student, teacher)
    assert set(losses) == {"at", "lowpass"}
    for name, loss in distillation.terms.items():
        assert losses[name].item() == pytest.approx(terms[name]["weight"] * loss(student, teacher).item(),
                                                     rel=1e-6)
    # only the freq adapter is trainable: 256 -> 768 1x1 conv with bias
    assert sum(p.numel() for p in distillation.parameters()) == 256 * 768 + 768


def test_weight_defaults_from_the_loss():
    distillation = build_distillation({name: {} for name in LOSSES}, B0, B2)
    assert distillation.weights == {"kd": 0.01, "at": 1000.0, "sp": 1.0, "fitnet": 1.0, "cwd": 3.0, "freq": 0.1}


@pytest.mark.parametrize("terms, message", [
    ({"freq": {"weight": 0.1, "ratoi": 0.2}}, "methods.freq.freq: unknown option 'ratoi'"),
    ({"kd": {"weight": 0.1, "temperature": "hot"}}, "methods.freq.kd.temperature: expected a float"),
    ({"kd": {"weight": 0.1, "temperature": 0}}, "methods.freq.kd: option 'temperature': must be > 0"),
    ({"freq": {"weight": 0.1, "ratio": 1.5}}, "methods.freq.freq: option 'ratio': must be in"),
    ({"freq": {"weight": 0.1, "high": "sharp"}}, "methods.freq.freq: option 'high': expected one of"),
    ({"freq": {"weight": 0.1, "ratio_mode": "radial"}}, "option 'ratio_mode'"),
    ({"sp": {"weight": 1.0, "tap": "logits"}}, "methods.freq.sp: option 'tap'"),
    ({"x": {"loss": "dkd", "weight": 1.0}}, "methods.freq.x: unknown loss 'dkd'"),
    ({"at": {"weight": -1.0}}, "methods.freq.at.weight: must be >= 0"),
])
def test_bad_options_name_the_key(terms, message):
    with pytest.raises(UserError, match=re.escape(message)):
        build_distillation(terms, B0, B2, where="methods.freq")
    with pytest.raises(UserError):
        check_terms(terms)


def test_missing_taps_and_incompatible_shapes_fail_before_training():
    no_decoder = {"stages": B2["stages"], "logits": 11}
    with pytest.raises(UserError, match=r"methods\.m\.freq: needs the teacher's 'decoder' output"):
        build_distillation({"freq": {"weight": 0.1}}, B0, no_decoder, where="methods.m")
    with pytest.raises(UserError, match="different class counts"):
        build_distillation({"kd": {"weight": 0.01}}, B0, {**B2, "logits": 19})
    with pytest.raises(UserError, match="encoder stages"):
        build_distillation({"at": {"weight": 1000.0}}, B0, {**B2, "stages": [64, 128, 320]})
    # built for B0 -> B2, then checked against other models: the adapter no longer fits
    distillation = build_distillation({"fitnet": {"weight": 1.0}}, B0, B2, where="methods.fit")
    distillation.check_taps(B0, B2)
    with pytest.raises(UserError, match=r"methods\.fit\.fitnet: adapter maps 256 -> 768"):
        distillation.check_taps(B0, {**B2, "decoder": 512})


def test_params_methods_are_valid(repo):
    from segkd.sweep import expand

    methods = yaml.safe_load((repo / "params.yaml").read_text())["methods"]
    for variant in expand(methods).values():  # every variant of a grid
        check_terms(variant.terms, where=f"methods.{variant.method}")
