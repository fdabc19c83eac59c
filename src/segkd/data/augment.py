"""Training-time augmentation of whole batches, on the device that trains (no decoding, no PIL).

The training loop indexes the prepared uint8 arrays, moves the batch to its device and calls
`Augment(...)(images, labels, generator)`. Every random number comes from the `generator` it is
given, so a run is reproducible from its seed: the same generator state gives the same batch, bit
for bit on one device. The generator must live on the same device as the tensors (a CPU generator
for CPU tensors, ``torch.Generator(device="cuda")`` for CUDA tensors); a mismatch is a ValueError.

Order: one random scale for the whole batch (bilinear for images, nearest for labels, so label ids
and the void label 255 survive), per-image photometric jitter (brightness, contrast, saturation),
ImageNet normalisation, per-image horizontal flip, then a per-image random crop to `crop`; where the
scaled batch is smaller than the crop it is padded with 0 (the mean colour after normalisation) and
IGNORE_INDEX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segkd.classes import IGNORE_INDEX

# ImageNet statistics, in uint8 units (the pretrained encoders expect them)
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _channels_first(images: torch.Tensor) -> torch.Tensor:
    """B,H,W,3 (the prepared layout) or B,3,H,W -> B,3,H,W; channels-last wins when both could be read."""
    if images.ndim != 4 or 3 not in (images.shape[1], images.shape[-1]):
        raise ValueError(f"expected images of shape (B, H, W, 3) or (B, 3, H, W), got {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2) if images.shape[-1] == 3 else images


def _normalize_float(images: torch.Tensor) -> torch.Tensor:
    """Float B,3,H,W in uint8 units -> ImageNet-normalised."""
    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B,H,W,3 or B,3,H,W) -> float32 B,3,H,W with ImageNet mean/std (what models eat)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
    return _normalize_float(_channels_first(images).float()).contiguous()


def _grey(images: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) of float B,3,H,W images: B,1,H,W."""
    r, g, b = images.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


class Augment:
    """Random scale, photometric jitter, flip and crop of a batch; see the module docstring."""

    def __init__(self, scale=(0.75, 1.5), flip: bool = True, photometric: bool = True, crop=None,
                 brightness: float = 0.25, contrast: float = 0.25, saturation: float = 0.25):
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
        if crop is not None and (len(crop) != 2 or min(crop) < 1):
            raise ValueError(f"crop must be None or (height, width), got {crop!r}")
        self.scale, self.flip, self.photometric = (lo, hi), bool(flip), bool(photometric)
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        self.jitter = (brightness, contrast, saturation)

    def __repr__(self) -> str:
        return (f"Augment(scale={self.scale}, flip={self.flip}, photometric={self.photometric}, "
                f"crop={self.crop})")

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                 shape_generator: torch.Generator | None = None):
        """uint8 images (B,H,W,3) and labels (B,H,W) -> float32 normalised (B,3,h,w), int64 (B,h,w).

        The batch's scale and crop windows decide tensor shapes, which the host must know: drawn on a
        GPU generator, each read would wait for the device. A run on a GPU passes a CPU
        `shape_generator` for them; without one they come from `generator` (on the CPU, one stream)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:3]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}")
        device = images.device
        if generator.device.type != device.type or labels.device != device:
            raise ValueError(f"generator ({generator.device}), images ({device}) and labels ({labels.device}) "
                             "must be on the same device")
        if shape_generator is not None and shape_generator.device.type != "cpu":
            raise ValueError(f"shape_generator must be a CPU generator, got one on {shape_generator.device}")
        rand = lambda *shape: torch.rand(shape, generator=generator, device=device)
        host_rand = rand if shape_generator is None else lambda *shape: torch.rand(shape, generator=shape_generator)
        B, H, W = labels.shape
        x = images.permute(0, 3, 1, 2).float()
        y = labels.unsqueeze(1).float()

        # one scale for the batch
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * host_rand(1).item()
        h, w = max(1, round(H * s)), max(1, round(W * s))
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=s < 1)
            y = F.interpolate(y, size=(h, w), mode="nearest-exact")
        y = y.squeeze(1).round().long()

        if self.photometric:
            lo_hi = lambda amount, u: 1 + amount * (2 * u - 1)
            u = rand(B, 3)
            bright, contr, sat = (lo_hi(a, u[:, i]).view(B, 1, 1, 1) for i, a in enumerate(self.jitter))
            x = x * bright
            mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * contr + mean
            grey = _grey(x)
            x = ((x - grey) * sat + grey).clamp(0, 255)
        x = _normalize_float(x)

        if self.flip:
            flip = rand(B) < 0.5
            x = torch.where(flip.view(B, 1, 1, 1), x.flip(-1), x)
            y = torch.where(flip.view(B, 1, 1), y.flip(-1), y)

        ch, cw = self.crop or (H, W)
        if (h, w) != (ch, cw):
            x, y = self._crop(x, y, ch, cw, host_rand(B, 2))
        return x.contiguous(), y.contiguous()

    @staticmethod
    def _crop(x, y, ch, cw, u):
        """Per-image random window of ch x cw; pad (image 0, label IGNORE_INDEX) where the batch is smaller."""
        B, _, h, w = x.shape
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:  # pad at the bottom and right (as mmseg does); the image stays at the top left
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
            h, w = h + ph, w + pw
        top = (u[:, 0] * (h - ch + 1)).long().clamp(max=h - ch).tolist()
        left = (u[:, 1] * (w - cw + 1)).long().clamp(max=w - cw).tolist()
        xs = [x[i, :, t:t + ch, l:l + cw] for i, (t, l) in enumerate(zip(top, left))]
        ys = [y[i, t:t + ch, l:l + cw] for i, (t, l) in enumerate(zip(top, left))]
        return torch.stack(xs), torch.stack(ys)
