"""Artifact paths, in one place, so Snakemake, DVC, the aggregator and `segkd status` agree on where
things live.

All paths are relative to the study's working directory (the repository root by default).
"""

from pathlib import Path

DATA = Path("data")
RUNS = Path("runs")
RESULTS = Path("results")
LOGS = Path("logs")
# Beside Snakemake's own records: segkd's memos of the workflow's checks (preflight, the loss options),
# which only save time, and the GPU slots' lock files.
WORKFLOW_MEMO = Path(".snakemake", "segkd")
GPU_SLOTS = Path(".snakemake", "gpu-slots")
PROBES = RESULTS / "probe"  # the low-pass probe tables of the runs (`segkd probe`), read by the report

# The files of one run directory. partial.pt holds the periodic checkpoints of a run in progress;
# checkpoint.pt is written once, at the end: workflow managers delete a failed job's declared
# outputs, so the resumable state must not be one. progress.json is rewritten at every log point
# (iteration, speed, process) so that `segkd status` need not open a checkpoint.
CHECKPOINT, PARTIAL, METRICS, PROGRESS = "checkpoint.pt", "partial.pt", "metrics.json", "progress.json"
CONFUSION_PLOT = "confusion.png"
MLFLOW_RUN = "mlflow_run.json"  # the run's MLflow run id, written as soon as the run is created


def prepared_dir(dataset: str) -> Path:
    return DATA / "prepared" / dataset


def folds_file(dataset: str) -> Path:
    return DATA / "folds" / f"{dataset}.json"


def teacher_dir(teacher: str, fold: int) -> Path:
    return RUNS / "teachers" / teacher / f"fold{fold}"


def student_dir(teacher: str | None, method: str, seed: int, fold: int) -> Path:
    """The no-KD baseline has no teacher: runs/students/none/baseline/seed{s}/fold{f}."""
    return RUNS / "students" / (teacher or "none") / method / f"seed{seed}" / f"fold{fold}"


def probe_table(run_dir: str | Path, probes: Path = PROBES) -> Path:
    """A run's low-pass probe table (`segkd probe`): results/probe/<run directory below runs/>.csv."""
    return probes / Path(run_dir).relative_to(RUNS).with_suffix(".csv")


def log_file(run_dir: str | Path) -> Path:
    """A training job's log: logs/<run directory below runs/>.log (logs/teachers/segformer_b2/fold0.log)."""
    return LOGS / Path(run_dir).relative_to(RUNS).with_suffix(".log")


def cohort_log(teacher: str, seed: int | str, fold: int | str) -> Path:
    """The log of a cohort job (train.share_teacher), shared by its students: logs/cohorts/<teacher>/seed<s>/fold<f>.log."""
    return LOGS / "cohorts" / teacher / f"seed{seed}" / f"fold{fold}.log"
