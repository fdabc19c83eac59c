"""`segkd aggregate`: every metrics.json of the study -> tables, statistics, plots and report.md.

The expected runs come from the study, not from what happens to lie on disk, so a forgotten or
failed run is an error that names it (or, with allow_missing, a list in the report) rather than a
silently smaller sample; so is a stale run, whose metrics.json records another run spec than the one
the study gives it now (or, with exclude_stale, a list in the report). Outputs are written to a
temporary directory first and then moved into place, and they are byte-identical when the inputs
are: DVC and Snakemake see no spurious change.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from segkd import layout
from segkd.classes import CLASS_NAMES
from segkd.config import BASELINE, STUDENT_ROLE, Study, spec_changes, spec_json
from segkd.errors import UserError
from segkd.report import html, lowpass, markdown, plots, power, stats, strength
from segkd.runs import Run, expected_runs

SHOWN_MISSING = 5  # missing (or stale) runs named in the error message; the rest are counted
SHOWN_DIFFS = 3  # differing spec keys named for a stale run
PLOTS = "plots"  # the figures' folder inside `out` (a DVC output of its own)
FIGURES = {"miou": f"{PLOTS}/miou.png", "class_deltas": f"{PLOTS}/class_deltas.png", "loss": f"{PLOTS}/loss.png",
           "sensitivity": f"{PLOTS}/sensitivity.png", "lowpass": f"{PLOTS}/lowpass.png"}
LOWPASS = "lowpass.csv"  # written only when the study enables the low-pass probe, like its figure
SENSITIVITY = "sensitivity.csv"  # written only when the study has a method grid, like its figure
DVC_METRICS = "metrics.json"  # DVC's metrics file: the few numbers `dvc exp show` compares (summary.json has all)
STRENGTH = "strength.csv"  # written only when a student run measured its terms' strength


def _number(value, path: Path, key: str) -> float:
    if value is None:
        return math.nan  # the class is absent from prediction and ground truth
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{path}: {key}: expected a number, got {value!r}")
    return float(value)


def read_metrics(path: Path, run: Run) -> tuple[dict, list[dict], dict | None]:
    """One metrics.json -> (its row of the runs table in percent, its loss history, the run spec it
    was trained under: its `params`, None when it records none)."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable metrics file ({err})") from err
    if not isinstance(metrics, dict):
        raise UserError(f"{path}: expected a JSON object")
    for key in ("iou", "mIoU", "mPA", "aAcc"):
        if key not in metrics:
            raise UserError(f"{path}: missing key {key!r}")
    for key, expected in run.claims().items():
        if key in metrics and metrics[key] != expected:
            raise UserError(f"{path}: says {key}={metrics[key]!r}, but this is the run of {key}={expected!r}")
    iou = metrics["iou"]
    absent = [c for c in CLASS_NAMES if not isinstance(iou, dict) or c not in iou]
    if absent:
        raise UserError(f"{path}: iou: missing classes {', '.join(absent)}")
    row = {"role": run.role, "teacher": run.teacher, "method": run.method, "model": run.model,
           "seed": run.seed, "fold": run.fold}
    row.update({f"IoU_{c}": 100 * _number(iou[c], path, f"iou.{c}") for c in CLASS_NAMES})
    row.update({k: 100 * _number(metrics[k], path, k) for k in stats.METRICS})
    for key in ("wall_time_s", "images_per_s", "iterations"):
        row[key] = _number(metrics.get(key), path, key)
    row["run_dir"] = run.dir.as_posix()
    history = metrics.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise UserError(f"{path}: history: expected a list of objects")
    losses = [{"teacher": run.teacher, "method": run.method, "role": run.role, "seed": run.seed,
               "fold": run.fold, "iteration": int(_number(h.get("iteration"), path, "history.iteration")),
               "loss": _number(h["loss"], path, "history.loss"),
               **{k: _number(h[k], path, f"history.{k}") for k in strength.measured(h)}}
              for h in history if "loss" in h]
    params = metrics.get("params")
    return row, losses, params if isinstance(params, dict) else None


