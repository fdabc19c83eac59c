"""The study workflow's plans and refusals: a dry run of the whole study, jobs that run without the
environment on PATH, the SLURM profile's dry run, and bad params failing before any job."""

import json
import re

import pytest
import yaml

from workflow_helpers import BIN, copy_repo, run

pytestmark = pytest.mark.slow


def test_dry_run_plans_the_whole_study(tmp_path):
    repo = copy_repo(tmp_path)
    out = run(["snakemake", "-n", "--configfile", "studies/smoke.yaml"], repo).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert counts == {"prepare": "1", "split": "1", "teacher": "2", "baseline": "4", "student": "8",
                      "bands": "1", "aggregate": "1", "all": "1", "total": "19"}


KEPT_LINTS = {"Specify a conda environment or container for each rule.",
              "Shell command directly uses variable SEGKD from outside of the rule"}  # why: workflow/rules/common.smk


def test_snakemake_lint_reports_only_the_lints_kept_on_purpose(tmp_path):
    repo = copy_repo(tmp_path)
    out = run(["snakemake", "--lint", "--configfile", "studies/smoke.yaml"], repo, check=False)
    lints = re.findall(r"^    \* (.*?):?$", out.stdout + out.stderr, flags=re.M)
    assert lints and set(lints) == KEPT_LINTS, lints
    assert len(lints) == 16  # each kept lint on the 8 rules that run a command


def test_jobs_run_without_the_environment_on_path(tmp_path):
    """`.venv/bin/snakemake` in a shell that never activated the environment: the jobs still find
    segkd (they run it with Snakemake's own interpreter) and write their outputs."""
    repo = copy_repo(tmp_path)
    run([str(BIN / "snakemake"), "split", "--cores", "1", "--configfile", "studies/smoke.yaml"], repo,
        venv_on_path=False)
    assert json.loads(next((repo / "data" / "folds").glob("*.json")).read_text())


def test_slurm_profile_dry_run(tmp_path):
    repo = copy_repo(tmp_path)
    out = run(["snakemake", "--profile", "workflow/profiles/slurm", "--dry-run", "--configfile",
               "studies/smoke.yaml"], repo).stdout
    assert re.search(r"^total\s+19$", out, flags=re.M)


@pytest.mark.parametrize("change, key", [
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"seeds": []}, "seeds"),
    ({"methods": {"kd": {"kdd": {"weight": 1.0}}}}, "methods.kd"),
    ({"methods": {"kd": {"kd": {"weight": [0.01, 0.01]}}}}, "methods.kd.kd.weight"),
    ({"colour": 1}, "colour"),
])
def test_invalid_params_fail_before_any_job(tmp_path, change, key):
    repo = copy_repo(tmp_path)
    params = yaml.safe_load((repo / "studies" / "smoke.yaml").read_text())
    for section, value in change.items():
        if isinstance(value, dict) and isinstance(params.get(section), dict):
            params[section] = {**params[section], **value}
        else:
            params[section] = value
    (repo / "bad.yaml").write_text(yaml.safe_dump(params))
    proc = run(["snakemake", "--cores", "1", "--configfile", "bad.yaml"], repo, check=False)
    assert proc.returncode != 0
    assert key in proc.stdout + proc.stderr
    assert not (repo / "data" / "prepared").exists()
