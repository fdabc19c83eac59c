"""Batch augmentation on tensors: normalisation, determinism, label alignment, padding, devices."""

import pytest
import torch

from segkd.classes import IGNORE_INDEX
from segkd.data.augment import MEAN, STD, Augment, normalize


def batch(b=4, h=24, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, h, w, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 11, (b, h, w), generator=g, dtype=torch.uint8)
    labels[:, :3] = IGNORE_INDEX
    return images, labels


def coded_batch(b=4, h=48, w=64, block=8):
    """Images whose colour encodes the label (blocks of 8x8 pixels), to check that both move together."""
    g = torch.Generator().manual_seed(1)
    coarse = torch.randint(0, 11, (b, h // block, w // block), generator=g, dtype=torch.uint8)
    coarse[:, 0] = IGNORE_INDEX
    labels = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)
    images = torch.where(labels == IGNORE_INDEX, 250, labels * 20).to(torch.uint8)[..., None].expand(b, h, w, 3)
    return images.contiguous(), labels


def unnormalize(x):
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_normalize_both_layouts():
    images, _ = batch()
    x = normalize(images)
    assert x.shape == (4, 3, 24, 32) and x.dtype == torch.float32
    assert torch.equal(x, normalize(images.permute(0, 3, 1, 2)))
    expected = (images[0, 5, 7, 1].float() - MEAN[1]) / STD[1]
    assert x[0, 1, 5, 7].item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(TypeError):
        normalize(images.float())


def test_identity_configuration_is_normalize():
    images, labels = batch()
    x, y = Augment(scale=(1, 1), flip=False, photometric=False)(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(x, normalize(images)) and y.dtype == torch.int64 and torch.equal(y, labels.long())


def test_same_generator_state_same_batch_other_seed_other_batch():
    images, labels = batch()
    aug = Augment(crop=(20, 28))
    a = aug(images, labels, torch.Generator().manual_seed(7))
    b = aug(images, labels, torch.Generator().manual_seed(7))
    c = aug(images, labels, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    g = torch.Generator().manual_seed(7)
    first, second = aug(images, labels, g), aug(images, labels, g)  # the generator advances
    assert not torch.equal(first[0], second[0])


@pytest.mark.parametrize("seed", range(4))
def test_images_and_labels_stay_aligned(seed):
    images, labels = coded_batch()
    x, y = Augment(scale=(0.75, 1.5), photometric=False)(images, labels, torch.Generator().manual_seed(seed))
    assert x.shape == (4, 3, 48, 64) and y.shape == (4, 48, 64)
    assert set(y.unique().tolist()) <= set(range(11)) | {IGNORE_INDEX}
    grey = unnormalize(x)[:, 0]
    decoded = torch.where(grey > 225, IGNORE_INDEX, (grey / 20).round().long())
    valid = (x.abs().sum(1) > 0)  # exclude padding
    agree = (decoded == y)[valid].float().mean().item()
    misaligned = (decoded == y.flip(-1))[valid].float().mean().item()
    assert agree > 0.8 and misaligned < 0.4, (agree, misaligned)  # interpolation only blurs block edges


def test_flip_is_per_image():
    images, labels = coded_batch(b=16)
    x, y = Augment(scale=(1, 1), photometric=False)(images, labels, torch.Generator().manual_seed(0))
    flipped = [torch.equal(y[i], labels[i].long().flip(-1)) for i in range(16)]
    kept = [torch.equal(y[i], labels[i].long()) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_small_scale_pads_with_zero_and_ignore():
    images, labels = batch()
    x, y = Augment(scale=(0.5, 0.5), flip=False, photometric=False)(images, labels, torch.Generator())
    assert x.shape == (4, 3, 24, 32)
    assert (y[:, 12:] == IGNORE_INDEX).all() and (y[:, :, 16:] == IGNORE_INDEX).all()
    assert (x[:, :, 12:] == 0).all() and (x[:, :, :, 16:] == 0).all()
    assert (y[:, :12, :16] != IGNORE_INDEX).any()


def test_crop_size_and_photometric_range():
    images, labels = batch(h=40, w=48)
    x, y = Augment(crop=(16, 20))(images, labels, torch.Generator().manual_seed(3))
    assert x.shape == (4, 3, 16, 20) and y.shape == (4, 16, 20)
    raw = unnormalize(x)
    assert raw.min() > -1e-3 and raw.max() < 255 + 1e-3
    assert not torch.allclose(raw.mean(dim=(1, 2, 3)), raw.mean(dim=(1, 2, 3))[0])  # per-image jitter


def test_bad_arguments():
    images, labels = batch()
    with pytest.raises(ValueError, match="scale"):
        Augment(scale=(1.5, 0.5))
    with pytest.raises(ValueError, match="do not match"):
        Augment()(images, labels[:, :10], torch.Generator())
    with pytest.raises(ValueError, match="uint8"):
        Augment()(images.float(), labels, torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_determinism_and_device_check():
    images, labels = (t.cuda() for t in batch())
    aug = Augment(crop=(20, 28))
    a = aug(images, labels, torch.Generator(device="cuda").manual_seed(5))
    b = aug(images, labels, torch.Generator(device="cuda").manual_seed(5))
    assert a[0].is_cuda and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="same device"):
        aug(images, labels, torch.Generator().manual_seed(5))

