"""Checkpoint import/export: parity with Hugging Face's SegFormer, NVlabs round trip, timm, errors."""

import warnings

import pytest
import torch
from safetensors.torch import load_file

from conftest import randomise_norms
from segkd.errors import UserError
from segkd.models import CheckpointError, create_model, to_nvlabs
from segkd.models.weights import FORMATS, convert, detect_format, export, load_pretrained, read_state_dict

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

HF_DIMS = {
    "segformer_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "segformer_b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}


def hf_model(name, num_labels=11):
    """A random-init transformers SegFormer built from a config (no download)."""
    config = transformers.SegformerConfig(num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
                                          num_labels=num_labels, **HF_DIMS[name])
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    randomise_norms(model)
    return model


@pytest.fixture(scope="module")
def hf_b0(tmp_path_factory):
    """B0 saved by save_pretrained as the installed transformers writes it by default and in its own names."""
    model = hf_model("segformer_b0")
    root = tmp_path_factory.mktemp("hf_b0")
    model.save_pretrained(root / "legacy")
    model.save_pretrained(root / "current", save_original_format=False)
    return model, root


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("name", ["segformer_b0", "segformer_b2"])
def test_hf_checkpoint_gives_hf_logits(name, tmp_path):
    hf = hf_model(name)
    hf.save_pretrained(tmp_path)
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in load_file(tmp_path / "model.safetensors")
    model = create_model(name, num_classes=11, pretrained=tmp_path).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = _logits(hf, x)
    assert expected.abs().max() > 0.1  # a comparison of non-trivial numbers
    assert (model(x).logits - expected).abs().max() <= 1e-4


def test_both_hf_key_schemes_and_bin_files_load(hf_b0, tmp_path):
    hf, root = hf_b0
    current = load_file(root / "current" / "model.safetensors")
    assert "segformer.stages.0.blocks.0.attention.q_proj.weight" in current
    assert "decode_head.linear_projections.3.proj.weight" in current
    torch.save(load_file(root / "legacy" / "model.safetensors"), tmp_path / "pytorch_model.bin")
    x = torch.randn(1, 3, 64, 96)
    expected = _logits(hf, x)
    for source, fmt in [(root / "legacy", "hf-legacy"), (root / "current", "hf"), (tmp_path, "hf-legacy")]:
        model = create_model("segformer_b0")
        report = load_pretrained(model, source)
        assert (report.format, report.backbone_only, report.reinitialised) == (fmt, False, ())
        assert (_logits(model.eval(), x) - expected).abs().max() <= 1e-4


