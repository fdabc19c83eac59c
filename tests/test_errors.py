"""Bad input through the real command line: one line `segkd <command>: error: ...` on stderr, exit
code 2, no traceback and nothing written.

The checkpoints are real: one 2-iteration baseline run on the smoke study, and files derived from it
(a bare state dict, a spec naming another model, data of another size or content).
"""

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from segkd import cli
from segkd.config import ConfigError, Study, load_study, spec_json, validate, validate_spec
from segkd.data.folds import split
from segkd.data.prepare import prepare
from segkd.engine.batches import load_fold
from segkd.engine.train import train
from segkd.runs import expected_runs

from test_data_camvid import make_segnet
from test_report import make_study
from test_train import make_spec

REPO = Path(__file__).resolve().parents[1]
STUDIES = [REPO / "params.yaml", *sorted((REPO / "studies").glob("*.yaml"))]


def segkd(capsys, *argv):
    """Run `segkd argv...` in this process; returns (exit code, stdout, stderr lines)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err.splitlines()


def assert_one_error(result, command: str, *fragments: str) -> str:
    """Exit code 2 and exactly one stderr line, the error, holding every fragment; returns the line."""
    rc, out, err = result
    assert rc == 2, (out, err)
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith(f"segkd {command}: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert "Traceback" not in line and not out
    return line


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def study():
    return Study(validate(yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())))


def prepare_and_split(dataset: dict, root: Path, folds: dict) -> tuple[Path, Path]:
    prepared = Path(prepare(dataset, root / "prepared"))
    split(prepared, root / "folds.json", strategy=folds["strategy"], k=folds["k"], guard=folds["guard"])
    return prepared, root / "folds.json"


@pytest.fixture(scope="module")
def data(study, tmp_path_factory):
    return prepare_and_split(study.dataset, tmp_path_factory.mktemp("data"), study.params["folds"])


@pytest.fixture(scope="module")
def run(study, data, tmp_path_factory):
    """A finished 2-iteration baseline run on fold 0; its checkpoint stores the identity of its data
    (as `segkd train` writes it)."""
    out = tmp_path_factory.mktemp("run")
    train(make_spec(study, data, iterations=2), out)
    path = out / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    if "data" not in ckpt:
        ckpt["data"] = load_fold(*data, ckpt["spec"]["fold"]).identity
        torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def other_data(study, tmp_path_factory):
    """Prepared data unlike the run's: another size, other images of the same size, and the run's
    images split into other folds."""
    root = tmp_path_factory.mktemp("other")
    folds = study.params["folds"]
    bigger = dict(study.dataset, height=48)
    reseeded = dict(study.dataset, synthetic=dict(study.dataset["synthetic"], seed=1))
    return {"size": prepare_and_split(bigger, root / "size", folds),
            "content": prepare_and_split(reseeded, root / "content", folds),
            "split": prepare_and_split(study.dataset, root / "split", dict(folds, guard=0))}


def derived(run: Path, tmp_path: Path, change) -> Path:
    """A copy of the run's checkpoint after `change(ckpt)` (which may return a replacement)."""
    ckpt = torch.load(run, weights_only=False)
    ckpt = change(ckpt) or ckpt
    path = tmp_path / "derived.pt"
    torch.save(ckpt, path)
    return path


# --------------------------------------------------------------------------- 1-3: segkd evaluate

def test_state_dict_is_not_a_run_checkpoint(run, tmp_path, capsys):
    weights = derived(run, tmp_path, lambda ckpt: ckpt["model"])
    out = tmp_path / "m.json"
    line = assert_one_error(segkd(capsys, "evaluate", "--checkpoint", weights, "--out", out), "evaluate",
                            str(weights), "not a segkd run checkpoint (it has no run spec)", "models.pretrained")
    assert len(line) - len(str(weights)) < 150  # short, whatever the temporary folder's name
    assert not out.exists()


def test_spec_naming_another_model_than_its_weights(run, tmp_path, capsys):
    def relabel(ckpt):
        ckpt["spec"]["model"] = "segformer_b2"

    mixed = derived(run, tmp_path, relabel)
    out = tmp_path / "m.json"
    line = assert_one_error(segkd(capsys, "evaluate", "--checkpoint", mixed, "--out", out), "evaluate",
                            str(mixed), "do not fit segformer_b2", "they look like segformer_b0's")
    assert len(line) < 400  # counts and one example, not every key
    assert not out.exists()


