"""The report's effective strength of each term (strength.csv and its table) and its power paragraph, from
hand-built metrics files whose strength records are known (tests/test_train.py checks what training records)."""

import json

import numpy as np
import pandas as pd
import pytest
from test_report import make_study

from segkd.report import aggregate as agg
from segkd.report.strength import GRAD_RATIO, SHARE


def share_of(method, seed, fold, it):
    return {"kd": 0.01, "at": 0.2}[method] * (1 + seed) + 0.001 * fold + 0.1 * it


def ratio_of(method, seed, fold, it):
    return {"kd": 0.5, "at": 3.0}[method] + 0.1 * seed - 0.05 * fold + 0.01 * it


def test_strength_table_power_paragraph_and_a_rerun_without_measurements(tmp_path):
    study, runs, _ = make_study(tmp_path, effects={"kd": 0.03, "at": 0.0}, teachers=["segformer_b2"])
    originals = {}
    for path in sorted(runs.glob("students/segformer_b2/*/seed*/fold*/metrics.json")):
        originals[path] = path.read_text()
        metrics = json.loads(originals[path])
        method, seed, fold = metrics["method"], metrics["seed"], metrics["fold"]
        for h in metrics["history"]:
            if h["iteration"] in (1, 3):  # measured at two log points of three, as training does at a few
                h[SHARE + method] = share_of(method, seed, fold, h["iteration"])
                h[GRAD_RATIO + method] = ratio_of(method, seed, fold, h["iteration"])
        path.write_text(json.dumps(metrics))
    out = tmp_path / "results"
    written = agg.aggregate(study, runs=runs, out=out, log_to_mlflow=False)
    assert {"strength.csv", "power.csv"} <= set(written)

    table = pd.read_csv(out / "strength.csv")
    assert list(table.columns) == ["teacher", "method", "term", "weight", "iteration", "n_runs", "share", "grad_ratio"]
    assert table[["method", "term", "iteration"]].values.tolist() == [["kd", "kd", 1], ["kd", "kd", 3],
                                                                     ["at", "at", 1], ["at", "at", 3]]
    assert (table.teacher == "segformer_b2").all() and (table.weight == 1.0).all() and (table.n_runs == 6).all()
    for r in table.itertuples():
        cells = [(s, f) for s in study.seeds for f in study.folds]
        assert r.share == pytest.approx(np.mean([share_of(r.method, s, f, r.iteration) for s, f in cells]), rel=1e-3)
        assert r.grad_ratio == pytest.approx(np.mean([ratio_of(r.method, s, f, r.iteration) for s, f in cells]),
                                             rel=1e-3)

    report = (out / "report.md").read_text()
    assert "## Effective strength of each term" in report and "iterations 1, 3 " in report
    row = next(line for line in report.splitlines() if line.startswith("| segformer_b2 | at | at |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    at = table[table.method == "at"]
    assert cells[3:] == ["1", "6", f"{at.share.iloc[0]:.4g}", f"{at.share.iloc[1]:.4g}",
                         f"{at.grad_ratio.iloc[0]:.4g}", f"{at.grad_ratio.iloc[1]:.4g}",
                         f"{at.grad_ratio.mean():.4g}"]

    powers = pd.read_csv(out / "power.csv")
    assert powers.method.tolist() == ["kd", "at"] and (powers.n_pairs == 6).all() and (powers.holm_m == 2).all()
    lo, hi = sorted(f"{v:.2f}" for v in powers.mdd)
    assert (f"With 3 seeds x 2 folds (6 pairs per comparison), differences from the baseline below {lo}–{hi} "
            "points cannot be told from noise") in report
    needed = sorted(powers.seeds_needed)
    assert f"0.3 points needs {needed[0]}–{needed[1]} seeds" in report or f"0.3 points needs {needed[0]} seeds" in report

    for path, text in originals.items():  # runs without measurements: no strength.csv is left behind
        path.write_text(text)
    written = agg.aggregate(study, runs=runs, out=out, log_to_mlflow=False)
    assert "strength.csv" not in written and not (out / "strength.csv").exists()
    assert "Effective strength" not in (out / "report.md").read_text()
