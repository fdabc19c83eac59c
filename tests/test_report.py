"""`segkd aggregate` on hand-built metrics files with known numbers.

Every statistic is recomputed here independently (numpy, scipy.stats, a hand-written Holm step-down)
from the numbers the fake study was built with, not from segkd's own helpers.
"""

import hashlib
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.weightstats import DescrStatsW

from segkd import layout
from segkd.classes import CLASS_NAMES
from segkd.config import Study, validate
from segkd.errors import UserError
from segkd.report import aggregate as agg
from segkd.report import plots, stats
from segkd.runs import expected_runs

TEACHERS = ["segformer_b2", "segformer_b4"]
# method -> effect on every class IoU (fraction); kd helps, at does nothing, sp hurts
EFFECTS = {"kd": 0.03, "at": 0.0, "sp": -0.015}


def make_params(seeds=(0, 1, 2), k=2, methods=("kd", "at", "sp"), teachers=TEACHERS) -> dict:
    folds = {"strategy": "sequence-blocked", "k": k} if k > 1 else {"strategy": "official"}
    return {"study": "fake", "dataset": {"name": "synthetic", "height": 32, "width": 48}, "folds": folds,
            "models": {"student": "segformer_b0", "teachers": list(teachers)},
            "train": {"iterations": {"teacher": 4, "student": 3}, "batch_size": 2, "lr": 6e-4},
            "seeds": list(seeds),
            "methods": methods if isinstance(methods, dict) else {m: {m: {"weight": 1.0}} for m in methods}}


def write_run(runs: Path, run_dir: Path, iou: dict, identity: dict, loss_scale: float, params: dict) -> dict:
    """A metrics.json as `segkd train` writes it; `params` is the run spec (the study's, or a stale one)."""
    values = [v for v in iou.values() if v is not None]
    metrics = {"study": "fake", **identity, "dataset": "synthetic", "iou": iou,
               "acc": {c: 0.5 for c in CLASS_NAMES}, "mIoU": float(np.mean(values)),
               "mPA": float(np.mean(values)) + 0.05, "aAcc": float(np.mean(values)) + 0.1,
               "confusion": [[0] * 11] * 11, "params": params, "mlflow_run_id": None, "wall_time_s": 12.5,
               "images_per_s": 40.0, "iterations": 3,
               "history": [{"iteration": i, "lr": 1e-4, "loss": loss_scale / i, "task": 1.0} for i in (1, 2, 3)]}
    path = runs / run_dir.relative_to(layout.RUNS) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    return metrics


def make_study(tmp: Path, effects=EFFECTS, noise=0.004, absent_class=True, methods=None, **kw):
    """A study whose every metrics.json is written from known numbers; returns (study, runs, truth).

    truth[(teacher or "none" or "T:"+teacher, method, seed, fold)] = metrics dict as written.
    `methods` (params' methods, grids allowed) defaults to one plain method per key of `effects`;
    `effects` is keyed by runnable method (variant) name either way.
    """
    study = Study(validate(make_params(methods=methods or tuple(effects), **kw)))
    assert list(study.methods) == list(effects)
    rng = np.random.default_rng(0)
    base_class = np.linspace(0.3, 0.9, len(CLASS_NAMES))
    runs, truth = tmp / "runs", {}
    specs = {run.dir: run.spec(study) for run in expected_runs(study)}  # what the workflow trains them with

    def iou(effect, seed, fold):
        v = base_class + effect + 0.01 * seed - 0.02 * fold + noise * rng.standard_normal(len(CLASS_NAMES))
        return {c: float(x) for c, x in zip(CLASS_NAMES, np.clip(v, 0, 1))}

    for t in study.teachers:
        for f in study.folds:
            truth[("T:" + t, None, 0, f)] = write_run(
                runs, layout.teacher_dir(t, f), iou(0.08, 0, f),
                {"role": "teacher", "model": t, "teacher": None, "method": None, "seed": 0, "fold": f}, 2.0,
                specs[layout.teacher_dir(t, f)])
    for s in study.seeds:
        for f in study.folds:
            values = iou(0.0, s, f)
            if absent_class and (s, f) == (study.seeds[0], study.folds[-1]):
                values["Tree"] = None  # absent from prediction and ground truth on this fold
            truth[("none", "baseline", s, f)] = write_run(
                runs, layout.student_dir(None, "baseline", s, f), values,
                {"role": "student", "model": "segformer_b0", "teacher": None, "method": "baseline",
                 "seed": s, "fold": f}, 1.0, specs[layout.student_dir(None, "baseline", s, f)])
    for t in study.teachers:
        for m, effect in effects.items():
            for s in study.seeds:
                for f in study.folds:
                    truth[(t, m, s, f)] = write_run(
                        runs, layout.student_dir(t, m, s, f), iou(effect, s, f),
                        {"role": "student", "model": "segformer_b0", "teacher": t, "method": m,
                         "seed": s, "fold": f}, 1.0 + list(effects).index(m) * 0.2,
                        specs[layout.student_dir(t, m, s, f)])
    return study, runs, truth


