"""Artifact paths, in one place, so Snakemake, DVC and the aggregator agree on where things live.

All paths are relative to the study's working directory (the repository root by default).
"""

from pathlib import Path

DATA = Path("data")
RUNS = Path("runs")
RESULTS = Path("results")


def prepared_dir(dataset: str) -> Path:
    return DATA / "prepared" / dataset


def folds_file(dataset: str) -> Path:
    return DATA / "folds" / f"{dataset}.json"


def teacher_dir(teacher: str, fold: int) -> Path:
    return RUNS / "teachers" / teacher / f"fold{fold}"


def student_dir(teacher: str | None, method: str, seed: int, fold: int) -> Path:
    """The no-KD baseline has no teacher: runs/students/none/baseline/seed{s}/fold{f}."""
    return RUNS / "students" / (teacher or "none") / method / f"seed{seed}" / f"fold{fold}"