def stale_reason(params: dict | None, expected: dict) -> str | None:
    """Why a run's metrics do not belong to the study as it stands (None: they do).

    The study decides what each run must have been trained under (`Run.spec`); a run trained before a
    weight, schedule or path changed is stale, and mixing it in would report numbers of another study.
    A metrics.json without its spec cannot be checked, so it cannot be trusted either.
    """
    if params is None:
        return "no run spec recorded (no 'params')"
    if spec_json(params) == spec_json(expected):
        return None
    diffs = [str(change) for change in spec_changes(params, expected)]
    more = f", and {len(diffs) - SHOWN_DIFFS} more" if len(diffs) > SHOWN_DIFFS else ""
    return ", ".join(diffs[:SHOWN_DIFFS]) + more + " (run vs study)"


def _listed(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:SHOWN_MISSING])
    return shown + (f" and {len(paths) - SHOWN_MISSING} more" if len(paths) > SHOWN_MISSING else "")


def load_runs(study: Study, runs: Path, allow_missing: bool = False, exclude_stale: bool = False):
    """The tidy runs table, the loss histories, the expected runs that are missing, and the stale
    ones as (metrics path, what differs) pairs.

    A missing run is an error unless allow_missing, a stale one (trained under another spec than the
    study's, see `stale_reason`) unless exclude_stale; either is then left out. An unreadable run
    always is an error (a corrupt result must not pass as an absent one).
    """
    rows, losses, missing, stale = [], [], [], []
    expected = expected_runs(study)
    for run in expected:
        path = runs / run.dir.relative_to(layout.RUNS) / layout.METRICS
        if not path.is_file():
            missing.append(path)
            continue
        row, history, params = read_metrics(path, run)
        reason = stale_reason(params, run.spec(study))
        if reason is not None:
            stale.append((path, reason))
            continue
        rows.append(row)
        losses += history
    if missing and not allow_missing:
        raise UserError(f"{len(missing)} of {len(expected)} runs missing: {_listed(missing)} "
                        f"(run them, or pass --allow-missing to report without them)")
    if stale and not exclude_stale:
        raise UserError(f"{len(stale)} of {len(expected)} runs are stale (trained under another spec than the "
                        f"study's): {_listed([p for p, _ in stale])}; the first: {stale[0][1]}; re-run them, "
                        "or pass --exclude-stale to report without them")
    if not rows:
        raise UserError(f"{runs}: none of the study's {len(expected)} runs has a metrics.json of its "
                        f"current spec ({len(missing)} missing, {len(stale)} stale)")
    columns = ["teacher", "method", "role", "seed", "fold", "iteration", "loss"]
    history = pd.DataFrame(losses, columns=columns + sorted({k for h in losses for k in strength.measured(h)}))
    table = pd.DataFrame(rows)
    table["iterations"] = table["iterations"].astype("Int64")
    return table, history, missing, stale


def _write_csv(table: pd.DataFrame, path: Path, default: str, formats: dict[str, str] | None = None) -> None:
    """CSV with a fixed format per float column (NaN as empty), so re-runs are byte-identical."""
    table = table.copy()
    for col in table.columns:
        if pd.api.types.is_float_dtype(table[col]):
            spec = (formats or {}).get(col, default)
            table[col] = table[col].map(lambda v, spec=spec: "" if pd.isna(v) else format(v, spec))
    table.to_csv(path, index=False, lineterminator="\n", encoding="utf-8")


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _summary_json(summary: pd.DataFrame, tests: pd.DataFrame) -> dict:
    """The full summary: {teacher: {method: {...}}, "baseline": {...}} in percent; NaN -> null."""
    def num(v, places=4):
        return None if pd.isna(v) else round(float(v), places)

    def p(v):
        return None if pd.isna(v) else float(f"{v:.4g}")

    def entry(r):
        return {"n_seeds": int(r.n_seeds), "mIoU_mean": num(r.mIoU_mean), "mIoU_std": num(r.mIoU_std),
                "ci_low": num(r.ci_low), "ci_high": num(r.ci_high)}

    out: dict = {}
    tested = {(r.teacher, r.method): r for r in tests.itertuples()}
    for r in summary.itertuples():
        if r.method == BASELINE:
            out[BASELINE] = entry(r)
            continue
        e = entry(r)
        t = tested.get((r.teacher, r.method))
        if t is not None:
            e.update({"delta_vs_baseline": num(t.delta), "delta_ci_low": num(t.ci_low),
                      "delta_ci_high": num(t.ci_high), "p_holm": p(t.p_t_holm),
                      "p_wilcoxon_holm": p(t.p_wilcoxon_holm)})
        out.setdefault(r.teacher, {})[r.method] = e
    return out


