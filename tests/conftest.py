"""Shared fixtures: the CamVid copy (skipped with a reason when absent) and the repository root."""

import importlib.util
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


def benchmark(name: str):
    """A benchmark script of benchmarks/ as a module (they are scripts, not a package)."""
    if name not in _BENCHMARKS:
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", REPO / "benchmarks" / f"{name}.py")
        _BENCHMARKS[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_BENCHMARKS[name])
    return _BENCHMARKS[name]


_BENCHMARKS: dict = {}


def randomise_norms(model) -> None:
    """Give norms non-default affine params and BN statistics, so that mix-ups in them change the logits."""
    benchmark("train_step").randomise_norms(model, seed=1)