def hashes(folder: Path) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def holm_by_hand(p):
    m, adjusted, running = len(p), [0.0] * len(p), 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def pct(truth, key, metric):
    m = truth[key]
    v = m["iou"][metric] if metric in CLASS_NAMES else m[metric]
    return np.nan if v is None else 100 * v


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    study, runs, truth = make_study(tmp)
    out = tmp / "results"
    written = agg.aggregate(study, runs=runs, out=out, log_to_mlflow=False)
    return study, runs, truth, out, written


def test_outputs_and_runs_table(fake):
    study, runs, truth, out, written = fake
    names = {"runs.csv", "summary.csv", "summary.md", "summary.json", "metrics.json", "paired_tests.csv", "class_deltas.csv",
             "power.csv", "report.md", "report.html", "plots/miou.png", "plots/class_deltas.png", "plots/loss.png"}
    names |= {f"per_class_{t}.{ext}" for t in TEACHERS for ext in ("csv", "md")}
    assert set(written) == names == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    table = pd.read_csv(out / "runs.csv", keep_default_na=False, na_values=[""])
    assert len(table) == len(truth) == 2 * 2 + 3 * 2 + 2 * 3 * 3 * 2
    assert list(table.columns[:6]) == ["role", "teacher", "method", "model", "seed", "fold"]
    row = table[(table.teacher == "segformer_b4") & (table.method == "sp") & (table.seed == 2) & (table.fold == 1)]
    assert row["IoU_Road"].item() == pytest.approx(pct(truth, ("segformer_b4", "sp", 2, 1), "Road"), abs=1e-4)
    assert row["mIoU"].item() == pytest.approx(pct(truth, ("segformer_b4", "sp", 2, 1), "mIoU"), abs=1e-4)
    assert row["wall_time_s"].item() == 12.5
    absent = table[(table.method == "baseline") & (table.seed == 0) & (table.fold == 1)]
    assert np.isnan(absent["IoU_Tree"].item())


def test_per_class_table_is_fold_averaged(fake):
    study, runs, truth, out, _ = fake
    t = pd.read_csv(out / "per_class_segformer_b2.csv", dtype={"seed": str})
    assert list(t.columns) == ["model", "method", "seed", *CLASS_NAMES, "mIoU", "mPA", "aAcc"]
    assert list(t.method) == ["baseline", "teacher"] + [m for m in EFFECTS for _ in study.seeds]
    assert list(t.seed) == ["mean", "0"] + [str(s) for _ in EFFECTS for s in study.seeds]
    kd1 = t[(t.method == "kd") & (t.seed == "1")].iloc[0]
    for col in CLASS_NAMES + ("mIoU", "aAcc"):
        expected = np.mean([pct(truth, ("segformer_b2", "kd", 1, f), col) for f in (0, 1)])
        assert kd1[col] == pytest.approx(expected, abs=0.0051)
    teacher = t[t.method == "teacher"].iloc[0]
    assert teacher["Sky"] == pytest.approx(np.mean([pct(truth, ("T:segformer_b2", None, 0, f), "Sky")
                                                    for f in (0, 1)]), abs=0.0051)
    # baseline: mean over seeds of fold averages; a class absent on a fold is averaged over the others
    base = t[t.method == "baseline"].iloc[0]
    for col in ("Tree", "mIoU"):
        per_seed = [np.nanmean([pct(truth, ("none", "baseline", s, f), col) for f in (0, 1)]) for s in (0, 1, 2)]
        assert base[col] == pytest.approx(np.mean(per_seed), abs=0.0051)
    text = (out / "per_class_segformer_b2.md").read_text()
    assert "| model | method | seed | Sky | Building |" in text and f"{kd1['Sky']:.2f}" in text


