"""MLflow tracking: the only module in segkd that imports mlflow (import it only where you log).

One MLflow experiment per study; its runs form a tree, so the UI groups them the way the study does::

    <study>                         tag segkd.node = "study"
    ├── teachers                    tag segkd.node = "teachers"
    │   └── segformer_b2/fold0      a teacher job (tags role, teacher, fold, ...)
    └── segformer_b2/kd             tag segkd.node = "method:segformer_b2/kd"   (baseline: "method:none/baseline")
        └── segformer_b2/kd/seed0/fold0   a student job

Jobs run in separate processes (Snakemake, Slurm), so two things must not race:
- the store's schema: the first use of a fresh SQLite store by several processes at once corrupts it.
  `init_store` creates it under a file lock (an out-of-date one is upgraded by `mlflow db upgrade`).
- the parent nodes: each job finds its node by tag or creates it. For a SQLite store the
  find-or-create runs under the same file lock (`<db>.lock` beside the database). A server or
  database backend shared across machines has no common lock file: there, create every node once
  before the jobs fan out with `init_study` (jobs then only find them).

The store defaults to ``sqlite:///<cwd>/mlflow.db``; artifacts go to ``mlruns/`` beside the database.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import mlflow  # noqa: F401  (the one place segkd depends on MLflow)
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

if TYPE_CHECKING:
    from segkd.config import Study

log = logging.getLogger(__name__)

NODE_TAG = "segkd.node"
STUDY_NODE, TEACHERS_NODE = "study", "teachers"
LOCK_TIMEOUT_S = 600
PARAMS_PER_BATCH = 100  # MLflow's log_batch limit for params
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")

_ready: dict[tuple[str, str | None], str | None] = {}  # (uri, study) -> experiment id, per process


# ---------------------------------------------------------------------------------------------- store
def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI: `uri` (params `tracking.uri`), else $MLFLOW_TRACKING_URI, else
    ``sqlite:///<cwd>/mlflow.db``. Relative SQLite paths become absolute, so every job of a
    study reaches the same database whatever its working directory."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    db = _sqlite_path(uri)
    return f"sqlite:///{db.resolve()}" if db is not None else uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") else Path(path)


def _artifact_location(uri: str) -> str | None:
    """`mlruns/` beside a SQLite database; None lets a server choose its own artifact store."""
    db = _sqlite_path(uri)
    return str(db.parent / "mlruns") if db is not None else None


def _store_lock(uri: str):
    """A lock shared by every process using this SQLite store; a no-op for other backends."""
    db = _sqlite_path(uri)
    if db is None:
        return contextlib.nullcontext()
    db.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(db) + ".lock", timeout=LOCK_TIMEOUT_S)


def _is_database(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in _DB_SCHEMES


def _create_schema(uri: str) -> None:
    """Create the schema of a fresh database store, under the store's lock.

    Opening MLflow's SQL store creates the tables of an empty database (its documented behaviour on a
    fresh installation); parallel first use of a fresh SQLite file must not race, hence the lock. An
    out-of-date schema is the user's to upgrade, after a backup, as MLflow itself says: one line.
    """
    if not _is_database(uri):
        return  # an MLflow server (http[s]://...) manages its own schema
    try:
        with _store_lock(uri):
            _client(uri).search_experiments(max_results=1)
    except MlflowException as err:
        if "out-of-date database schema" not in err.message:
            raise
        from segkd.errors import UserError

        raise UserError(f"MLflow store {uri}: out-of-date schema; back it up, then run "
                        f"`mlflow db upgrade {uri}`") from None


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _ensure_experiment(client: MlflowClient, study: str, uri: str) -> str:
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return client.create_experiment(study, artifact_location=_artifact_location(uri))
    if exp.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r was deleted in %s; restoring it", study, uri)
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def init_store(uri: str | None = None, study: str | None = None) -> str | None:
    """Create the tracking store (its schema) and, if `study` is given, its experiment.

    Call once before jobs fan out (e.g. in Snakemake's ``onstart``); every job calls it again,
    which is cheap and safe: creation runs under the store's file lock and is idempotent.
    Returns the experiment id of `study` (None without a study).
    """
    uri = resolve_uri(uri)
    if (uri, study) in _ready:
        return _ready[(uri, study)]
    if _is_database(uri):
        # MLflow's SQL store module takes seconds to import (ORM set-up): do it before taking
        # the lock, so parallel jobs pay it side by side rather than one after another.
        importlib.import_module("mlflow.store.tracking.sqlalchemy_store")
    if (uri, None) not in _ready:
        _create_schema(uri)
        _ready[(uri, None)] = None
    exp_id = None
    if study is not None:
        client = _client(uri)  # opening the store (schema checks) needs no lock once migrated
        with _store_lock(uri):
            exp_id = _ensure_experiment(client, study, uri)
    _ready[(uri, study)] = exp_id
    return exp_id


# ---------------------------------------------------------------------------------------- run tree
def ensure_parent(experiment: str, name: str, tags: Mapping[str, str], parent_id: str | None = None,
                  *, uri: str | None = None) -> str:
    """Run id of the node run tagged ``segkd.node = tags["segkd.node"]`` in experiment (id),
    created (named `name`, child of `parent_id`) if it does not exist yet.

    Race-safe across processes for a SQLite store (find-or-create under the store's file lock).
    For a server backend create the nodes before fan-out with `init_study`.
    """
    if NODE_TAG not in tags:
        raise ValueError(f"ensure_parent: tags must contain {NODE_TAG!r}")
    uri = resolve_uri(uri)
    client = _client(uri)
    node = str(tags[NODE_TAG])
    if "'" in node:
        raise ValueError(f"ensure_parent: a node tag cannot contain a quote: {node!r}")
    with _store_lock(uri):
        found = client.search_runs([experiment], filter_string=f"tags.`{NODE_TAG}` = '{node}'",
                                   run_view_type=ViewType.ACTIVE_ONLY, max_results=1,
                                   order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        all_tags = {k: str(v) for k, v in tags.items()}
        if parent_id is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_id
        run = client.create_run(experiment, run_name=name, tags=all_tags)
        # A node only groups its children; it does nothing itself, so it is never "running".
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
        return run.info.run_id


def _study_node(experiment: str, study: str, uri: str) -> str:
    return ensure_parent(experiment, study, {NODE_TAG: STUDY_NODE, "study": study}, uri=uri)


def _teachers_node(experiment: str, study: str, uri: str) -> str:
    root = _study_node(experiment, study, uri)
    return ensure_parent(experiment, "teachers", {NODE_TAG: TEACHERS_NODE, "study": study}, root, uri=uri)


def _method_node(experiment: str, study: str, teacher: str | None, method: str, uri: str) -> str:
    root = _study_node(experiment, study, uri)
    label = f"{teacher or 'none'}/{method}"
    tags = {NODE_TAG: f"method:{label}", "study": study, "teacher": teacher or "none", "method": method}
    return ensure_parent(experiment, label, tags, root, uri=uri)


def init_study(study: "Study", uri: str | None = None) -> str:
    """Create the store, the study's experiment and every node of its run tree (study, teachers,
    one per teacher x method, and the no-KD baseline) before jobs fan out. Returns the experiment id."""
    from segkd.config import BASELINE

    uri = resolve_uri(uri or study.params.get("tracking", {}).get("uri"))
    experiment = init_store(uri, study.name)
    _teachers_node(experiment, study.name, uri)
    _method_node(experiment, study.name, None, BASELINE, uri)
    for teacher in study.teachers:
        for method in study.methods:
            _method_node(experiment, study.name, teacher, method, uri)
    return experiment


# -------------------------------------------------------------------------------------- parameters
def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def flatten_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested run spec -> flat MLflow params: ``{"train": {"lr": 6e-4}}`` -> ``{"train.lr": "0.0006"}``.

    Strings stay as they are; numbers, booleans, None (``null``) and lists are written as JSON.
    A method's terms are nested dicts too: ``terms.kd.weight``. An empty dict is kept as ``{}``.
    """
    flat: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = _param_value(dict(value) if isinstance(value, Mapping) else value)
    return flat


def _run_tags(spec: Mapping[str, Any]) -> dict[str, str]:
    dataset = spec.get("dataset")
    dataset = dataset.get("name") if isinstance(dataset, Mapping) else dataset
    values = {"study": spec["study"], "role": spec["role"], "model": spec.get("model"),
              "teacher": spec.get("teacher"), "method": spec.get("method"), "seed": spec.get("seed"),
              "fold": spec.get("fold"), "dataset": dataset}
    return {k: "none" if v is None else str(v) for k, v in values.items()}


def _run_name(spec: Mapping[str, Any]) -> str:
    if spec["role"] == "teacher":
        return f"{spec['model']}/fold{spec['fold']}"
    return f"{spec.get('teacher') or 'none'}/{spec['method']}/seed{spec['seed']}/fold{spec['fold']}"


# -------------------------------------------------------------------------------------- job runs
def start_run_for(spec: Mapping[str, Any], *, run_id: str | None = None, uri: str | None = None,
                  flush_every: int = 50) -> "RunLogger":
    """Open the MLflow run of one training job (a run spec from `Study.run_spec`).

    A new run is created under its node (teacher runs under "teachers", students under their
    method), tagged with role, model, teacher, method, seed, fold, dataset and study, with the
    spec flattened into params. Resuming an interrupted job: pass the `run_id` it had; that run
    is reopened (status RUNNING) instead of creating a second one. The tracking URI is `uri`,
    else the spec's ``tracking_uri``, else the default (see `resolve_uri`).
    """
    uri = resolve_uri(uri or spec.get("tracking_uri"))
    experiment = init_store(uri, spec["study"])
    client = _client(uri)
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            run = None
        if run is None or run.info.experiment_id != experiment:
            log.warning("MLflow run %s not found in experiment %r of %s; starting a new run",
                        run_id, spec["study"], uri)
        elif run.info.status != RunStatus.to_string(RunStatus.FINISHED):  # an interrupted attempt
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return RunLogger(client, run_id, flush_every=flush_every, logged=_last_steps(client, run))
        # a finished run is a result: re-training (changed code) makes a new run beside it
    if spec["role"] == "teacher":
        parent = _teachers_node(experiment, spec["study"], uri)
    else:
        parent = _method_node(experiment, spec["study"], spec.get("teacher"), spec["method"], uri)
    tags = {**_run_tags(spec), MLFLOW_PARENT_RUN_ID: parent}
    run = client.create_run(experiment, run_name=_run_name(spec), tags=tags)
    params = [Param(k, v) for k, v in flatten_params(spec).items()]
    for i in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=params[i:i + PARAMS_PER_BATCH])
    return RunLogger(client, run.info.run_id, flush_every=flush_every)


