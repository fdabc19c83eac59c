"""MLflow tracking against real local SQLite stores: the run tree, params, batched metrics, resume,
study artifacts, and many processes logging to one fresh store at once."""

import copy
import math
import multiprocessing as mp
import subprocess
from multiprocessing import forkserver
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from segkd import tracking
from segkd.classes import CLASS_NAMES
from segkd.config import Study, spec_hash

PARENT = "mlflow.parentRunId"


def make_spec(study, role="student", teacher="segformer_b2", method="kd", seed=0, fold=0):
    """A run spec shaped like `Study.run_spec` returns (see contracts: metrics.json params)."""
    terms = {"kd": {"weight": 0.01, "temperature": 1.0}} if method == "kd" else {}
    if role == "teacher":
        model, method, terms = teacher, None, {}
    else:
        model = "segformer_b0"
        teacher = None if method == "baseline" else teacher
    return {
        "study": study, "role": role, "model": model, "teacher": teacher,
        "teacher_checkpoint": None if teacher is None or role == "teacher"
        else f"runs/teachers/{teacher}/fold{fold}/checkpoint.pt",
        "method": method, "terms": terms, "seed": seed, "fold": fold,
        "dataset": {"name": "synthetic", "height": 96, "width": 128},
        "prepared": "data/prepared/synthetic", "folds_file": "data/folds/synthetic.json",
        "pretrained": None, "iterations": 300,
        "train": {"batch_size": 8, "lr": 6e-4, "crop": None, "augment": {"scale": [0.75, 1.5], "flip": True}},
        "tracking_uri": None,
    }


