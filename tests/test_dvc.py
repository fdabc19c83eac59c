"""The study for real, through DVC: Snakemake end to end on the smoke method-grid study, a grown grid
running only its new variants, DVC (repro, checkout and experiments) re-running only what a
parameter change touches."""

import json
import shutil

import pandas as pd
import pytest
import yaml

from workflow_helpers import COMMIT, copy_repo, executed_jobs, run, trained

pytestmark = pytest.mark.slow
SWEEP_STUDY = "studies/freq_sweep_smoke.yaml"  # the end-to-end study: kd and a freq grid of 2 variants, one seed
VARIANTS = ["freq-high=kd-ratio=0.2", "freq-high=none-ratio=0.2"]


def experiments(shown) -> list[dict]:
    """Every experiment's data (params, metrics) in `dvc exp show --json` output, whatever its nesting."""
    found = []
    if isinstance(shown, dict):
        if "params" in shown and "metrics" in shown and shown.get("rev") != "workspace":
            found.append(shown)
        shown = list(shown.values())
    if isinstance(shown, list):
        for item in shown:
            found += experiments(item)
    return found


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    """A git + DVC copy of the project whose params.yaml is the smoke method-grid study (the kd method
    and 2 freq variants, one seed), reproduced once."""
    repo = copy_repo(tmp_path_factory.mktemp("dvc"))
    shutil.copy(repo / SWEEP_STUDY, repo / "params.yaml")
    run(f"{COMMIT} sweep", repo)
    first = run(["dvc", "repro"], repo)
    return repo, first.stdout + first.stderr


def test_snakemake_study_end_to_end(dvc_repo):
    repo, log = dvc_repo
    ran = executed_jobs(log)
    assert sum(rule == "teacher" for rule, _ in ran) == 2 and sum(rule == "baseline" for rule, _ in ran) == 2
    assert sorted(wc["method"] for rule, wc in ran if rule == "student") == sorted(["kd", *VARIANTS] * 2)
    runs = pd.read_csv(repo / "results" / "runs.csv")
    assert len(runs) == 2 + 2 + 6
    summary = json.loads((repo / "results" / "summary.json").read_text())
    assert set(summary["segformer_b2"]) == {"kd", *VARIANTS}
    report = (repo / "results" / "report.md").read_text()
    assert "paired" in report.lower() and (repo / "results" / "plots" / "miou.png").is_file()
    assert (repo / "results" / "plots" / "sensitivity.png").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("freq-sweep-smoke")
    runs_logged = client.search_runs([experiment.experiment_id], "tags.role = 'student'", max_results=100)
    assert len(runs_logged) == 8 and all("mlflow.parentRunId" in r.data.tags for r in runs_logged)
    assert all("mIoU" in r.data.metrics for r in runs_logged)

    again = run(["snakemake", "-n", "--configfile", SWEEP_STUDY], repo).stdout
    assert "Nothing to be done" in again


def test_growing_a_grid_plans_only_the_new_variants(dvc_repo, tmp_path):
    repo, _ = dvc_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["methods"]["freq"]["freq"]["ratio"] = [0.4, 0.2]  # a new value, first: names do not shift
    (tmp_path / "grown.yaml").write_text(yaml.safe_dump(params))  # keys sorted: names do not depend on order
    dry = run(["snakemake", "-n", "--configfile", str(tmp_path / "grown.yaml")], repo).stdout
    planned = executed_jobs(dry)
    new = ["freq-high=kd-ratio=0.4", "freq-high=none-ratio=0.4"]
    assert sorted(wc["method"] for rule, wc in planned if rule == "student") == sorted(new * 2), dry[-3000:]  # 2 folds
    assert {rule for rule, _ in planned} <= {"student", "bands", "aggregate", "all"} and ("aggregate", {}) in planned
    assert all(wc["method"] in new for _, wc in planned if "method" in wc)  # a new variant's figure, if any


def test_dvc_repro_reruns_only_the_changed_method(dvc_repo):
    repo, _ = dvc_repo
    run(f"{COMMIT} repro", repo)
    params = (repo / "params.yaml").read_text()
    changed = params.replace("kd: {weight: 0.01}", "kd: {weight: 0.02}")
    assert changed != params
    (repo / "params.yaml").write_text(changed)

    log = run(["dvc", "repro"], repo)
    ran = executed_jobs(log.stdout + log.stderr)
    jobs = trained(log.stdout + log.stderr)
    assert jobs and all(rule == "student" and wc["method"] == "kd" for rule, wc in jobs), jobs
    assert len(jobs) == 2
    assert ("aggregate", {}) in ran

    second = run(["dvc", "repro"], repo)
    assert executed_jobs(second.stdout + second.stderr) == []
    assert "up to date" in (second.stdout + second.stderr).lower()


def test_dvc_checkout_does_not_make_snakemake_rerun(dvc_repo):
    repo, _ = dvc_repo
    shutil.rmtree(repo / "runs" / "students")
    shutil.rmtree(repo / "data" / "prepared")
    run(["dvc", "checkout"], repo)
    assert (repo / "runs" / "students" / "segformer_b2" / "kd" / "seed0" / "fold0" / "metrics.json").is_file()
    dry = run(["snakemake", "-n", "--rerun-triggers", "params", "input", "code"], repo).stdout
    assert "Nothing to be done" in dry, dry[-3000:]


def test_dvc_experiment_sets_params_and_shows_the_summary(dvc_repo):
    repo, _ = dvc_repo
    run(f"{COMMIT} before-exp", repo)
    # the grid narrowed to variants that exist: no training (a changed weight trains: the test above),
    # the report of the kept variants
    log = run(["dvc", "exp", "run", "-S", "methods.freq.freq.high=[kd]"], repo)
    out = log.stdout + log.stderr
    assert trained(out) == [] and ("aggregate", {}) in executed_jobs(out), out[-3000:]
    summary = json.loads((repo / "results" / "summary.json").read_text())
    assert set(summary["segformer_b2"]) == {"kd", "freq-high=kd-ratio=0.2"}

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    exps = [e for e in experiments(shown) if e["params"]["params.yaml"]["data"]["methods"]["freq"]["freq"]["high"] == ["kd"]]
    assert len(exps) == 1, shown
    metrics = exps[0]["metrics"]["results/summary.json"]["data"]  # dvc leaves out null values
    assert {m: v["mIoU_mean"] for m, v in metrics["segformer_b2"].items()} == {
        m: v["mIoU_mean"] for m, v in summary["segformer_b2"].items()}

