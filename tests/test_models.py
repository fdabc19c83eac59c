"""SegFormer model: sizes, taps, fidelity to NVlabs' MiT and to transformers, the head's fast path against its
reference, timm's encoder API, the fold cache, channels_last and bf16."""

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

from conftest import randomise_norms
from segkd.errors import UserError
from segkd.models import SegOutput, create_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return create_model("segformer_b0", num_classes=11)


@pytest.mark.parametrize("name, millions", [("segformer_b0", 3.717), ("segformer_b2", 27.355),
                                            ("segformer_b4", 64.001)])
def test_parameter_count_matches_segformer(name, millions):
    model = create_model(name, num_classes=11)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) <= 0.01


def test_output_taps_shapes_and_feature_dims(b0):
    b0.eval()
    with torch.no_grad():
        out = b0(torch.randn(2, 3, 64, 96))
    assert isinstance(out, SegOutput)
    assert b0.feature_dims == {"stages": [32, 64, 160, 256], "decoder": 256, "logits": 11}
    assert out.logits.shape == (2, 11, 16, 24)
    assert out.decoder.shape == (2, 256, 16, 24)
    assert [tuple(s.shape) for s in out.stages] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 160, 4, 6), (2, 256, 2, 3)]
    assert (out.decoder >= 0).all()  # after ReLU: the decoder tap is taken after linear_fuse


def test_wide_variant_dims_and_parameter_prefixes():
    model = create_model("segformer_b1", num_classes=5)
    assert model.feature_dims == {"stages": [64, 128, 320, 512], "decoder": 256, "logits": 5}
    assert create_model("segformer_b2").feature_dims["decoder"] == 768
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith(("encoder.", "decode_head.")) for n in names)
    assert any(n.startswith("decode_head.linear_c4.") for n in names)
    assert model.decode_head.linear_fuse.conv.bias is None


def test_mit_layernorm_eps_and_mlp_ratio(b0):
    eps = {name: m.eps for name, m in b0.encoder.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    # MiT: blocks and stage outputs use LayerNorm(eps=1e-6); patch embeddings and the spatial-reduction norm 1e-5
    assert eps["stages.0.blocks.0.norm1"] == eps["stages.3.blocks.1.norm2"] == eps["stages.2.norm"] == 1e-6
    assert eps["patch_embed.norm"] == eps["stages.1.downsample.norm"] == eps["stages.0.blocks.0.attn.norm"] == 1e-5
    assert all(b.mlp.fc1.out_features == 4 * b.mlp.fc1.in_features for s in b0.encoder.stages for b in s.blocks)
    assert b0.encoder.stages[0].blocks[0].attn.q.bias is not None


def test_drop_path_linear_over_all_blocks():
    model = create_model("segformer_b2", drop_path_rate=0.1)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for s in model.encoder.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 16).tolist())  # MiT's rule: linspace over sum(depths)
    assert [getattr(b.drop_path2, "drop_prob", 0.0) for s in model.encoder.stages for b in s.blocks] == rates


def reference_of(module):
    """A copy of a SegFormer or its head (same parameters and buffers) that runs the reference head."""
    ref = copy.deepcopy(module)
    (ref.decode_head if hasattr(ref, "decode_head") else ref).fused = False
    return ref


def test_head_flag_selects_the_branch_and_keeps_the_state_dict():
    torch.manual_seed(0)
    fast, ref = create_model("segformer_b0"), create_model("segformer_b0", fused_head=False)
    assert fast.decode_head.fused and not ref.decode_head.fused
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert fast.state_dict()["decode_head.linear_fuse.conv.weight"].shape == (256, 1024, 1, 1)
    ref.load_state_dict(fast.state_dict())  # strict: same names, same shapes


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fast_head_equals_reference_head(b0, mode):
    """Decoder feature and logits of the folded fast path against the reference branch, in eval mode and
    in train mode (batch statistics) with dropout off; the stage maps are the same tensors."""
    randomise_norms(b0)
    fast = copy.deepcopy(b0).train(mode == "train")
    fast.decode_head.dropout.p = 0.0
    ref = reference_of(fast)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        stages = fast.forward_stages(x)
        out = fast.decode_head(stages)
        expected = ref.decode_head(stages)
    for got, want in zip(out, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    if mode == "train":  # the same running statistics afterwards: both branches ran the BatchNorm once
        torch.testing.assert_close(fast.decode_head.linear_fuse.bn.running_var,
                                   ref.decode_head.linear_fuse.bn.running_var, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])  # eval: the BatchNorm is folded into the projections