FINAL = {
    "mIoU": 0.5, "mPA": 0.6, "aAcc": 0.8, "wall_time_s": 12.5, "images_per_s": 40.0, "iterations": 300,
    "iou": {name: (None if name == "Fence" else 0.1 * (i % 10)) for i, name in enumerate(CLASS_NAMES)},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One initialised SQLite store shared by the single-process tests (each uses its own study)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking.init_store(uri)
    return root, uri


def experiment_id(client, study):
    return client.get_experiment_by_name(study).experiment_id


def node_runs(client, study, node):
    return client.search_runs([experiment_id(client, study)], f"tags.`segkd.node` = '{node}'",
                              run_view_type=ViewType.ALL)


def test_student_run_in_the_store_with_params_tags_metrics_and_parents(store, tmp_path):
    root, uri = store
    spec = make_spec("study-a", seed=1, fold=0)
    artifact = tmp_path / "metrics.json"
    artifact.write_text("{}\n")
    with tracking.start_run_for(spec, uri=uri) as run:
        run.log_metrics(10, {"loss": 2.0, "lr": 1e-4, "kd": 0.3})
        run.log_final(FINAL)
        run.log_artifact(artifact)
        run_id = run.run_id

    client = MlflowClient(uri)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "kd · seed1 · fold0"
    assert r.data.tags["role"] == "student"
    assert r.data.tags["segkd.spec"] == spec_hash(spec) and r.data.tags["segkd.current"] == "true"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert head and r.data.tags["mlflow.source.git.commit"] == head  # the tests run in the project's checkout
    assert "segkd.dvc_experiment" not in r.data.tags
    assert {k: r.data.tags[k] for k in ("study", "teacher", "method", "seed", "fold", "dataset", "model")} == {
        "study": "study-a", "teacher": "segformer_b2", "method": "kd", "seed": "1", "fold": "0",
        "dataset": "synthetic", "model": "segformer_b0"}
    p = r.data.params
    assert p["train.lr"] == "0.0006" and p["train.batch_size"] == "8"
    assert p["train.augment.scale"] == "[0.75, 1.5]" and p["train.augment.flip"] == "true"
    assert p["terms.kd.weight"] == "0.01" and p["terms.kd.temperature"] == "1.0"
    assert p["dataset.name"] == "synthetic" and p["role"] == "student"
    assert not {"train.crop", "pretrained", "tracking_uri"} & set(p)  # None is no value, not "null"
    m = r.data.metrics  # percent, as in the report
    assert m["mIoU"] == 50.0 and m["mPA"] == 60.0 and m["aAcc"] == 80.0 and m["images_per_s"] == 40.0
    assert m["iou.Pole"] == pytest.approx(20.0) and "iou.Fence" not in m
    assert [(h.step, h.value) for h in client.get_metric_history(run_id, "mIoU")] == [(300, 50.0)]
    assert [(h.step, h.value) for h in client.get_metric_history(run_id, "kd")] == [(10, 0.3)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["metrics.json"]
    assert r.info.artifact_uri.startswith(str(root / "mlruns"))

    (method_node,) = node_runs(client, "study-a", "method:segformer_b2/kd")
    (study_node,) = node_runs(client, "study-a", "study")
    assert r.data.tags[PARENT] == method_node.info.run_id
    assert method_node.data.tags[PARENT] == study_node.info.run_id
    assert PARENT not in study_node.data.tags
    assert study_node.info.run_name == "study-a" and method_node.info.run_name == "kd · segformer_b2"


def test_the_experiment_opens_as_a_training_experiment(store):
    """MLflow 3's UI reads the experiment's kind from its mlflow.experimentKind tag; without it the
    experiment opens in the GenAI view (where the UI has the GenAI | Model training switch, the switch
    decides, and segkd's links set it: test below). One created before segkd set the kind gets it too."""
    _, uri = store
    client = MlflowClient(uri)
    exp = tracking.init_store(uri, "study-kind")
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("study-kind-older")
    assert "mlflow.experimentKind" not in client.get_experiment(older).tags
    assert tracking.init_store(uri, "study-kind-older") == older
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"


def test_teacher_run_goes_under_teachers_and_fails_on_exception(store):
    _, uri = store
    with pytest.raises(RuntimeError):
        with tracking.start_run_for(make_spec("study-b", role="teacher", fold=1), uri=uri) as run:
            run_id = run.run_id
            raise RuntimeError("out of memory")
    client = MlflowClient(uri)
    r = client.get_run(run_id)
    assert r.info.status == "FAILED"
    assert r.data.tags["role"] == "teacher" and r.data.tags["method"] == "none"
    assert r.info.run_name == "segformer_b2 · fold1"
    (teachers,) = node_runs(client, "study-b", "teachers")
    assert r.data.tags[PARENT] == teachers.info.run_id
    # the baseline student has no teacher: its node is none/baseline
    with tracking.start_run_for(make_spec("study-b", method="baseline"), uri=uri) as run:
        baseline_id = run.run_id
    (node,) = node_runs(client, "study-b", "method:none/baseline")
    assert client.get_run(baseline_id).data.tags[PARENT] == node.info.run_id
    assert node.info.run_name == "baseline" and client.get_run(baseline_id).info.run_name == "baseline · seed0 · fold0"


def test_metrics_are_logged_in_batches_with_their_steps(store):
    _, uri = store
    client = MlflowClient(uri)
    run = tracking.start_run_for(make_spec("study-c"), uri=uri, flush_every=7)
    run.log_metrics(0, {"loss": 1.0, "lr": 0.1, "kd": 0.5})
    run.log_metrics(1, {"loss": 0.9, "lr": 0.2, "kd": 0.4})
    assert client.get_run(run.run_id).data.metrics == {}  # 6 values buffered, below the batch size
    run.log_metrics(2, {"loss": 0.8, "lr": 0.3, "kd": 0.3})  # 9 >= 7: one batch written
    assert client.get_run(run.run_id).data.metrics["loss"] == 0.8
    for step in range(3, 10):
        run.log_metrics(step, {"loss": 1.0 - step / 10, "lr": 0.1 * (step + 1), "kd": 0.5 - step / 20})
    run.close()
    history = sorted((h.step, h.value) for h in client.get_metric_history(run.run_id, "loss"))
    assert history == [(s, pytest.approx(1.0 - s / 10)) for s in range(10)]
    for key in ("lr", "kd"):
        assert sorted(h.step for h in client.get_metric_history(run.run_id, key)) == list(range(10))
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_resume_reuses_the_run_id(store):
    _, uri = store
    spec = make_spec("study-d", seed=2)
    first = tracking.start_run_for(spec, uri=uri)
    first.log_metrics(0, {"loss": 1.0})
    first.close("FAILED")  # interrupted
    with tracking.start_run_for(spec, uri=uri, run_id=first.run_id) as again:
        assert again.run_id == first.run_id
        again.log_metrics(1, {"loss": 0.5})
    client = MlflowClient(uri)
    runs = client.search_runs([experiment_id(client, "study-d")], "tags.role = 'student'")
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert runs[0].info.status == "FINISHED"
    assert sorted(h.step for h in client.get_metric_history(first.run_id, "loss")) == [0, 1]
    # a run id the store does not know (e.g. a deleted store) starts a fresh run instead
    with tracking.start_run_for(spec, uri=uri, run_id="0" * 32) as fresh:
        assert fresh.run_id != first.run_id


def test_a_rerun_job_replaces_its_earlier_run(store, monkeypatch):
    """A job trained again (here under another weight, in a DVC experiment) makes a new run; the
    earlier run of the same job is marked replaced and soft-deleted, so MLflow's default (active)
    view shows the current study only, while the earlier run, whole, stays in the deleted view."""
    _, uri = store
    client = MlflowClient(uri)
    first_spec, other_job = make_spec("study-r", seed=0), make_spec("study-r", seed=1)
    with tracking.start_run_for(first_spec, uri=uri) as first:
        first.log_final(FINAL)
    with tracking.start_run_for(other_job, uri=uri) as other:
        pass
    again = copy.deepcopy(first_spec)
    again["terms"]["kd"]["weight"] = 0.02
    monkeypatch.setenv("DVC_EXP_NAME", "gusty-kiln")  # what `dvc exp run` sets for its stages
    with tracking.start_run_for(again, uri=uri) as second:
        pass

    exp = experiment_id(client, "study-r")
    active = client.search_runs([exp], "tags.role = 'student'")
    assert sorted(r.info.run_id for r in active) == sorted([second.run_id, other.run_id])
    old, new = client.get_run(first.run_id), client.get_run(second.run_id)
    assert old.info.lifecycle_stage == "deleted" and old.info.status == "FINISHED"
    assert old.data.tags["segkd.current"] == "false" and old.data.tags["segkd.replaced_by"] == second.run_id
    assert old.data.metrics["mIoU"] == 50.0 and old.data.params["terms.kd.weight"] == "0.01"  # history kept
    assert new.data.tags["segkd.current"] == "true" and "segkd.replaced_by" not in new.data.tags
    assert new.data.tags["segkd.dvc_experiment"] == "gusty-kiln" and "segkd.dvc_experiment" not in old.data.tags
    assert new.data.tags["segkd.spec"] == spec_hash(again) != old.data.tags["segkd.spec"]
    assert new.info.run_name == old.info.run_name == "kd · seed0 · fold0"
    assert client.get_run(other.run_id).data.tags["segkd.current"] == "true"  # another job is left alone
    deleted = client.search_runs([exp], "tags.role = 'student'", run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.run_id for r in deleted] == [first.run_id]


SUMMARY = {  # summary.json's shape (percent), two methods of one teacher
    "baseline": {"n_seeds": 2, "mIoU_mean": 30.0, "mIoU_std": 1.0, "ci_low": 21.0, "ci_high": 39.0},
    "segformer_b2": {
        "kd": {"n_seeds": 2, "mIoU_mean": 33.0, "mIoU_std": 0.5, "ci_low": 28.5, "ci_high": 37.5,
               "delta_vs_baseline": 3.0, "delta_ci_low": 1.0, "delta_ci_high": 5.0, "p_holm": 0.01,
               "p_wilcoxon_holm": 0.25},
        "at": {"n_seeds": 2, "mIoU_mean": 29.0, "mIoU_std": 0.7, "ci_low": 22.7, "ci_high": 35.3,
               "delta_vs_baseline": -1.0, "delta_ci_low": -4.0, "delta_ci_high": 2.0, "p_holm": 0.4,
               "p_wilcoxon_holm": None}}}


def _results(root: Path, report: str) -> list[Path]:
    (root / "plots").mkdir(parents=True, exist_ok=True)
    (root / "plots" / "miou.png").write_bytes(b"png")
    (root / "report.md").write_text(report)
    return [root / "report.md", root / "plots" / "miou.png"]


def test_the_aggregate_logs_summaries_on_the_method_runs_and_its_report_on_the_study_run(store, tmp_path):
    _, uri = store
    client = MlflowClient(uri)
    study = Study({"study": "study-e", "models": {"teachers": ["segformer_b2"]}, "methods": {"kd": {}, "at": {}},
                   "tracking": {"uri": uri}})
    exp = tracking.init_study(study)
    with tracking.start_run_for(make_spec("study-e"), uri=uri) as job:
        job.log_final(FINAL)
    results = tmp_path / "results"
    files = _results(results, "![mIoU](plots/miou.png)\n")
    root = tracking.log_study("study-e", results, files, SUMMARY, alpha=0.05, uri=uri)

    (study_node,) = node_runs(client, "study-e", "study")
    assert study_node.info.run_id == root
    # report.md's links are relative: the plots sit where they say
    assert sorted(a.path for a in client.list_artifacts(root)) == ["plots", "report.md"]
    assert [a.path for a in client.list_artifacts(root, "plots")] == ["plots/miou.png"]
    assert study_node.data.tags["segkd.best"] == "kd · segformer_b2"
    assert study_node.data.metrics == {"baseline.mIoU": 30.0, "best.mIoU": 33.0, "best.delta_mIoU": 3.0,
                                       "best.p_holm": 0.01, "methods.higher": 1.0, "methods.lower": 0.0}
    (kd,) = node_runs(client, "study-e", "method:segformer_b2/kd")
    assert kd.data.metrics == {"mIoU": 33.0, "mIoU.std": 0.5, "mIoU.ci_low": 28.5, "mIoU.ci_high": 37.5,
                               "n_seeds": 2.0, "delta_mIoU": 3.0, "delta_mIoU.ci_low": 1.0,
                               "delta_mIoU.ci_high": 5.0, "p_holm": 0.01, "p_wilcoxon_holm": 0.25}
    (at,) = node_runs(client, "study-e", "method:segformer_b2/at")
    assert at.data.metrics["delta_mIoU"] == -1.0 and math.isnan(at.data.metrics["p_wilcoxon_holm"])
    (baseline,) = node_runs(client, "study-e", "method:none/baseline")
    assert baseline.data.metrics == {"mIoU": 30.0, "mIoU.std": 1.0, "mIoU.ci_low": 21.0, "mIoU.ci_high": 39.0,
                                     "n_seeds": 2.0}
    assert [m.value for m in client.get_metric_history(kd.info.run_id, "mIoU")] == [33.0]

    # the same results again: nothing new, no second value in any history
    assert tracking.log_study("study-e", results, files, SUMMARY, alpha=0.05, uri=uri) == root
    assert [m.value for m in client.get_metric_history(kd.info.run_id, "mIoU")] == [33.0]
    assert len(client.search_runs([exp], run_view_type=ViewType.ALL)) == 6  # 5 nodes and the job

    # other results (a later aggregate): a new study run; the old one, its report and headline kept, replaced
    changed = copy.deepcopy(SUMMARY)
    changed["segformer_b2"]["kd"]["mIoU_mean"] = 34.0
    files = _results(results, "![mIoU](plots/miou.png) again\n")
    new_root = tracking.log_study("study-e", results, files, changed, alpha=0.05, uri=uri)
    assert new_root != root and tracking.init_study(study) == exp
    old = client.get_run(root)
    assert old.info.lifecycle_stage == "deleted" and old.data.tags["segkd.replaced_by"] == new_root
    assert old.data.tags["segkd.current"] == "false" and old.data.metrics["best.mIoU"] == 33.0
    assert "report.md" in {a.path for a in client.list_artifacts(root)}
    (current,) = client.search_runs([exp], "tags.`segkd.node` = 'study'")  # the active view
    assert current.info.run_id == new_root and current.data.metrics["best.mIoU"] == 34.0
    nodes = client.search_runs([exp], "tags.`segkd.node` != 'study'")
    assert len(nodes) == 4 and {r.data.tags[PARENT] for r in nodes} == {new_root}  # teachers, methods moved
    assert [m.value for m in client.get_metric_history(kd.info.run_id, "mIoU")] == [33.0, 34.0]
    assert client.get_run(kd.info.run_id).data.metrics["mIoU"] == 34.0
    with pytest.raises(FileNotFoundError):
        tracking.log_study("study-e", results, [results / "missing.md"], SUMMARY, alpha=0.05, uri=uri)


def test_the_experiment_holds_segkd_views_whose_filters_find_the_method_and_student_runs(store):
    """The "segkd methods" and "segkd runs" views (saved views of the run table): their filters are
    MLflow search filters that find exactly the method runs (with their summaries) and the student runs."""
    _, uri = store
    client = MlflowClient(uri)
    study = Study({"study": "study-v", "models": {"teachers": ["segformer_b2"]}, "methods": {"kd": {}, "at": {}},
                   "tracking": {"uri": uri}})
    exp = tracking.init_study(study)
    with tracking.start_run_for(make_spec("study-v"), uri=uri) as job:
        job.log_final(FINAL)
    tags = client.get_experiment(exp).tags
    views = {key.removeprefix("mlflow.sharedViewState."): tracking._read_view(value)
             for key, value in tags.items() if key.startswith("mlflow.sharedViewState.")}
    assert sorted(views) == ["segkd-methods", "segkd-runs"]
    found = {view: sorted(r.info.run_name for r in client.search_runs([exp], state["searchFilter"]))
             for view, state in views.items()}
    assert found == {"segkd-methods": ["at · segformer_b2", "baseline", "kd · segformer_b2"],
                     "segkd-runs": ["kd · seed0 · fold0"]}
    assert all(state["orderByKey"] == "tags.`mlflow.runName`" for state in views.values())
    assert "metrics.`delta_mIoU`" in views["segkd-methods"]["selectedColumns"]
    assert tracking.study_url(exp).endswith(f"/#/experiments/{exp}/runs?workflowType=machine_learning"
                                            "&viewStateShareKey=segkd-methods")
    tracking._ready.clear()
    tracking.init_study(study)  # views in place: not written again
    assert client.get_experiment(exp).tags == tags


def test_the_installed_mlflow_ui_reads_the_view_and_workflow_formats_segkd_writes():
    """segkd writes saved views and links in the format of MLflow's UI, which has no public API for
    them (tracking._write_views, tracking.study_url): fail loudly when the installed UI changes it."""
    import mlflow

    bundle = "".join(p.read_text(errors="ignore") for p in
                     (Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js").glob("*.js"))
    for needle in ('"mlflow.sharedViewState."', '"viewStateShareKey"', '"deflate;"', "selectedColumns",
                   "orderByKey", "searchFilter", '"workflowType"', '"machine_learning"', "mlflow.runName"):
        assert needle in bundle, f"MLflow's UI no longer has {needle}: update segkd.tracking's views and study_url"


def test_uri_resolution_and_idempotent_init(store, tmp_path, monkeypatch):
    root, uri = store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.resolve_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path / 'sub' / 'x.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.resolve_uri() == uri
    assert tracking.resolve_uri("http://tracking:5000") == "http://tracking:5000"
    exp = tracking.init_store(None, "study-f")  # from the environment
    tracking._ready.clear()  # forget this process's cache: the store itself must be idempotent
    assert tracking.init_store(uri, "study-f") == exp
    client = MlflowClient(uri)
    assert client.get_experiment(exp).artifact_location == str(root / "mlruns")
    assert not (tmp_path / "mlflow.db").exists()


def test_init_study_creates_every_node_once(store):
    _, uri = store
    study = Study({"study": "study-g", "models": {"teachers": ["segformer_b2", "segformer_b4"]},
                   "methods": {"kd": {}, "at": {}}, "tracking": {"uri": uri}})
    exp = tracking.init_study(study)
    assert tracking.init_study(study) == exp  # idempotent
    client = MlflowClient(uri)
    nodes = {r.data.tags["segkd.node"]: r for r in client.search_runs([exp], run_view_type=ViewType.ALL)}
    assert sorted(nodes) == sorted(["study", "teachers", "method:none/baseline", "method:segformer_b2/kd",
                                    "method:segformer_b2/at", "method:segformer_b4/kd",
                                    "method:segformer_b4/at"])
    root = nodes.pop("study").info.run_id
    assert all(r.data.tags[PARENT] == root and r.info.status == "FINISHED" for r in nodes.values())
    with tracking.start_run_for(make_spec("study-g", teacher="segformer_b4", method="at"), uri=uri) as run:
        pass  # a job finds its node instead of making another
    assert client.get_run(run.run_id).data.tags[PARENT] == nodes["method:segformer_b4/at"].info.run_id
    assert len(client.search_runs([exp], run_view_type=ViewType.ALL)) == 8


def test_flatten_params():
    flat = tracking.flatten_params({"a": {"b": {"c": 1}, "d": [1, 2], "n": None}, "e": "x", "f": None, "g": {}})
    assert flat == {"a.b.c": "1", "a.d": "[1, 2]", "e": "x", "g": "{}"}


# ----------------------------------------------------------------------- many processes at once
N_STEPS = 25  # x 2 metrics = 50 values per job, written in batches of 10


def _job(uri, spec, barrier):
    """One training job: waits for the others, then opens its run and logs in batches."""
    barrier.wait(timeout=120)
    with tracking.start_run_for(spec, uri=uri, flush_every=10) as run:
        for step in range(N_STEPS):
            run.log_metrics(step, {"loss": 1.0 / (step + 1) + spec["seed"], "lr": 1e-4 * step})
        run.log_final(FINAL)


def test_parallel_jobs_share_one_fresh_store(tmp_path):
    ctx = mp.get_context("forkserver")
    # Jobs are forked from a server that imports MLflow once (not once per job, ~3 s each);
    # it starts now, so its imports overlap with the store's creation below.
    ctx.set_forkserver_preload(["segkd.tracking", "mlflow.store.tracking.sqlalchemy_store"])
    forkserver.ensure_running()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.init_store(uri, "study-p")  # before fan-out, as the workflow does; nodes are not made yet
    specs = ([make_spec("study-p", method=m, seed=s) for m in ("kd", "at") for s in range(3)]
             + [make_spec("study-p", method="baseline"), make_spec("study-p", role="teacher")])
    barrier = ctx.Barrier(len(specs))
    jobs = [ctx.Process(target=_job, args=(uri, copy.deepcopy(s), barrier)) for s in specs]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(timeout=180)
    assert [j.exitcode for j in jobs] == [0] * len(jobs)

    client = MlflowClient(uri)
    exp = experiment_id(client, "study-p")
    for node in ("study", "teachers", "method:segformer_b2/kd", "method:segformer_b2/at", "method:none/baseline"):
        assert len(node_runs(client, "study-p", node)) == 1, node
    runs = client.search_runs([exp], "attributes.status = 'FINISHED'", run_view_type=ViewType.ALL)
    jobs_runs = [r for r in runs if "role" in r.data.tags]
    assert len(runs) == len(specs) + 5 and len(jobs_runs) == len(specs)
    seen = set()
    for r in jobs_runs:
        t = r.data.tags
        seen.add((t["role"], t["method"], t["seed"]))
        node = "teachers" if t["role"] == "teacher" else f"method:{t['teacher']}/{t['method']}"
        (parent,) = node_runs(client, "study-p", node)
        assert t[PARENT] == parent.info.run_id
        seed = int(t["seed"])
        loss = sorted((h.step, h.value) for h in client.get_metric_history(r.info.run_id, "loss"))
        assert loss == [(s, pytest.approx(1.0 / (s + 1) + seed)) for s in range(N_STEPS)]
        assert len(client.get_metric_history(r.info.run_id, "lr")) == N_STEPS
        assert r.data.metrics["mIoU"] == 50.0 and "iou.Sky" in r.data.metrics
    assert len(seen) == len(specs)


def test_an_out_of_date_store_is_one_line_naming_the_upgrade(tmp_path):
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "old.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # a current store ...
    with sqlite3.connect(db) as con:  # ... that says it is of an older MLflow (its first revision)
        con.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")
    code = ("import sys; from segkd import tracking; from segkd.errors import UserError\n"
            "try: tracking.init_store(sys.argv[1], 'study-old')\n"
            "except UserError as err: sys.exit(str(err))")
    proc = subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"MLflow store sqlite:///{db}: out-of-date schema; back it up, then run `mlflow db upgrade sqlite:///{db}`")


def test_an_artifact_added_to_a_finished_run_keeps_it_the_one_finished_run(store, tmp_path):
    _, uri = store
    spec = make_spec("study-art", seed=0, fold=1)
    with tracking.start_run_for(spec, uri=uri) as run:
        run.log_metrics(1, {"loss": 1.0})
    figure = tmp_path / "bands.png"
    figure.write_bytes(b"png")
    tracking.add_artifact(spec, run.run_id, figure, "bands", uri=uri)
    client = MlflowClient(uri)
    runs = client.search_runs([experiment_id(client, "study-art")], "tags.role = 'student'")
    assert [r.info.run_id for r in runs] == [run.run_id] and runs[0].info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.run_id, "bands")] == ["bands/bands.png"]
