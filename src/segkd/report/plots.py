"""The report's figures: mIoU per method against the baseline band, per-class IoU deltas, loss curves,
and the sensitivity of mIoU to each swept option of a method grid.

Drawn on the Agg canvas under matplotlib's default style (a user's matplotlibrc cannot change them)
and saved without the version stamp, so the same inputs give byte-identical PNGs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from segkd.config import BASELINE
from segkd.runs import NO_TEACHER

STYLE = {"svg.hashsalt": "segkd", "font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
         "axes.spines.right": False, "savefig.dpi": 120, "savefig.bbox": "tight"}
BASELINE_COLOUR = "0.35"


def deterministic(draw):
    """Run `draw` under a fixed style; it returns a Figure (or None), which is saved to `path`."""

    @functools.wraps(draw)
    def wrapper(*args, path: Path):
        with matplotlib.style.context("default"), matplotlib.rc_context(STYLE):
            fig = draw(*args)
            if fig is None:
                return None
            FigureCanvasAgg(fig)
            fig.savefig(path, format="png", metadata={"Software": None})
        return Path(path)

    return wrapper


def _baseline_band(ax, summary: pd.DataFrame) -> None:
    """The no-KD baseline's mean as a dashed line over its 95% t-interval as a grey band."""
    base = summary[summary["method"] == BASELINE]
    if len(base):
        b = base.iloc[0]
        if pd.notna(b.ci_low):
            ax.axhspan(b.ci_low, b.ci_high, color="0.88", lw=0, label="baseline 95% CI")
        ax.axhline(b.mIoU_mean, color=BASELINE_COLOUR, ls="--", lw=1, label="baseline mean")


def _teachers(table: pd.DataFrame) -> list[str]:
    return [t for t in table["teacher"].unique() if t != NO_TEACHER]


