"""Shared fixtures: the CamVid copy (skipped with a reason when absent) and the repository root."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def camvid_path() -> Path:
    return Path(os.environ.get("SEGKD_CAMVID_ROOT", REPO.parent / "shared" / "camvid"))


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    root = camvid_path()
    if not (root / "trainannot").is_dir():
        pytest.skip(f"CamVid not found at {root} (set SEGKD_CAMVID_ROOT to a SegNet-layout copy)")
    return root


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def randomise_norms(model) -> None:
    """Give norms non-default affine params and BN statistics, so that mix-ups in them change the logits."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