def test_out_in_a_missing_directory_fails_before_evaluating(run, tmp_path, capsys, monkeypatch):
    import segkd.engine.evaluate as evaluate

    def must_not_run(*args, **kwargs):
        raise AssertionError("evaluated although the output cannot be written")

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", must_not_run)
    out = tmp_path / "nowhere" / "m.json"
    assert_one_error(segkd(capsys, "evaluate", "--checkpoint", run, "--out", out), "evaluate",
                     "--out: directory", "nowhere", "does not exist")
    assert not out.parent.exists()


def test_out_is_written_atomically(run, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc, stdout, err = segkd(capsys, "evaluate", "--checkpoint", run, "--out", out)
    assert rc == 0, err
    assert json.loads(out.read_text()) == json.loads(stdout)
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left behind


# ------------------------------------------------------------------------------- 4-6: JSON and specs

@pytest.mark.parametrize("argv, option", [
    (["train", "--params", '{"study": "x",, }'], "--params"),
    (["train", "--spec", '{"role": "student" "model": 1}'], "--spec"),
    (["prepare", "--dataset", '{"name": synthetic}'], "--dataset"),
    (["split", "--dataset", '{"name": "synthetic", "height": 32, "width": 48}', "--folds", "{strategy: 1}"],
     "--folds"),
], ids=["params", "spec", "dataset", "folds"])
def test_malformed_json_names_the_option(argv, option, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_error(segkd(capsys, *argv), argv[0], f"{option}: not valid JSON (", "line 1 column")
    assert not list(tmp_path.iterdir())


def test_spec_file_not_found(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_error(segkd(capsys, "train", "--spec", "@missing.json", "--out", "run"), "train",
                     "--spec: file not found: missing.json")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("train"), "--spec: <root>: 'train' is a required property"),
    (lambda s: s["train"].update(batch_size="eight"), "--spec: train.batch_size: 'eight' is not of type 'integer'"),
    (lambda s: s["dataset"].update(height=8), "--spec: dataset.height: 8 is less than the minimum of 16"),
    (lambda s: s.update(colour="red"), "--spec: <root>: Additional properties are not allowed ('colour'"),
    (lambda s: s["terms"].update(kd={"weight": 1, "temprature": 2}), "--spec: terms.kd: unknown option 'temprature'"),
], ids=["no_train", "batch_size", "height", "unknown_key", "term_option"])
def test_invalid_spec_names_the_key(study, change, message, tmp_path, capsys):
    spec = study.run_spec("student", method="baseline", seed=0, fold=0)
    change(spec)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "run"
    assert_one_error(segkd(capsys, "train", "--spec", f"@{tmp_path / 'spec.json'}", "--out", out), "train", message)
    assert not out.exists()


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_run_spec_of_the_shipped_studies_validates_unchanged(path):
    study = load_study(path)
    for run in expected_runs(study):
        spec = run.spec(study)
        assert spec_json(validate_spec(spec)) == spec_json(spec), run.label


def test_validate_spec_fills_train_defaults_and_refuses_non_objects(study):
    spec = study.run_spec("teacher", teacher="segformer_b2", fold=0)
    del spec["train"]["precision"]
    assert validate_spec(spec)["train"]["precision"] == "auto" and "precision" not in spec["train"]
    with pytest.raises(ConfigError, match=r"--spec: expected a JSON object, got list"):
        validate_spec([], source="--spec")


# ------------------------------------------------------------------------ 7: the data of a checkpoint

@pytest.mark.parametrize("kind, message", [
    ("size", "prepared data is ('synthetic', 48, 48), the run expects ('synthetic', 32, 48)"),
    ("content", "prepared data differs from the data the run was trained on (arrays_sha256.images "),
    ("split", "prepared data differs from the data the run was trained on (fold_sha256 "),
])
def test_evaluate_refuses_data_the_run_was_not_trained_on(run, other_data, kind, message, tmp_path, capsys):
    prepared, folds = other_data[kind]
    out = tmp_path / "m.json"
    line = assert_one_error(segkd(capsys, "evaluate", "--checkpoint", run, "--prepared", prepared,
                                  "--folds-file", folds, "--out", out), "evaluate", message)
    if kind != "size":
        assert "run vs given); evaluate with --prepared/--folds-file of the run, or re-train" in line
    assert not out.exists()


