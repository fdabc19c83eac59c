"""Cohort training (train.share_teacher): the students of several methods of one teacher, seed and fold
trained together, with one teacher forward per batch, end bitwise as the runs trained alone; a killed
cohort resumes each student from its own checkpoint; a finished student is evaluated again, not
retrained; a changed one is retrained."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from segkd.engine.train import train, train_cohort
from segkd.errors import TrainingDiverged, UserError
from test_train import REPO, _kill_at, data, make_spec, study  # noqa: F401  (module fixtures)

TERMS = {
    "kd": {"kd": {"weight": 0.01}},
    "at": {"at": {"weight": 1000.0}},
    "sp": {"sp": {"weight": 1.0}},
    "freq": {"freq": {"weight": 0.1, "ratio": 0.2, "high": "kd"}},
}
TIMING = ("wall_time_s", "images_per_s")  # a cohort's students report their cohort's speed


@pytest.fixture(scope="module")
def teacher(study, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(make_spec(study, data, role="teacher", teacher="segformer_b2", iterations=2), out)
    return str(out / "checkpoint.pt")


def specs(study, data, teacher, methods=TERMS, **changes):
    out = []
    for method in methods:
        spec = make_spec(study, data, teacher="segformer_b2", method="kd", teacher_checkpoint=teacher, **changes)
        spec.update(method=method, terms=TERMS[method])
        out.append(spec)
    return out


def result(run) -> dict:
    """A run's metrics.json without its speed, and its final weights."""
    metrics = json.loads((run / "metrics.json").read_text())
    history = [{k: v for k, v in h.items() if k not in TIMING} for h in metrics.pop("history")]
    weights = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    return {**{k: v for k, v in metrics.items() if k not in TIMING}, "history": history}, weights


def assert_same_run(a, b):
    (metrics_a, weights_a), (metrics_b, weights_b) = result(a), result(b)
    assert metrics_a == metrics_b  # metrics, confusion, per-class IoU, loss history, spec
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.fixture(scope="module")
def alone(study, data, teacher, tmp_path_factory):
    """Each method's student trained alone: the reference every cohort must reproduce."""
    root = tmp_path_factory.mktemp("alone")
    for spec in specs(study, data, teacher, iterations=8, checkpoint_every=2, log_every=1):
        train(spec, root / spec["method"])
    return root


def test_cohort_students_are_bitwise_the_runs_trained_alone(study, data, teacher, alone, tmp_path):
    cohort = specs(study, data, teacher, iterations=8, checkpoint_every=2, log_every=1)
    results = train_cohort(cohort, [tmp_path / spec["method"] for spec in cohort])
    assert [r["method"] for r in results] == list(TERMS)
    for method in TERMS:
        assert_same_run(tmp_path / method, alone / method)
    # the methods do differ from each other: equality above is not the same run four times
    assert len({json.dumps(r["history"][-1]["loss"]) for r in results}) == len(TERMS)


def _cohort_cmd(cohort, runs, tmp_path):
    spec_file = tmp_path / "cohort.json"
    spec_file.write_text(json.dumps(cohort))
    outs = [arg for run in runs for arg in ("--out", str(run))]
    return [sys.executable, "-m", "segkd", "cohort", "--specs", f"@{spec_file}", *outs]


