# Config validation, the study's run grid and the source files each rule runs.
import json
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from segkd import layout
from segkd.config import Study, spec_json
from segkd.config import validate as validate_study
from segkd.sweep import NAME_PATTERN

# Jobs run segkd with the interpreter running Snakemake, not the first `segkd` on PATH: so
# `.venv/bin/snakemake` works in a shell without the environment activated, and no other install
# of segkd can stand in for this checkout's.
SEGKD = f"{shlex.quote(sys.executable)} -m segkd"

# segkd's own check first: its errors name the key (train.lr: ...); then Snakemake's, on the same schema.
STUDY = Study(validate_study(config))
validate(config, "../schemas/params.schema.yaml")
DATASET = STUDY.dataset["name"]
PREPARED = str(layout.prepared_dir(DATASET))
FOLDS_FILE = str(layout.folds_file(DATASET))


wildcard_constraints:
    teacher=r"segformer_b[0-5]",
    fold=r"\d+",
    seed=r"\d+",
    method=NAME_PATTERN,  # method and grid variant names (freq-high=kd-ratio=0.1)


def sources(*modules):
    """The segkd source files a rule runs: a code change re-runs exactly the jobs that use it."""
    return [f"src/segkd/{m}.py" for m in ("__init__", "__main__", "cli", "config", "errors", "layout", "classes") + modules]


DATA_CODE = sources("data/prepare", "data/camvid", "data/synthetic")
SPLIT_CODE = sources("data/folds", "data/prepare")
TRAIN_CODE = sources(
    "data/prepare", "data/folds", "data/augment",
    "models/__init__", "models/segformer", "models/weights",
    "engine/train", "engine/allocator", "engine/batches", "engine/checkpoint", "engine/evaluate", "engine/metrics", "engine/optim",
    "tracking", "report/plots",
)
DISTILL_CODE = [str(p) for p in sorted(Path("src/segkd/distill").glob("*.py"))]
REPORT_CODE = sources("report/aggregate", "report/stats", "report/plots", "report/markdown", "tracking")


def teacher_dir(teacher, fold):
    return str(layout.teacher_dir(teacher, int(fold)))


def student_dir(teacher, method, seed, fold):
    return str(layout.student_dir(None if teacher == "none" else teacher, method, int(seed), int(fold)))


def all_run_dirs():
    """Every run of the study; STUDY.methods lists each variant of a grid as a method of its own."""
    runs = [teacher_dir(t, f) for t in STUDY.teachers for f in STUDY.folds]
    runs += [student_dir("none", "baseline", s, f) for s in STUDY.seeds for f in STUDY.folds]
    runs += [
        student_dir(t, m, s, f)
        for t in STUDY.teachers for m in STUDY.methods for s in STUDY.seeds for f in STUDY.folds
    ]
    return runs


def tracking_uri():
    return STUDY.params["tracking"]["uri"] or ""
