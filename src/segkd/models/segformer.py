"""SegFormer as the study uses it: timm's pvt_v2 encoder configured as MiT, and the all-MLP decoder.

One forward pass returns every tap a distillation method may read (`SegOutput`): the logits, the four
encoder stage maps and the decoder feature. The taps are references to tensors the pass computes anyway;
a frozen teacher can be asked for fewer (`SegFormer.forward(x, taps)`), and then skips the parts of the
head that no term reads (the whole head for AT and SP, linear_pred for the decoder-feature terms).

Fidelity to NVlabs' MiT (mmseg/models/backbones/mix_transformer.py), checked in tests/test_models.py:
- pvt_v2 differs from MiT only in its MLP ratios (8, 8, 4, 4 for b0-b4); MiT uses 4 everywhere, set here.
- LayerNorm eps: block norms and stage norms 1e-6 (timm's LayerNorm default, MiT's norm_layer); the
  patch-embedding and spatial-reduction norms 1e-5 (plain nn.LayerNorm in both). Identical to MiT.
  Hugging Face's port uses 1e-5 for all of them (its config's layer_norm_eps is unused); imported HF
  weights run with MiT's eps here, a difference of about 1e-6 in the logits.
- Drop path: linear from 0 to `drop_path_rate` over all blocks of all stages (timm splits that one
  schedule by stage), as MiT and HF. qkv bias on, as MiT.

The head is NVlabs' SegFormerHead (mmseg/models/decode_heads/segformer_head.py), written out as its
reference (`AllMLPHead.forward` with `fused=False`) beside the fast path that trains and evaluates by
default (`AllMLPHead.forward_folded`, the same function).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkd.errors import UserError


@dataclass(frozen=True)
class SegFormerSize:
    """One of SegFormer's sizes, MiT-B0 ... B5: encoder widths and depths, and the decoder's width."""

    encoder: str  # timm model name
    stage_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    decoder_dim: int  # E, the width of the all-MLP decoder


_WIDE = (64, 128, 320, 512)
SIZES: dict[str, SegFormerSize] = {
    "segformer_b0": SegFormerSize("pvt_v2_b0", (32, 64, 160, 256), (2, 2, 2, 2), 256),
    "segformer_b1": SegFormerSize("pvt_v2_b1", _WIDE, (2, 2, 2, 2), 256),
    "segformer_b2": SegFormerSize("pvt_v2_b2", _WIDE, (3, 4, 6, 3), 768),
    "segformer_b3": SegFormerSize("pvt_v2_b3", _WIDE, (3, 4, 18, 3), 768),
    "segformer_b4": SegFormerSize("pvt_v2_b4", _WIDE, (3, 8, 27, 3), 768),
    "segformer_b5": SegFormerSize("pvt_v2_b5", _WIDE, (3, 6, 40, 3), 768),
}
MIT_MLP_RATIOS = (4, 4, 4, 4)


class SegOutput(NamedTuple):
    """What one forward pass exposes to training, evaluation and distillation."""

    logits: Tensor | None  # (B, num_classes, H/4, W/4); None only if not asked for (`SegFormer.forward`)
    stages: list[Tensor]  # encoder maps (B, C_i, H/4, H/8, H/16, H/32 ...), after each stage's norm
    decoder: Tensor | None  # (B, E, H/4, W/4): after linear_fuse (conv + BN + ReLU), before dropout


class LinearFuse(nn.Module):
    """mmcv's ConvModule as SegFormer uses it: 1x1 conv without bias, BatchNorm, ReLU (same names)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def mlp(linear: nn.Linear, x: Tensor) -> Tensor:
    """NVlabs' `MLP` (linear_c1 ... linear_c4): a per-pixel linear map of an NCHW map, NCHW out."""
    n, _, h, w = x.shape
    return linear(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)


