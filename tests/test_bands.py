"""`segkd bands` on a real (2-iteration) teacher and freq student of the smoke study."""

import copy
import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from matplotlib.image import imread

from segkd.cli import main
from segkd.config import Study, validate
from segkd.data.augment import normalize
from segkd.data.folds import split
from segkd.data.prepare import prepare
from segkd.engine.batches import load_fold
from segkd.engine.train import train
from segkd.models import create_model
from segkd.report import band_figure

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(teacher dir, freq student dir) trained for 2 iterations each, tracking off, one thread."""
    tmp = tmp_path_factory.mktemp("bands")
    study = Study(validate(yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())))
    prepared = prepare(study.dataset, tmp / "prepared")
    folds = tmp / "folds.json"
    split(Path(prepared), folds, strategy="sequence-blocked", k=2, guard=1)

    def spec(role, **kw):
        s = copy.deepcopy(study.run_spec(role, fold=0, teacher="segformer_b2", **kw))
        s.update(prepared=str(prepared), folds_file=str(folds), tracking={"enabled": False}, iterations=2)
        s["train"]["threads"] = 1
        return s

    train(spec("teacher"), tmp / "teacher")
    student = spec("student", method="freq", seed=0)
    student["teacher_checkpoint"] = str(tmp / "teacher" / "checkpoint.pt")
    train(student, tmp / "freq")
    return tmp / "teacher", tmp / "freq"


@pytest.fixture(scope="module")
def drawn(runs, tmp_path_factory):
    """`segkd bands` on the freq run (2 images), and the maps of those images computed again."""
    _, run = runs
    out = tmp_path_factory.mktemp("fig") / "sub" / "bands.png"
    code = main(["bands", "--run", str(run), "--images", "2", "--out", str(out), "--threads", "1"])
    return code, out, band_figure.band_maps(run, images=2)


def test_cli_writes_a_deterministic_png(drawn, tmp_path):
    code, out, (maps, metrics) = drawn
    assert code == 0
    image = imread(out)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100
    title = band_figure.title(metrics["params"])
    assert title == ("segformer_b2 -> segformer_b0, freq, seed 0, fold 0: band box, ratio 0.2 (axis), "
                     "high regularize")
    again = band_figure.figure(maps, title, path=tmp_path / "again.png")  # models loaded and run a second time
    assert again.read_bytes() == out.read_bytes()


def test_maps_are_the_checkpoint_models_split_by_the_term(runs, drawn):
    _, run = runs
    maps, _ = drawn[2]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    spec = ckpt["spec"]
    # independently: the student from its checkpoint, then the saved adapter weights by hand
    student = create_model(spec["model"], num_classes=ckpt["num_classes"])
    student.load_state_dict(ckpt["model"])
    x = normalize(load_fold(spec["prepared"], spec["folds_file"], 0).test_images[:2])
    with torch.no_grad():
        decoder = student.eval()(x).decoder
    weights = ckpt["distill"]
    adapted = F.conv2d(decoder, weights["terms.freq.adapter.weight"], weights["terms.freq.adapter.bias"])
    assert maps.images.shape == (2, 32, 48, 3)
    assert maps.teacher.shape == maps.student.shape == (2, 768, 8, 12)
    torch.testing.assert_close(maps.student, adapted, rtol=1e-4, atol=1e-4)
    for kind in ("teacher", "student"):
        low, high = (getattr(maps, f"{band}_{kind[0]}") for band in ("low", "high"))
        torch.testing.assert_close(low + high, getattr(maps, kind), rtol=1e-4, atol=1e-4)
        assert low.abs().sum() > 0 and high.abs().sum() > 0
    # PC1 of the split adds up to PC1 of the feature (low centred, high not)
    np.testing.assert_allclose(maps.pc("low_t") + maps.pc("high_t"), maps.pc("teacher"), rtol=1e-3, atol=1e-3)
    # the component is the teacher's direction of largest variance
    pixels = maps.teacher.permute(0, 2, 3, 1).reshape(-1, 768).double()
    pixels -= pixels.mean(0)
    top = (pixels @ maps.component.double()).var()
    others = torch.randn(768, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.linalg.vector_norm(maps.component) == pytest.approx(1.0, abs=1e-5)
    assert bool(((pixels @ (others / others.norm(dim=0))).var(0) < top).all())
    distance = np.sqrt(((maps.high_s - maps.high_t).numpy() ** 2).sum(axis=1))
    np.testing.assert_allclose(maps.distance("high"), distance, rtol=1e-5)


def test_logs_to_the_recorded_mlflow_run(tmp_path, monkeypatch, capsys):
    calls = []
    tracking = types.ModuleType("segkd.tracking")
    tracking.add_artifact = lambda spec, run_id, path, artifact_path: calls.append(
        (spec["study"], run_id, path, artifact_path))
    monkeypatch.setitem(sys.modules, "segkd.tracking", tracking)
    png = tmp_path / "b.png"
    spec = {"study": "smoke", "tracking": {"enabled": True}}
    assert band_figure.log_figure({"params": spec, "mlflow_run_id": "abc"}, png)
    assert calls == [("smoke", "abc", png, "bands")]
    assert not band_figure.log_figure({"params": spec, "mlflow_run_id": None}, png)
    assert "recorded no MLflow run" in capsys.readouterr().err
    off = {"study": "smoke", "tracking": {"enabled": False}}
    assert not band_figure.log_figure({"params": off, "mlflow_run_id": "abc"}, png)
    assert f"tracking is disabled for this run; {png} is not logged" in capsys.readouterr().err
    assert len(calls) == 1


def test_bad_runs_fail_with_one_clear_message(runs, tmp_path, capsys):
    teacher, run = runs
    cases = [(tmp_path / "nowhere", "run directory not found"),
             (teacher, "method None has no freq term (terms: none)"),
             (run, "--images: expected at least 1, got 0")]
    kd = tmp_path / "kd"
    kd.mkdir()
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["params"].update(method="kd", terms={"kd": {"weight": 0.01}})
    (kd / "metrics.json").write_text(json.dumps(metrics))
    cases.append((kd, "method 'kd' has no freq term (terms: kd)"))
    for path, message in cases:
        images = "0" if path == run else "3"
        assert main(["bands", "--run", str(path), "--out", str(tmp_path / "x.png"), "--images", images]) == 2
        err = capsys.readouterr().err
        assert err.startswith("segkd bands: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
