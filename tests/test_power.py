"""Statistical power of the paired comparisons (segkd.report.power) against values computed here by hand:
the two-sided noncentral-t power equation solved with scipy directly, and statsmodels' TTestPower where
it gives a number."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy import stats as sps
from statsmodels.stats.power import TTestPower

from segkd.report import power, stats


def power_by_hand(d, n, alpha):
    """P(|T| > t_crit), T = (Z + d sqrt(n)) / sqrt(V / df), Z standard normal, V chi-square with df = n - 1
    degrees of freedom: both tails integrated over V's density (no noncentral-t routine involved)."""
    df, nc = n - 1, d * math.sqrt(n)
    crit = sps.t.ppf(1 - alpha / 2, df)

    def tails(v):
        s = crit * math.sqrt(v / df)
        return sps.chi2.pdf(v, df) * (sps.norm.sf(s - nc) + sps.norm.cdf(-s - nc))

    lo, hi = sps.chi2.ppf(1e-15, df), sps.chi2.isf(1e-15, df)  # where V's mass is
    return integrate.quad(tails, lo, hi, epsabs=1e-13, epsrel=1e-11, limit=200)[0]


@pytest.mark.parametrize("n, alpha", [(6, 0.05), (6, 0.05 / 4), (2, 0.05 / 3)])
def test_detectable_effect_solves_the_power_equation(n, alpha):
    d = power.detectable_effect(n, alpha)
    assert power_by_hand(d, n, alpha) == pytest.approx(0.8, abs=1e-8)  # power rises with d: the one root


def test_agrees_with_statsmodels_where_statsmodels_gives_a_number():
    sm = TTestPower()
    assert power.detectable_effect(6) == pytest.approx(sm.solve_power(nobs=6, alpha=0.05, power=0.8), rel=1e-6)
    assert power.pairs_needed(0.5) == pytest.approx(sm.solve_power(effect_size=0.5, alpha=0.05, power=0.8), rel=1e-6)
    for d, n, alpha in [(0.5, 6, 0.05), (1.0, 12, 0.0125), (2.0, 6, 0.05)]:
        assert power._power(d, n, alpha) == pytest.approx(sm.power(d, n, alpha, alternative="two-sided"), rel=1e-9)
    # where statsmodels fails (few pairs, power near 1), the two tails by hand still give the answer
    assert np.isnan(sm.power(8.0, 2, 0.05 / 3, alternative="two-sided"))
    assert power._power(8.0, 2, 0.05 / 3) == pytest.approx(power_by_hand(8.0, 2, 0.05 / 3), rel=1e-9)


def test_pairs_needed_by_hand_and_its_floor():
    # the textbook one-sample case: d = 0.5 needs 33.37 pairs, d = 1 needs 9.94 (two-sided 5%, 80%)
    n = power.pairs_needed(0.5)
    assert power_by_hand(0.5, n, 0.05) == pytest.approx(0.8, abs=1e-9) and 33 < n < 34
    assert 9.9 < power.pairs_needed(1.0) < 10
    assert power.pairs_needed(50.0) == 2.0  # two pairs already suffice: a t-test needs no fewer
    assert np.isnan(power.pairs_needed(0.0)) and np.isnan(power.pairs_needed(math.inf))
    assert np.isnan(power.detectable_effect(1))


def runs_with(differences: dict, seeds=(0, 1, 2), folds=(0, 1)) -> pd.DataFrame:
    """A runs table (mIoU in points) whose method - baseline differences per (seed, fold) are given."""
    rows = []
    for s in seeds:
        for f in folds:
            base = 50.0 + s + 2 * f
            rows.append({"role": "student", "teacher": "none", "method": "baseline", "seed": s, "fold": f,
                         "mIoU": base})
            for (teacher, method), d in differences.items():
                rows.append({"role": "student", "teacher": teacher, "method": method, "seed": s, "fold": f,
                             "mIoU": base + d[len(folds) * seeds.index(s) + folds.index(f)]})
    table = pd.DataFrame(rows)
    for v in stats.VALUES:
        if v != "mIoU":
            table[v] = table["mIoU"]
    return table


def test_power_table_by_hand():
    diffs = {("b2", "kd"): [0.9, 0.1, 0.5, -0.2, 0.6, 0.3], ("b2", "at"): [0.2, -0.4, 0.0, 0.3, -0.1, 0.1],
             ("b2", "sp"): [0.5] * 6, ("b4", "kd"): [1.0, 0.2, 0.4, 0.8, 0.3, 0.6]}
    runs = runs_with(diffs)
    tests = stats.paired_tests(runs)
    table = power.power_table(runs, tests, folds_per_seed=2, target_delta=0.3).set_index(["teacher", "method"])

    kd = table.loc[("b2", "kd")]
    sd = np.std(diffs[("b2", "kd")], ddof=1)
    assert kd.n_pairs == 6 and kd.n_seeds == 3 and kd.sd_delta == pytest.approx(sd)
    assert kd.holm_m == 2  # sp's constant difference is not tested, so Holm does not count it
    assert power_by_hand(kd.mdd / sd, 6, 0.05) == pytest.approx(0.8, abs=1e-8)
    assert power_by_hand(kd.mdd_holm / sd, 6, 0.025) == pytest.approx(0.8, abs=1e-8)  # 5% / 2 tests
    for seeds, alpha in ((kd.seeds_needed, 0.05), (kd.seeds_needed_holm, 0.025)):  # the fewest seeds, 2 pairs each
        assert power_by_hand(0.3 / sd, 2 * seeds, alpha) >= 0.8 > power_by_hand(0.3 / sd, 2 * (seeds - 1), alpha)
    assert kd.seeds_needed_holm > kd.seeds_needed
    # alone in its teacher's family, b4/kd's worst case is the plain level
    b4 = table.loc[("b4", "kd")]
    assert b4.holm_m == 1 and b4.mdd_holm == pytest.approx(b4.mdd)
    # no spread: NaN and the reason, not a crash
    sp = table.loc[("b2", "sp")]
    assert pd.isna(sp.mdd) and pd.isna(sp.seeds_needed) and "no t-test" in sp.note and "zero variance" in sp.note


def test_one_pair_gives_nan_with_a_note():
    runs = runs_with({("b2", "kd"): [0.4]}, seeds=(0,), folds=(0,))
    table = power.power_table(runs, stats.paired_tests(runs), folds_per_seed=1, target_delta=0.3)
    r = table.iloc[0]
    assert r.n_pairs == 1 and pd.isna(r.sd_delta) and pd.isna(r.mdd) and r.holm_m == 0 and "1 pair(s)" in r.note
