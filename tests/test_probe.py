"""The low-pass probe (`segkd probe`) on a real trained run of the smoke study, and its part of the
report (`segkd aggregate`) on hand-built probe tables with known numbers."""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats as sps

from segkd import layout, probe
from segkd.cli import main
from segkd.config import Study, spec_hash, validate
from segkd.data.augment import normalize
from segkd.data.folds import split
from segkd.data.prepare import prepare
from segkd.distill.bands import BANDS
from segkd.engine.batches import load_fold
from segkd.engine.train import train
from segkd.errors import UserError
from segkd.report import aggregate as agg
from segkd.runs import expected_runs
from test_report import make_study

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A baseline B0 trained 3 steps on the smoke study (one thread, as the workflow trains)."""
    study = Study(validate(yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())))
    root = tmp_path_factory.mktemp("probe")
    prepared = Path(prepare(study.dataset, root / "prepared"))
    folds = root / "folds.json"
    f = study.params["folds"]
    split(prepared, folds, strategy=f["strategy"], k=f["k"], guard=f["guard"])
    spec = copy.deepcopy(study.run_spec("student", method="baseline", seed=0, fold=0))
    spec.update(prepared=str(prepared), folds_file=str(folds), tracking={"enabled": False})
    spec["train"]["threads"] = 1
    out = root / "run"
    metrics = train(spec, out)
    return out, metrics


@pytest.mark.parametrize("band, tap", [("box", "decoder"), ("dct", "decoder"), ("box", "logits"), ("box", "stage2")])
def test_ratio_one_reproduces_the_runs_own_evaluation_exactly(run, band, tap):
    out, metrics = run
    table = probe.probe(out, ratios=[0.2, 1.0], band=band, tap=tap, device="cpu")
    own = table[(table["pass"] == "low") & (table["ratio"] == 1.0)].iloc[0]
    assert [own[k] for k in ("mIoU", "mPA", "aAcc")] == [metrics[k] for k in ("mIoU", "mPA", "aAcc")]
    assert (table["run_mIoU"] == metrics["mIoU"]).all() and (table["spec_hash"] == spec_hash(metrics["params"])).all()
    # a band that drops frequencies changes the model's predictions; the high band alone at 1 is no feature
    assert table.loc[(table["pass"] == "high") & (table["ratio"] == 1.0), "mIoU"].iloc[0] != metrics["mIoU"]
    assert list(table.columns) == probe.COLUMNS and len(table) == 4


def test_low_and_high_bands_sum_to_the_feature(run):
    """What the head receives in the low and the high pass at one ratio adds up to the decoder feature."""
    out, metrics = run
    from segkd.engine import checkpoint
    from segkd.models import create_model

    ckpt = checkpoint.load_run_checkpoint(out / "checkpoint.pt")
    model = create_model("segformer_b0", num_classes=11).eval()
    checkpoint.load_model_state(model, ckpt, out)
    spec = ckpt["spec"]
    data = load_fold(spec["prepared"], spec["folds_file"], 0, spec["dataset"])
    x = normalize(data.test_images[:4])
    seen = []
    hook = lambda _m, _a, o: seen.append(o.float().clone())  # noqa: E731  (after the probe's own hook)
    for name in BANDS:
        for ratio in (0.0, 0.2, 0.5, 1.0):
            split_ = probe.make_split(name, ratio)
            with torch.no_grad():
                for index in (0, 1):
                    with probe.replaced(model, "decoder", lambda m: probe.bands_of(split_, m)[index]):
                        handle = model.decode_head.dropout.register_forward_hook(hook)
                        model(x)
                        handle.remove()
                handle = model.decode_head.dropout.register_forward_hook(hook)
                model(x)
                handle.remove()
            low, high, feature = seen[-3:]
            assert torch.allclose(low + high, feature, atol=1e-5), (name, ratio)
            if ratio == 1.0 and name in ("box", "dct"):  # every frequency kept: the feature itself, bit for bit
                assert torch.equal(low, feature) and not high.any(), name
                assert not torch.equal(split_.low(feature), feature)  # which its projection would round
            if ratio < 1.0:
                assert not torch.allclose(low, feature, atol=1e-3), (name, ratio)  # the band did something


def test_probe_command_writes_the_table_and_refuses_bad_input(run, tmp_path, capsys):
    out, metrics = run
    target = tmp_path / "probe.csv"
    assert main(["probe", "--run", str(out), "--ratios", "0.1,1", "--out", str(target), "--threads", "1"]) == 0
    table = pd.read_csv(target)
    assert table.loc[(table["pass"] == "low") & (table["ratio"] == 1.0), "mIoU"].iloc[0] == metrics["mIoU"]
    for argv, message in ((["--ratios", "0.1,2"], "--ratios: each ratio must be in [0, 1], got 2.0"),
                          (["--ratios", "0.1,0.1"], "--ratios: repeated ratio"),
                          (["--band", "square"], "--band: expected one of box"),
                          (["--tap", "stage9"], "--tap: expected one of decoder")):
        assert main(["probe", "--run", str(out), "--out", str(tmp_path / "x.csv"), *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["probe", "--run", str(tmp_path / "nope")]) == 2
    assert "--run: run directory not found" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


# ----------------------------------------------------------------- the report's part

RATIOS = [0.1, 0.5, 1.0]
PROBE = {"enabled": True, "ratios": RATIOS, "band": "box", "ratio_mode": "axis", "tap": "decoder",
         "runs": ["teacher", "baseline", "student"]}
# low-band share of a model's own mIoU kept at each ratio: the teacher keeps 95% from 0.5, kd from 0.1,
# the baseline never below 1
KEPT = {"teacher": [0.6, 0.96, 1.0], "baseline": [0.5, 0.9, 1.0], "kd": [0.97, 0.99, 1.0]}


def write_probe_tables(study, runs: Path, probes: Path, skip=None) -> dict:
    """A probe table per run from its metrics.json, low band = KEPT share of its mIoU (+ noise by seed)."""
    written = {}
    for r in expected_runs(study):
        if r.dir == skip:
            continue
        metrics = json.loads((runs / r.dir.relative_to(layout.RUNS) / "metrics.json").read_text())
        kept = KEPT["teacher" if r.role == "teacher" else r.method]
        rows = [{"role": r.role, "teacher": r.teacher, "method": r.method, "model": r.model, "seed": r.seed,
                 "fold": r.fold, "tap": "decoder", "band": "box", "ratio_mode": "axis", "pass": kind,
                 "ratio": ratio, "mIoU": metrics["mIoU"] * (share if kind == "low" else 1 - share) + 0.001 * r.seed,
                 "mPA": 0.5, "aAcc": 0.5, "run_mIoU": metrics["mIoU"], "precision": "fp32",
                 "spec_hash": spec_hash(r.spec(study))}
                for kind in ("low", "high") for ratio, share in zip(RATIOS, kept)]
        path = layout.probe_table(r.dir, probes)
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_table(pd.DataFrame(rows, columns=probe.COLUMNS), path)
        written[r.dir] = pd.DataFrame(rows)
    return written


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lowpass")
    study, runs, _ = make_study(tmp, effects={"kd": 0.03}, teachers=["segformer_b2"], seeds=(0, 1, 2))
    study = Study(validate({**study.params, "probe": PROBE}))
    tables = write_probe_tables(study, runs, tmp / "probe")
    out = tmp / "results"
    written = agg.aggregate(study, runs=runs, out=out, log_to_mlflow=False, probes=tmp / "probe")
    return study, runs, tmp / "probe", tables, out, written


def test_lowpass_curves_by_hand(probed):
    study, runs, probes, tables, out, written = probed
    assert {"lowpass.csv", "plots/lowpass.png"} <= set(written)
    lp = pd.read_csv(out / "lowpass.csv")
    rows = pd.concat(tables.values(), ignore_index=True)
    for (teacher, method, unit), want95 in ((("segformer_b2", "teacher", "fold"), 0.5),
                                            (("none", "baseline", "seed"), 1.0), (("segformer_b2", "kd", "seed"), 0.1)):
        role = "teacher" if method == "teacher" else "student"
        mine = rows[(rows["teacher"] == teacher) & (rows["role"] == role)
                    & (rows["method"] == ("" if role == "teacher" else method))]
        for ratio in RATIOS:
            cell = mine[(mine["pass"] == "low") & (mine["ratio"] == ratio)]
            values = 100 * cell.groupby(unit)["mIoU"].mean().to_numpy()
            got = lp[(lp["teacher"] == teacher) & (lp["method"] == method) & (lp["pass"] == "low")
                     & (lp["ratio"] == ratio)].iloc[0]
            lo, hi = sps.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=sps.sem(values))
            assert got["unit"] == unit and got["n"] == len(values)
            assert got[["mIoU_mean", "ci_low", "ci_high"]].to_numpy(float) == pytest.approx([values.mean(), lo, hi], abs=1e-3)
        assert (lp.loc[(lp["teacher"] == teacher) & (lp["method"] == method), "ratio_95"] == want95).all()


def test_report_says_where_each_model_keeps_95_percent(probed):
    study, runs, probes, tables, out, written = probed
    report = (out / "report.md").read_text()
    assert "## Low-pass probe" in report and "plots/lowpass.png" in report
    assert "**teacher segformer_b2**" in report and "keeps 95% of it from ratio 0.5 on" in report
    kd = next(line for line in report.splitlines() if line.startswith("- **segformer_b2 / kd**"))
    assert "from ratio 0.1 on" in kd
    base = next(line for line in report.splitlines() if line.startswith("- **baseline (no KD)**"))
    assert "from ratio 1 on" in base


def test_missing_or_stale_probe_tables_are_errors_naming_them(probed, tmp_path):
    study, runs, probes, tables, out, written = probed
    teacher = expected_runs(study)[0]
    path = layout.probe_table(teacher.dir, probes)
    kept = path.read_text()
    try:
        path.unlink()
        with pytest.raises(UserError, match=r"1 probe table\(s\) missing: .*teachers/segformer_b2/fold0.csv"):
            agg.aggregate(study, runs=runs, out=tmp_path / "a", log_to_mlflow=False, probes=probes)
        agg.aggregate(study, runs=runs, out=tmp_path / "b", log_to_mlflow=False, probes=probes, allow_missing=True)
        assert (tmp_path / "b" / "plots" / "lowpass.png").is_file()
        path.write_text(kept.replace(spec_hash(teacher.spec(study)), "0123456789ab"))
        with pytest.raises(UserError, match="probes another run than runs/teachers/segformer_b2/fold0"):
            agg.aggregate(study, runs=runs, out=tmp_path / "c", log_to_mlflow=False, probes=probes)
        other = Study(validate({**study.params, "probe": {**PROBE, "ratios": [0.1, 1.0]}}))
        path.write_text(kept)
        with pytest.raises(UserError, match=r"ratios \[0.1, 0.5, 1.0\], but the study's probe has \[0.1, 1.0\]"):
            agg.aggregate(other, runs=runs, out=tmp_path / "d", log_to_mlflow=False, probes=probes)
    finally:
        path.write_text(kept)


def test_no_probe_no_lowpass_outputs(probed, tmp_path):
    study, runs, probes, tables, out, written = probed
    off = Study(validate({**study.params, "probe": {**PROBE, "enabled": False}}))
    shutil_out = tmp_path / "results"
    again = agg.aggregate(off, runs=runs, out=shutil_out, log_to_mlflow=False, probes=tmp_path / "none")
    assert "lowpass.csv" not in again and "plots/lowpass.png" not in again
    assert "Low-pass probe" not in (shutil_out / "report.md").read_text()
    assert np.isfinite(pd.read_csv(out / "lowpass.csv")["mIoU_mean"]).all()
