"""Shared fixtures: the CamVid copy (skipped with a reason when absent) and the repository root."""

import os
from pathlib import Path

import pytest

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
