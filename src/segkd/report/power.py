"""Statistical power of the comparisons with the baseline: what a study of this size can tell from noise.

A comparison that finds no significant difference says little unless the study could have found one:
with a handful of pairs, a real difference smaller than the spread of the paired differences is
missed most of the time. For every (teacher, method) comparison, at the spread of its own paired
differences:
- the minimal detectable difference: the smallest true mean difference that the paired t-test (the
  one `stats.paired_tests` runs: a one-sample t on the (seed, fold) differences) finds at `POWER`,
  two-sided, at `ALPHA` and at the Holm worst case, ALPHA / m with m the tests of the teacher's Holm
  family (Holm compares its smallest p-value with ALPHA / m);
- the seeds needed to detect a target difference (`report.target_delta`), each seed giving one pair
  per fold as in the study.
The power is that of statsmodels' `TTestPower` (the noncentral t), computed with scipy's `nct.sf` and
solved with `brentq` on brackets found here: `TTestPower` returns NaN, and its `solve_power` a bound
it stopped at, for the few pairs a study has (see `_power`). The spread is the observed one, itself
uncertain with few pairs: the figures say what the study could resolve if the spread were what it
measured, not more.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import brentq

from segkd.report.stats import ALPHA, PAIR_KEYS, paired_differences

POWER = 0.8
MIN_PAIRS = 2  # a t-test needs two differences
COLUMNS = ["teacher", "method", "n_pairs", "n_seeds", "sd_delta", "holm_m", "mdd", "mdd_holm", "target_delta",
           "seeds_needed", "seeds_needed_holm", "note"]


def _power(effect: float, nobs: float, alpha: float) -> float:
    """Two-sided power of the one-sample t-test: P(T' > t_crit) + P(T' < -t_crit), T' noncentral t with
    nobs - 1 degrees of freedom and noncentrality effect * sqrt(nobs), the lower tail as the upper
    tail of the mirrored distribution. `TTestPower.power` is this formula, but its tails (scipy's
    `nctdtr`, and `nct.cdf` far in the lower tail) come back NaN where the power is close to 1 with
    few pairs, exactly where a small study's minimal detectable difference lies; `nct.sf` does not.
    tests/test_power.py checks the two agree wherever statsmodels gives a number."""
    df, nc = nobs - 1, effect * math.sqrt(nobs)
    crit = stats.t.isf(alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def _bracket_root(f, low: float, high: float) -> float:
    """The root of increasing `f` above `low`, doubling `high` until f changes sign there."""
    while f(high) < 0:
        low, high = high, 2 * high
    return brentq(f, low, high, xtol=1e-12, rtol=1e-12)


def detectable_effect(nobs: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The standardised mean difference (mean / sd of the differences) a two-sided paired t-test on
    `nobs` pairs finds with probability `power` at level `alpha`; NaN below two pairs."""
    if nobs < MIN_PAIRS:
        return math.nan
    return _bracket_root(lambda d: _power(d, nobs, alpha) - power, 0.0, 1.0)


def pairs_needed(effect: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The (fractional) number of pairs at which the test finds a standardised difference `effect` with
    probability `power`; at least two, NaN for a non-positive or non-finite effect."""
    if not (math.isfinite(effect) and effect > 0):
        return math.nan
    f = lambda n: _power(effect, n, alpha) - power  # noqa: E731
    return float(MIN_PAIRS) if f(MIN_PAIRS) >= 0 else _bracket_root(f, MIN_PAIRS, 2.0 * MIN_PAIRS)


def _seeds(pairs: float, folds: int) -> float:
    return math.nan if math.isnan(pairs) else float(math.ceil(pairs / folds - 1e-9))


def power_table(runs: pd.DataFrame, tests: pd.DataFrame, folds_per_seed: int, target_delta: float,
                value: str = "mIoU", power: float = POWER) -> pd.DataFrame:
    """One row per comparison of `tests` (`stats.paired_tests` of `runs`): pairs, distinct seeds, sd of
    the paired differences (points), the Holm family's size m, the minimal detectable differences at
    ALPHA and at ALPHA / m (points), the target and the seeds needed for it at both levels.

    A comparison the t-test could not run (fewer than two pairs, no spread) gets NaN and its reason;
    it is not counted in m, as Holm does not count it.
    """
    diff = paired_differences(runs)
    groups = {key: g for key, g in diff.groupby(["teacher", "method"], sort=False)}
    family = tests.groupby("teacher", sort=False)["p_t"].transform(lambda p: int(p.notna().sum()))
    rows = []
    for r, m in zip(tests.itertuples(index=False), family):
        d = groups[(r.teacher, r.method)]
        values = d[value].to_numpy(dtype=float)
        ok = ~np.isnan(values)
        n = int(ok.sum())
        row = {"teacher": r.teacher, "method": r.method, "n_pairs": n,
               "n_seeds": int(d.loc[ok, PAIR_KEYS[0]].nunique()),
               "sd_delta": float(np.std(values[ok], ddof=1)) if n >= MIN_PAIRS else math.nan,
               "holm_m": int(m), "target_delta": float(target_delta), "note": ""}
        if pd.isna(r.p_t):
            row.update(mdd=math.nan, mdd_holm=math.nan, seeds_needed=math.nan, seeds_needed_holm=math.nan,
                       note=f"no t-test ({r.note})")
        else:
            sd, holm_alpha = row["sd_delta"], ALPHA / m
            row.update(mdd=detectable_effect(n, ALPHA, power) * sd,
                       mdd_holm=detectable_effect(n, holm_alpha, power) * sd,
                       seeds_needed=_seeds(pairs_needed(target_delta / sd, ALPHA, power), folds_per_seed),
                       seeds_needed_holm=_seeds(pairs_needed(target_delta / sd, holm_alpha, power), folds_per_seed))
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    for count in ("n_pairs", "n_seeds", "holm_m", "seeds_needed", "seeds_needed_holm"):
        table[count] = table[count].astype("Int64")
    return table