def test_summary_mean_std_t_interval(fake):
    study, runs, truth, out, _ = fake
    s = pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""])
    assert list(s.columns) == ["teacher", "method", "n_seeds", "mIoU_mean", "mIoU_std", "ci_low", "ci_high", "note"]
    assert list(zip(s.teacher, s.method)) == [("none", "baseline")] + [(t, m) for t in TEACHERS for m in EFFECTS]
    summary_json = json.loads((out / "summary.json").read_text())
    for teacher, method in [("none", "baseline"), ("segformer_b4", "at"), ("segformer_b2", "kd")]:
        x = [np.mean([pct(truth, (teacher, method, sd, f), "mIoU") for f in (0, 1)]) for sd in (0, 1, 2)]
        mean, sd = np.mean(x), np.std(x, ddof=1)
        half = sps.t.ppf(0.975, len(x) - 1) * sd / np.sqrt(len(x))
        row = s[(s.teacher == teacher) & (s.method == method)].iloc[0]
        assert row.n_seeds == 3
        assert row.mIoU_mean == pytest.approx(mean, abs=5e-4)
        assert row.mIoU_std == pytest.approx(sd, abs=5e-5)
        assert (row.ci_low, row.ci_high) == pytest.approx((mean - half, mean + half), abs=5e-4)
        entry = summary_json["baseline"] if method == "baseline" else summary_json[teacher][method]
        assert entry["mIoU_mean"] == pytest.approx(mean, abs=1e-4)
        assert entry["ci_high"] == pytest.approx(mean + half, abs=1e-4)


def test_paired_tests_against_scipy_and_holm_by_hand(fake):
    study, runs, truth, out, _ = fake
    table, _, _, _ = agg.load_runs(study, runs)
    tests = stats.paired_tests(table)
    csv = pd.read_csv(out / "paired_tests.csv")
    pairs = [(s, f) for s in study.seeds for f in study.folds]
    for teacher in TEACHERS:
        p_t, p_w = [], []
        for method in EFFECTS:
            a = np.array([pct(truth, (teacher, method, s, f), "mIoU") for s, f in pairs])
            b = np.array([pct(truth, ("none", "baseline", s, f), "mIoU") for s, f in pairs])
            row = tests[(tests.teacher == teacher) & (tests.method == method)].iloc[0]
            d = a - b
            half = sps.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d))
            assert row.n_pairs == 6
            assert row.delta == pytest.approx(d.mean(), abs=1e-9)
            assert (row.ci_low, row.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)
            ref_t = sps.ttest_rel(a, b)
            assert (row.t, row.p_t) == pytest.approx((ref_t.statistic, ref_t.pvalue), rel=1e-9)
            assert row.p_wilcoxon == pytest.approx(sps.wilcoxon(a, b).pvalue, rel=1e-9)
            p_t.append(row.p_t)
            p_w.append(row.p_wilcoxon)
        rows = tests[tests.teacher == teacher]
        assert list(rows.p_t_holm) == pytest.approx(holm_by_hand(p_t), rel=1e-9)
        assert list(rows.p_wilcoxon_holm) == pytest.approx(holm_by_hand(p_w), rel=1e-9)
        assert list(csv[csv.teacher == teacher].p_t_holm) == pytest.approx(holm_by_hand(p_t), rel=1e-3)
    # the exact signed-rank test on 6 pairs of one sign reaches its floor, 2/2^6
    kd = tests[(tests.teacher == "segformer_b2") & (tests.method == "kd")].iloc[0]
    assert kd.p_wilcoxon == pytest.approx(0.03125)


def test_holm_skips_untested_methods():
    p = pd.Series([0.01, np.nan, 0.04, 0.03])
    adjusted = stats.holm(p)
    assert np.isnan(adjusted[1])
    assert list(adjusted[[0, 2, 3]]) == pytest.approx(holm_by_hand([0.01, 0.04, 0.03]))