def test_sharded_hf_directory_loads(tmp_path):
    hf = hf_model("segformer_b0")
    hf.save_pretrained(tmp_path, max_shard_size="4MB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = create_model("segformer_b0", pretrained=tmp_path)
    assert torch.equal(model.decode_head.linear_pred.weight, hf.decode_head.classifier.weight)


def test_export_splits_kv_into_hf_key_and_value():
    model = create_model("segformer_b0")
    hf = hf_model("segformer_b0")
    hf.load_state_dict(export(model.state_dict(), "hf"), strict=True)  # the installed transformers' own names
    kv = model.encoder.stages[1].blocks[0].attn.kv.weight
    torch.testing.assert_close(hf.segformer.stages[1].blocks[0].attention.v_proj.weight, kv[64:], rtol=0, atol=0)
    x = torch.randn(1, 3, 64, 64)
    assert (_logits(hf, x) - _logits(model.eval(), x)).abs().max() <= 1e-4
    legacy = export(model.state_dict(), "hf-legacy")
    assert torch.equal(legacy["segformer.encoder.block.1.0.attention.self.key.weight"], kv[:64])
    assert convert(legacy).keys() == model.state_dict().keys()


def test_nvlabs_round_trip_is_exact(tmp_path):
    torch.manual_seed(3)
    model = create_model("segformer_b0")
    randomise_norms(model)
    nvlabs = to_nvlabs(model.state_dict())
    for key in ("backbone.patch_embed1.proj.weight", "backbone.patch_embed2.norm.weight",
                "backbone.block1.0.attn.kv.weight", "backbone.block4.1.mlp.dwconv.dwconv.weight",
                "backbone.norm3.weight", "decode_head.linear_c1.proj.weight",
                "decode_head.linear_fuse.conv.weight", "decode_head.linear_fuse.bn.running_var",
                "decode_head.linear_pred.bias"):
        assert key in nvlabs, key
    nvlabs["decode_head.conv_seg.weight"] = torch.zeros(11, 256, 1, 1)  # mmseg's unused classifier: dropped
    torch.save({"meta": {"CLASSES": ["a"] * 11, "iter": 160000}, "state_dict": nvlabs}, tmp_path / "segformer.pth")
    loaded = create_model("segformer_b0", pretrained=tmp_path / "segformer.pth").eval()
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_nvlabs_mit_imagenet_backbone_loads_encoder_only(tmp_path):
    source = create_model("segformer_b0")
    mit = {k[len("backbone."):]: v for k, v in to_nvlabs(source.state_dict()).items() if k.startswith("backbone.")}
    mit |= {"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}
    torch.save(mit, tmp_path / "mit_b0.pth")
    model = create_model("segformer_b0")
    head_before = {k: v.clone() for k, v in model.decode_head.state_dict().items()}
    report = load_pretrained(model, tmp_path / "mit_b0.pth")
    assert (report.format, report.backbone_only) == ("nvlabs-mit", True)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    assert all(torch.equal(model.decode_head.state_dict()[k], v) for k, v in head_before.items())


def test_timm_pvt_v2_and_hf_base_model_load_as_backbones(tmp_path):
    import timm

    encoder = timm.create_model("pvt_v2_b0", mlp_ratios=(4, 4, 4, 4))  # with its 1000-class head
    torch.save(encoder.state_dict(), tmp_path / "pvt_v2_b0.pth")
    model = create_model("segformer_b0")
    assert load_pretrained(model, tmp_path / "pvt_v2_b0.pth").format == "timm"
    assert torch.equal(model.encoder.stages[2].blocks[1].attn.kv.weight, encoder.stages[2].blocks[1].attn.kv.weight)

    hf = hf_model("segformer_b0")
    hf.segformer.save_pretrained(tmp_path / "base")  # SegformerModel: keys without the `segformer.` prefix
    report = load_pretrained(model, tmp_path / "base")
    assert (report.format, report.backbone_only) == ("hf-legacy", True)
    assert torch.equal(model.encoder.stages[0].blocks[0].attn.q.weight,
                       hf.segformer.stages[0].blocks[0].attention.q_proj.weight)


def test_classifier_for_other_classes_is_reinitialised_with_warning(tmp_path):
    hf = hf_model("segformer_b0", num_labels=19)
    hf.save_pretrained(tmp_path)
    model = create_model("segformer_b0", num_classes=11)
    fresh = model.decode_head.linear_pred.weight.clone()
    with pytest.warns(UserWarning, match="19 classes"):
        report = load_pretrained(model, tmp_path)
    assert report.reinitialised == ("decode_head.linear_pred.weight", "decode_head.linear_pred.bias")
    assert torch.equal(model.decode_head.linear_pred.weight, fresh)
    assert torch.equal(model.decode_head.linear_fuse.conv.weight, hf.decode_head.linear_fuse.weight)


def test_same_class_count_loads_without_warning(hf_b0):
    model = create_model("segformer_b0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pretrained(model, hf_b0[1] / "legacy")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = to_nvlabs(create_model("segformer_b0").state_dict())
    del state["backbone.block2.1.attn.q.weight"]
    state["decode_head.linear_fuse.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(create_model("segformer_b0"), tmp_path / "broken.pth")
    message = str(err.value)
    assert "broken.pth" in message and "encoder.stages.1.blocks.1.attn.q.weight" in message
    assert "unexpected" in message and "linear_fuse.extra" in message
    assert isinstance(err.value, UserError)

    hf = export(create_model("segformer_b0").state_dict(), "hf-legacy")
    del hf["segformer.encoder.block.2.1.attention.self.value.weight"]
    torch.save(hf, tmp_path / "half.bin")
    with pytest.raises(CheckpointError, match=r"missing: encoder.stages.2.blocks.1.attn.kv.weight \(its value half\)"):
        load_pretrained(create_model("segformer_b0"), tmp_path / "half.bin")


def test_wrong_variant_is_an_error_with_abbreviated_list(tmp_path):
    torch.save(create_model("segformer_b0").state_dict(), tmp_path / "b0.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*more\)") as err:
        load_pretrained(create_model("segformer_b2"), tmp_path / "b0.pt")
    assert "missing: encoder.stages.0.blocks.2." in str(err.value) and len(str(err.value)) < 3000


def test_missing_unreadable_and_foreign_files_are_user_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        create_model("segformer_b0", pretrained=tmp_path / "nope.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*garbage.pth"):
        read_state_dict(tmp_path / "garbage.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        read_state_dict(tmp_path / "empty")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint format"):
        load_pretrained(create_model("segformer_b0"), tmp_path / "resnet.pth")


def test_format_detection_covers_every_format():
    model = create_model("segformer_b0")
    native = model.state_dict()
    for fmt in ("segkd", "nvlabs", "hf", "hf-legacy"):
        exported = export(native, fmt)
        assert detect_format(exported) == fmt
        assert convert(exported).keys() == native.keys()
    assert detect_format({f"module.{k}": v for k, v in native.items()}) == "segkd"
    assert set(FORMATS) == {"segkd", "nvlabs", "nvlabs-mit", "timm", "hf", "hf-legacy"}
