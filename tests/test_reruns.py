"""What a change re-runs, on the shared finished study (conftest.finished_study): only edits that can
change a job's numbers re-run it (segkd.fingerprint), each kind of job on its own code. `snakemake -n`
is asked after each edit, in a copy of the study, and the edit is undone with git afterwards."""

import ast
import re
import subprocess

import pytest
import yaml

from workflow_helpers import copy_study, planned, run, trained

pytestmark = pytest.mark.slow
NOTHING: dict = {}
REPORT = {"aggregate": 1, "all": 1}
STUDENTS = {"student": 6, "bands": 2, **REPORT}  # kd and 2 freq variants x 2 folds; a figure per freq variant
TRAINING = {"teacher": 2, "baseline": 2, **STUDENTS}


@pytest.fixture(scope="module")
def study(finished_study, tmp_path_factory):
    """A copy of the finished study (one teacher, kd and 2 freq variants, one seed, two folds), which
    ran through the GPU workstation profile with 2 pretended GPUs; planned without it: a profile
    changes no number, so nothing is to be done."""
    repo = copy_study(finished_study, tmp_path_factory.mktemp("reruns"))
    assert dry_run(repo) == NOTHING
    return repo


def test_each_training_job_ran_pinned_to_one_gpu_and_both_were_used(study):
    training = sorted((study / "logs" / "teachers").rglob("*.log")) + sorted((study / "logs" / "students").rglob("*.log"))
    pinned = [re.search(r"\] on GPU (\d) \(slot 1 of 1 there\)", p.read_text()) for p in training]
    assert len(training) == 10 and all(pinned), [p.read_text()[:300] for p in training]
    assert {m.group(1) for m in pinned} == {"0", "1"}


@pytest.fixture
def clone(study):
    """The finished study's copy; each test's edits are undone afterwards (file times stay new)."""
    yield study
    run("git checkout -q -- . && git clean -qfd -- src", study)
    assert run("git status --porcelain --untracked-files=no", study).stdout == ""


def dry_run(repo) -> dict:
    return planned(run(["snakemake", "-n"], repo).stdout)


def append(repo, module: str, text: str) -> None:
    path = repo / "src" / "segkd" / module
    path.write_text(path.read_text() + text)


class Cosmetic(ast.NodeTransformer):
    """Reword every docstring; `ast.unparse` then drops every comment and re-lays out every line."""

    def visit(self, node):
        node = self.generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0].value.value += " (reworded)"
        return node


def test_touching_every_file_reruns_nothing(clone):
    files = [p for p in clone.rglob("*") if p.is_file() and not {".git", ".snakemake"} & set(p.parts)]
    assert len(files) > 100  # sources, rules and the study's data, runs and results
    outputs = ("data", "runs", "results", "logs")
    for path in sorted(files, key=lambda p: p.relative_to(clone).parts[0] not in outputs):
        path.touch()  # outputs first, sources last: every source ends up newer than every output
    assert dry_run(clone) == NOTHING


def test_git_stash_and_checkout_round_trip_reruns_nothing(clone):
    append(clone, "engine/train.py", "\nROUND_TRIP = 1\n")
    run("git stash -q && git stash pop -q && git checkout -q -- . && git checkout -q HEAD -- src", clone)
    assert dry_run(clone) == NOTHING


def test_comments_docstrings_reformatting_and_help_text_rerun_nothing(clone):
    modules = sorted((clone / "src" / "segkd").rglob("*.py"))
    for path in modules:
        tree = Cosmetic().visit(ast.parse(path.read_text()))
        path.write_text("# reformatted\n" + ast.unparse(tree) + "\n\n# a new comment\n")
    cli = clone / "src" / "segkd" / "cli.py"
    text = cli.read_text()
    assert "torch CPU threads" in text
    cli.write_text(text.replace("torch CPU threads", "CPU threads of torch"))
    assert len(modules) > 30 and subprocess.run(["git", "diff", "--quiet"], cwd=clone).returncode == 1
    assert dry_run(clone) == NOTHING


@pytest.mark.parametrize("module, change, reruns", [
    ("tracking.py", "PARAMS_PER_BATCH = 50", NOTHING),
    ("report/stats.py", "ALPHA = 0.01", REPORT),
    ("distill/logits.py", "KL_CHANGED = True", STUDENTS),
    ("engine/train.py", "LOOP_CHANGED = True", TRAINING),
], ids=["tracking-reruns-nothing", "report-reruns-the-aggregate", "loss-reruns-the-students",
        "training-loop-reruns-every-training-job"])
def test_a_real_change_reruns_exactly_the_jobs_that_run_it(clone, module, change, reruns):
    append(clone, module, f"\n{change}\n")
    assert dry_run(clone) == reruns


def test_a_data_change_reruns_the_data_jobs_and_what_reads_them(clone):
    """Planned, as a dry run must (the data may change); when `prepare` writes the same arrays, the
    manifest's checksum is unchanged and no training job runs (Snakemake compares small inputs by checksum)."""
    append(clone, "data/synthetic.py", "\nDATA_CHANGED = True\n")
    assert dry_run(clone) == {"prepare": 1, "split": 1, **TRAINING}
    for undo in (False, True):  # the change, then its undoing: neither re-trains anything
        if undo:
            run("git checkout -q -- src", clone)
        proc = run(["snakemake", "split", "--cores", "2"], clone)
        assert "rule prepare" in proc.stderr and dry_run(clone) == NOTHING, proc.stderr[-3000:]


def test_cohorts_reuse_finished_students_and_retrain_only_a_changed_method(clone, tmp_path):
    """train.share_teacher switched on for the finished study, with a method added: each fold's cohort
    job trains the new method and only evaluates kd again (its checkpoint is not rewritten); a changed
    weight of one method plans the cohorts again (inside, only that method retrains: test_cohort.py);
    switched off, the student jobs are planned, each of which evaluates its finished checkpoint again.
    No teacher nor baseline re-runs. Last in this module: it leaves the study in another state."""
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["share_teacher"] = True
    params["methods"]["at"] = {"at": {"weight": 1000.0}}
    study = tmp_path / "cohort.yaml"

    def checkpoints(method):
        return [(clone / f"runs/students/segformer_b2/{method}/seed0/fold{f}/checkpoint.pt").read_bytes() for f in (0, 1)]

    def snakemake(*args):
        study.write_text(yaml.safe_dump(params))
        return run(["snakemake", "students", *args, "--configfile", str(study)], clone)

    kd = checkpoints("kd")
    assert planned(snakemake("-n").stdout) == {"cohort": 2, "students": 1}
    log = snakemake("--cores", "2").stderr
    assert [rule for rule, _ in trained(log)] == ["cohort", "cohort"]
    assert checkpoints("kd") == kd
    cohort_log = (clone / "logs/cohorts/segformer_b2/seed0/fold0.log").read_text()
    assert "[student:segformer_b0/kd/seed0/fold0] resuming from iteration 3" in cohort_log
    assert "[student:segformer_b0/at/seed0/fold0] it 3/3" in cohort_log
    assert "[student:segformer_b0/kd/seed0/fold0] it" not in cohort_log
    assert planned(snakemake("-n").stdout) == NOTHING

    params["methods"]["at"]["at"]["weight"] = 10.0
    assert planned(snakemake("-n").stdout) == {"cohort": 2, "students": 1}
    params["methods"]["at"]["at"]["weight"] = 1000.0
    params["train"]["share_teacher"] = False
    assert planned(snakemake("-n").stdout) == {"student": 8, "students": 1}
