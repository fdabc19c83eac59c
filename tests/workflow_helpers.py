"""Helpers of the workflow tests: a user's clone of the project, commands run as a user would, the
jobs Snakemake ran or plans, read from its log, and one finished study shared by the tests that start
from one (`finished_study` in conftest.py)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMIT = "git add -A && git -c user.email=t@t -c user.name=t commit -q --allow-empty -m"
TRAINING = ("teacher", "baseline", "student", "cohort")
FINISHED_STUDY = "studies/freq_sweep_smoke.yaml"  # the shared finished study's params.yaml
FINISHED_LOG = "snakemake.log"  # what Snakemake printed while it ran the shared study, beside it


def run(cmd, cwd, check=True, venv_on_path=True):
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN]
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN)] * venv_on_path + path), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_repo(dest: Path) -> Path:
    """A fresh git repository holding the project's files, as a user's clone would."""
    files = run(["git", "ls-files", "-co", "--exclude-standard"], REPO).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file() or src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name, follow_symlinks=False)
    run("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm init", dest)
    return dest


def executed_jobs(log: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job Snakemake ran, from its log."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", log):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if head:
            wc = re.search(r"wildcards: (.*)", block)
            pairs = dict(p.split("=", 1) for p in wc.group(1).split(", ")) if wc else {}
            jobs.append((head.group(1), pairs))
    return jobs


def planned(dry_run: str) -> dict[str, int]:
    """Snakemake's job counts per rule from the "Job stats" table of a dry run ({} when nothing to do)."""
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", dry_run, flags=re.M))
    counts.pop("total", None)
    return {rule: int(n) for rule, n in counts.items()}


def trained(log: str) -> list[tuple[str, dict]]:
    """The data and training jobs among those Snakemake ran."""
    return [(rule, wc) for rule, wc in executed_jobs(log) if rule in ("prepare", "split", *TRAINING)]




def build_finished_study(dest: Path) -> Path:
    """A user's clone whose params.yaml is the smoke method-grid study (a teacher, the baseline, kd and
    2 freq variants, one seed, two folds), run to the end with `snakemake` through the GPU workstation
    profile with 2 pretended GPUs (the runs train on the CPU, as the study says; each job's log names
    its GPU). Snakemake's log is kept beside it (FINISHED_LOG)."""
    copy_repo(dest)
    shutil.copy(dest / FINISHED_STUDY, dest / "params.yaml")
    run("git add -A && git -c user.email=t@t -c user.name=t commit -qm study", dest)
    proc = run(["snakemake", "--profile", "workflow/profiles/gpu", "--cores", "2", "--config", "gpus=2",
                "jobs_per_gpu=1", "--resources", "gpu=2"], dest)
    (dest / FINISHED_LOG).write_text(proc.stdout + proc.stderr)
    (dest / ".git" / "info" / "exclude").write_text(f"{FINISHED_LOG}\n")
    return dest


def copy_study(study: Path, dest: Path) -> Path:
    """A copy of the shared finished study for a test module to change, with Snakemake's records, git
    history and MLflow store. The store records absolute artifact paths, so the artifacts of runs made
    in a copy land in the shared study's mlruns/, one folder per new run; nothing reads them there."""
    shutil.copytree(study, dest, symlinks=True, dirs_exist_ok=True)
    return dest