@deterministic
def miou(summary: pd.DataFrame, seeds: pd.DataFrame) -> Figure | None:
    """Per teacher: each method's mean mIoU with its 95% t-interval and seed values; the baseline band."""
    teachers = _teachers(summary)
    if not teachers:
        return None
    width = max(len(summary[summary["teacher"] == t]) for t in teachers)
    fig = Figure(figsize=(len(teachers) * (1.6 + 0.75 * width), 3.6))
    axes = fig.subplots(1, len(teachers), sharey=True, squeeze=False)[0]
    for ax, teacher in zip(axes, teachers):
        rows = summary[summary["teacher"] == teacher]
        x = np.arange(len(rows))
        _baseline_band(ax, summary)
        mean = rows["mIoU_mean"].to_numpy()
        err = np.nan_to_num(np.vstack([mean - rows["ci_low"], rows["ci_high"] - mean]))
        ax.errorbar(x, mean, yerr=err, fmt="o", color="C0", capsize=4, ms=6, label="mean, 95% t-interval")
        for i, method in enumerate(rows["method"]):
            values = seeds.loc[(seeds["teacher"] == teacher) & (seeds["method"] == method), "mIoU"]
            ax.scatter(np.full(len(values), i + 0.18), values, s=14, facecolors="none", edgecolors="C0",
                       alpha=0.8, label="seed (fold average)" if i == 0 else None)
        ax.set_xticks(x, rows["method"])
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_title(f"teacher {teacher}")
        ax.grid(axis="y", color="0.92")
    axes[0].set_ylabel("mIoU (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 2 * len(teachers)), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.subplots_adjust(bottom=0.22)
    return fig


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@deterministic
def sensitivity(table: pd.DataFrame, variants: dict, summary: pd.DataFrame) -> Figure | None:
    """mIoU against each swept option of each grid (`stats.sensitivity`), a panel per teacher x method x
    option: mean and 95% t-interval over seeds, one line per combination of the method's other swept
    options, over the baseline band. Numbers sit on a numeric axis, strings and booleans on a
    categorical one in grid order; lines are dodged sideways so their intervals do not hide each other.
    """
    if table.empty:
        return None
    from segkd.sweep import format_value

    keys = {}
    for v in variants.values():
        if v.swept:
            keys.setdefault(v.method, (list(v.swept), len(v.terms) > 1))
    panels = [(m, key) for m in table["method"].unique() for key in keys[m][0]]
    teachers = list(table["teacher"].unique())
    fig = Figure(figsize=(5.4 * len(panels), 3.0 * len(teachers)), layout="constrained")
    axes = fig.subplots(len(teachers), len(panels), sharey="row", squeeze=False)

    def label(method: str, key: str) -> str:  # 'freq.ratio' -> 'ratio' when the method has one term
        return key if keys[method][1] else key.split(".", 1)[1]

    for row, teacher in zip(axes, teachers):
        for ax, (method, key) in zip(row, panels):
            rows = table[(table["teacher"] == teacher) & (table["method"] == method)]
            swept = [variants[name].swept for name in rows["variant"]]
            values = list(dict.fromkeys(sw[key] for sw in swept))
            numeric = all(_is_number(v) for v in values)
            span = (max(values) - min(values) or 1.0) if numeric else 1.0
            others = [k for k in keys[method][0] if k != key]
            lines = list(dict.fromkeys(tuple(sw[k] for k in others) for sw in swept))
            _baseline_band(ax, summary)
            for j, line in enumerate(lines):
                points = [(sw[key], r) for sw, r in zip(swept, rows.itertuples())
                          if tuple(sw[k] for k in others) == line]
                if numeric:
                    points.sort(key=lambda p: p[0])
                x = np.array([v if numeric else values.index(v) for v, _ in points], dtype=float)
                x += (j - (len(lines) - 1) / 2) * (0.02 * span if numeric else 0.08)
                mean, lo, hi = (np.array([getattr(r, c) for _, r in points], dtype=float)
                                for c in ("mIoU_mean", "ci_low", "ci_high"))
                err = np.nan_to_num(np.vstack([mean - lo, hi - mean]))
                name = ", ".join(f"{label(method, k)}={format_value(v)}" for k, v in zip(others, line))
                ax.errorbar(x, mean, yerr=err, fmt="-o", color=f"C{j % 10}", capsize=3, ms=4, lw=1.2,
                            label=name or "mean, 95% t-interval")
            shown = sorted(values) if numeric else values
            ax.set_xticks(shown if numeric else range(len(values)), [format_value(v) for v in shown])
            if numeric:
                ax.margins(x=0.12)
            else:
                ax.set_xlim(-0.5, len(values) - 0.5)
            ax.set_xlabel(label(method, key))
            ax.set_title(f"teacher {teacher}: {method}")
            ax.grid(axis="y", color="0.92")
            ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        row[0].set_ylabel("mIoU (%), mean over seeds")
    return fig


@deterministic
def class_deltas(deltas: pd.DataFrame) -> Figure | None:
    """Heat map of (method - baseline) IoU per class and mIoU, in points, centred at zero."""
    if deltas.empty:
        return None
    columns = [c for c in deltas.columns if c not in ("teacher", "method")]
    values = deltas[columns].to_numpy(dtype=float)
    several = deltas["teacher"].nunique() > 1
    labels = [f"{t} / {m}" if several else m for t, m in zip(deltas["teacher"], deltas["method"])]
    bound = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
    bound = bound if bound > 0 else 1.0
    fig = Figure(figsize=(1.6 + 0.72 * len(columns), 1.3 + 0.42 * len(labels)))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.9")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-bound, vmax=bound, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        text = "n/a" if np.isnan(v) else f"{v:+.1f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="white" if abs(v) > 0.6 * bound else "black")
    ax.axvline(len(columns) - 1.5, color="black", lw=1.5)  # separates mIoU from the classes
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(labels)), labels)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    teacher = "" if several else f", teacher {deltas['teacher'].iloc[0]}"
    ax.set_title(f"IoU of each method minus the baseline (points, mean over seed x fold pairs{teacher})")
    fig.colorbar(image, ax=ax, label="IoU difference (points)", shrink=0.9)
    return fig


