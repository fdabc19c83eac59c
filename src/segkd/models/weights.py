"""Import SegFormer / MiT weights from local files into segkd's model; export segkd weights back.

Files only, never the network. Understood formats, told apart by their stem-conv key:
- `segkd`           segkd's own names (`encoder.` = timm pvt_v2 names, `decode_head.`)
- `nvlabs`          NVlabs SegFormer checkpoints (`state_dict` with `backbone.` / `decode_head.`)
- `nvlabs-mit`      NVlabs MiT ImageNet backbones (`mit_b0.pth`: flat, `patch_embed1.`, `block1.0.`, `head.`)
- `timm`            timm pvt_v2 state dicts (`patch_embed.`, `stages.0.`, `head.`)
- `hf-legacy`       Hugging Face SegFormer, original names (`segformer.encoder.block.0.0.attention.self
                    .query`, `decode_head.linear_c.0`): older transformers, and what newer ones still
                    write by default (save_pretrained's save_original_format=True)
- `hf`              Hugging Face SegFormer, the module names of refactored transformers (5.24 here:
                    `segformer.stages.0.blocks.0.attention.q_proj`, `decode_head.linear_projections.0`),
                    written by `save_pretrained(..., save_original_format=False)`
HF's separate key/value projections become MiT's joined `kv` (rows: key, then value) and back. The
HF base model (no `segformer.` prefix) and ImageNet classifiers (`classifier.` head dropped) load too.

A checkpoint without decoder weights is a backbone: only `encoder.` must be complete. A classifier for
another class count is re-initialised with a warning; any other missing, unexpected or mis-shaped key
is a `CheckpointError` that lists them.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from segkd.errors import UserError


class CheckpointError(UserError):
    """A checkpoint file that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class Rule:
    """One key template in a foreign format and its segkd counterpart; `part` marks half of a kv."""

    foreign: str
    native: str
    part: int | None = None


# {s} 0-based stage, {n} the same stage 1-based, {b} block, {p} a parameter name, {rest} anything.
_FIELDS = {"s": r"(?P<s>\d+)", "n": r"(?P<n>\d+)", "b": r"(?P<b>\d+)", "p": r"(?P<p>[a-z_]+)",
           "rest": r"(?P<rest>.+)"}


@functools.lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    pieces = re.split(r"(\{\w+\})", template)
    return re.compile("".join(_FIELDS[p[1:-1]] if p.startswith("{") else re.escape(p) for p in pieces))


def _translate(key: str, source: str, target: str) -> str | None:
    match = _pattern(source).fullmatch(key)
    if match is None:
        return None
    fields = match.groupdict()
    stage = int(fields["s"]) if "s" in fields else int(fields["n"]) - 1 if "n" in fields else 0
    return target.format(s=stage, n=stage + 1, b=fields.get("b"), p=fields.get("p"), rest=fields.get("rest"))


def _mit_rules(prefix: str) -> list[Rule]:
    """NVlabs MiT backbone names (optionally under `backbone.`) <-> timm pvt_v2 names."""
    return [
        Rule(prefix + "patch_embed1.{rest}", "encoder.patch_embed.{rest}"),
        Rule(prefix + "patch_embed{n}.{rest}", "encoder.stages.{s}.downsample.{rest}"),
        Rule(prefix + "block{n}.{b}.mlp.dwconv.dwconv.{p}", "encoder.stages.{s}.blocks.{b}.mlp.dwconv.{p}"),
        Rule(prefix + "block{n}.{b}.{rest}", "encoder.stages.{s}.blocks.{b}.{rest}"),
        Rule(prefix + "norm{n}.{p}", "encoder.stages.{s}.norm.{p}"),
    ]


def _hf_rules(embed: str, block: str, stage_norm: str, blocks: list[tuple[str, str, int | None]],
              projection: str) -> list[Rule]:
    """Hugging Face names; `embed` and `block` are per-scheme prefixes (with {s} / {b} fields)."""
    native_block = "encoder.stages.{s}.blocks.{b}."
    rules = [
        Rule(embed.format_map({"s": "0"}) + "proj.{p}", "encoder.patch_embed.proj.{p}"),
        Rule(embed.format_map({"s": "0"}) + "layer_norm.{p}", "encoder.patch_embed.norm.{p}"),
        Rule(embed.format_map({"s": "{s}"}) + "proj.{p}", "encoder.stages.{s}.downsample.proj.{p}"),
        Rule(embed.format_map({"s": "{s}"}) + "layer_norm.{p}", "encoder.stages.{s}.downsample.norm.{p}"),
    ]
    rules += [Rule(block + foreign + ".{p}", native_block + native + ".{p}", part) for foreign, native, part in blocks]
    rules += [
        Rule(stage_norm, "encoder.stages.{s}.norm.{p}"),
        Rule(projection, "decode_head.linear_c{n}.{p}"),
        Rule("decode_head.linear_fuse.{p}", "decode_head.linear_fuse.conv.{p}"),
        Rule("decode_head.batch_norm.{p}", "decode_head.linear_fuse.bn.{p}"),
        Rule("decode_head.classifier.{p}", "decode_head.linear_pred.{p}"),
    ]
    return rules