def test_report_says_which_methods_differ(fake):
    study, runs, truth, out, _ = fake
    report = (out / "report.md").read_text()
    tests = pd.read_csv(out / "paired_tests.csv")
    findings = {line.split("**")[1]: line for line in report.splitlines() if line.startswith("- **Teacher")}
    assert set(findings) == {f"Teacher {t}" for t in TEACHERS}
    for r in tests.itertuples():
        line = findings[f"Teacher {r.teacher}"]
        verdict = ("higher than the baseline" if r.delta > 0 else "lower than the baseline") \
            if r.p_t_holm < 0.05 else "no significant difference"
        part = next(p for p in line.split("; ") if f" {r.method} (" in p or f": {r.method} (" in p)
        assert part.split(":")[0].lstrip("- *").split("** — ")[-1] == verdict
    kd = tests[(tests.teacher == "segformer_b2") & (tests.method == "kd")].iloc[0]
    sp = tests[(tests.teacher == "segformer_b2") & (tests.method == "sp")].iloc[0]
    assert kd.p_t_holm < 0.05 and kd.delta > 0 and sp.p_t_holm < 0.05 and sp.delta < 0
    assert "n=6: 0.03125" in report
    for image in ("miou.png", "class_deltas.png", "loss.png"):
        assert f"](plots/{image})" in report and (out / "plots" / image).is_file()


def test_report_html_is_the_report_with_its_figures_inlined(fake):
    """report.html carries report.md's text and tables, and each figure as the PNG itself (a data URI),
    so it renders where the plots/ folder is out of reach (MLflow's sandboxed HTML view)."""
    import base64
    import re

    study, runs, truth, out, _ = fake
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page and "Paired comparisons" in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert {base64.b64decode(s.split(",", 1)[1]) for s in sources} == \
        {(out / "plots" / name).read_bytes() for name in ("miou.png", "class_deltas.png", "loss.png")}


def test_class_deltas_are_paired_means(fake):
    study, runs, truth, out, _ = fake
    d = pd.read_csv(out / "class_deltas.csv")
    assert list(d.columns) == ["teacher", "method", *CLASS_NAMES, "mIoU"]
    row = d[(d.teacher == "segformer_b4") & (d.method == "kd")].iloc[0]
    pairs = [(s, f) for s in study.seeds for f in study.folds]
    for col in ("Road", "Tree"):
        diffs = [pct(truth, ("segformer_b4", "kd", s, f), col) - pct(truth, ("none", "baseline", s, f), col)
                 for s, f in pairs]
        assert row[col] == pytest.approx(np.nanmean(diffs), abs=0.0051)


def test_rerun_is_byte_identical_and_logs_through_tracking(fake, monkeypatch):
    study, runs, truth, out, _ = fake
    before = hashes(out)
    calls = []
    tracking = types.ModuleType("segkd.tracking")
    tracking.log_study = lambda name, results, paths, summary, alpha, uri: calls.append((name, paths, uri))
    monkeypatch.setitem(sys.modules, "segkd.tracking", tracking)
    written = agg.aggregate(study, runs=runs, out=out, log_to_mlflow=True)
    assert hashes(out) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    assert calls == [("fake", list(written.values()), None)]


def test_missing_run_is_an_error_naming_it(tmp_path):
    study, runs, truth = make_study(tmp_path, effects={"kd": 0.02}, teachers=["segformer_b2"])
    gone = runs / "students" / "segformer_b2" / "kd" / "seed1" / "fold0" / "metrics.json"
    gone.unlink()
    out = tmp_path / "results"
    with pytest.raises(UserError, match=r"1 of .* runs missing: .*students/segformer_b2/kd/seed1/fold0/metrics.json"):
        agg.aggregate(study, runs=runs, out=out, log_to_mlflow=False)
    assert not out.exists()
    agg.aggregate(study, runs=runs, out=out, allow_missing=True, log_to_mlflow=False)
    report = (out / "report.md").read_text()
    assert "1 expected run is missing" in report and f"`{gone.as_posix()}`" in report
    assert len(pd.read_csv(out / "runs.csv")) == len(truth) - 1
    tests = pd.read_csv(out / "paired_tests.csv")
    assert tests.n_pairs.tolist() == [5]