class AllMLPHead(nn.Module):
    """SegFormer's all-MLP decoder (NVlabs' SegFormerHead), defined by `forward`'s reference branch:
    each stage map -> linear_c<i> -> bilinear upsampling to 1/4 resolution -> concatenation
    [c4, c3, c2, c1] -> linear_fuse (conv, BN, ReLU) -> Dropout2d -> linear_pred.

    `fused` (default True, like timm's `fused_attn`) selects `forward_folded`, the fast path computing
    the same function from the same parameters, used for training and inference alike; False runs the
    reference. tests/test_models.py holds the two to each other (outputs and gradients) and to
    Hugging Face's port.
    """

    def __init__(self, stage_dims: tuple[int, ...], decoder_dim: int, num_classes: int, dropout: float = 0.1,
                 fused: bool = True):
        super().__init__()
        self.decoder_dim = decoder_dim
        self.fused = fused
        self.linear_c1, self.linear_c2, self.linear_c3, self.linear_c4 = (
            nn.Linear(dim, decoder_dim) for dim in stage_dims)
        self.linear_fuse = LinearFuse(len(stage_dims) * decoder_dim, decoder_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(decoder_dim, num_classes, kernel_size=1)
        self._fold_key, self._fold = None, None  # frozen_folded_projections' cache

    def forward(self, stages: list[Tensor], logits: bool = True) -> tuple[Tensor, Tensor | None]:
        """Return (decoder feature after linear_fuse, before dropout; logits) for the four stage maps
        c1 ... c4 (1/4 ... 1/32 resolution); logits None if not wanted."""
        if self.fused:
            return self.forward_folded(stages, logits)
        c1, c2, c3, c4 = stages
        size = c1.shape[-2:]
        _c4 = F.interpolate(mlp(self.linear_c4, c4), size=size, mode="bilinear", align_corners=False)
        _c3 = F.interpolate(mlp(self.linear_c3, c3), size=size, mode="bilinear", align_corners=False)
        _c2 = F.interpolate(mlp(self.linear_c2, c2), size=size, mode="bilinear", align_corners=False)
        _c1 = mlp(self.linear_c1, c1)
        decoder = self.linear_fuse(torch.cat([_c4, _c3, _c2, _c1], dim=1))
        if not logits:
            return decoder, None
        return decoder, self.linear_pred(self.dropout(decoder))

    # ------------------------------------------------------------------ the fast path
    @property
    def projections(self) -> list[nn.Linear]:
        return [self.linear_c1, self.linear_c2, self.linear_c3, self.linear_c4]

    def forward_folded(self, stages: list[Tensor], logits: bool = True) -> tuple[Tensor, Tensor | None]:
        """`forward`'s function (same parameters, same gradients, up to float rounding), computed faster.

        Projection, upsampling and the fuse conv are all linear, so the fuse conv's E-wide column block
        for stage i is folded into that stage's projection (W_fuse,i @ W_c,i, a (E, C_i) matrix,
        `folded_projections`). The pass then never materialises the 4E-channel concatenation nor runs
        the 4E -> E conv at 1/4 resolution, which dominates the cost of the reference for E=768.
        Projections run as matmuls on channels-last views of the stage maps (no copies).

        Bilinear upsampling is separable, y_up = A_h y A_w^T with fixed (H, h) and (W, w) matrices
        (`bilinear_matrix`), so it runs as two batched matmuls, the second accumulating into the running
        sum in place: no upsampled copy per stage, and a backward of two matmuls instead of CPU's
        scatter-style upsample_bilinear2d_backward (benchmarks/models.py --head times both paths). The
        bias goes on the coarsest stage: interpolation preserves constants.
        """
        wants_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        weights, bias = self.folded_projections() if wants_grad else self.frozen_folded_projections()
        batch, (height, width) = stages[0].shape[0], stages[0].shape[-2:]
        fused = None  # (B, H, W, E), the sum of the projected, upsampled stages
        for i, (stage, weight) in enumerate(zip(stages, weights)):
            # (B, C, h, w) viewed as (B, h, w, C) -> (B, h, w, E)
            y = F.linear(stage.permute(0, 2, 3, 1), weight, bias if i == len(stages) - 1 else None)
            h, w, e = y.shape[1:]
            if fused is None:
                fused = y
            else:  # (a stage at full size would get identity matrices)
                rows = bilinear_matrix(h, height, y.device, y.dtype) @ y.reshape(batch, h, w * e)  # (B, H, w * E)
                columns = bilinear_matrix(w, width, y.device, y.dtype).expand(batch * height, width, w)
                fused.view(batch * height, width, e).baddbmm_(columns, rows.view(batch * height, w, e))
        fused = fused.permute(0, 3, 1, 2)  # NCHW view of channels-last memory
        if self.linear_fuse.bn.training:
            fused = self.linear_fuse.bn(fused)
        decoder = F.relu(fused, inplace=True)
        if not logits:
            return decoder, None
        pred = self.linear_pred
        out = F.linear(self.dropout(decoder).permute(0, 2, 3, 1), pred.weight.flatten(1), pred.bias)
        return decoder, out.permute(0, 3, 1, 2)

    def folded_projections(self) -> tuple[list[Tensor], Tensor]:
        """linear_fuse.conv composed with each linear_c: per-stage weights (E, C_i) and one bias (E,).

        With the BatchNorm in eval mode (an affine map by its running statistics) it is folded in
        too, so a frozen teacher or an evaluated model skips a full pass over the 1/4-resolution map.
        """
        fuse = self.linear_fuse.conv.weight.flatten(1)  # (E, 4E), input columns ordered c4, c3, c2, c1
        blocks = fuse.split(self.decoder_dim, dim=1)[::-1]  # -> c1, c2, c3, c4
        weights = [block @ proj.weight for block, proj in zip(blocks, self.projections)]
        bias = sum(block @ proj.bias for block, proj in zip(blocks, self.projections))
        bn = self.linear_fuse.bn
        if not bn.training:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            weights = [weight * scale[:, None] for weight in weights]
            bias = (bias - bn.running_mean) * scale + bn.bias
        return weights, bias

    def frozen_folded_projections(self) -> tuple[list[Tensor], Tensor]:
        """`folded_projections` for a pass that wants no gradient (a frozen teacher, evaluation): in
        float32 whatever autocast the caller runs, and cached while the head is frozen.

        The fold costs E^2 * sum(C_i) multiply-adds per call whatever the image size, a large share
        of a B2 teacher forward at small inputs. Only a frozen head (no parameter requires grad, as a
        teacher after `requires_grad_(False)`) keeps it: a trainable one may be stepped by an
        optimiser that writes the parameters without a trace (fused AdamW, segkd's, bumps no version
        counter), so an evaluated student folds again on each pass, a small share of a pass at
        evaluation sizes. A frozen head's weights change only by being loaded, edited in place (an
        EMA update) or moved, and the cache key sees each: the BatchNorm's mode and
        `tensor_versions` of every parameter and buffer (a training pass that moves the running
        statistics counts in num_batches_tracked, where the statistics' kernel update may not show).
        """
        device = self.linear_fuse.conv.weight.device.type
        tensors = (*self.parameters(), *self.buffers())
        # no cache for a trainable head, nor for weights made under inference mode (they have no versions)
        if any(t.requires_grad or t.is_inference() for t in tensors):
            self.clear_fold_cache()
            with torch.no_grad(), torch.autocast(device, enabled=False):
                return self.folded_projections()
        key = (self.linear_fuse.bn.training, tensor_versions(tensors))
        if self._fold_key != key:
            # a normal tensor even if first made under inference mode: a later pass may need autograd
            with torch.inference_mode(False), torch.no_grad(), torch.autocast(device, enabled=False):
                self._fold = self.folded_projections()
            self._fold_key = key
        return self._fold

    def clear_fold_cache(self) -> None:
        self._fold_key, self._fold = None, None


def tensor_versions(tensors) -> tuple[tuple[int, int], ...]:
    """(storage address, in-place version) of each tensor: changes when one is replaced or written in place.

    The one use of a private torch attribute in segkd, on purpose: `Tensor._version` is the counter
    autograd bumps on in-place writes, whatever the grad mode (its public writer is
    torch.autograd.graph.increment_version; torch keys its own saved-tensor bookkeeping on this same
    pair), and torch has no public reader. The public alternatives are weaker: hooks on
    load_state_dict miss in-place writes under no_grad (an EMA teacher's update, a weight surgery),
    and comparing values reads every weight on each pass and, on a GPU, waits for it. Writes that
    bypass the counter: through `.data`, and fused optimiser kernels (hence a cache for frozen
    heads only). tests/test_models.py::test_version_counter_sees_every_write_the_fold_cache_relies_on
    fails if torch changes any of this.
    """
    return tuple((t.data_ptr(), t._version) for t in tensors)


@lru_cache(maxsize=64)
def bilinear_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation as F.interpolate computes them
    (align_corners=False); bilinear upsampling of a map is A_h x A_w^T with two of these."""
    # a normal tensor even if first asked for under inference mode: autograd may use it later
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
        eye = torch.eye(n_in, device=device, dtype=dtype)[None]  # rows: unit signals
        return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


class SegFormer(nn.Module):
    """MiT encoder (timm pvt_v2, parameters under `encoder.`) + all-MLP head (under `decode_head.`).

    `fused_head` selects the head's fast path (default) or its reference (`AllMLPHead`); the flag is
    also `model.decode_head.fused`, settable at any time, and does not touch the parameters.
    """

    def __init__(self, name: str, num_classes: int, drop_path_rate: float = 0.0, fused_head: bool = True):
        super().__init__()
        size = SIZES[name]
        self.name, self.size, self.num_classes = name, size, num_classes
        self.encoder = timm.create_model(size.encoder, pretrained=False, num_classes=0,
                                         mlp_ratios=MIT_MLP_RATIOS, drop_path_rate=drop_path_rate)
        self.decode_head = AllMLPHead(size.stage_dims, size.decoder_dim, num_classes, fused=fused_head)

    @property
    def feature_dims(self) -> dict:
        return {"stages": list(self.size.stage_dims), "decoder": self.size.decoder_dim,
                "logits": self.num_classes}

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The four encoder stage maps (after each stage's norm), as NCHW views of channels-last memory.

        timm's public `forward_intermediates`, so the encoder's own options hold (gradient
        checkpointing by `encoder.set_grad_checkpointing()`). timm returns each map as a contiguous
        NCHW copy of its (B, H, W, C) tokens; copied back to channels-last, it is the layout the
        head's matmuls read as rows, and the numbers of a channels_last model are those of a stage
        loop that keeps the token layout (benchmarks/models.py --stages compares the two).
        """
        maps = self.encoder.forward_intermediates(x, intermediates_only=True)
        return [m.contiguous(memory_format=torch.channels_last) for m in maps]

    def forward(self, x: Tensor, taps: set[str] | frozenset[str] | None = None) -> SegOutput:
        """All taps, or only `taps` (SegOutput fields): the head runs only if the decoder feature or
        the logits are wanted, and linear_pred only for the logits; the fields not computed are None.
        A frozen teacher is asked for just what its distillation terms read."""
        stages = self.forward_stages(x)
        if taps is not None and "decoder" not in taps and "logits" not in taps:
            return SegOutput(logits=None, stages=stages, decoder=None)
        decoder, logits = self.decode_head(stages, logits=taps is None or "logits" in taps)
        return SegOutput(logits=logits, stages=stages, decoder=decoder)


def create_model(name: str, num_classes: int = 11, drop_path_rate: float = 0.0,
                 pretrained: str | None = None, fused_head: bool = True) -> SegFormer:
    """Build `segformer_b0` ... `segformer_b5`; `pretrained` is a local checkpoint file (see weights.py);
    `fused_head=False` runs the head's reference definition instead of its fast path."""
    if name not in SIZES:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(SIZES)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    model = SegFormer(name, num_classes, drop_path_rate, fused_head)
    if pretrained:
        from segkd.models.weights import load_pretrained

        load_pretrained(model, pretrained)
    return model
