"""Shared fixtures: the CamVid copy (skipped with a reason when absent), the repository root, and one
finished study for the workflow tests that start from one."""

import importlib.util
import os
import shutil
from pathlib import Path

import filelock
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


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory, worker_id) -> Path:
    """The smoke method-grid study run to the end in a user's clone (workflow_helpers.build_finished_study),
    built once per test session: pytest-xdist's workers share it through a file lock (its documented
    pattern for session fixtures). Read it, or change a copy of it (workflow_helpers.copy_study)."""
    from workflow_helpers import build_finished_study

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # shared by the workers of this session
    study = root / "finished-study"
    with filelock.FileLock(str(root / "finished-study.lock")):
        if not (root / "finished-study.done").exists():
            shutil.rmtree(study, ignore_errors=True)
            study.mkdir()
            build_finished_study(study)
            (root / "finished-study.done").touch()
    return study


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