def test_killed_cohort_resumes_each_student_from_its_own_checkpoint(study, data, teacher, alone, tmp_path):
    """Killed twice; before the last resume one student is set back to an older checkpoint, as a kill
    between two students' checkpoint writes leaves it: it trains alone until the others' iteration,
    where they join it on the same batch stream."""
    cohort = specs(study, data, teacher, iterations=8, checkpoint_every=2, log_every=1)
    runs = [tmp_path / spec["method"] for spec in cohort]
    cmd = _cohort_cmd(cohort, runs, tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    _kill_at(proc, runs[-1], 3)
    older = torch.load(runs[0] / "partial.pt", weights_only=False)["iteration"]
    shutil.copy(runs[0] / "partial.pt", tmp_path / "older.pt")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    _kill_at(proc, runs[-1], older + 3)
    newer = torch.load(runs[1] / "partial.pt", weights_only=False)["iteration"]
    assert newer > older
    shutil.copy(tmp_path / "older.pt", runs[0] / "partial.pt")

    resumed = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert f"[student:segformer_b0/kd/seed0/fold0] resuming from iteration {older}" in resumed.stderr
    assert f"[student:segformer_b0/at/seed0/fold0] resuming from iteration {newer}" in resumed.stderr
    for run in runs:
        assert_same_run(run, alone / run.name)
        assert not (run / "partial.pt").exists()


def test_finished_students_are_evaluated_again_and_a_changed_one_is_retrained(study, data, teacher, tmp_path,
                                                                              monkeypatch):
    """What the workflow's cohort job does when one method's spec changed: the finished students keep
    their checkpoint and their FINISHED MLflow run; the changed student trains afresh, alone."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cohort = specs(study, data, teacher, ["kd", "at"], iterations=3, tracking_uri=uri, tracking={"enabled": True})
    runs = [tmp_path / "kd", tmp_path / "at"]
    first = train_cohort(cohort, runs, replace_stale=True)
    kd_checkpoint = (runs[0] / "checkpoint.pt").read_bytes()
    for run in runs:
        (run / "metrics.json").unlink()  # as Snakemake removes a re-running job's outputs

    cohort[1]["terms"] = {"at": {"weight": 10.0}}
    second = train_cohort(cohort, runs, replace_stale=True)
    assert (runs[0] / "checkpoint.pt").read_bytes() == kd_checkpoint
    assert second[0] == first[0]  # the same metrics.json, MLflow run id included
    assert second[1]["params"]["terms"] == {"at": {"weight": 10.0}} and second[1]["history"] != first[1]["history"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("smoke").experiment_id
    students = client.search_runs([experiment], "tags.role = 'student'")
    assert sorted((r.data.tags["method"], r.info.status) for r in students) == [("at", "FINISHED"), ("kd", "FINISHED")]
    from mlflow.entities import ViewType

    (replaced,) = [r for r in client.search_runs([experiment], "tags.role = 'student'", run_view_type=ViewType.ALL)
                   if r.info.lifecycle_stage == "deleted"]  # the first at run, kept in the history, replaced
    assert replaced.data.tags["method"] == "at" and replaced.info.status == "FINISHED"
    assert replaced.data.tags["segkd.replaced_by"] == second[1]["mlflow_run_id"]


def test_a_diverging_student_fails_its_cohort_after_the_others_finish(study, data, teacher, tmp_path):
    cohort = specs(study, data, teacher, ["kd", "at"], iterations=3)
    cohort[1]["terms"] = {"at": {"weight": 1e39}}  # inf in float32
    with pytest.raises(TrainingDiverged, match=r"student:segformer_b0/at/seed0/fold0: non-finite loss at iteration 1"):
        train_cohort(cohort, [tmp_path / "kd", tmp_path / "at"])
    assert (tmp_path / "kd" / "metrics.json").is_file() and not (tmp_path / "at" / "metrics.json").exists()


@pytest.mark.parametrize("change, message", [
    ({"seed": 1}, "kd differs from at in seed"),
    ({"fold": 1}, "kd differs from at in fold"),
    ({"lr": 1e-3}, "kd differs from at in train"),
    ({"method": "at"}, "names a method twice"),
], ids=["seed", "fold", "train", "duplicate"])
def test_a_cohort_is_refused_unless_its_runs_share_everything_but_the_method(study, data, teacher, tmp_path,
                                                                             change, message):
    at, kd = specs(study, data, teacher, ["at", "kd"], iterations=2)
    if "method" in change:
        kd["method"] = change["method"]
    else:
        kd = make_spec(study, data, teacher="segformer_b2", method="kd", teacher_checkpoint=teacher, iterations=2,
                       **change)
    with pytest.raises(UserError, match=message):
        train_cohort([at, kd], [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