def _last_steps(client: MlflowClient, run) -> dict[str, int]:
    """The last step logged of each metric of `run` (what an interrupted attempt got into the store)."""
    return {key: max(m.step for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


class RunLogger:
    """Logs one job's metrics in batches (one `log_batch` call per `flush_every` values, so
    many jobs do not queue on a SQLite store), its final scores and artifacts; a context manager
    that ends the run FINISHED, or FAILED (KILLED on Ctrl-C) when the block raises.

    Kill-safe: a run reopened after a kill knows the last step of each metric already in the store
    (`logged`) and drops values at or before it, so the resumed job can log its whole history again
    (`log_history`: what the checkpoint holds, including what was buffered at the kill) and every step
    ends up in the store exactly once.
    """

    FINAL_SCALARS = ("mIoU", "mPA", "aAcc", "wall_time_s", "images_per_s")

    def __init__(self, client: MlflowClient, run_id: str, *, flush_every: int = 50,
                 logged: Mapping[str, int] | None = None):
        if flush_every < 1:
            raise ValueError("flush_every must be >= 1")
        self.client = client
        self.run_id = run_id
        self.flush_every = min(flush_every, 1000)  # MLflow's log_batch limit for metrics
        self.logged = dict(logged or {})  # metric -> last step in the store
        self._buffer: list[Metric] = []
        self._closed = False

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Buffer `metrics` at `step` (values converted to float); flushed every `flush_every`.
        A metric at or before its last logged step is dropped (see the class doc)."""
        now, step = int(time.time() * 1000), int(step)
        for key, value in metrics.items():
            if step > self.logged.get(key, -1):
                self._buffer.append(Metric(key, float(value), now, step))
                self.logged[key] = step
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def log_history(self, history: Iterable[Mapping[str, float]], step_key: str = "iteration") -> None:
        """Log records ``{"iteration": k, "loss": ..., ...}`` (a run's history) at their steps."""
        for record in history:
            self.log_metrics(record[step_key], {k: v for k, v in record.items() if k != step_key})

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:self.flush_every], self._buffer[self.flush_every:]
            self.client.log_batch(self.run_id, metrics=batch)

    def log_final(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the evaluation scores of a metrics.json dict: mIoU, mPA, aAcc (and wall time,
        images/s when present) and per-class IoU as ``iou.<Class>`` (classes without a score,
        None, are skipped). Step defaults to the dict's ``iterations`` (else 0)."""
        step = int(metrics.get("iterations", 0) if step is None else step)
        final = {k: metrics[k] for k in self.FINAL_SCALARS if metrics.get(k) is not None}
        final.update({f"iou.{name}": v for name, v in (metrics.get("iou") or {}).items() if v is not None})
        self.log_metrics(step, final)
        self.flush()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file (or a directory's contents) into the run's artifacts."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        """Flush and end the run with `status` (FINISHED, FAILED or KILLED); idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self.client.set_terminated(self.run_id, status)

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("KILLED")
        else:
            self.close("FAILED")


def add_artifact(spec: Mapping[str, Any], run_id: str, path: str | os.PathLike, artifact_path: str | None = None,
                 *, uri: str | None = None) -> None:
    """Attach a file to a job's existing run, whatever its status (a figure drawn after the job
    finished): the run is neither reopened nor ended, and no run is created."""
    uri = resolve_uri(uri or spec.get("tracking_uri"))
    init_store(uri, spec["study"])
    RunLogger(_client(uri), run_id).log_artifact(path, artifact_path)


def is_finished(spec: Mapping[str, Any], run_id: str, *, uri: str | None = None) -> bool:
    """Whether `run_id` is a FINISHED run of the spec's study (False if it is not in the store)."""
    uri = resolve_uri(uri or spec.get("tracking_uri"))
    experiment = init_store(uri, spec["study"])
    try:
        run = _client(uri).get_run(run_id)
    except MlflowException:
        return False
    return run.info.experiment_id == experiment and run.info.status == RunStatus.to_string(RunStatus.FINISHED)


# ---------------------------------------------------------------------------------------- study
def log_study_artifacts(study_name: str, paths: Iterable[str | os.PathLike], *, uri: str | None = None,
                        artifact_path: str | None = None) -> str:
    """Log the aggregate step's tables and plots (files or directories) to the study's root run.
    Returns that run's id."""
    uri = resolve_uri(uri)
    experiment = init_store(uri, study_name)
    root = _study_node(experiment, study_name, uri)
    logger = RunLogger(_client(uri), root)
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"study artifact not found: {path}")
        logger.log_artifact(path, artifact_path)
    return root