_HF_LEGACY_BLOCK = [
    ("layer_norm_1", "norm1", None),
    ("attention.self.query", "attn.q", None),
    ("attention.self.key", "attn.kv", 0),
    ("attention.self.value", "attn.kv", 1),
    ("attention.self.sr", "attn.sr", None),
    ("attention.self.layer_norm", "attn.norm", None),
    ("attention.output.dense", "attn.proj", None),
    ("layer_norm_2", "norm2", None),
    ("mlp.dense1", "mlp.fc1", None),
    ("mlp.dwconv.dwconv", "mlp.dwconv", None),
    ("mlp.dense2", "mlp.fc2", None),
]
_HF_BLOCK = [
    ("layernorm_before", "norm1", None),
    ("attention.q_proj", "attn.q", None),
    ("attention.k_proj", "attn.kv", 0),
    ("attention.v_proj", "attn.kv", 1),
    ("attention.sequence_reduction.sequence_reduction", "attn.sr", None),
    ("attention.sequence_reduction.layer_norm", "attn.norm", None),
    ("attention.o_proj", "attn.proj", None),
    ("layernorm_after", "norm2", None),
    ("mlp.fc1", "mlp.fc1", None),
    ("mlp.dwconv.dwconv", "mlp.dwconv", None),
    ("mlp.fc2", "mlp.fc2", None),
]


@dataclass(frozen=True)
class Format:
    name: str
    stem: str  # the first patch-embedding conv weight: its presence identifies the format
    rules: list[Rule]
    dropped: tuple[str, ...] = ()  # key prefixes that are not part of a segmentation model


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("segkd", "encoder.patch_embed.proj.weight",
           [Rule("encoder.{rest}", "encoder.{rest}"), Rule("decode_head.{rest}", "decode_head.{rest}")]),
    Format("nvlabs", "backbone.patch_embed1.proj.weight", _mit_rules("backbone.") + [
        Rule("decode_head.linear_c{n}.proj.{p}", "decode_head.linear_c{n}.{p}"),
        Rule("decode_head.linear_fuse.conv.{p}", "decode_head.linear_fuse.conv.{p}"),
        Rule("decode_head.linear_fuse.bn.{p}", "decode_head.linear_fuse.bn.{p}"),
        Rule("decode_head.linear_pred.{p}", "decode_head.linear_pred.{p}"),
    ], dropped=("decode_head.conv_seg.",)),
    Format("nvlabs-mit", "patch_embed1.proj.weight", _mit_rules(""), dropped=("head.",)),
    Format("timm", "patch_embed.proj.weight", [Rule("{rest}", "encoder.{rest}")], dropped=("head.",)),
    Format("hf-legacy", "segformer.encoder.patch_embeddings.0.proj.weight", _hf_rules(
        "segformer.encoder.patch_embeddings.{s}.", "segformer.encoder.block.{s}.{b}.",
        "segformer.encoder.layer_norm.{s}.{p}", _HF_LEGACY_BLOCK, "decode_head.linear_c.{s}.proj.{p}"),
        dropped=("classifier.",)),
    Format("hf", "segformer.stages.0.patch_embeddings.proj.weight", _hf_rules(
        "segformer.stages.{s}.patch_embeddings.", "segformer.stages.{s}.blocks.{b}.",
        "segformer.stages.{s}.layer_norm.{p}", _HF_BLOCK, "decode_head.linear_projections.{s}.proj.{p}"),
        dropped=("classifier.",)),
]}
CLASSIFIER = ("decode_head.linear_pred.weight", "decode_head.linear_pred.bias")


