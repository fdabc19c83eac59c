"""Statistics of a study, as pure functions on the tidy runs table (one row per run, values in percent).

Two units of replication, on purpose:
- a *seed* is the unit of the summary: its value is the average over folds (folds share the seed's
  randomness), so mean, std (n-1) and the t-interval are over seeds;
- a *(seed, fold) pair* is the unit of the comparison with the baseline: the baseline runs on the same
  seeds and folds, so pairing removes the fold-to-fold difficulty from the difference.
Degenerate inputs (fewer than two values, zero variance) give NaN with a note instead of an exception.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import DescrStatsW

from segkd.classes import CLASS_NAMES
from segkd.config import BASELINE, STUDENT_ROLE

ALPHA = 0.05
METRICS = ("mIoU", "mPA", "aAcc")
IOU_COLUMNS = tuple(f"IoU_{name}" for name in CLASS_NAMES)
VALUES = IOU_COLUMNS + METRICS
PAIR_KEYS = ["seed", "fold"]


def fold_means(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (role, teacher, method, seed): each value averaged over the folds it was measured on."""
    keys = ["role", "teacher", "method", "seed"]
    table = runs.groupby(keys, sort=False)[list(VALUES)].mean()
    table["n_folds"] = runs.groupby(keys, sort=False)["fold"].nunique()
    return table.reset_index()


def students(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["role"] == STUDENT_ROLE]


def baseline(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["role"] == STUDENT_ROLE) & (table["method"] == BASELINE)]


def mean_interval(values) -> dict:
    """Mean, std (n-1) and 95% t-interval of independent values; NaN plus a note where undefined."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    out = {"n": n, "mean": float(x.mean()) if n else np.nan, "std": np.nan, "ci_low": np.nan,
           "ci_high": np.nan, "note": ""}
    if n < 2:
        out["note"] = f"n={n}: no spread or interval"
        return out
    d = DescrStatsW(x, ddof=1)
    out["std"] = float(d.std)
    out["ci_low"], out["ci_high"] = (float(v) for v in d.tconfint_mean(alpha=ALPHA))
    if out["std"] == 0:
        out["note"] = "zero variance: the interval is a point"
    return out


def seed_summary(runs: pd.DataFrame, value: str = "mIoU") -> pd.DataFrame:
    """One row per student (teacher, method): mean over seeds of the fold-averaged value, std, t-interval."""
    per_seed = students(fold_means(runs))
    rows = []
    for (teacher, method), group in per_seed.groupby(["teacher", "method"], sort=False):
        s = mean_interval(group[value])
        rows.append({"teacher": teacher, "method": method, "n_seeds": s["n"], f"{value}_mean": s["mean"],
                     f"{value}_std": s["std"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                     "note": s["note"]})
    return pd.DataFrame(rows, columns=["teacher", "method", "n_seeds", f"{value}_mean", f"{value}_std",
                                       "ci_low", "ci_high", "note"])


def paired_differences(runs: pd.DataFrame) -> pd.DataFrame:
    """Method minus baseline for every value, one row per (teacher, method, seed, fold) both have run."""
    base = baseline(runs)[PAIR_KEYS + list(VALUES)]
    methods = runs[(runs["role"] == STUDENT_ROLE) & (runs["method"] != BASELINE)]
    merged = methods.merge(base, on=PAIR_KEYS, suffixes=("", "_baseline"), validate="many_to_one")
    diff = merged[["teacher", "method"] + PAIR_KEYS].copy()
    for v in VALUES:
        diff[v] = merged[v] - merged[f"{v}_baseline"]
    return diff.reset_index(drop=True)


def paired_test(d) -> dict:
    """Mean paired difference with its 95% t-interval, paired t-test and Wilcoxon signed-rank p-values."""
    d = np.asarray(d, dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    s = mean_interval(d)
    out = {"n_pairs": n, "delta": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
           "t": np.nan, "p_t": np.nan, "p_wilcoxon": np.nan, "note": ""}
    if n < 2:
        out["note"] = f"{n} pair(s): no test"
    elif np.all(d == 0):
        out["note"] = "identical to the baseline on every pair: no test"
    elif np.ptp(d) <= 1e-9 * max(1.0, abs(d.mean())):
        out["note"] = "constant difference (zero variance): t-test undefined"
        out["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    else:
        # One-sample t on the differences is exactly scipy.stats.ttest_rel on the pairs.
        t = stats.ttest_1samp(d, 0.0)
        out["t"], out["p_t"] = float(t.statistic), float(t.pvalue)
        out["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
    return out


def holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p-values over the tests that were run (NaN stays NaN and does not count)."""
    p = pd.Series(p, dtype=float)
    adjusted = pd.Series(np.nan, index=p.index)
    ok = p.notna()
    if ok.any():
        adjusted[ok] = multipletests(p[ok].to_numpy(), alpha=ALPHA, method="holm")[1]
    return adjusted


