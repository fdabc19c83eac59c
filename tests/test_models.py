"""SegFormer model: sizes, taps, fidelity to NVlabs' MiT, the folded head, channels_last and bf16."""

import copy

import pytest
import torch
import torch.nn.functional as F

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


def _reference_head(head, stages):
    """NVlabs' SegFormerHead, literally: project, upsample, concat [c4..c1], conv-BN-ReLU."""
    size = stages[0].shape[-2:]
    maps = []
    for stage, proj in zip(stages, head.projections):
        y = proj(stage.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(stage.shape[0], -1, *stage.shape[-2:])
        maps.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
    fuse = head.linear_fuse
    decoder = F.relu(fuse.bn(fuse.conv(torch.cat(maps[::-1], dim=1))))
    return decoder, head.linear_pred(head.dropout(decoder))


def test_folded_head_equals_reference_head(b0):
    randomise_norms(b0)
    b0.eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        out = b0(x)
        decoder, logits = _reference_head(b0.decode_head, out.stages)
    torch.testing.assert_close(out.decoder, decoder, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["train", "eval"])  # eval: the BatchNorm is folded into the projections
def test_folded_head_gradients_equal_reference(b0, mode):
    """Same function, same parameters: same gradients (in float64, where rounding cannot hide a slip)."""
    randomise_norms(b0)
    head = copy.deepcopy(b0.decode_head).double().train(mode == "train")
    with torch.no_grad():
        stages = [s.double() for s in b0.eval()(torch.randn(2, 3, 64, 64)).stages]
    probe = torch.randn(2, 256, 16, 16, dtype=torch.float64)
    grads = []
    for forward in (lambda: head(stages)[0], lambda: _reference_head(head, stages)[0]):
        head.zero_grad()
        (forward() * probe).sum().backward()
        grads.append({n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and {"linear_c3.weight", "linear_fuse.bn.weight"} <= grads[0].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-9, rtol=1e-7, msg=name)


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


def test_bf16_autocast_forward_backward_close_to_fp32(b0):
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
    """A frozen model reuses its folded head; any change to the weights must show in the next output."""
    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=11).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        first = model(x).logits.clone()
        assert model(x).logits.equal(first)  # cached fold, same result
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).logits.square().mean().backward()  # a training step through the uncached path
    optimizer.step()
    with torch.no_grad():
        after_step = model(x).logits
        fresh = copy.deepcopy(model)
        fresh.decode_head._fold_key = None
        assert not after_step.allclose(first)
        torch.testing.assert_close(after_step, fresh(x).logits, rtol=0, atol=0)
    state = create_model("segformer_b0", num_classes=11).state_dict()
    model.load_state_dict(state)
    reference = create_model("segformer_b0", num_classes=11).eval()
    reference.load_state_dict(state)
    reference.decode_head._fold_key = None
    with torch.inference_mode():
        torch.testing.assert_close(model(x).logits, reference(x).logits, rtol=0, atol=0)


def test_frozen_fold_follows_running_statistics_and_ignores_autocast():
    """The cached fold holds the eval BatchNorm: a training pass that moves its running statistics must
    show in the next eval output, and a fold first made under bf16 autocast must still be float32."""
    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=11)
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
        fresh.decode_head._fold_key = None
        assert not after.allclose(before)
        torch.testing.assert_close(after, fresh(x).decoder, rtol=0, atol=0)
        torch.testing.assert_close(after, _reference_head(model.decode_head, model(x).stages)[0],
                                   atol=1e-5, rtol=1e-4)


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