def test_unreadable_or_mislabelled_run_is_an_error(tmp_path):
    study, runs, _ = make_study(tmp_path, effects={"kd": 0.02}, teachers=["segformer_b2"])
    bad = runs / "teachers" / "segformer_b2" / "fold1" / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=f"{bad}: unreadable"):
        agg.aggregate(study, runs=runs, out=tmp_path / "r", allow_missing=True, log_to_mlflow=False)
    other = runs / "students" / "none" / "baseline" / "seed2" / "fold0" / "metrics.json"
    metrics = json.loads(other.read_text())
    bad.write_text(json.dumps({**metrics, "role": "teacher", "model": "segformer_b2", "fold": 1,
                               "iou": {"Sky": 0.5}}))
    with pytest.raises(UserError, match="iou: missing classes Building"):
        agg.aggregate(study, runs=runs, out=tmp_path / "r", log_to_mlflow=False)
    bad.write_text(json.dumps({**metrics, "role": "teacher", "model": "segformer_b2", "fold": 0}))
    with pytest.raises(UserError, match="says fold=0, but this is the run of fold=1"):
        agg.aggregate(study, runs=runs, out=tmp_path / "r", log_to_mlflow=False)


def test_degenerate_studies_give_nan_with_a_note(tmp_path):
    # one seed, one fold: no spread, no interval, no test
    study, runs, _ = make_study(tmp_path / "a", effects={"kd": 0.02}, seeds=(0,), k=1, teachers=["segformer_b2"])
    out = tmp_path / "a" / "results"
    agg.aggregate(study, runs=runs, out=out, log_to_mlflow=False)
    s = pd.read_csv(out / "summary.csv")
    assert s.n_seeds.tolist() == [1, 1] and s.mIoU_std.isna().all() and s.ci_low.isna().all()
    t = pd.read_csv(out / "paired_tests.csv")
    assert t.n_pairs.tolist() == [1] and t.p_t.isna().all() and t.p_t_holm.isna().all()
    assert "n=1: no spread or interval" in (out / "report.md").read_text()
    assert "not testable" in (out / "report.md").read_text()
    assert json.loads((out / "summary.json").read_text())["segformer_b2"]["kd"]["p_holm"] is None
    # no noise: kd is the baseline plus a constant, at equals the baseline exactly
    study, runs, _ = make_study(tmp_path / "b", effects={"kd": 0.02, "at": 0.0}, noise=0.0,
                                absent_class=False, teachers=["segformer_b2"])
    table, _, _, _ = agg.load_runs(study, runs)
    tests = stats.paired_tests(table).set_index("method")
    assert np.isnan(tests.loc["kd", "p_t"]) and "zero variance" in tests.loc["kd", "note"]
    assert tests.loc["kd", "p_wilcoxon"] == pytest.approx(0.03125)
    assert np.isnan(tests.loc["at", "p_t"]) and np.isnan(tests.loc["at", "p_wilcoxon"])
    assert tests.loc["kd", "p_wilcoxon_holm"] == pytest.approx(0.03125)  # the only test run
    agg.aggregate(study, runs=runs, out=tmp_path / "b" / "results", log_to_mlflow=False)


GRID = {"kd": {"kd": {"weight": 1.0}},
        "freq": {"freq": {"weight": 0.1, "ratio": [0.1, 0.2], "high": ["kd", "none"]}}}
GRID_EFFECTS = {"kd": 0.03, "freq-high=kd-ratio=0.1": 0.02, "freq-high=kd-ratio=0.2": 0.01,
                "freq-high=none-ratio=0.1": 0.0, "freq-high=none-ratio=0.2": -0.01}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    study, runs, truth = make_study(tmp, effects=GRID_EFFECTS, methods=GRID, teachers=["segformer_b2"])
    out = tmp / "results"
    written = agg.aggregate(study, runs=runs, out=out, log_to_mlflow=False)
    return study, runs, truth, out, written