def paired_tests(runs: pd.DataFrame, value: str = "mIoU") -> pd.DataFrame:
    """Every method against the baseline, Holm-corrected across the methods of each teacher."""
    diff = paired_differences(runs)
    rows = [{"teacher": teacher, "method": method, **paired_test(group[value])}
            for (teacher, method), group in diff.groupby(["teacher", "method"], sort=False)]
    columns = ["teacher", "method", "n_pairs", "delta", "ci_low", "ci_high", "t", "p_t", "p_t_holm",
               "p_wilcoxon", "p_wilcoxon_holm", "note"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    for p in ("p_t", "p_wilcoxon"):
        table[f"{p}_holm"] = table.groupby("teacher", sort=False)[p].transform(holm)
    return table[columns]


def class_deltas(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean paired difference (method - baseline) of every class IoU and of mIoU, per (teacher, method)."""
    diff = paired_differences(runs)
    columns = list(IOU_COLUMNS) + ["mIoU"]
    table = diff.groupby(["teacher", "method"], sort=False)[columns].mean().reset_index()
    return table.rename(columns=dict(zip(IOU_COLUMNS, CLASS_NAMES)))


def per_class_table(runs: pd.DataFrame, teacher: str, student: str) -> pd.DataFrame:
    """The per-teacher table: the baseline (mean over seeds), the teacher, then each method x seed.

    Every value is a fold average; the baseline row is the mean of its seeds' fold averages.
    """
    seeds = fold_means(runs)
    rows = []
    base = baseline(seeds)
    if len(base):
        rows.append({"model": student, "method": BASELINE, "seed": "mean",
                     **base[list(VALUES)].mean().to_dict()})
    own = seeds[(seeds["role"] != STUDENT_ROLE) & (seeds["teacher"] == teacher)]
    distilled = seeds[(seeds["role"] == STUDENT_ROLE) & (seeds["teacher"] == teacher)]
    for model, method, part in ((teacher, "teacher", own), (student, None, distilled)):
        rows += [{"model": model, "method": method or r.method, "seed": str(r.seed),
                  **r[list(VALUES)].to_dict()} for _, r in part.iterrows()]
    table = pd.DataFrame(rows, columns=["model", "method", "seed", *VALUES])
    return table.rename(columns=dict(zip(IOU_COLUMNS, CLASS_NAMES)))


def loss_curves(history: pd.DataFrame) -> pd.DataFrame:
    """Mean training loss per (teacher, method, iteration) over the seeds and folds that logged it."""
    curves = history.groupby(["teacher", "method", "iteration"], sort=False)["loss"].mean().reset_index()
    return curves.sort_values("iteration", kind="stable")  # teachers and methods stay in study order


def sensitivity(summary: pd.DataFrame, tests: pd.DataFrame, variants: dict, teachers: list[str]) -> pd.DataFrame:
    """One row per (teacher, variant) of every method with a grid: what was swept, the variant's mean
    mIoU with its 95% t-interval over seeds, and its paired difference from the baseline.

    A view on `seed_summary` and `paired_tests`, so the Holm correction is the one over every method
    and variant of the teacher; a variant without runs keeps its row with NaN.
    """
    from segkd.sweep import format_value

    columns = ["teacher", "method", "variant", "swept", "n_seeds", "mIoU_mean", "ci_low", "ci_high",
               "n_pairs", "delta", "delta_ci_low", "delta_ci_high", "p_t_holm"]
    s = summary.set_index(["teacher", "method"])
    t = tests.set_index(["teacher", "method"])
    rows = []
    for teacher in teachers:
        for name, v in variants.items():
            if not v.swept:
                continue
            row = {"teacher": teacher, "method": v.method, "variant": name,
                   "swept": "; ".join(f"{k}={format_value(x)}" for k, x in v.swept.items())}
            if (teacher, name) in s.index:
                r = s.loc[(teacher, name)]
                row.update(n_seeds=r["n_seeds"], mIoU_mean=r["mIoU_mean"], ci_low=r["ci_low"], ci_high=r["ci_high"])
            if (teacher, name) in t.index:
                r = t.loc[(teacher, name)]
                row.update(n_pairs=r["n_pairs"], delta=r["delta"], delta_ci_low=r["ci_low"],
                           delta_ci_high=r["ci_high"], p_t_holm=r["p_t_holm"])
            rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    for count in ("n_seeds", "n_pairs"):
        table[count] = table[count].astype("Int64")
    return table
