"""`segkd estimate`: the schedule by hand, and the estimate of a real (tiny) study on this machine."""

import json
import subprocess
import sys

import pytest

from segkd.estimate import Job, schedule


def job(name, seconds, needs=(), priority=0, order=0):
    return Job((-priority, order), name, seconds, list(needs))


def test_schedule_by_hand():
    # prepare (1 s) -> two teachers (10 s, priority) and two baselines (4 s); two students per teacher (3 s)
    jobs = [job("prepare", 1), job("t0", 10, ["prepare"], 10, 1), job("t1", 10, ["prepare"], 10, 2),
            job("b0", 4, ["prepare"], 0, 3), job("b1", 4, ["prepare"], 0, 4),
            job("s0", 3, ["t0"], 0, 5), job("s1", 3, ["t1"], 0, 6), job("s2", 3, ["t0"], 0, 7), job("s3", 3, ["t1"], 0, 8)]
    jobs.append(job("aggregate", 1, [j.name for j in jobs if j.name != "prepare"], 0, 9))
    # 2 slots: teachers 1-11; baselines 11-15; s0, s1 15-18; s2, s3 18-21; aggregate 21-22
    assert schedule(jobs, 2) == pytest.approx(22)
    # 1 slot: everything in a row
    assert schedule(jobs, 1) == pytest.approx(sum(j.seconds for j in jobs))
    # many slots: the critical path, prepare -> teacher -> student -> aggregate
    assert schedule(jobs, 100) == pytest.approx(1 + 10 + 3 + 1)


def test_estimate_of_the_smoke_study(repo, tmp_path):
    """Every job kind of the study is timed; the compute is the sum over jobs; the wall time lies
    between the critical path and the compute in a row."""
    proc = subprocess.run([sys.executable, "-m", "segkd", "estimate", "--configfile", str(repo / "studies" / "smoke.yaml"),
                           "--steps", "1", "--warmup", "1", "--jobs", "2", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    est = json.loads(proc.stdout)
    kinds = {k["name"]: k for k in est["kinds"]}
    assert set(kinds) == {"teacher segformer_b2", "baseline", "student segformer_b2/kd", "student segformer_b2/freq"}
    assert [kinds[k]["jobs"] for k in sorted(kinds)] == [4, 4, 4, 2]  # baseline, freq, kd: 2 seeds x 2 folds
    assert all(k["step_s"] > 0 and k["job_s"] > k["fixed_s"] > 0 for k in kinds.values())
    assert kinds["teacher segformer_b2"]["step_s"] > kinds["baseline"]["step_s"]  # a B2 step costs more than a B0's
    assert set(est["other"]) == {"prepare", "split", "bands segformer_b2/freq", "aggregate"}  # data not yet prepared
    compute = sum(k["jobs"] * k["job_s"] for k in kinds.values()) + sum(est["other"].values())
    assert est["compute_s"] == pytest.approx(compute)
    scheduled = est["wall_s"] - est["workflow_s"]
    assert compute / 2 <= scheduled + 1e-6 and scheduled <= compute
    assert "[estimate]" in proc.stderr and "Road" not in proc.stdout  # progress on stderr, the split's tables too
