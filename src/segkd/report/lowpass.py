"""The low-pass probe in the report: every probed run's table (`segkd probe`) -> one curve per model.

A model is the teacher, the no-KD baseline or a method (with its teacher). Its curve is the mIoU it
keeps with its tapped feature reduced to the low band (or the high band) at each ratio, as a mean
with a 95% t-interval over the same unit as the summary's: each seed's fold average; a teacher,
trained once per fold under one seed, over its folds. Its 95% ratio is the smallest ratio of the
grid at which the mean low-band mIoU is at least 95% of the mean mIoU of the models themselves
(their metrics.json), the figure the frequency premise asks for: a model whose accuracy lives in
the low band keeps it from a small ratio on.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from segkd import layout
from segkd.config import TEACHER_ROLE, spec_hash
from segkd.errors import UserError
from segkd.report.stats import mean_interval

KEEP = 0.95  # the share of a model's own mIoU its 95% ratio keeps
READ = ["pass", "ratio", "mIoU", "run_mIoU", "spec_hash", "band", "tap", "ratio_mode"]  # what the report reads
COLUMNS = ["teacher", "method", "role", "pass", "ratio", "unit", "n", "mIoU_mean", "ci_low", "ci_high",
           "own_mIoU", "kept"]


def probed_runs(study, runs: list) -> list:
    """The runs of `runs` that the study probes (probe.runs, by job kind); none when the probe is off."""
    probe = study.params["probe"]
    return [run for run in runs if run.kind in probe["runs"]] if probe["enabled"] else []


def load_tables(study, runs: list, probes: Path = layout.PROBES, allow_missing: bool = False) -> tuple[pd.DataFrame, list[Path]]:
    """The probe rows (percent) of `runs` (the runs the report counts), and the probe tables missing.

    A table must be of the study's probe (ratios, band, tap) and of the run as the study trains it (its
    spec hash), since a table of a retrained run describes another model; a missing one is an error
    unless allow_missing.
    """
    probe = study.params["probe"]
    frames, missing = [], []
    for run in runs:
        path = layout.probe_table(run.dir, Path(probes))
        if not path.is_file():
            missing.append(path)
            continue
        try:
            t = pd.read_csv(path, keep_default_na=False, na_values=[""])
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise UserError(f"{path}: unreadable probe table ({err})") from None
        absent = [c for c in READ if c not in t.columns]
        if absent:
            raise UserError(f"{path}: not a probe table (no column {', '.join(absent)})")
        if set(t["spec_hash"].astype(str)) != {spec_hash(run.spec(study))}:
            raise UserError(f"{path}: probes another run than {run.dir} as the study trains it (spec hash "
                            f"{t['spec_hash'].iloc[0]}); re-run `segkd probe` on it")
        wanted = {"band": probe["band"], "tap": probe["tap"], "ratio_mode": probe["ratio_mode"]}
        for key, value in wanted.items():
            if set(t[key].astype(str)) != {value}:
                raise UserError(f"{path}: {key} {', '.join(sorted(set(t[key].astype(str))))}, but the study's "
                                f"probe has {value}; re-run `segkd probe`")
        if sorted(set(t["ratio"])) != sorted(probe["ratios"]):
            raise UserError(f"{path}: ratios {sorted(set(t['ratio']))}, but the study's probe has "
                            f"{sorted(probe['ratios'])}; re-run `segkd probe`")
        t = t[READ[:4]].copy()
        t["mIoU"], t["run_mIoU"] = 100 * t["mIoU"], 100 * t["run_mIoU"]
        t["role"], t["teacher"], t["method"], t["seed"], t["fold"] = (
            run.role, run.teacher, run.method or "teacher", run.seed, run.fold)
        frames.append(t)
    if missing and not allow_missing:
        shown = ", ".join(str(p) for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} probe table(s) missing: {shown} (run `segkd probe`, or pass "
                        "--allow-missing to report without them)")
    columns = ["role", "teacher", "method", "seed", "fold", *READ[:4]]
    return (pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)), missing


def curves(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, pass, ratio): mean and 95% t-interval of the mIoU kept, over the module
    docstring's unit, with the model's own mIoU over the same unit and the share kept."""
    out = []
    for (teacher, method, role), model in rows.groupby(["teacher", "method", "role"], sort=False):
        unit = "fold" if role == TEACHER_ROLE else "seed"
        keys = ["fold"] if unit == "fold" else ["seed"]
        own = model.groupby(["seed", "fold"])["run_mIoU"].first().groupby(level=unit).mean().mean()
        for (kind, ratio), group in model.groupby(["pass", "ratio"], sort=False):
            values = group.groupby(keys)["mIoU"].mean()
            s = mean_interval(values)
            out.append({"teacher": teacher, "method": method, "role": role, "pass": kind, "ratio": ratio,
                        "unit": unit, "n": s["n"], "mIoU_mean": s["mean"], "ci_low": s["ci_low"],
                        "ci_high": s["ci_high"], "own_mIoU": own,
                        "kept": s["mean"] / own if own > 0 else math.nan})
    table = pd.DataFrame(out, columns=COLUMNS)
    order = {"low": 0, "high": 1}
    table["_pass"] = table["pass"].map(order)
    table = table.sort_values(["_pass", "ratio"], kind="stable").drop(columns="_pass")
    # models in study order (the table's order of first appearance), passes and ratios ascending
    models = list(dict.fromkeys(zip(rows["teacher"], rows["method"])))
    table["_model"] = [models.index(k) for k in zip(table["teacher"], table["method"])]
    return table.sort_values(["_model"], kind="stable").drop(columns="_model").reset_index(drop=True)


def keep_ratios(table: pd.DataFrame, keep: float = KEEP) -> pd.DataFrame:
    """Per model: its own mIoU and the smallest ratio whose mean low-band mIoU keeps `keep` of it (NaN:
    no ratio of the grid does)."""
    rows = []
    low = table[table["pass"] == "low"]
    for (teacher, method, role), model in low.groupby(["teacher", "method", "role"], sort=False):
        kept = model[model["kept"] >= keep]
        rows.append({"teacher": teacher, "method": method, "role": role, "own_mIoU": model["own_mIoU"].iloc[0],
                     "ratio_95": kept["ratio"].min() if len(kept) else math.nan})
    return pd.DataFrame(rows, columns=["teacher", "method", "role", "own_mIoU", "ratio_95"])