def test_old_checkpoint_without_data_identity_still_checks_name_and_size(run, other_data, tmp_path, capsys):
    old = derived(run, tmp_path, lambda ckpt: {k: v for k, v in ckpt.items() if k != "data"})
    prepared, folds = other_data["size"]
    assert_one_error(segkd(capsys, "evaluate", "--checkpoint", old, "--prepared", prepared, "--folds-file", folds),
                     "evaluate", "the run expects ('synthetic', 32, 48)")


def test_another_fold_warns_that_its_test_images_were_trained_on(run, capsys):
    rc, out, err = segkd(capsys, "evaluate", "--checkpoint", run, "--fold", 1)
    assert rc == 0 and json.loads(out)["fold"] == 1
    assert len(err) == 1 and err[0].startswith("segkd evaluate: warning: "), err
    assert "held-out images of fold 1 were training images of the run (trained on fold 0)" in err[0]
    rc, out, err = segkd(capsys, "evaluate", "--checkpoint", run)  # its own fold: nothing to say
    assert rc == 0 and err == []


def test_another_fold_of_other_arrays_is_refused(run, other_data, capsys):
    prepared, folds = other_data["content"]
    assert_one_error(segkd(capsys, "evaluate", "--checkpoint", run, "--fold", 1, "--prepared", prepared,
                           "--folds-file", folds), "evaluate", "(arrays_sha256.images ")


# -------------------------------------------------------------------------- 8: stale runs in aggregate

@pytest.fixture
def no_mlflow(monkeypatch):
    tracking = types.ModuleType("segkd.tracking")
    tracking.log_study = lambda name, results, paths, summary, alpha, uri: None
    monkeypatch.setitem(sys.modules, "segkd.tracking", tracking)


def test_aggregate_refuses_or_excludes_stale_runs(tmp_path, capsys, no_mlflow):
    study, runs, _ = make_study(tmp_path, effects={"kd": 0.02}, teachers=["segformer_b2"])
    changed = runs / "students" / "segformer_b2" / "kd" / "seed1" / "fold0" / "metrics.json"
    metrics = json.loads(changed.read_text())
    metrics["params"]["terms"]["kd"]["weight"] = 0.5
    changed.write_text(json.dumps(metrics))
    unchecked = runs / "teachers" / "segformer_b2" / "fold1" / "metrics.json"
    metrics = json.loads(unchecked.read_text())
    del metrics["params"]
    unchecked.write_text(json.dumps(metrics))
    out = tmp_path / "results"
    argv = ["aggregate", "--params", json.dumps(study.params), "--runs", runs, "--out", out]

    line = assert_one_error(segkd(capsys, *argv), "aggregate", "2 of 14 runs are stale", "--exclude-stale")
    # study order (teachers first), and the first one's reason
    assert f": {unchecked}, {changed}; the first: no run spec recorded (no 'params');" in line
    assert not out.exists()

    unchecked.unlink()
    assert_one_error(segkd(capsys, *argv, "--allow-missing"), "aggregate", "1 of 14 runs are stale",
                     f": {changed}; the first: terms.kd.weight: 0.5 vs 1.0 (run vs study);")
    assert not out.exists()

    rc, _, err = segkd(capsys, *argv, "--allow-missing", "--exclude-stale")
    assert rc == 0, err
    assert err == [f"segkd aggregate: warning: stale run left out: {changed}: terms.kd.weight: 0.5 vs 1.0 "
                   "(run vs study)"]
    report = (out / "report.md").read_text()
    assert "1 run was trained under another spec than the study's (stale) and is left out" in report
    assert f"- `{changed.as_posix()}`: terms.kd.weight: 0.5 vs 1.0 (run vs study)" in report
    assert "1 expected run is missing" in report and "12 of 14 expected runs" in report


# ------------------------------------------------------------------------------ 9: an empty CamVid

@pytest.mark.parametrize("splits, message", [
    ({"train": [], "val": [], "test": []}, "train: no images in train/ or trainannot/"),
    ({"train": [], "test": ["Seq05VD_f00000"]}, "train: no images in train/ or trainannot/"),
    ({"test": ["Seq05VD_f00000", "Seq05VD_f00030"]}, "no training images (none of the 2 labelled images"),
], ids=["all_empty", "train_empty", "no_train_split"])
def test_prepare_refuses_a_camvid_without_training_images(splits, message, tmp_path, capsys):
    root = make_segnet(tmp_path / "cv", splits)
    dataset = {"name": "camvid", "root": str(root), "height": 16, "width": 16}
    out = tmp_path / "prepared"
    assert_one_error(segkd(capsys, "prepare", "--dataset", json.dumps(dataset), "--out", out), "prepare", message)
    assert not out.exists()
