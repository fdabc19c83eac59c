"""Markdown of the report: pipe tables with fixed decimals, and the findings said in words."""

from __future__ import annotations

import numpy as np
import pandas as pd

from segkd.report.stats import ALPHA
from segkd.runs import NO_TEACHER


def table(df: pd.DataFrame, formats: dict[str, str] | None = None, default: str = "{:.2f}") -> str:
    """A GitHub pipe table; floats use `formats[column]` (or `default`), NaN prints as an en dash."""
    formats = formats or {}

    def cell(column, value):
        if isinstance(value, (float, np.floating)):
            return "–" if np.isnan(value) else formats.get(column, default).format(value)
        return str(value).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(df.columns, row)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def p_value(p: float) -> str:
    return "–" if pd.isna(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _interval(lo: float, hi: float, places: int) -> str:
    return "–" if pd.isna(lo) else f"[{lo:.{places}f}, {hi:.{places}f}]"


def _teacher(name: str) -> str:
    return "none (no KD)" if name == NO_TEACHER else name


def per_class(t: pd.DataFrame, teacher: str) -> str:
    return (f"### Per-class IoU (%), teacher {teacher}\n\n"
            "Fold averages; the baseline row is the mean over its seeds.\n\n" + table(t))


def summary(s: pd.DataFrame) -> str:
    shown = pd.DataFrame({
        "teacher": s["teacher"].map(_teacher), "method": s["method"], "seeds": s["n_seeds"],
        "mIoU mean": s["mIoU_mean"], "std": s["mIoU_std"],
        "95% t-interval": [_interval(lo, hi, 3) for lo, hi in zip(s["ci_low"], s["ci_high"])]})
    return ("### mIoU (%) per method\n\nMean over seeds of each seed's fold average; std with n-1; "
            "95% t-interval of the mean.\n\n" + table(shown, {"std": "{:.4f}"}, "{:.3f}"))


def tests_table(tests: pd.DataFrame) -> str:
    shown = pd.DataFrame({
        "teacher": tests["teacher"], "method": tests["method"], "pairs": tests["n_pairs"],
        "Δ mIoU": tests["delta"],
        "95% CI of Δ": [_interval(lo, hi, 3) for lo, hi in zip(tests["ci_low"], tests["ci_high"])],
        "t": tests["t"], "p (t)": tests["p_t"].map(p_value), "p Holm (t)": tests["p_t_holm"].map(p_value),
        "p (Wilcoxon)": tests["p_wilcoxon"].map(p_value),
        "p Holm (Wilcoxon)": tests["p_wilcoxon_holm"].map(p_value)})
    return table(shown, default="{:+.3f}")


def _model(teacher: str, method: str, role: str) -> str:
    if role == "teacher":
        return f"teacher {teacher}"
    return "baseline (no KD)" if teacher == NO_TEACHER else f"{teacher} / {method}"


def lowpass_section(curves: pd.DataFrame, keep: pd.DataFrame, probe: dict) -> str:
    """The low-pass probe in words and a table (`segkd.report.lowpass`): per model, the ratio from
    which its low band keeps 95% of its mIoU, and the mIoU kept at each ratio."""
    from segkd.report.lowpass import KEEP

    lines = [f"Each model evaluated on its own held-out fold with its {probe['tap']} feature replaced by its "
             f"{probe['band']} low band (left), or by its high band (right), at each ratio (the `freq` term's "
             "cut-off; 1 keeps every frequency); mean over seeds of each seed's fold average, a teacher over "
             "its folds, with the 95% t-interval. A model whose accuracy lives in the low frequencies of the "
             f"feature, the premise of frequency-band distillation, keeps {KEEP:.0%} of its mIoU from a small "
             "ratio on.\n"]
    sentences = []
    for r in keep.itertuples():
        name = _model(r.teacher, r.method, r.role)
        if pd.isna(r.ratio_95):
            sentences.append(f"- **{name}** (mIoU {r.own_mIoU:.2f}) keeps {KEEP:.0%} of its mIoU at no ratio of "
                             "the grid.")
            continue
        at = curves[(curves["teacher"] == r.teacher) & (curves["method"] == r.method) & (curves["ratio"] == r.ratio_95)]
        low = at.loc[at["pass"] == "low", "mIoU_mean"].iloc[0]
        high = at.loc[at["pass"] == "high", "mIoU_mean"]
        rest = f"; its high band alone gives {high.iloc[0]:.2f} there" if len(high) else ""
        sentences.append(f"- **{name}** (mIoU {r.own_mIoU:.2f}) keeps {KEEP:.0%} of it from ratio {r.ratio_95:g} "
                         f"on ({low:.2f}){rest}.")
    low = curves[curves["pass"] == "low"]
    shown = pd.DataFrame({"model": [_model(r.teacher, r.method, r.role) for r in keep.itertuples()],
                          "mIoU": keep["own_mIoU"].to_numpy()})
    for ratio in sorted(low["ratio"].unique()):
        values = low[low["ratio"] == ratio].set_index(["teacher", "method"])["mIoU_mean"]
        shown[f"{ratio:g}"] = [values.get((r.teacher, r.method), float("nan")) for r in keep.itertuples()]
    shown[f"{KEEP:.0%} from"] = ["–" if pd.isna(v) else f"{v:g}" for v in keep["ratio_95"]]
    return ("\n".join(lines) + "\n".join(sentences) + "\n\nLow-band mIoU (%) at each ratio:\n\n" + table(shown))


def sensitivity(sens: pd.DataFrame, variants: dict) -> str:
    """One table per teacher and method grid: each variant's swept values, mIoU and Δ vs the baseline."""
    from segkd.sweep import format_value

    parts = []
    for (teacher, method), rows in sens.groupby(["teacher", "method"], sort=False):
        swept = [variants[name] for name in rows["variant"]]
        several = len(swept[0].terms) > 1
        shown = pd.DataFrame({"variant": rows["variant"]})
        for key in swept[0].swept:
            shown[key if several else key.split(".", 1)[1]] = [format_value(v.swept[key]) for v in swept]
        shown["seeds"] = rows["n_seeds"].map(lambda n: "–" if pd.isna(n) else str(n))
        shown["mIoU mean"] = rows["mIoU_mean"]
        shown["95% t-interval"] = [_interval(lo, hi, 3) for lo, hi in zip(rows["ci_low"], rows["ci_high"])]
        shown["Δ vs baseline"] = rows["delta"]
        shown["95% CI of Δ"] = [_interval(lo, hi, 3) for lo, hi in zip(rows["delta_ci_low"], rows["delta_ci_high"])]
        shown["p Holm (t)"] = rows["p_t_holm"].map(p_value)
        parts.append(f"### Teacher {teacher}, method {method}\n\n"
                     + table(shown, {"Δ vs baseline": "{:+.3f}"}, "{:.3f}"))
    return "\n".join(parts)


def _span(values, fmt: str = "{:.2f}") -> str:
    """'a' or 'a–b': the range of the non-missing `values`, as `fmt` prints them."""
    shown = [v for v in values if pd.notna(v)]
    lo, hi = fmt.format(min(shown)), fmt.format(max(shown))
    return lo if lo == hi else f"{lo}–{hi}"


def power_section(p: pd.DataFrame, seeds: int, folds: int) -> str:
    """The power paragraph and its table: the smallest differences the study can tell from noise, and
    the seeds a target difference would need (`segkd.report.power`)."""
    from segkd.report.power import POWER

    design = f"With {seeds} seed{'s' if seeds != 1 else ''} x {folds} fold{'s' if folds != 1 else ''}"
    ok = p[p["mdd"].notna()]
    if not len(ok):
        return (f"{design}, no comparison has the two pairs and the spread a power analysis needs: the study "
                "cannot say which differences it could have detected.\n")
    target = p["target_delta"].iloc[0]
    text = (f"{design} ({_span(ok['n_pairs'], '{}')} pairs per comparison), differences from the baseline below "
            f"{_span(ok['mdd'])} points cannot be told from noise ({POWER:.0%} power, two-sided paired t-test at "
            f"{ALPHA:.0%}), nor below {_span(ok['mdd_holm'])} points at Holm's worst case ({ALPHA:.0%} / m, m = "
            f"{_span(ok['holm_m'], '{}')} tests per teacher); {target:g} points needs {_span(ok['seeds_needed'], '{}')} "
            f"seeds ({_span(ok['seeds_needed_holm'], '{}')} at Holm's worst case), at the observed spread of the "
            f"paired differences (sd {_span(ok['sd_delta'])} points). The spread is itself estimated from "
            "those few pairs.")
    missing = [f"{r.method} ({r.note})" for r in p.itertuples() if pd.isna(r.mdd)]
    if missing:
        text += " Not computable: " + ", ".join(missing) + "."
    shown = pd.DataFrame({
        "teacher": p["teacher"], "method": p["method"], "pairs": p["n_pairs"], "sd of Δ": p["sd_delta"],
        f"detectable Δ ({ALPHA:.0%})": p["mdd"], "detectable Δ (Holm)": p["mdd_holm"],
        f"seeds for {target:g}": p["seeds_needed"].map(lambda n: "–" if pd.isna(n) else str(n)),
        f"seeds for {target:g} (Holm)": p["seeds_needed_holm"].map(lambda n: "–" if pd.isna(n) else str(n))})
    return text + "\n\n" + table(shown, {"sd of Δ": "{:.3f}"}, "{:.2f}")


def strength_section(st: pd.DataFrame) -> str:
    """One row per (teacher, method, term): its weight, and its share of the loss and gradient-norm
    ratio to the task loss at the first and last measured iteration, and the ratio's mean over them."""
    first, last = int(st["iteration"].min()), int(st["iteration"].max())
    rows = []
    for (teacher, method, term, weight), g in st.groupby(["teacher", "method", "term", "weight"], sort=False):
        g = g.sort_values("iteration")
        rows.append({"teacher": teacher, "method": method, "term": term, "weight": f"{weight:g}",
                     "runs": int(g["n_runs"].max()),
                     f"share, it {first}": g["share"].iloc[0], f"share, it {last}": g["share"].iloc[-1],
                     f"grad ratio, it {first}": g["grad_ratio"].iloc[0],
                     f"grad ratio, it {last}": g["grad_ratio"].iloc[-1], "grad ratio, mean": g["grad_ratio"].mean()})
    its = ", ".join(str(int(i)) for i in sorted(st["iteration"].unique()))
    return ("Each weighted term's share of the total loss, and the ratio of its gradient norm to the task loss's "
            "over the student's parameters (‖∇ w·term‖ / ‖∇ task‖), measured on the training batch at "
            f"iterations {its} and averaged over seeds and folds; the mean is over those iterations. A weight "
            "is only comparable across losses through these numbers.\n\n" + table(pd.DataFrame(rows), default="{:.4g}"))


def findings(tests: pd.DataFrame) -> list[str]:
    """Which methods differ from the baseline at the 5% level (Holm-adjusted paired t-test), which way."""
    lines = []
    for teacher, group in tests.groupby("teacher", sort=False):
        verdicts = {"higher than the baseline": [], "lower than the baseline": [],
                    "no significant difference": [], "not testable": []}
        for r in group.itertuples():
            if pd.isna(r.p_t_holm):
                verdicts["not testable"].append(f"{r.method} ({r.note})")
            elif r.p_t_holm < ALPHA:
                key = "higher than the baseline" if r.delta > 0 else "lower than the baseline"
                verdicts[key].append(f"{r.method} ({r.delta:+.2f} points, p Holm {p_value(r.p_t_holm)})")
            else:
                verdicts["no significant difference"].append(
                    f"{r.method} ({r.delta:+.2f} points, p Holm {p_value(r.p_t_holm)})")
        said = "; ".join(f"{k}: {', '.join(v)}" for k, v in verdicts.items() if v)
        lines.append(f"- **Teacher {teacher}** — {said}.")
    return lines


def _wilcoxon_floor(tests: pd.DataFrame) -> str:
    """The smallest p the exact signed-rank test can reach, so a large p is not read as no effect."""
    sizes = sorted({int(n) for n in tests["n_pairs"] if n >= 2})
    if not sizes:
        return ""
    m = int(tests.groupby("teacher")["method"].count().max())
    floors = ", ".join(f"n={n}: {2 / 2 ** n:.5g}, Holm-adjusted {min(1, m * 2 / 2 ** n):.5g}" for n in sizes)
    return (f"With n pairs, the exact two-sided Wilcoxon signed-rank test cannot give p below 2/2^n, and "
            f"after Holm over {m} method(s) not below {m} times that ({floors}); a Wilcoxon p above "
            f"{ALPHA} may therefore say more about the number of pairs than about the effect.")


def report(study, runs: pd.DataFrame, s: pd.DataFrame, tests: pd.DataFrame, deltas: pd.DataFrame,
           per_class_tables: dict[str, pd.DataFrame], figures: dict[str, str], missing: list[str],
           expected: int, sens: pd.DataFrame | None = None, stale: list[tuple[str, str]] | None = None,
           power: pd.DataFrame | None = None, strength: pd.DataFrame | None = None,
           lowpass: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> str:
    """results/report.md: findings first, then the tables and figures that support them.

    `missing` lists the metrics files of absent runs, `stale` (file, what differs) the runs left out
    because they were trained under another spec than the study's: a reader must see what is not counted.
    """
    sens = pd.DataFrame() if sens is None else sens
    out = [f"# Study {study.name}: distilling {', '.join(study.teachers)} into {study.student}\n",
           f"{len(runs)} of {expected} expected runs; seeds {study.seeds}, folds {study.folds}; "
           f"methods compared with the no-KD baseline: {', '.join(study.methods)}. "
           "All IoU and accuracy values are percent; differences are in percentage points.\n"]
    if missing:
        one = len(missing) == 1
        out += [f"**{len(missing)} expected run{'' if one else 's'} {'is' if one else 'are'} missing; every "
                f"number below is computed without {'it' if one else 'them'}:**\n",
                *[f"- `{p}`" for p in missing], ""]
    if stale:
        one = len(stale) == 1
        out += [f"**{len(stale)} run{'' if one else 's'} {'was' if one else 'were'} trained under another spec "
                f"than the study's (stale) and {'is' if one else 'are'} left out; every number below is "
                f"computed without {'it' if one else 'them'}:**\n",
                *[f"- `{p}`: {reason}" for p, reason in stale], ""]
    out += ["## Findings\n",
            "Each method against the baseline, paired by seed and fold, mIoU; significance is the paired "
            f"t-test at the {ALPHA:.0%} level, Holm-adjusted across the methods of each teacher.\n"]
    out += findings(tests) if len(tests) else ["No method could be compared with the baseline."]
    out += ["", "## mIoU per method\n"]
    if "miou" in figures:
        out.append(f"![mIoU per method, with the baseline band]({figures['miou']})\n")
    out += [summary(s), "## Paired comparisons with the baseline\n",
            "Δ = method minus baseline mIoU (points), mean over (seed, fold) pairs, with its 95% t-interval; "
            "paired t-test and Wilcoxon signed-rank test, each Holm-adjusted across the methods of a "
            "teacher. " + _wilcoxon_floor(tests) + "\n", tests_table(tests)]
    if power is not None and len(power):
        out += ["### Statistical power\n", power_section(power, len(study.seeds), len(study.folds))]
    if len(sens):
        out += ["## Sensitivity to the swept options\n",
                "Each variant of a method grid is a method of its own above (its paired test is among those "
                "Holm-adjusted for the teacher). Mean mIoU over seeds with its 95% t-interval against each "
                "swept option, one line per value of the other swept options; the grey band is the "
                "baseline's 95% t-interval around its mean (dashed).\n"]
        if "sensitivity" in figures:
            out.append(f"![mIoU against each swept option]({figures['sensitivity']})\n")
        out.append(sensitivity(sens, study.variants))
    if strength is not None and len(strength):
        out += ["## Effective strength of each term\n", strength_section(strength)]
    if lowpass is not None and len(lowpass[0]):
        out.append("## Low-pass probe\n")
        if "lowpass" in figures:
            out.append(f"![mIoU against the ratio of the feature's low and high band]({figures['lowpass']})\n")
        out.append(lowpass_section(*lowpass, study.params["probe"]))
    out.append("## Per-class IoU differences from the baseline\n")
    if "class_deltas" in figures:
        out.append(f"![Per-class IoU deltas]({figures['class_deltas']})\n")
    out.append(table(deltas, default="{:+.2f}"))
    out.append("## Per-class tables\n")
    out += [per_class(t, teacher) for teacher, t in per_class_tables.items()]
    if "loss" in figures:
        out += ["## Training loss\n", "Student runs; the loss is the task loss plus the weighted "
                "distillation terms, so levels differ between methods by construction.\n",
                f"![Training loss per method]({figures['loss']})\n"]
    notes = [f"- {_teacher(r.teacher)} / {r.method}: {r.note}" for r in s.itertuples() if r.note]
    notes += [f"- {r.teacher} / {r.method} vs baseline: {r.note}" for r in tests.itertuples() if r.note]
    if notes:
        out += ["## Notes\n", *notes, ""]
    return "\n".join(out).rstrip("\n") + "\n"