def test_sensitivity_table_by_hand(grid):
    study, runs, truth, out, written = grid
    assert {"sensitivity.csv", "plots/sensitivity.png"} <= set(written)
    sens = pd.read_csv(out / "sensitivity.csv")
    variants = [v for v in GRID_EFFECTS if v != "kd"]
    assert list(sens.variant) == variants and set(sens.method) == {"freq"} and set(sens.teacher) == {"segformer_b2"}
    assert list(sens.swept) == ["freq.high=kd; freq.ratio=0.1", "freq.high=kd; freq.ratio=0.2",
                                "freq.high=none; freq.ratio=0.1", "freq.high=none; freq.ratio=0.2"]
    pairs = [(s, f) for s in study.seeds for f in study.folds]
    base = np.array([pct(truth, ("none", "baseline", s, f), "mIoU") for s, f in pairs])
    p = {}
    for method in GRID_EFFECTS:  # Holm runs over every method and variant of the teacher, kd included
        a = np.array([pct(truth, ("segformer_b2", method, s, f), "mIoU") for s, f in pairs])
        p[method] = sps.ttest_rel(a, base).pvalue
    adjusted = dict(zip(p, holm_by_hand(list(p.values()))))
    for row in sens.itertuples():
        per_seed = [np.mean([pct(truth, ("segformer_b2", row.variant, s, f), "mIoU") for f in study.folds])
                    for s in study.seeds]
        lo, hi = DescrStatsW(np.array(per_seed)).tconfint_mean(alpha=0.05)
        assert row.n_seeds == 3 and row.n_pairs == 6
        assert row.mIoU_mean == pytest.approx(np.mean(per_seed), abs=5e-4)
        assert (row.ci_low, row.ci_high) == pytest.approx((lo, hi), abs=5e-4)
        d = np.array([pct(truth, ("segformer_b2", row.variant, s, f), "mIoU") for s, f in pairs]) - base
        assert row.delta == pytest.approx(d.mean(), abs=5e-4)
        assert row.p_t_holm == pytest.approx(adjusted[row.variant], rel=1e-3)
    tests = pd.read_csv(out / "paired_tests.csv")
    assert list(tests.method) == list(GRID_EFFECTS)
    assert list(tests.p_t_holm) == pytest.approx([adjusted[m] for m in GRID_EFFECTS], rel=1e-3)


def test_sensitivity_figure_and_report(grid):
    study, runs, truth, out, _ = grid
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""])
    sens = pd.read_csv(out / "sensitivity.csv")
    fig = plots.sensitivity.__wrapped__(sens, study.variants, summary)
    high, ratio = fig.axes
    assert [t.get_text() for t in ratio.get_xticklabels()] == ["0.1", "0.2"]
    assert [t.get_text() for t in high.get_xticklabels()] == ["kd", "none"]
    mean = dict(zip(sens.variant, sens.mIoU_mean))
    lines = {c.get_label(): c.lines[0].get_ydata() for c in ratio.containers}
    assert set(lines) == {"high=kd", "high=none"}
    assert list(lines["high=none"]) == pytest.approx([mean["freq-high=none-ratio=0.1"],
                                                      mean["freq-high=none-ratio=0.2"]])
    lines = {c.get_label(): c.lines[0].get_ydata() for c in high.containers}
    assert list(lines["ratio=0.2"]) == pytest.approx([mean["freq-high=kd-ratio=0.2"], mean["freq-high=none-ratio=0.2"]])
    base = summary[summary.method == "baseline"].iloc[0]
    assert base.mIoU_mean in [line.get_ydata()[0] for line in high.lines]  # the baseline's mean line
    report = (out / "report.md").read_text()
    assert "## Sensitivity to the swept options" in report and "](plots/sensitivity.png)" in report
    assert "| variant | high | ratio | seeds | mIoU mean |" in report
    assert f"| freq-high=kd-ratio=0.2 | kd | 0.2 | 3 | {mean['freq-high=kd-ratio=0.2']:.3f} |" in report


def test_sensitivity_outputs_only_with_a_grid_and_rerun_is_identical(grid, tmp_path):
    study, runs, truth, out, _ = grid
    copy = tmp_path / "results"
    shutil.copytree(out, copy)
    agg.aggregate(study, runs=runs, out=copy, log_to_mlflow=False)
    assert hashes(copy) == hashes(out)
    plain = Study(validate(make_params(methods={"kd": GRID["kd"]}, teachers=["segformer_b2"])))
    written = agg.aggregate(plain, runs=runs, out=copy, log_to_mlflow=False)
    assert not {"sensitivity.csv", "plots/sensitivity.png"} & set(written)
    assert not (copy / "sensitivity.csv").exists() and not (copy / "plots" / "sensitivity.png").exists()
    assert "Sensitivity" not in (copy / "report.md").read_text()
