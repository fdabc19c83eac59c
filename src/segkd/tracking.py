"""MLflow tracking: the only module in segkd that imports mlflow (import it only where you log).

One MLflow experiment per study (kind "custom_model_development": a training experiment, not a GenAI
one); its runs form a tree, so the UI groups them the way the study does, with names that stay
readable in a narrow column (the teacher is in the parent's name and in every run's tags)::

    <study>                         tag segkd.node = "study"; the report, its plots, the headline metrics
    ├── teachers                    tag segkd.node = "teachers"
    │   └── segformer_b2 · fold0    a teacher job (tags role, teacher, fold, ...)
    └── kd · segformer_b2           tag segkd.node = "method:segformer_b2/kd"   (baseline: "method:none/baseline")
        └── kd · seed0 · fold0      a student job; its parent holds the method's summary metrics

The experiment also carries two saved views of the run table (*segkd methods*: one row per method
with its summary; *segkd runs*: the student runs by method, seed and fold), and `study_url` links to
them on the UI's Model training side, which MLflow 3.17's sidebar switch would otherwise leave on GenAI.

Scale: MLflow shows mIoU, mPA, aAcc and ``iou.<Class>`` in percent, as every report table does;
metrics.json keeps them as fractions.

Every run names what produced it: ``segkd.spec`` (the short hash of its run spec), MLflow's
``mlflow.source.git.commit`` (in a git checkout) and ``segkd.dvc_experiment`` (under ``dvc exp run``).
A run replaced by a later run of the same job (same study, role, teacher, method, seed and fold) or a
study run replaced by a later aggregate of other results is tagged ``segkd.current = false`` and
``segkd.replaced_by = <run id>``, and soft-deleted: MLflow's default view (State: Active) then shows the
current study alone, and its "Deleted" state lists the history, whole (params, metrics, artifacts), until
``mlflow gc`` purges it. Tags alone would leave every view mixed until the user types a filter.

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

import base64
import contextlib
import functools
import hashlib
import importlib
import json
import logging
import math
import os
import subprocess
import time
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import mlflow  # noqa: F401  (the one place segkd depends on MLflow)
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

if TYPE_CHECKING:
    from segkd.config import Study

log = logging.getLogger(__name__)

NODE_TAG = "segkd.node"
STUDY_NODE, TEACHERS_NODE = "study", "teachers"
SPEC_TAG, CURRENT_TAG, REPLACED_BY_TAG = "segkd.spec", "segkd.current", "segkd.replaced_by"
RESULTS_TAG, DVC_EXPERIMENT_TAG = "segkd.results", "segkd.dvc_experiment"
JOB_TAGS = ("study", "role", "model", "teacher", "method", "seed", "fold")  # what makes two runs one job's
# MLflow 3's UI reads an experiment's kind from this tag (mlflow.utils.mlflow_tags has no constant for it);
# "custom_model_development" is its "Machine learning" kind, whose experiment page opens on the runs.
# UIs with the sidebar's GenAI | Model training switch (3.17) let the switch decide: see `study_url`.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
SCALED = ("mIoU", "mPA", "aAcc")  # fractions in metrics.json, percent in MLflow (and in the report)
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
    return _lock_file(str(db) + ".lock")


@functools.cache
def _lock_file(path: str) -> filelock.FileLock:
    """One lock object per lock file and process: a `FileLock` is re-entrant for its own holder, so a
    locked section may call another (aggregate's study-run swap finds the study node under the lock)."""
    return filelock.FileLock(path, timeout=LOCK_TIMEOUT_S)


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
    """The study's experiment, created as a training experiment (its kind tag) if it does not exist;
    one made before segkd set the kind gets it, so that it too opens on its runs."""
    exp = client.get_experiment_by_name(study)
    if exp is None:
        experiment = client.create_experiment(study, artifact_location=_artifact_location(uri),
                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        _write_views(client, experiment, {})
        return experiment
    if exp.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r was deleted in %s; restoring it", study, uri)
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    _write_views(client, exp.experiment_id, exp.tags)
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


# ------------------------------------------------------------------------------------ the UI's views
# Saved run-table views segkd writes on each study's experiment (the UI's "Views" menu; `study_url`).
# MLflow nests child runs only in its default order (creation time) without a filter, and a saved
# view does not keep which runs are expanded, so both views are flat and filtered.
METHODS_VIEW, RUNS_VIEW = "segkd-methods", "segkd-runs"
VIEWS = {
    METHODS_VIEW: ("segkd methods", f"tags.`{NODE_TAG}` LIKE 'method:%'",
                   ("tags.`teacher`", "metrics.`mIoU`", "metrics.`mIoU.ci_low`", "metrics.`mIoU.ci_high`",
                    "metrics.`delta_mIoU`", "metrics.`p_holm`", "metrics.`n_seeds`")),
    RUNS_VIEW: ("segkd runs", "tags.role = 'student'",
                ("tags.`teacher`", "tags.`seed`", "tags.`fold`", "metrics.`mIoU`", "metrics.`mPA`", "metrics.`aAcc`",
                 "tags.`segkd.spec`")),
}  # id -> (name, filter, columns); rows sorted by run name: method, then seed, then fold
UI_HOST = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def study_url(experiment: str, host: str = UI_HOST, view: str | None = METHODS_VIEW) -> str:
    """A study's run table in the MLflow UI (in one of segkd's views, or None: the run tree), on the
    "Model training" side of MLflow 3's sidebar switch, which in the UIs that have it overrides the
    experiment's kind tag (and would otherwise open on traces)."""
    url = f"{host}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    return url if view is None else f"{url}&viewStateShareKey={view}"


def browse_hint(experiment: str, uri: str | None = None) -> str:
    """One line telling where to browse the study: its server's URL, or how to serve a local store."""
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        return f"MLflow: {study_url(experiment, host=uri.rstrip('/'))}"
    return f"MLflow: `mlflow ui --backend-store-uri {uri}`, then open {study_url(experiment)}"


def _view_state(search: str, columns: Iterable[str]) -> dict[str, Any]:
    return {"searchFilter": search, "orderByKey": "tags.`mlflow.runName`", "orderByAsc": True, "startTime": "ALL",
            "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": list(columns), "runsHiddenMode": "SHOW_ALL", "groupBy": None}


def _write_views(client: MlflowClient, experiment: str, held: Mapping[str, str]) -> None:
    """Save segkd's views (`VIEWS`) on the experiment, unless it holds them already (`held`: its tags).

    Private format, isolated here: MLflow's UI (3.x) keeps a saved view as the experiment tag
    ``mlflow.sharedViewState.<id>`` = {"name", "createdAt", "updatedAt", "state": "deflate;" +
    base64(zlib(page state as JSON))} and opens it with ``?viewStateShareKey=<id>``; no public API
    writes one. tests/test_tracking.py fails when the installed UI no longer reads this format.
    """
    now = int(time.time() * 1000)
    for view, (name, search, columns) in VIEWS.items():
        key = f"mlflow.sharedViewState.{view}"
        state = _view_state(search, columns)
        if key in held and _read_view(held[key]) == state:
            continue
        packed = "deflate;" + base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
        client.set_experiment_tag(experiment, key, json.dumps({"name": name, "createdAt": now, "updatedAt": now,
                                                               "state": packed}))


def _read_view(value: str) -> dict[str, Any] | None:
    """The page state of a saved view's tag value (None if it is not one segkd can read)."""
    try:
        packed = json.loads(value)["state"].removeprefix("deflate;")
        return json.loads(zlib.decompress(base64.b64decode(packed)))
    except (ValueError, KeyError, TypeError, zlib.error):
        return None


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


def _study_tags(study: str) -> dict[str, str]:
    return {NODE_TAG: STUDY_NODE, "study": study, CURRENT_TAG: "true"}


def _study_node(experiment: str, study: str, uri: str) -> str:
    return ensure_parent(experiment, study, _study_tags(study), uri=uri)


def _teachers_node(experiment: str, study: str, uri: str) -> str:
    root = _study_node(experiment, study, uri)
    return ensure_parent(experiment, "teachers", {NODE_TAG: TEACHERS_NODE, "study": study}, root, uri=uri)


def _method_node(experiment: str, study: str, teacher: str | None, method: str, uri: str) -> str:
    """A method's node, named method first (``kd · segformer_b2``; the baseline: ``baseline``) so that
    a narrow name column still tells the methods apart."""
    root = _study_node(experiment, study, uri)
    name = method if teacher is None else f"{method} · {teacher}"
    tags = {NODE_TAG: f"method:{teacher or 'none'}/{method}", "study": study, "teacher": teacher or "none",
            "method": method}
    return ensure_parent(experiment, name, tags, root, uri=uri)


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

    Strings stay as they are; numbers, booleans and lists are written as JSON. A key whose value is
    None (no pretrained file, no crop, the default tracking URI) is left out: MLflow shows a param
    it lacks as an empty cell, which reads as "not set", while a string "null" reads as a value. The
    whole spec, nulls included, stays in metrics.json and in the run's ``segkd.spec`` hash.
    A method's terms are nested dicts too: ``terms.kd.weight``. An empty dict is kept as ``{}``.
    """
    flat: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if value is None:
            continue
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
    """``kd · seed0 · fold0`` (the teacher is in the parent's name), ``segformer_b2 · fold0`` for a
    teacher: what tells siblings apart comes first and fits a narrow column; sorted by name, a
    method's runs line up by seed, then fold."""
    if spec["role"] == "teacher":
        return f"{spec['model']} · fold{spec['fold']}"
    return f"{spec['method']} · seed{spec['seed']} · fold{spec['fold']}"


@functools.cache
def _git_commit(cwd: str) -> str | None:
    """HEAD of the git checkout at `cwd` (None outside one, or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _provenance() -> dict[str, str]:
    """What produced this process's runs: the git commit of the working directory (MLflow's own tag,
    so its UI shows it as the run's source version) and, under ``dvc exp run``, the DVC experiment's
    name (DVC sets ``DVC_EXP_NAME`` for the stages it runs)."""
    tags = {}
    commit = _git_commit(os.getcwd())
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags[DVC_EXPERIMENT_TAG] = os.environ["DVC_EXP_NAME"]
    return tags


def _replace(client: MlflowClient, old: Iterable[str], new: str) -> list[str]:
    """Mark the runs `old` replaced by run `new` and soft-delete them (see the module doc). Returns them."""
    replaced = [run_id for run_id in old if run_id != new]
    for run_id in replaced:
        client.set_tag(run_id, CURRENT_TAG, "false")
        client.set_tag(run_id, REPLACED_BY_TAG, new)
        client.delete_run(run_id)
    return replaced


def _replace_earlier_runs(client: MlflowClient, experiment: str, tags: Mapping[str, str], new: str) -> list[str]:
    """Replace the active runs of the same job as run `new` (same `JOB_TAGS`) by it."""
    if any("'" in tags[k] for k in JOB_TAGS):
        raise ValueError(f"a job tag cannot contain a quote: {[tags[k] for k in JOB_TAGS]}")
    same_job = " and ".join(f"tags.`{k}` = '{tags[k]}'" for k in JOB_TAGS)
    earlier = client.search_runs([experiment], filter_string=same_job, run_view_type=ViewType.ACTIVE_ONLY,
                                 max_results=1000)
    return _replace(client, (r.info.run_id for r in earlier), new)


# -------------------------------------------------------------------------------------- job runs
def start_run_for(spec: Mapping[str, Any], *, run_id: str | None = None, uri: str | None = None,
                  flush_every: int = 50) -> "RunLogger":
    """Open the MLflow run of one training job (a run spec from `Study.run_spec`).

    A new run is created under its node (teacher runs under "teachers", students under their
    method), tagged with role, model, teacher, method, seed, fold, dataset and study, its spec's
    hash and its provenance (git commit, DVC experiment), with the spec flattened into params; the
    earlier runs of the same job are marked replaced by it (see the module doc). Resuming an
    interrupted job: pass the `run_id` it had; that run is reopened (status RUNNING) instead of
    creating a second one. The tracking URI is `uri`, else the spec's ``tracking_uri``, else the
    default (see `resolve_uri`).
    """
    from segkd.config import spec_hash

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
    tags = {**_run_tags(spec), SPEC_TAG: spec_hash(dict(spec)), CURRENT_TAG: "true", **_provenance(),
            MLFLOW_PARENT_RUN_ID: parent}
    run = client.create_run(experiment, run_name=_run_name(spec), tags=tags)
    _replace_earlier_runs(client, experiment, tags, run.info.run_id)
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
        None, are skipped). The scores are fractions there and percent here, as in the report.
        Step defaults to the dict's ``iterations`` (else 0)."""
        step = int(metrics.get("iterations", 0) if step is None else step)
        final = {k: 100 * metrics[k] if k in SCALED else metrics[k]
                 for k in self.FINAL_SCALARS if metrics.get(k) is not None}
        final.update({f"iou.{name}": 100 * v for name, v in (metrics.get("iou") or {}).items() if v is not None})
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
def _results_hash(results: Path, files: list[Path]) -> str:
    """Short content hash of the aggregate's files (names and bytes): equal results, equal hash."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.relative_to(results).as_posix()):
        h.update(f.relative_to(results).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _method_metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """A method's summary (an entry of summary.json, percent) as its node's metrics; its mean is
    logged as ``mIoU``, the column its student runs fill, so one column compares runs and methods."""
    metrics = {"mIoU": entry["mIoU_mean"], "mIoU.std": entry["mIoU_std"], "mIoU.ci_low": entry["ci_low"],
               "mIoU.ci_high": entry["ci_high"], "n_seeds": entry["n_seeds"]}
    if "delta_vs_baseline" in entry:
        metrics.update({"delta_mIoU": entry["delta_vs_baseline"], "delta_mIoU.ci_low": entry["delta_ci_low"],
                        "delta_mIoU.ci_high": entry["delta_ci_high"], "p_holm": entry["p_holm"],
                        "p_wilcoxon_holm": entry["p_wilcoxon_holm"]})
    return {k: _number(v) for k, v in metrics.items()}


def _headline(summary: Mapping[str, Any], alpha: float) -> tuple[dict[str, float], dict[str, str]]:
    """The study's headline as the study run's metrics and tags: the baseline's mIoU, the best method
    (highest mean mIoU) with its Δ and Holm p, and how many methods are significantly above or below
    the baseline (Holm-adjusted paired t-test at `alpha`, as the report's findings)."""
    from segkd.config import BASELINE

    methods = [(teacher, method, e) for teacher, entries in summary.items() if teacher != BASELINE
               for method, e in entries.items()]
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    if BASELINE in summary:
        metrics["baseline.mIoU"] = _number(summary[BASELINE]["mIoU_mean"])
    scored = [m for m in methods if m[2].get("mIoU_mean") is not None]
    if scored:
        teacher, method, best = max(scored, key=lambda m: m[2]["mIoU_mean"])
        tags["segkd.best"] = f"{method} · {teacher}"
        metrics["best.mIoU"] = _number(best["mIoU_mean"])
        metrics["best.delta_mIoU"] = _number(best.get("delta_vs_baseline"))
        metrics["best.p_holm"] = _number(best.get("p_holm"))
    tested = [e for _, _, e in methods if e.get("p_holm") is not None and e["p_holm"] < alpha]
    metrics["methods.higher"] = float(sum(e["delta_vs_baseline"] > 0 for e in tested))
    metrics["methods.lower"] = float(sum(e["delta_vs_baseline"] < 0 for e in tested))
    return metrics, tags


def _log_changed(client: MlflowClient, run_id: str, metrics: Mapping[str, float]) -> None:
    """Log the values of `metrics` the run does not hold yet, at step 0.

    Summaries belong to no training step, so a re-run aggregate logs the same keys again rather than
    at a new step: the run shows the newest value, the key's history keeps each earlier aggregate's
    value with its time, and an unchanged re-run logs nothing (no duplicate points)."""
    held = client.get_run(run_id).data.metrics
    now = int(time.time() * 1000)
    changed = [Metric(k, v, now, 0) for k, v in metrics.items()
               if k not in held or not (held[k] == v or (math.isnan(held[k]) and math.isnan(v)))]
    if changed:
        client.log_batch(run_id, metrics=changed)


def log_study(study_name: str, results: str | os.PathLike, files: Iterable[str | os.PathLike],
              summary: Mapping[str, Any], *, alpha: float, uri: str | None = None) -> str:
    """Log the aggregate step to the study's run tree; returns the study run's id.

    - `files` (the aggregate's outputs, inside `results`) go to the study run at their path relative to
      `results`, so report.md's links (``plots/miou.png``) resolve in MLflow's artifact view;
    - `summary` (summary.json's dict: ``{teacher: {method: {...}}, "baseline": {...}}``, percent) goes
      to the method runs (`_method_metrics`) and its headline to the study run (`_headline`);
    - the study run is tagged with the results' hash and its provenance. When it already holds other
      results (an earlier aggregate: new runs, new code), a new study run replaces it: the teachers and
      method runs move under the new one, and the old one, its report and headline kept, is marked
      replaced (see the module doc). Re-running on equal results changes nothing.
    """
    from segkd.config import BASELINE

    results = Path(results)
    files = [Path(f) for f in files]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"study artifact not found: {f}")
    uri = resolve_uri(uri)
    experiment = init_store(uri, study_name)
    client = _client(uri)
    digest = _results_hash(results, files)
    with _store_lock(uri):
        root = _study_node(experiment, study_name, uri)
        held = client.get_run(root).data.tags.get(RESULTS_TAG)
        if held is not None and held != digest:
            new = client.create_run(experiment, run_name=study_name, tags=_study_tags(study_name)).info.run_id
            client.set_terminated(new, RunStatus.to_string(RunStatus.FINISHED))
            children = client.search_runs([experiment], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{root}'",
                                          run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
            for child in children:
                client.set_tag(child.info.run_id, MLFLOW_PARENT_RUN_ID, new)
            _replace(client, [root], new)
            root = new
    for tag, value in {RESULTS_TAG: digest, **_provenance()}.items():
        client.set_tag(root, tag, value)
    logger = RunLogger(client, root)
    for f in files:
        folder = f.parent.relative_to(results).as_posix()
        logger.log_artifact(f, None if folder == "." else folder)
    headline, tags = _headline(summary, alpha)
    for tag, value in tags.items():
        client.set_tag(root, tag, value)
    _log_changed(client, root, headline)
    if BASELINE in summary:
        node = _method_node(experiment, study_name, None, BASELINE, uri)
        _log_changed(client, node, _method_metrics(summary[BASELINE]))
    for teacher, entries in summary.items():
        if teacher == BASELINE:
            continue
        for method, entry in entries.items():
            _log_changed(client, _method_node(experiment, study_name, teacher, method, uri), _method_metrics(entry))
    return root