def _dvc_metrics(summary: pd.DataFrame, tests: pd.DataFrame) -> dict:
    """DVC's metrics file, {"baseline": {"mIoU"}, teacher: {method: {"mIoU", "delta", "p_holm"}}}: the
    numbers that tell experiments apart, as the report prints them (points to two decimals), so that
    `dvc exp show` has one readable column each; intervals and the other tests stay in summary.json.
    mIoU is the mean over seeds, delta the mean paired difference to the baseline, p_holm the paired
    t-test's Holm-corrected p-value; an undefined value is null, which DVC leaves out."""
    def points(v):
        return None if pd.isna(v) else round(float(v), 2)

    tested = {(r.teacher, r.method): r for r in tests.itertuples()}
    out: dict = {}
    for r in summary.itertuples():
        entry = {"mIoU": points(r.mIoU_mean)}
        if r.method == BASELINE:
            out[BASELINE] = entry
            continue
        t = tested.get((r.teacher, r.method))
        if t is not None:
            entry.update(delta=points(t.delta), p_holm=None if pd.isna(t.p_t_holm) else float(f"{t.p_t_holm:.3g}"))
        out.setdefault(r.teacher, {})[r.method] = entry
    return out


def _log_to_mlflow(study: Study, out: Path, paths: list[Path], summary: dict) -> None:
    """Log the report (files under `out`, at their paths relative to it) and the summary
    (`_summary_json`) to the study's MLflow runs (the tracking module owns MLflow)."""
    from segkd.tracking import log_study

    log_study(study.name, out, paths, summary, alpha=stats.ALPHA, uri=study.params.get("tracking", {}).get("uri"))