def test_fast_head_gradients_equal_reference(b0, mode):
    """Same function, same parameters: same gradients of every parameter and of the stage maps, through the
    decoder feature and the logits (in float64, where rounding cannot hide a slip)."""
    randomise_norms(b0)
    head = copy.deepcopy(b0.decode_head).double().train(mode == "train")
    head.dropout.p = 0.0
    with torch.no_grad():
        stages = [s.double() for s in b0.eval()(torch.randn(2, 3, 64, 64)).stages]
    probes = torch.randn(2, 256, 16, 16, dtype=torch.float64), torch.randn(2, 11, 16, 16, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        head.fused = fused
        head.zero_grad()
        leaves = [s.clone().requires_grad_() for s in stages]
        decoder, logits = head(leaves)
        ((decoder * probes[0]).sum() + (logits * probes[1]).sum()).backward()
        grads.append({**{n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None},
                      **{f"stage{i}": leaf.grad for i, leaf in enumerate(leaves)}})
    assert grads[0].keys() == grads[1].keys()
    assert {"linear_c3.weight", "linear_fuse.bn.weight", "linear_pred.bias", "stage3"} <= grads[0].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-9, rtol=1e-7, msg=name)


@pytest.mark.parametrize("name", ["segformer_b0", "segformer_b2"])
def test_both_head_branches_give_hugging_face_logits(name, tmp_path):
    """Hugging Face's SegFormer and its weights imported here: the logits of the fast path and of the
    reference, each against transformers' (eval mode, normalisations randomised). The figures are
    printed (pytest -s)."""
    transformers = pytest.importorskip("transformers")
    dims = {"segformer_b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
            "segformer_b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768)}[name]
    config = transformers.SegformerConfig(num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], num_labels=11,
                                          hidden_sizes=dims[0], depths=dims[1], decoder_hidden_size=dims[2])
    torch.manual_seed(0)
    hf = transformers.SegformerForSemanticSegmentation(config).eval()
    randomise_norms(hf)
    hf.save_pretrained(tmp_path)
    fast = create_model(name, num_classes=11, pretrained=str(tmp_path)).eval()
    ref = create_model(name, num_classes=11, pretrained=str(tmp_path), fused_head=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        got = {"fast": fast(x).logits, "reference": ref(x).logits}
    assert expected.abs().max() > 0.1  # a comparison of non-trivial numbers
    diff = {k: (v - expected).abs().max().item() for k, v in got.items()}
    diff["fast vs reference"] = (got["fast"] - got["reference"]).abs().max().item()
    print(f"\n{name} logits max |diff| (scale {expected.abs().max().item():.2f}): "
          + ", ".join(f"{k} vs transformers {v:.2e}" if "vs" not in k else f"{k} {v:.2e}" for k, v in diff.items()))
    assert diff["fast"] <= 1e-4 and diff["reference"] <= 1e-4
    assert diff["fast vs reference"] <= 1e-5


def test_stages_are_timm_intermediates_in_channels_last_memory(b0):
    b0.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        stages = b0.forward_stages(x)
        expected = b0.encoder.forward_intermediates(x, intermediates_only=True)
    for stage, want in zip(stages, expected):
        assert stage.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(stage, want, rtol=0, atol=0)


def test_timm_gradient_checkpointing_is_honoured():
    """encoder.set_grad_checkpointing() makes every block run again in the backward pass, and changes
    neither the loss nor the gradients."""
    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=11).train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 11, (2, 16, 16))
    calls = []
    model.encoder.stages[1].blocks[0].register_forward_pre_hook(lambda *args: calls.append(1))
    results = []
    for enable in (False, True):
        model.encoder.set_grad_checkpointing(enable)
        model.zero_grad()
        calls.clear()
        torch.manual_seed(1)  # the same dropout mask
        loss = F.cross_entropy(model(x).logits, y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()], len(calls)))
    assert results[0][2] == 1 and results[1][2] == 2  # recomputed in the backward pass
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_channels_last_matches_contiguous(b0):
    b0.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = b0(x)
        model = create_model("segformer_b0")
        model.load_state_dict(b0.state_dict())
        model.to(memory_format=torch.channels_last).eval()
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.logits.shape == ref.logits.shape and torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.decoder, ref.decoder, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False], ids=["fast", "reference"])
def test_bf16_autocast_forward_backward_close_to_fp32(b0, fused):
    b0 = copy.deepcopy(b0)
    b0.decode_head.fused = fused
    x = torch.randn(2, 3, 64, 64)
    b0.train()
    b0.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = b0(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(out.logits.float(), torch.randint(0, 11, (2, 16, 16)))
    loss.backward()
    assert out.logits.shape == (2, 11, 16, 16) and out.decoder.shape == (2, 256, 16, 16)
    assert all(torch.isfinite(t).all() for t in (out.logits, out.decoder, *out.stages))
    assert all(torch.isfinite(p.grad).all() for p in b0.parameters() if p.grad is not None)
    b0.eval()  # fp32 reference after the training pass (it moved the BN running statistics)
    with torch.no_grad():
        ref = b0(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = b0(x)
    scale = ref.logits.abs().max()
    assert (low.logits.float() - ref.logits).abs().max() <= 0.05 * scale + 1e-3
    assert (low.decoder.float() - ref.decoder).abs().max() <= 0.05 * ref.decoder.abs().max() + 1e-3


def test_eval_is_deterministic_and_train_drops_paths():
    torch.manual_seed(0)
    model = create_model("segformer_b0", drop_path_rate=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)
        model.train()
        assert not torch.equal(model(x).stages[3], model(x).stages[3])


def test_bad_model_name_or_class_count_is_a_user_error():
    with pytest.raises(UserError, match="segformer_b6"):
        create_model("segformer_b6")
    with pytest.raises(UserError, match="num_classes"):
        create_model("segformer_b0", num_classes=0)


def test_frozen_fold_cache_follows_weight_changes():
    """A frozen head reuses its fold; any change to its weights must show in the next output: an EMA
    update and an in-place edit under no_grad, a loaded state dict, a move to another dtype."""
    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=11).eval().requires_grad_(False)
    head, x = model.decode_head, torch.randn(2, 3, 64, 64)

    def fresh_logits():  # the same model without its cache
        fresh = copy.deepcopy(model)
        fresh.decode_head.clear_fold_cache()
        return fresh(x).logits

    with torch.inference_mode():
        first = model(x).logits.clone()
        fold = head._fold
        assert model(x).logits.equal(first) and head._fold is fold  # cached fold, same result
    student = create_model("segformer_b0", num_classes=11)
    ema = ModelEmaV3(model, decay=0.5)  # an EMA teacher: its module is `model`'s frozen copy, updated in place
    model = ema.module
    with torch.no_grad():
        model(x)
        ema.update(student)  # foreach lerp of every parameter and buffer towards the student's
        after_update = model(x).logits
        assert not after_update.allclose(first)
        torch.testing.assert_close(after_update, fresh_logits(), rtol=0, atol=0)
        model.decode_head.linear_c2.weight.mul_(0.9)  # a plain in-place edit
        after_edit = model(x).logits
        assert not after_edit.allclose(after_update)
        torch.testing.assert_close(after_edit, fresh_logits(), rtol=0, atol=0)
    state = create_model("segformer_b0", num_classes=11).state_dict()
    model.load_state_dict(state)
    reference = create_model("segformer_b0", num_classes=11).eval()
    reference.load_state_dict(state)
    with torch.inference_mode():
        torch.testing.assert_close(model(x).logits, reference(x).logits, rtol=0, atol=0)
    model.double()
    with torch.inference_mode():
        torch.testing.assert_close(model(x.double()).logits.float(), reference(x).logits, rtol=1e-4, atol=1e-5)
        model.float()  # weights made under inference mode: no version counters, so no cache
        torch.testing.assert_close(model(x).logits, reference(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", ["fused AdamW (segkd's)", "SGD"])
def test_trainable_head_evaluated_between_steps_is_never_stale(optimizer):
    """A model evaluated, stepped, evaluated again (BatchNorm in eval mode throughout, so no running
    statistics move): the second evaluation must use the new weights. Fused AdamW writes them without
    a version bump, so a trainable head keeps no fold cache."""
    from segkd.engine.optim import create_optimizer

    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=11).eval()
    x = torch.randn(2, 3, 64, 64)
    train = {"lr": 1e-2, "head_lr_mult": 10.0, "weight_decay": 0.01}
    opt = create_optimizer(model, None, train) if optimizer.startswith("fused") else torch.optim.SGD(
        model.parameters(), lr=0.1)
    with torch.inference_mode():
        first = model(x).logits.clone()
    model(x).logits.square().mean().backward()  # a training step through the gradient path
    opt.step()
    with torch.inference_mode():
        after_step = model(x).logits
        fresh = copy.deepcopy(model)
        fresh.decode_head.clear_fold_cache()
        assert not after_step.allclose(first)
        torch.testing.assert_close(after_step, fresh(x).logits, rtol=0, atol=0)


def test_frozen_fold_follows_running_statistics_and_ignores_autocast():
    """The cached fold holds the eval BatchNorm: a training pass that moves its running statistics must
    show in the next eval output, and a fold first made under bf16 autocast must still be float32."""
    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=11).requires_grad_(False)
    randomise_norms(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.eval()(x)
    assert all(w.dtype == torch.float32 for w in model.decode_head._fold[0])
    with torch.no_grad():
        before = model(x).decoder.clone()
        model.train()(x)  # updates running_mean / running_var
        after = model.eval()(x).decoder
        fresh = copy.deepcopy(model)
        fresh.decode_head.clear_fold_cache()
        assert not after.allclose(before)
        torch.testing.assert_close(after, fresh(x).decoder, rtol=0, atol=0)
        torch.testing.assert_close(after, reference_of(model)(x).decoder, atol=1e-5, rtol=1e-4)


def test_version_counter_sees_every_write_the_fold_cache_relies_on():
    """The fold cache keys on `Tensor._version` (private: torch has no public reader, see
    segformer.tensor_versions). If a torch upgrade renames it or stops counting one of these writes,
    this fails, and the cache would otherwise serve a stale fold silently."""
    from segkd.engine.optim import create_optimizer
    from segkd.models.segformer import tensor_versions

    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=11)
    head = model.decode_head
    tensors = lambda: (*head.parameters(), *head.buffers())  # noqa: E731
    assert all(isinstance(t._version, int) for t in tensors()), "torch.Tensor._version is gone"

    def bumps(write) -> bool:
        before = tensor_versions(tensors())
        write()
        return tensor_versions(tensors()) != before

    def no_grad_edit():
        with torch.no_grad():
            head.linear_c1.weight.mul_(0.9)

    def step(optimizer):
        def run():
            optimizer.zero_grad()
            model(torch.randn(2, 3, 32, 32)).logits.sum().backward()
            optimizer.step()
        return run

    ema = ModelEmaV3(create_model("segformer_b0", num_classes=11), decay=0.9)
    ema.module = model  # timm's EMA updating this model in place, towards another one

    assert bumps(no_grad_edit), "an in-place write under no_grad"
    assert bumps(lambda: ema.update(create_model("segformer_b0", num_classes=11))), "timm's EMA update (foreach)"
    state = {k: v + 1 for k, v in model.state_dict().items()}
    assert bumps(lambda: model.load_state_dict(state)), "load_state_dict"
    with torch.no_grad():
        assert bumps(lambda: model.train()(torch.randn(2, 3, 32, 32))), "a training pass (BN statistics)"
    assert bumps(lambda: head.double()), "a dtype change"
    model.float().eval()
    # not relied on: a fused optimiser step bumps nothing (torch 2.14), hence no cache for trainable heads
    fused = bumps(step(create_optimizer(model, None, {"lr": 1e-3, "head_lr_mult": 10.0, "weight_decay": 0.01})))
    print(f"\nfused AdamW step bumps the version counters: {fused}")


def test_taps_skip_the_head_parts_no_term_reads():
    torch.manual_seed(0)
    model = create_model("segformer_b2", num_classes=11).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        full = model(x)
        stages_only = model(x, taps={"stages"})
        decoder_only = model(x, taps=frozenset({"decoder"}))
        logits = model(x, taps={"logits"})
    assert stages_only.decoder is None and stages_only.logits is None
    assert decoder_only.logits is None
    for a, b in zip(stages_only.stages, full.stages):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(decoder_only.decoder, full.decoder, rtol=0, atol=0)
    torch.testing.assert_close(logits.logits, full.logits, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(24, 32), (7, 13)])
def test_bilinear_matrices_are_f_interpolate(size):
    """The head upsamples with A_h x A_w^T; it must be F.interpolate's bilinear map, at integer and
    fractional scales, and usable by autograd even when first built under inference mode."""
    from segkd.models.segformer import bilinear_matrix

    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    with torch.inference_mode():
        a_h = bilinear_matrix(3, size[0], x.device, x.dtype)
    a_w = bilinear_matrix(4, size[1], x.device, x.dtype)
    expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(a_h @ x @ a_w.T, expected, rtol=1e-12, atol=1e-12)
    leaf = x.clone().requires_grad_()
    (a_h @ leaf @ a_w.T).sum().backward()
    assert leaf.grad is not None
