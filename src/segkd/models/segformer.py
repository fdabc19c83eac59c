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
class Variant:
    encoder: str  # timm model name
    stage_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    decoder_dim: int  # E, the width of the all-MLP decoder


_WIDE = (64, 128, 320, 512)
VARIANTS: dict[str, Variant] = {
    "segformer_b0": Variant("pvt_v2_b0", (32, 64, 160, 256), (2, 2, 2, 2), 256),
    "segformer_b1": Variant("pvt_v2_b1", _WIDE, (2, 2, 2, 2), 256),
    "segformer_b2": Variant("pvt_v2_b2", _WIDE, (3, 4, 6, 3), 768),
    "segformer_b3": Variant("pvt_v2_b3", _WIDE, (3, 4, 18, 3), 768),
    "segformer_b4": Variant("pvt_v2_b4", _WIDE, (3, 8, 27, 3), 768),
    "segformer_b5": Variant("pvt_v2_b5", _WIDE, (3, 6, 40, 3), 768),
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


class AllMLPHead(nn.Module):
    """SegFormer's decoder: per-stage linear projection to E, bilinear upsampling to 1/4 resolution,
    concatenation [c4, c3, c2, c1], linear_fuse, Dropout2d, linear_pred.

    Projection, upsampling and the fuse conv are all linear, so the fuse conv's E-wide column block for
    stage i is folded into that stage's projection (W_fuse,i @ W_c,i, a (E, C_i) matrix computed from
    the parameters every pass). The pass then never materialises the 4E-channel concatenation nor runs
    the 4E -> E conv at 1/4 resolution, which dominates the cost of the reference head for E=768. The
    function, parameters and gradients are those of the reference head (up to float rounding); the
    Hugging Face parity test checks the logits, and a reference head in the tests checks the decoder
    feature. Projections run as matmuls on channels-last views of the stage maps (no copies).

    Bilinear upsampling is separable, y_up = A_h y A_w^T with fixed (H, h) and (W, w) matrices
    (`bilinear_matrix`), so it runs as two batched matmuls, the second accumulating into the running
    sum in place: no upsampled copy per stage, and a backward of two matmuls instead of CPU's
    scatter-style upsample_bilinear2d_backward (fwd + bwd of the B0 head at 96x128, batch 8: 92 ms
    against 147 ms). The bias goes on the coarsest stage: interpolation preserves constants.
    """

    def __init__(self, stage_dims: tuple[int, ...], decoder_dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.decoder_dim = decoder_dim
        self.linear_c1, self.linear_c2, self.linear_c3, self.linear_c4 = (
            nn.Linear(dim, decoder_dim) for dim in stage_dims)
        self.linear_fuse = LinearFuse(len(stage_dims) * decoder_dim, decoder_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(decoder_dim, num_classes, kernel_size=1)

    @property
    def projections(self) -> list[nn.Linear]:
        return [self.linear_c1, self.linear_c2, self.linear_c3, self.linear_c4]

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
        """`folded_projections`, cached while no gradient is wanted (a frozen teacher, evaluation).

        The fold costs E^2 * sum(C_i) multiply-adds per call whatever the image size: for B2
        (E = 768) 0.6 G, a quarter of a teacher forward at 48x64. The cache key holds the BatchNorm's
        mode and each parameter's and buffer's storage and version counter, so an optimiser step, a
        training pass (running statistics: the kernel updates them without a version bump, but
        num_batches_tracked counts the pass) or a loaded state dict invalidates it.
        """
        tensors = (*self.parameters(), *self.buffers())  # num_batches_tracked moves with the statistics
        key = (self.linear_fuse.bn.training, *((t.data_ptr(), t._version) for t in tensors))
        if getattr(self, "_fold_key", None) != key:
            device = self.linear_fuse.conv.weight.device.type
            with torch.inference_mode(False), torch.no_grad(), torch.autocast(device, enabled=False):
                self._fold = self.folded_projections()  # float32 whatever autocast the caller runs
            self._fold_key = key
        return self._fold

    def forward(self, stages: list[Tensor], logits: bool = True) -> tuple[Tensor, Tensor | None]:
        """Return (decoder feature, logits) for the four stage maps; logits None if not wanted."""
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


@lru_cache(maxsize=64)
def bilinear_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation as F.interpolate computes them
    (align_corners=False); bilinear upsampling of a map is A_h x A_w^T with two of these."""
    # a normal tensor even if first asked for under inference mode: autograd may use it later
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
        eye = torch.eye(n_in, device=device, dtype=dtype)[None]  # rows: unit signals
        return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


class SegFormer(nn.Module):
    """MiT encoder (timm pvt_v2, parameters under `encoder.`) + all-MLP head (under `decode_head.`)."""

    def __init__(self, name: str, num_classes: int, drop_path_rate: float = 0.0):
        super().__init__()
        variant = VARIANTS[name]
        self.name, self.variant, self.num_classes = name, variant, num_classes
        self.encoder = timm.create_model(variant.encoder, pretrained=False, num_classes=0,
                                         mlp_ratios=MIT_MLP_RATIOS, drop_path_rate=drop_path_rate)
        self.decode_head = AllMLPHead(variant.stage_dims, variant.decoder_dim, num_classes)

    @property
    def feature_dims(self) -> dict:
        return {"stages": list(self.variant.stage_dims), "decoder": self.variant.decoder_dim,
                "logits": self.num_classes}

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The four encoder stage maps, as NCHW views of channels-last memory.

        timm's stage forward ends with a contiguous NCHW copy; this loop runs the same modules but
        keeps the (B, H, W, C) token layout, which the next patch embedding and the head read as is.
        """
        x = self.encoder.patch_embed(x)  # (B, H, W, C)
        stages = []
        for stage in self.encoder.stages:
            if stage.downsample is not None:
                x = stage.downsample(x)  # NCHW in, (B, H, W, C) out
            batch, height, width, channels = x.shape
            tokens = x.reshape(batch, height * width, channels)
            for block in stage.blocks:
                tokens = block(tokens, (height, width))
            tokens = stage.norm(tokens)
            x = tokens.view(batch, height, width, channels).permute(0, 3, 1, 2)
            stages.append(x)
        return stages

    def forward(self, x: Tensor, taps: set[str] | frozenset[str] | None = None) -> SegOutput:
        """All taps, or only `taps` (SegOutput fields): the head runs only if the decoder feature or
        the logits are wanted, and linear_pred only for the logits; the fields not computed are None.
        A frozen teacher is asked for just what its distillation terms read."""
        stages = self.forward_stages(x)
        if taps is not None and not {"decoder", "logits"} & set(taps):
            return SegOutput(logits=None, stages=stages, decoder=None)
        decoder, logits = self.decode_head(stages, logits=taps is None or "logits" in taps)
        return SegOutput(logits=logits, stages=stages, decoder=decoder)


def create_model(name: str, num_classes: int = 11, drop_path_rate: float = 0.0,
                 pretrained: str | None = None) -> SegFormer:
    """Build `segformer_b0` ... `segformer_b5`; `pretrained` is a local checkpoint file (see weights.py)."""
    if name not in VARIANTS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(VARIANTS)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    model = SegFormer(name, num_classes, drop_path_rate)
    if pretrained:
        from segkd.models.weights import load_pretrained

        load_pretrained(model, pretrained)
    return model
