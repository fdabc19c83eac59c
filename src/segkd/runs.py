"""The study's run grid: every training run a study asks for, and where its files live.

One definition serves the Snakefile (which jobs exist), `segkd aggregate` (which metrics must be
there) and `segkd status` (where each run stands), so the three can never disagree about a study.
Order: teachers x folds; baseline x seeds x folds; each teacher x method x seed x fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from segkd import layout
from segkd.config import BASELINE, SHARE_TEACHER, STUDENT_ROLE, TEACHER_ROLE, Study

NO_TEACHER = "none"  # the baseline's teacher, as in its run directory


@dataclass(frozen=True)
class Run:
    """One expected run: who trains it, on what, and where its files lie."""

    role: str
    teacher: str  # NO_TEACHER for the baseline; the trained model for a teacher run
    method: str  # "" for a teacher run
    model: str
    seed: int
    fold: int
    in_cohort: bool = False  # trained by its (teacher, seed, fold)'s cohort job (train.share_teacher)

    @cached_property
    def dir(self) -> Path:
        if self.role == TEACHER_ROLE:
            return layout.teacher_dir(self.model, self.fold)
        return layout.student_dir(None if self.teacher == NO_TEACHER else self.teacher, self.method,
                                  self.seed, self.fold)

    @property
    def log(self) -> Path:
        """The log of the job that trains it (a cohort's students share their cohort's)."""
        if self.in_cohort:
            return layout.cohort_log(self.teacher, self.seed, self.fold)
        return layout.log_file(self.dir)

    @property
    def kind(self) -> str:
        """The job kind, as Snakemake's rules name them: teacher, baseline or student."""
        if self.role == TEACHER_ROLE:
            return "teacher"
        return "baseline" if self.method == BASELINE else "student"

    @property
    def label(self) -> str:
        """teacher segformer_b2/fold0, or segformer_b2/kd/seed0/fold0 (none/baseline/... for the baseline)."""
        if self.role == TEACHER_ROLE:
            return f"{self.model}/fold{self.fold}"
        return f"{self.teacher}/{self.method}/seed{self.seed}/fold{self.fold}"

    def spec(self, study: Study) -> dict:
        """The run spec the workflow passes to `segkd train` for this run."""
        if self.role == TEACHER_ROLE:
            return study.run_spec(TEACHER_ROLE, teacher=self.model, fold=self.fold)
        teacher = None if self.teacher == NO_TEACHER else self.teacher
        return study.run_spec(STUDENT_ROLE, teacher=teacher, method=self.method, seed=self.seed, fold=self.fold)

    def claims(self) -> dict:
        """What the run's own metrics.json must say about itself (keys it has are checked)."""
        if self.role == TEACHER_ROLE:
            return {"role": TEACHER_ROLE, "model": self.model, "fold": self.fold}
        teacher = None if self.teacher == NO_TEACHER else self.teacher
        return {"role": STUDENT_ROLE, "teacher": teacher, "method": self.method, "seed": self.seed,
                "fold": self.fold}


def expected_runs(study: Study) -> list[Run]:
    """Every run of the study, in study order; each variant of a method grid is a method of its own."""
    runs = [Run(TEACHER_ROLE, t, "", t, study.params["teacher_seed"], f) for t in study.teachers for f in study.folds]
    runs += [Run(STUDENT_ROLE, NO_TEACHER, BASELINE, study.student, s, f) for s in study.seeds for f in study.folds]
    cohorts = study.params["train"][SHARE_TEACHER]
    runs += [Run(STUDENT_ROLE, t, m, study.student, s, f, in_cohort=cohorts)
             for t in study.teachers for m in study.methods for s in study.seeds for f in study.folds]
    return runs
