"""A run directory's small files, written so that a run killed at any moment leaves nothing wrong behind.

A training job owns its run directory (runs/teachers/<model>/fold<f>, runs/students/...): Snakemake or
SLURM start at most one job per directory. A kill (`kill -9`, preemption, a lost node) can come at any
instant, so each file is replaced atomically, what a killed process could not clean up is removed by
the next start, and a run that fails before it wrote anything leaves no empty directory.

Files (names in segkd.layout): checkpoint.pt / partial.pt (engine.checkpoint), metrics.json (the
result, written last), progress.json (where the run stands, for `segkd status`), mlflow_run.json (the
run's MLflow run, written as soon as it exists, so that a retry continues it), confusion.png.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from segkd import layout
from segkd.config import spec_hash
from segkd.engine import checkpoint as ckpt_io
from segkd.jsonfiles import write_json


def read_state(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is absent or unreadable (a file from a killed writer
    cannot be half-written, since every file here is replaced atomically, but a user may edit one)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def run_directory(out: Path):
    """Create `out` (and its parents) for a run; if the block fails and the run wrote nothing, remove
    the directories it created, so that a failed start leaves no empty run directory behind. On
    entry, remove what an interrupted write left (temporary files, a stale confusion plot)."""
    created = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    ckpt_io.remove_stale_temps(out)
    if not (out / layout.METRICS).exists():  # a re-run: the plot of the run it replaces must go
        (out / layout.CONFUSION_PLOT).unlink(missing_ok=True)
    try:
        yield out
    except BaseException:
        for path in created:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty
        raise


def write_progress(out: Path, spec: dict, iteration: int, elapsed_s: float) -> None:
    """progress.json: how far the run is, how fast it goes and which process runs it."""
    batch = spec["train"]["batch_size"]
    write_json(out / layout.PROGRESS, {
        "iteration": iteration, "iterations": spec["iterations"], "batch_size": batch,
        "images_per_s": iteration * batch / elapsed_s if elapsed_s > 0 else None,
        "updated": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
        "spec_sha256": spec_hash(spec),
    })


def recorded_mlflow_run(out: Path, spec: dict) -> str | None:
    """The MLflow run id an earlier attempt of this run (same spec) recorded, else None."""
    record = read_state(out / layout.MLFLOW_RUN)
    if record is None or record.get("spec_sha256") != spec_hash(spec):
        return None
    return record.get("run_id")


def record_mlflow_run(out: Path, spec: dict, run_id: str) -> None:
    write_json(out / layout.MLFLOW_RUN, {"run_id": run_id, "spec_sha256": spec_hash(spec)})


def write_result(out: Path, result: dict) -> Path:
    """metrics.json, atomically: the file whose presence means the run is done."""
    path = out / layout.METRICS
    write_json(path, result)
    (out / layout.PROGRESS).unlink(missing_ok=True)
    return path