def _abbreviate(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------- reading

def _load_file(path: Path) -> Mapping:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, truncation, permissions: all mean "not a readable checkpoint"
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def _files_in(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face model directory (save_pretrained), sharded or not."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [directory / shard for shard in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(f"no model.safetensors or pytorch_model.bin in checkpoint directory {directory}")


def read_state_dict(path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file or HF model directory, unwrapped from `state_dict` / `model`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    files = _files_in(path) if path.is_dir() else [path]
    state: dict = {}
    for file in files:
        loaded = _load_file(file)
        for wrapper in ("state_dict", "model"):
            if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
                loaded = loaded[wrapper]
        if not isinstance(loaded, Mapping):
            raise CheckpointError(f"checkpoint {file} holds a {type(loaded).__name__}, not a state dict")
        state.update(loaded)
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no tensors")
    return tensors


# ------------------------------------------------------------------------------------------- conversion

def _normalise(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip DataParallel's `module.`; give an HF base model (SegformerModel) its `segformer.` prefix."""
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if "encoder.patch_embeddings.0.proj.weight" in state or "stages.0.patch_embeddings.proj.weight" in state:
        state = {f"segformer.{k}": v for k, v in state.items()}
    return state


def detect_format(state: Mapping[str, Tensor]) -> str:
    """Name of the checkpoint format (a key of FORMATS), by key inspection."""
    state = _normalise(state)
    for fmt in FORMATS.values():
        if fmt.stem in state:
            return fmt.name
    raise CheckpointError(f"unrecognised checkpoint format (no SegFormer/MiT stem key among: "
                          f"{_abbreviate(state, 5)})")


def _rename(state: Mapping[str, Tensor], fmt: Format) -> tuple[dict[str, Tensor], list[str], dict[str, str]]:
    """segkd-named tensors (HF key/value joined into kv), the keys no rule of `fmt` knows, and the
    kv tensors of which one half is absent (-> "its key half" / "its value half")."""
    out: dict[str, Tensor] = {}
    halves: dict[str, dict[int, Tensor]] = {}
    unknown, halved = [], {}
    for key, value in state.items():
        if fmt.dropped and key.startswith(fmt.dropped):
            continue
        for rule in fmt.rules:
            native = _translate(key, rule.foreign, rule.native)
            if native is not None:
                break
        else:
            unknown.append(key)
            continue
        if rule.part is None:
            out[native] = value
        else:
            halves.setdefault(native, {})[rule.part] = value
    for key, parts in halves.items():
        if set(parts) == {0, 1}:
            out[key] = torch.cat([parts[0], parts[1]], dim=0)
        else:
            halved[key] = f"its {'key' if 1 in parts else 'value'} half"
    return out, unknown, halved


def convert(state: Mapping[str, Tensor], fmt: str | None = None) -> dict[str, Tensor]:
    """Rename a checkpoint's tensors to segkd names (joining HF key/value into kv).

    Keys of dropped heads (ImageNet classifier, mmseg's unused conv_seg) are left out; keys no rule
    knows raise CheckpointError.
    """
    state = _normalise(state)
    fmt = FORMATS[fmt or detect_format(state)]
    out, unknown, halved = _rename(state, fmt)
    if unknown or halved:
        problems = unknown + [f"{key} ({absent})" for key, absent in halved.items()]
        raise CheckpointError(f"{fmt.name} checkpoint has keys segkd does not know or lacks halves of kv: "
                              f"{_abbreviate(problems)}")
    return out


def export(state: Mapping[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """Rename segkd tensors to another format's names (splitting kv into HF key/value)."""
    rules = FORMATS[fmt].rules
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        rule = next((r for r in rules if _pattern(r.native).fullmatch(key)), None)
        if rule is None:
            raise KeyError(f"no {fmt} name for {key}")
        if rule.part is None:
            out[_translate(key, rule.native, rule.foreign)] = value
            continue
        for twin in (r for r in rules if r.native == rule.native):
            out[_translate(key, twin.native, twin.foreign)] = value.chunk(2, dim=0)[twin.part]
    return out


def to_nvlabs(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """segkd state dict -> NVlabs SegFormer names (`backbone.`, `decode_head.linear_c1.proj`, ...)."""
    return export(state, "nvlabs")


# -------------------------------------------------------------------------------------------- loading

@dataclass(frozen=True)
class LoadReport:
    format: str
    backbone_only: bool  # only the encoder came from the checkpoint
    reinitialised: tuple[str, ...]  # classifier keys kept at their fresh initialisation


def load_state(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> LoadReport:
    """Load a checkpoint's tensors (any FORMATS entry) into `model`; `source` names it in messages."""
    try:
        fmt = detect_format(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    weights, unknown, halved = _rename(_normalise(state), FORMATS[fmt])
    expected = model.state_dict()
    backbone_only = not any(k.startswith("decode_head.") for k in weights)

    reinit, classes = [], weights.get(CLASSIFIER[0], expected[CLASSIFIER[0]]).shape[0]
    for key in CLASSIFIER:
        if key in weights and weights[key].shape[0] != expected[key].shape[0] \
                and weights[key].shape[1:] == expected[key].shape[1:]:
            reinit.append(key)
            del weights[key]
    if reinit:
        warnings.warn(f"{source}: classifier has {classes} classes, the model "
                      f"{expected[CLASSIFIER[0]].shape[0]}; re-initialising {', '.join(reinit)}", stacklevel=2)

    required = {k for k in expected if not backbone_only or k.startswith("encoder.")}
    optional = {k for k in expected if k.endswith("num_batches_tracked")} | set(reinit)
    missing = (required - weights.keys() - optional - halved.keys()) | {f"{k} ({h})" for k, h in halved.items()}
    unexpected = (weights.keys() - expected.keys()) | set(unknown)
    mismatched = [f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in weights.keys() & expected.keys() if weights[k].shape != expected[k].shape]
    problems = [f"{label}: {_abbreviate(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if keys]
    if problems:
        raise CheckpointError(f"{source} ({fmt}) does not fit {getattr(model, 'name', type(model).__name__)}: "
                              + "; ".join(problems))
    model.load_state_dict(weights, strict=False)
    return LoadReport(fmt, backbone_only, tuple(reinit))


def load_pretrained(model: nn.Module, path) -> LoadReport:
    """Load a local checkpoint file or HF model directory into `model` (see the module doc)."""
    return load_state(model, read_state_dict(path), source=str(path))
