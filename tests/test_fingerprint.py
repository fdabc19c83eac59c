"""Code fingerprints: blind to comments, docstrings and layout, sensitive to every change of what the
code does, and covering every module a job imports (tests/test_reruns.py checks the workflow's use)."""

import ast
import textwrap

import pytest

from segkd import fingerprint

SOURCE = textwrap.dedent('''
    """Module doc."""
    import torch

    def kd(s, t, weight=0.01):
        """Pixel-wise KL."""
        # scale by the weight
        return weight * (s - t).abs().mean()
''')


@pytest.mark.parametrize("cosmetic", [
    SOURCE.replace("# scale by the weight", "# a new comment"),
    SOURCE.replace('"""Pixel-wise KL."""', '"""Pixel-wise KL divergence,\n    over two lines."""'),
    SOURCE.replace('"""Module doc."""\n', ""),
    SOURCE.replace("weight * (s - t)", "weight*(s-t)").replace("weight=0.01", "weight = 0.01"),
    "# header\n" + ast.unparse(ast.parse(SOURCE)),
], ids=["comment", "docstring", "no-module-docstring", "spacing", "reformatted"])
def test_cosmetic_changes_keep_the_digest(cosmetic):
    assert cosmetic != SOURCE
    assert fingerprint.code_digest(cosmetic) == fingerprint.code_digest(SOURCE)


@pytest.mark.parametrize("real", [
    SOURCE.replace("weight=0.01", "weight=0.02"),
    SOURCE.replace(".mean()", ".sum()"),
    SOURCE.replace("(s - t)", "(t - s)"),
    SOURCE + "\nEXTRA = 1\n",
    SOURCE.replace('    """Pixel-wise KL."""\n', '    """Pixel-wise KL."""\n    "a string statement"\n'),
], ids=["default", "reduction", "operands", "new-statement", "second-string-statement"])
def test_real_changes_change_the_digest(real):
    assert real != SOURCE
    assert fingerprint.code_digest(real) != fingerprint.code_digest(SOURCE)


def test_job_kinds_differ_and_students_include_the_distillation_code():
    prints = fingerprint.job_fingerprints()
    assert len(set(prints.values())) == len(prints)
    train = set(fingerprint.modules(fingerprint.JOB_CODE["train"]))
    student = set(fingerprint.modules(fingerprint.JOB_CODE["student"]))
    assert train < student and all(p.parent.name == "distill" or p.name == "terms.py" for p in student - train)
    assert fingerprint.PACKAGE / "terms.py" in student  # which loss a term uses is a student's number


def test_a_missing_module_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no module 'engine/gone'"):
        fingerprint.modules(("engine/gone",))


def imported_closure(entry: str, not_numeric) -> set[str]:
    """Every segkd module (as 'engine/train') that `entry` imports, directly or not, at any depth of
    its code (imports inside functions too); what a module declared not numeric imports is its own
    business."""
    root = fingerprint.PACKAGE
    seen, todo = set(), [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in not_numeric:
            continue
        path = root / f"{name}.py"
        if not path.is_file():
            path = root / name / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for full in names:
                if full.startswith("segkd."):
                    rel = full.removeprefix("segkd.").replace(".", "/")
                    if (root / f"{rel}.py").is_file():
                        todo.append(rel)
                    elif (root / rel / "__init__.py").is_file():
                        todo.append(f"{rel}/__init__")
    return seen


@pytest.mark.parametrize("kind, entries", [
    ("data", ["data/prepare", "data/folds"]),
    ("student", ["engine/train"]),
    ("report", ["report/aggregate"]),
    ("bands", ["report/band_figure"]),
    ("probe", ["probe"]),
])
def test_every_module_a_job_imports_is_fingerprinted_or_declared_not_numeric(kind, entries):
    covered = {p.relative_to(fingerprint.PACKAGE).with_suffix("").as_posix()
               for p in fingerprint.modules(fingerprint.JOB_CODE[kind])}
    not_numeric = fingerprint.not_numeric(kind)
    imported = set().union(*(imported_closure(e, not_numeric) for e in entries))
    loose = imported - covered - set(not_numeric)
    assert not loose, f"{kind} jobs import {sorted(loose)}: add them to fingerprint.JOB_CODE or NOT_NUMERIC"
