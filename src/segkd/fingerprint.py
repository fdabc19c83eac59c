"""Code fingerprints: a job re-runs when the code that computes its numbers changes, and only then.

A study is days of GPU time, so a job must not re-run because a file was touched, checked out again,
reformatted or given a new comment, nor because code it does not run (CLI wording, MLflow logging,
plots of other jobs) changed. Each job kind therefore depends on a fingerprint of the modules that
can change its outputs: the SHA-256 of their parsed syntax trees with docstrings removed, so that
comments, docstrings and formatting do not count while every change to what the code does does.
The workflow passes the fingerprint to each job as a parameter (Snakemake's params trigger).

The modules of each kind, relative to the segkd package (a trailing ``/*`` is every module of a
sub-package, so a new module there is covered without a word):

============  ====================================================================================
kind          modules
============  ====================================================================================
data          how images and labels are read, resized and cut into folds
train         data loading and augmentation, the models, the training loop and evaluation
distill       the distillation terms (students only, on top of ``train``)
report        the tables, statistics, plots and report of the aggregate step
bands         the band figure (``train`` + ``distill`` + terms + report/band_figure)
probe         the low-pass probe of a run (``train`` + ``distill`` + terms + probe)
============  ====================================================================================

Not in any fingerprint, since they cannot change a number: the CLI (argument parsing and help
text), errors, tracking (MLflow), layout (paths are part of each run spec), config and sweep (the
run spec they produce is itself a parameter of every job, so a change that matters shows there).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

DATA_CODE = ("classes", "data/camvid", "data/synthetic", "data/prepare", "data/folds")
TRAIN_CODE = ("classes", "data/prepare", "data/folds", "data/augment", "models/*", "engine/*")
DISTILL_CODE = ("distill/*", "terms")
REPORT_CODE = ("classes", "runs", "report/aggregate", "report/stats", "report/markdown", "report/html", "report/plots",
               "report/power", "report/strength", "report/lowpass")

# Modules that jobs import but whose code cannot change their numbers (tests/test_fingerprint.py checks
# that every segkd module a job imports is in its kind's fingerprint or here, with the reason).
NOT_NUMERIC = {
    "__init__": "the package's version string",
    "data/__init__": "an empty package marker",
    "report/__init__": "the package's docstring",
    "errors": "exception classes",
    "layout": "paths; each run spec holds the paths it uses",
    "config": "the run spec it builds is a parameter of every job",
    "sweep": "variant names and grids; the run spec holds the result",
    "tracking": "MLflow logging",
    "fingerprint": "this module",
    "gpu_slots": "which GPU a training job runs on; the device type is in its run spec",
    "jsonfiles": "reads and writes JSON files whole (the values are the callers')",
}
NOT_NUMERIC_FOR_TRAINING = {
    "data/camvid": "imported with data/prepare; a training job reads the prepared arrays, whose "
                   "checksums are in the manifest it depends on",
    "data/synthetic": "the same",
    "report/plots": "the confusion figure logged to MLflow; no result depends on it",
}


def not_numeric(kind: str) -> dict[str, str]:
    """Module -> why it cannot change the numbers of a job of `kind` although the job imports it."""
    if kind in ("train", "student", "bands", "probe"):
        return {**NOT_NUMERIC, **NOT_NUMERIC_FOR_TRAINING}
    return dict(NOT_NUMERIC)


JOB_CODE: dict[str, tuple[str, ...]] = {
    "data": DATA_CODE,
    "train": TRAIN_CODE,
    "student": TRAIN_CODE + DISTILL_CODE,
    "report": REPORT_CODE,
    "bands": TRAIN_CODE + DISTILL_CODE + ("report/band_figure", "report/plots"),
    "probe": TRAIN_CODE + DISTILL_CODE + ("probe",),
}


def modules(patterns: tuple[str, ...], package: Path = PACKAGE) -> list[Path]:
    """The source files named by `patterns` ('engine/train', 'models/*'), sorted, each once."""
    found: set[Path] = set()
    for pattern in patterns:
        if pattern.endswith("/*"):
            matched = sorted((package / pattern[:-2]).glob("*.py"))
        else:
            matched = [package / f"{pattern}.py"]
        if not matched or not all(p.is_file() for p in matched):
            raise FileNotFoundError(f"fingerprint: no module {pattern!r} in {package}")
        found.update(matched)
    return sorted(found)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def code_digest(source: str, filename: str = "<source>") -> str:
    """SHA-256 of what `source` does: its syntax tree without docstrings, comments or layout."""
    tree = _without_docstrings(ast.parse(source, filename=filename))
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()


def fingerprint(patterns: tuple[str, ...], package: Path = PACKAGE) -> str:
    """One digest over the modules of `patterns` (their paths and code digests), 16 hex digits."""
    h = hashlib.sha256()
    for path in modules(patterns, package):
        digest = code_digest(path.read_text(encoding="utf-8"), str(path))
        h.update(f"{path.relative_to(package).as_posix()}:{digest}\n".encode())
    return h.hexdigest()[:16]


def job_fingerprints(package: Path = PACKAGE) -> dict[str, str]:
    """Job kind -> fingerprint of its code (see JOB_CODE). The workflow passes its own checkout's
    src/segkd as `package`: the code a user edits is the code that decides what re-runs."""
    return {kind: fingerprint(patterns, package) for kind, patterns in JOB_CODE.items()}
