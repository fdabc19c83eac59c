"""Effective strength of each distillation term: what its weight meant in the study's runs.

A weight is a number only relative to its loss's normalisation: the same pixel-wise KD is used at
1.0 in one code base and at 0.01 here, similarity-preserving KD at 3000 in its paper and at 1.0 here.
Every distilled student therefore records, at a few fixed log points (`segkd.engine.train`,
`strength_points`), each weighted term's share of the total loss and the ratio of the gradient norm
of the weighted term to that of the task loss over the student's parameters (the keys below). Here
they are averaged over the seeds and folds of each (teacher, method).
"""

from __future__ import annotations

import pandas as pd

from segkd.config import STUDENT_ROLE

#: history keys of segkd.engine.train (share of the loss, gradient-norm ratio), each + term name
SHARE, GRAD_RATIO = "share.", "grad_ratio."
COLUMNS = ["teacher", "method", "term", "weight", "iteration", "n_runs", "share", "grad_ratio"]


def measured(columns) -> list[str]:
    """The history columns that hold a strength measurement (for any term)."""
    return [c for c in columns if c.startswith((SHARE, GRAD_RATIO))]


def strength_table(history: pd.DataFrame, variants: dict, teachers: list[str]) -> pd.DataFrame:
    """One row per (teacher, method, term, measured iteration), in study order: the term's weight in the
    study, the runs that measured it there, and the means over them (seeds and folds) of its share of
    the total loss and of its gradient-norm ratio to the task loss. Empty when no run measured any."""
    students = history[history["role"] == STUDENT_ROLE]
    parts = []
    for m, (name, v) in enumerate(variants.items()):
        for t, (term, options) in enumerate(v.terms.items()):
            share, ratio = SHARE + term, GRAD_RATIO + term
            if share not in students.columns:
                continue
            rows = students[(students["method"] == name) & students[share].notna()]
            parts.append(pd.DataFrame({"teacher": rows["teacher"], "method": name, "term": term,
                                       "weight": float(options["weight"]), "iteration": rows["iteration"],
                                       "share": rows[share], "grad_ratio": rows[ratio],
                                       "order": [(teachers.index(x), m, t) for x in rows["teacher"]]}))
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    long = pd.concat(parts, ignore_index=True)
    table = (long.groupby(["order", "iteration", "teacher", "method", "term", "weight"], sort=True)
             .agg(n_runs=("share", "size"), share=("share", "mean"), grad_ratio=("grad_ratio", "mean"))
             .reset_index())
    return table[COLUMNS]
