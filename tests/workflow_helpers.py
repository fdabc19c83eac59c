"""Helpers of the workflow tests: a user's clone of the project, commands run as a user would, and
the jobs Snakemake ran or plans, read from its log."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMIT = "git add -A && git -c user.email=t@t -c user.name=t commit -qm"
TRAINING = ("teacher", "baseline", "student", "cohort")


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