def aggregate(study: Study, runs: Path = layout.RUNS, out: Path = layout.RESULTS, *,
              allow_missing: bool = False, exclude_stale: bool = False,
              log_to_mlflow: bool = True, probes: Path = layout.PROBES) -> dict[str, Path]:
    """Write runs.csv, per_class_{teacher}.md/.csv, summary.md/.csv/.json, metrics.json, paired_tests.csv,
    class_deltas.csv, power.csv, plots/*.png, report.md and report.html (the same, figures inlined) into `out`, strength.csv when a student
    recorded its terms' strength, and sensitivity.csv with
    plots/sensitivity.png when a method has a grid, and lowpass.csv with plots/lowpass.png from the
    probe tables under `probes` when the study enables the low-pass probe; returns {path relative to
    out: path}."""
    runs, out = Path(runs), Path(out)
    table, history, missing, stale = load_runs(study, runs, allow_missing, exclude_stale)
    for path, reason in stale:
        print(f"segkd aggregate: warning: stale run left out: {path}: {reason}", file=sys.stderr)
    summary = stats.seed_summary(table)  # study order: the baseline, then each teacher's methods
    tests = stats.paired_tests(table)
    deltas = stats.class_deltas(table)
    per_class = {t: stats.per_class_table(table, t, study.student) for t in study.teachers}
    curves = stats.loss_curves(history[history["role"] == STUDENT_ROLE])
    variants = study.variants
    sens = stats.sensitivity(summary, tests, variants, study.teachers)
    powers = power.power_table(table, tests, len(study.folds), study.params["report"]["target_delta"])
    strengths = strength.strength_table(history, variants, study.teachers)
    counted = set(table["run_dir"])
    probed = lowpass.probed_runs(study, [r for r in expected_runs(study) if r.dir.as_posix() in counted])
    probe_rows, missing_probes = lowpass.load_tables(study, probed, Path(probes), allow_missing)
    for path in missing_probes:
        print(f"segkd aggregate: warning: probe table missing, left out: {path}", file=sys.stderr)
    low_curves = lowpass.curves(probe_rows)
    keep = lowpass.keep_ratios(low_curves)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _write_csv(table, tmp / "runs.csv", ".4f", {"wall_time_s": ".1f", "images_per_s": ".2f"})
        for teacher, t in per_class.items():
            _write_csv(t, tmp / f"per_class_{teacher}.csv", ".2f")
            _write_text(tmp / f"per_class_{teacher}.md", markdown.per_class(t, teacher))
        _write_csv(summary, tmp / "summary.csv", ".3f", {"mIoU_std": ".4f"})
        _write_text(tmp / "summary.md", markdown.summary(summary))
        summary_json = _summary_json(summary, tests)
        _write_text(tmp / "summary.json", json.dumps(summary_json, indent=2, sort_keys=True) + "\n")
        _write_text(tmp / DVC_METRICS, json.dumps(_dvc_metrics(summary, tests), indent=2) + "\n")
        p_values = {p: ".4g" for p in tests.columns if p.startswith("p_")}
        _write_csv(tests, tmp / "paired_tests.csv", ".3f", p_values)
        _write_csv(deltas, tmp / "class_deltas.csv", ".2f")
        if len(sens):
            _write_csv(sens, tmp / SENSITIVITY, ".3f", {"p_t_holm": ".4g"})
        _write_csv(powers, tmp / "power.csv", ".3f", {"sd_delta": ".4f"})
        if len(strengths):
            _write_csv(strengths, tmp / STRENGTH, ".4g")
        if len(low_curves):
            _write_csv(low_curves.merge(keep[["teacher", "method", "ratio_95"]], on=["teacher", "method"]),
                       tmp / LOWPASS, ".3f", {"kept": ".4f", "ratio": "g", "ratio_95": "g"})
        (tmp / PLOTS).mkdir()
        seeds = stats.students(stats.fold_means(table))
        drawn = {"miou": plots.miou(summary, seeds, path=tmp / FIGURES["miou"]),
                 "class_deltas": plots.class_deltas(deltas, path=tmp / FIGURES["class_deltas"]),
                 "loss": plots.loss_curves(curves, path=tmp / FIGURES["loss"]),
                 "sensitivity": plots.sensitivity(sens, variants, summary, path=tmp / FIGURES["sensitivity"]),
                 "lowpass": plots.lowpass(low_curves, path=tmp / FIGURES["lowpass"])}
        report = markdown.report(study, table, summary, tests, deltas, per_class,
                                 {k: FIGURES[k] for k, p in drawn.items() if p is not None},
                                 missing=[p.as_posix() for p in missing], expected=len(expected_runs(study)),
                                 stale=[(p.as_posix(), reason) for p, reason in stale],
                                 sens=sens, power=powers, strength=strengths, lowpass=(low_curves, keep))
        _write_text(tmp / "report.md", report)
        _write_text(tmp / "report.html", html.standalone(report, tmp, f"Study {study.name}"))
        (out / PLOTS).mkdir(parents=True, exist_ok=True)
        written = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            name = f.relative_to(tmp).as_posix()
            os.replace(f, out / name)
            written[name] = out / name
        for name in [*FIGURES.values(), SENSITIVITY, STRENGTH, LOWPASS]:  # what this run did not write must not outlive it
            if name not in written:
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log_to_mlflow:
        _log_to_mlflow(study, out, list(written.values()), summary_json)
    return written