@deterministic
def loss_curves(curves: pd.DataFrame) -> Figure | None:
    """Per teacher: mean training loss of each student method vs iteration, with the baseline."""
    if curves.empty:
        return None
    teachers = _teachers(curves) or [NO_TEACHER]
    methods = [m for m in curves["method"].unique() if m != BASELINE]
    fig = Figure(figsize=(4.2 * len(teachers), 3.4))
    axes = fig.subplots(1, len(teachers), sharey=True, squeeze=False)[0]
    base = curves[curves["method"] == BASELINE]
    for ax, teacher in zip(axes, teachers):
        if len(base):
            ax.plot(base["iteration"], base["loss"], color=BASELINE_COLOUR, ls="--", lw=1.2, label=BASELINE,
                    zorder=3)
        for k, method in enumerate(methods):
            c = curves[(curves["teacher"] == teacher) & (curves["method"] == method)]
            if len(c):
                ax.plot(c["iteration"], c["loss"], color=f"C{k % 10}", lw=1.2, label=method)
        ax.set_title("baseline" if teacher == NO_TEACHER else f"teacher {teacher}")
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(color="0.92")
        ax.legend(frameon=False, fontsize=8)
    axes[0].set_ylabel("training loss (task + weighted KD terms)\nmean over seeds and folds")
    return fig


@deterministic
def confusion_matrix(confusion, title: str = "") -> Figure:
    """A run's confusion matrix, rows normalised (recall per ground-truth class), for its MLflow run."""
    from segkd.classes import CLASS_NAMES

    counts = np.asarray(confusion, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=60, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in ticks:
        for j in ticks:
            if share[i, j] >= 0.005:
                ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return fig


def _model_label(teacher: str, method: str, role: str, several_teachers: bool) -> str:
    if role == "teacher":
        return f"teacher {teacher}"
    if method == BASELINE:
        return "baseline (no KD)"
    return f"{teacher} / {method}" if several_teachers else method


@deterministic
def lowpass(curves: pd.DataFrame) -> Figure | None:
    """The low-pass probe (`report.lowpass.curves`): mIoU against the band's ratio with the tapped feature
    reduced to its low band (left) and to its high band (right), one line per model (teachers dashed,
    the baseline grey), mean and 95% t-interval band."""
    if curves.empty:
        return None
    distilled = curves[(curves["role"] != "teacher") & (curves["teacher"] != NO_TEACHER)]
    several = distilled["teacher"].nunique() > 1
    log_x = bool((curves["ratio"] > 0).all())
    fig = Figure(figsize=(9.6, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    models = list(dict.fromkeys(zip(curves["teacher"], curves["method"], curves["role"])))
    for ax, kind in zip(axes, ("low", "high")):
        colour = 0
        for teacher, method, role in models:
            c = curves[(curves["teacher"] == teacher) & (curves["method"] == method) & (curves["pass"] == kind)]
            c = c.sort_values("ratio")
            if role == "teacher":
                style = {"color": "black", "ls": "--"}
            elif method == BASELINE:
                style = {"color": BASELINE_COLOUR, "ls": "-"}
            else:
                style, colour = {"color": f"C{colour % 10}", "ls": "-"}, colour + 1
            ax.plot(c["ratio"], c["mIoU_mean"], marker="o", ms=3, lw=1.3, label=_model_label(teacher, method, role, several),
                    **style)
            if c["ci_low"].notna().any():
                ax.fill_between(c["ratio"], c["ci_low"], c["ci_high"], color=style["color"], alpha=0.12, lw=0)
        if log_x:
            ax.set_xscale("log")
        ratios = sorted(curves["ratio"].unique())
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.minorticks_off()
        ax.set_xlabel("ratio (the band's cut-off, as the freq term's)")
        ax.set_title(f"feature reduced to its {kind} band")
        ax.grid(color="0.92")
    axes[0].set_ylabel("mIoU (%), mean and 95% t-interval")
    axes[1].legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
