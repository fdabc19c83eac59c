"""The training engine on the smoke study: determinism, resume after a kill, NaN guard, teacher
checks, and the MLflow run in a real local store."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from segkd.config import Study, validate
from segkd.data.folds import split
from segkd.data.prepare import prepare
from segkd.engine.train import train
from segkd.errors import TrainingDiverged, UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    return Study(validate(yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())))


@pytest.fixture(scope="module")
def data(study, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepared = prepare(study.dataset, root / "prepared")
    folds = root / "folds.json"
    f = study.params["folds"]
    split(Path(prepared), folds, strategy=f["strategy"], k=f["k"], guard=f["guard"])
    return Path(prepared), folds


def make_spec(study, data, **changes):
    prepared, folds = data
    method = changes.pop("method", "baseline")
    teacher = changes.pop("teacher", None)
    role = changes.pop("role", "student")
    if role == "teacher":
        spec = study.run_spec("teacher", teacher=teacher, fold=changes.pop("fold", 0))
    else:
        spec = study.run_spec("student", teacher=teacher, method=method, seed=changes.pop("seed", 0),
                              fold=changes.pop("fold", 0))
    spec = copy.deepcopy(spec)
    spec.update(prepared=str(prepared), folds_file=str(folds), tracking={"enabled": False})
    spec["train"]["threads"] = 1
    for key, value in changes.items():
        target = spec["train"] if key in spec["train"] else spec
        target[key] = value
    return spec


def numbers(metrics):
    return {k: metrics[k] for k in ("iou", "acc", "mIoU", "mPA", "aAcc", "confusion")}


def test_same_seed_gives_identical_metrics_and_other_seed_differs(study, data, tmp_path):
    spec = make_spec(study, data, iterations=4)
    a = train(spec, tmp_path / "a")
    b = train(spec, tmp_path / "b")
    assert numbers(a) == numbers(b)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    c = train(make_spec(study, data, iterations=4, seed=1), tmp_path / "c")
    assert [h["loss"] for h in c["history"]] != [h["loss"] for h in a["history"]]
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["role"] == "student" and saved["method"] == "baseline" and saved["iterations"] == 4
    assert (tmp_path / "a" / "checkpoint.pt").is_file() and not (tmp_path / "a" / "partial.pt").exists()
    final = __import__("torch").load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert final["finished"] and not {"optimizer", "scheduler", "scaler", "sampler", "rng"} & set(final)
    assert numbers(train(spec, tmp_path / "a")) == numbers(a)  # evaluated again from its weights alone

    # `segkd evaluate` on the final checkpoint reproduces the run's own evaluation, and takes another fold
    from segkd.engine.evaluate import evaluate_checkpoint

    again = evaluate_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert numbers(again) == numbers(a)
    other = evaluate_checkpoint(tmp_path / "a" / "checkpoint.pt", fold=1)
    assert other["fold"] == 1 and other["confusion"] != a["confusion"]


def _start(spec, run, tmp_path):
    spec_file = tmp_path / f"{run.name}.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "segkd", "train", "--spec", f"@{spec_file}", "--out", str(run)]
    return cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)


def _kill_at(proc, run, iteration):
    """SIGKILL the training process once its progress.json says it passed `iteration`."""
    deadline = time.monotonic() + 180
    while True:
        try:
            if json.loads((run / "progress.json").read_text())["iteration"] >= iteration:
                break
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists(), "the run finished before it could be killed"


def test_non_finite_loss_stops_with_iteration_and_keeps_last_checkpoint(study, data, tmp_path):
    spec = make_spec(study, data, iterations=20, checkpoint_every=1, lr=1e30, warmup_iterations=0)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at iteration \d+: task="):
        train(spec, tmp_path / "run")
    assert (tmp_path / "run" / "partial.pt").is_file()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_student_checks_its_teacher_before_training(study, data, tmp_path):
    teacher_spec = make_spec(study, data, role="teacher", teacher="segformer_b2", iterations=2)
    train(teacher_spec, tmp_path / "teacher")
    ckpt = str(tmp_path / "teacher" / "checkpoint.pt")

    ok = make_spec(study, data, teacher="segformer_b2", method="kd", iterations=2, teacher_checkpoint=ckpt)
    result = train(ok, tmp_path / "student")
    assert {"task", "kd"} <= set(result["history"][-1])

    other_fold = make_spec(study, data, teacher="segformer_b2", method="kd", fold=1, teacher_checkpoint=ckpt)
    with pytest.raises(UserError, match="teacher fold is 0, the student run needs 1"):
        train(other_fold, tmp_path / "bad")
    missing = make_spec(study, data, teacher="segformer_b2", method="kd", teacher_checkpoint=str(tmp_path / "no.pt"))
    with pytest.raises(UserError, match="teacher checkpoint not found"):
        train(missing, tmp_path / "bad2")


def test_run_is_logged_to_a_real_mlflow_store(study, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(study, data, iterations=3, log_every=1, tracking_uri=uri, tracking={"enabled": True})
    result = train(spec, tmp_path / "run")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "baseline" and run.data.tags["seed"] == "0" and run.data.tags["fold"] == "0"
    assert run.data.params["train.lr"] == str(spec["train"]["lr"]) or json.loads(run.data.params["train.lr"]) == spec["train"]["lr"]
    assert run.data.metrics["mIoU"] == pytest.approx(100 * result["mIoU"])  # percent in MLflow, as in the report
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "confusion.png"} <= artifacts


@pytest.fixture(scope="module")
def teacher_checkpoint(study, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(make_spec(study, data, role="teacher", teacher="segformer_b2", iterations=2), out)
    return str(out / "checkpoint.pt")


@pytest.mark.parametrize("terms", [
    {"kd": {"weight": 0.01}}, {"at": {"weight": 1000.0}}, {"sp": {"weight": 1.0}}, {"fitnet": {"weight": 1.0}},
    {"cwd": {"weight": 3.0}}, {"freq": {"weight": 0.1, "ratio": 0.2, "high": "kd"}},
    {"at": {"weight": 1000.0}, "freq": {"weight": 0.1, "high": "regularize"}},
], ids=lambda t: "+".join(t))
def test_every_method_trains_a_real_student(study, data, teacher_checkpoint, tmp_path, terms):
    spec = make_spec(study, data, teacher="segformer_b2", method="kd", iterations=2, log_every=1,
                     teacher_checkpoint=teacher_checkpoint)
    spec["terms"] = terms
    result = train(spec, tmp_path / "run")
    last = result["history"][-1]
    for name in terms:
        assert name in last and last[name] > 0 and last[name] == last[name]  # logged, positive, not NaN
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["params"]["terms"] == terms
    deployable = set(__import__("torch").load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"])
    assert not any("adapter" in key for key in deployable)


@pytest.mark.parametrize("precision", ["bf16"])
def test_adapter_methods_train_under_reduced_precision(study, data, teacher_checkpoint, tmp_path, precision):
    spec = make_spec(study, data, teacher="segformer_b2", method="freq", iterations=1, log_every=1,
                     teacher_checkpoint=teacher_checkpoint, precision=precision)
    spec["terms"] = {"freq": {"weight": 0.1, "high": "kd"}, "fitnet": {"weight": 1.0}}
    result = train(spec, tmp_path / "run")
    assert result["precision"] == precision
    assert all(v == v for v in result["history"][-1].values())


def _mlflow_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("smoke")
    return client, client.search_runs([experiment.experiment_id], "tags.role = 'student'", max_results=50)


@pytest.mark.parametrize("kill_at, checkpoint_every", [(12, 5), (3, 1000)],
                         ids=["between-checkpoints", "before-first-checkpoint"])
def test_killed_and_resumed_run_is_one_complete_mlflow_run(study, data, tmp_path, kill_at, checkpoint_every):
    """A `kill -9` of the training process, then the same command again: the run resumes from its last
    checkpoint (or starts afresh before the first) and ends with the metrics and loss history of an
    uninterrupted run. The kill loses the metrics buffered in the process; the resumed job logs every
    step exactly once, into the same MLflow run, which ends FINISHED."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(study, data, iterations=20, checkpoint_every=checkpoint_every, log_every=1,
                     tracking_uri=uri, tracking={"enabled": True})
    reference = train({**spec, "tracking": {**spec["tracking"], "enabled": False}}, tmp_path / "reference")
    run = tmp_path / "run"
    cmd, proc = _start(spec, run, tmp_path)
    _kill_at(proc, run, kill_at)
    client, runs = _mlflow_runs(uri)
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    logged_at_kill = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    assert logged_at_kill != list(range(1, kill_at + 1)), "nothing was lost at the kill: the test shows nothing"
    (run / ".partial.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # what a kill inside save_atomic leaves

    resumed = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    last_checkpoint = kill_at // checkpoint_every * checkpoint_every
    assert (f"resuming from iteration {last_checkpoint}" in resumed.stderr) == (last_checkpoint > 0), resumed.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert numbers(metrics) == numbers(reference)
    assert [h["loss"] for h in metrics["history"]] == [h["loss"] for h in reference["history"]]
    client, runs = _mlflow_runs(uri)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    assert runs[0].info.status == "FINISHED"
    for key in ("loss", "lr", "task", "images_per_s"):
        assert [m.step for m in client.get_metric_history(runs[0].info.run_id, key)] == list(range(1, 21)), key
    assert metrics["mlflow_run_id"] == runs[0].info.run_id
    assert [m.value for m in client.get_metric_history(runs[0].info.run_id, "loss")] == \
        [h["loss"] for h in metrics["history"]]
    assert not list(run.glob(".*.tmp")) and not (run / "progress.json").exists()


def test_failed_start_leaves_no_run_directory(study, data, tmp_path):
    missing = make_spec(study, data, teacher="segformer_b2", method="kd", teacher_checkpoint=str(tmp_path / "no.pt"))
    with pytest.raises(UserError, match="teacher checkpoint not found"):
        train(missing, tmp_path / "runs" / "students" / "kd" / "seed0" / "fold0")
    assert not (tmp_path / "runs").exists()


def test_rerun_removes_the_confusion_plot_of_the_run_it_replaces(study, data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "confusion.png").write_bytes(b"the plot of an earlier run")
    with pytest.raises(UserError):
        train(make_spec(study, data, iterations=2, batch_size=10_000), run)
    assert not (run / "confusion.png").exists() and run.is_dir()


def test_a_diverged_run_names_the_first_bad_iteration_after_more_steps(study, data, tmp_path):
    """The loss's finiteness is read at log and checkpoint points only (FiniteWatch): checked every 5
    steps, the error names the same first non-finite iteration as when checked at every step, and no
    checkpoint written at or after it is kept."""
    import re

    import torch

    first = {}
    for every in (1, 5):
        spec = make_spec(study, data, iterations=20, checkpoint_every=every, log_every=every, lr=1e30,
                         warmup_iterations=0)
        with pytest.raises(TrainingDiverged, match=r"non-finite loss at iteration \d+: task=") as err:
            train(spec, tmp_path / f"every{every}")
        first[every] = int(re.search(r"iteration (\d+)", str(err.value)).group(1))
        partial = tmp_path / f"every{every}" / "partial.pt"
        if partial.exists():
            assert torch.load(partial, weights_only=False)["iteration"] < first[every]
        assert not (tmp_path / f"every{every}" / "metrics.json").exists()
    assert first[5] == first[1] and first[1] % 5 != 0  # named, not the log point that found it


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_a_gpu_step_does_not_wait_for_the_device(study, data):
    """Between log points a step never reads the device (torch's sync debug mode raises on a sync)."""
    import torch

    from segkd.data.augment import Augment
    from segkd.engine import train as engine

    spec = make_spec(study, data, device="cuda")
    device = torch.device("cuda")
    fold = engine.load_fold(spec["prepared"], spec["folds_file"], 0, spec["dataset"], device=device)
    (state,), _, _ = engine.build_states([spec], fold, device, "bf16")
    augment, watch = Augment(scale=(0.75, 1.5), flip=True, photometric=True, crop=(24, 32)), engine.FiniteWatch()
    engine.next_batch(state, fold, augment, device)  # the first call may initialise things
    torch.cuda.set_sync_debug_mode("error")
    try:
        for it in range(1, 4):
            x, y = engine.next_batch(state, fold, augment, device)
            terms = engine.student_losses(state.model, x, y, "bf16")
            watch.record(it, engine.optimise(state, terms), terms)
            state.scheduler.step_update(it)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    watch.check(terms.keys(), "partial.pt")


def test_weighing_the_terms_changes_no_number_of_the_run(study, data, teacher_checkpoint, tmp_path):
    """Each term's share of the loss and gradient-norm ratio, measured at a few log points, leave the run
    bit-identical to one without (metrics, confusion, loss history, final weights); freq's backward
    overwrites what it saved, the case where walking the graph twice would go wrong. A cohort records
    the same values, and a doubled weight doubles the term's gradient ratio at the first step (same
    forward, the gradient of the weighted term)."""
    import torch

    from segkd.engine.train import train_cohort
    from segkd.report.strength import GRAD_RATIO, SHARE

    terms = {"at": {"weight": 1000.0}, "freq": {"weight": 0.1, "high": "regularize"}}
    spec = make_spec(study, data, teacher="segformer_b2", method="kd", iterations=3, log_every=1,
                     teacher_checkpoint=teacher_checkpoint)
    spec["terms"] = terms
    on, off = train(spec, tmp_path / "on"), train(spec, tmp_path / "off", strength=False)
    keys = {prefix + t for prefix in (SHARE, GRAD_RATIO) for t in terms}

    def without(history, drop):
        return [{k: v for k, v in h.items() if k not in drop | {"images_per_s"}} for h in history]

    assert numbers(on) == numbers(off) and without(on["history"], keys) == without(off["history"], set())
    weights = [torch.load(tmp_path / run / "checkpoint.pt", weights_only=False)["model"] for run in ("on", "off")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert all(keys <= set(h) for h in on["history"]) and not any(keys & set(h) for h in off["history"])
    for h in on["history"]:
        for t in terms:
            assert h[SHARE + t] == pytest.approx(h[t] / h["loss"], rel=1e-5) and h[GRAD_RATIO + t] > 0

    doubled = copy.deepcopy(spec)
    doubled.update(method="at", terms={**terms, "at": {"weight": 2000.0}})
    alone, twice = train_cohort([spec, doubled], [tmp_path / "cohort-a", tmp_path / "cohort-b"])
    assert without(alone["history"], set()) == without(on["history"], set())
    first, first_doubled = on["history"][0], twice["history"][0]
    assert first_doubled[GRAD_RATIO + "at"] == pytest.approx(2 * first[GRAD_RATIO + "at"], rel=1e-6)
    assert first_doubled[GRAD_RATIO + "freq"] == pytest.approx(first[GRAD_RATIO + "freq"], rel=1e-6)


def test_strength_points_are_a_few_log_points():
    from segkd.engine.train import strength_points

    assert strength_points(120, 10) == {10, 30, 60, 90, 120}
    assert strength_points(3, 1) == {1, 2, 3} and strength_points(7, 5) == {5, 7}  # 7: the last step logs
    assert len(strength_points(40_000, 50)) == 5
