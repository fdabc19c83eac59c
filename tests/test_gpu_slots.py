"""GPU slots on a workstation (segkd.gpu_slots), with pretended devices: never more jobs on a GPU than
its share, every GPU used, a finished or killed job's slot taken by the next job."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from segkd.errors import UserError
from segkd.gpu_slots import claim, environment, parse_devices, pin_this_process, try_claim


def test_three_gpus_two_jobs_each(tmp_path):
    """Nine jobs on 3 GPUs x 2 slots: at most 2 at once on a device, all three used by the first six,
    and the last three run in slots the first ones freed."""
    devices, intervals, lock = ["0", "1", "2"], [], threading.Lock()

    def job(i):
        slot = claim(devices, 2, tmp_path, poll_s=0.01, name=f"job{i}")
        start = time.monotonic()
        time.sleep(0.3 if i < 6 else 0.05)
        with lock:
            intervals.append((slot.device, start, time.monotonic()))
        slot.release()

    threads = [threading.Thread(target=job, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # the first six hold every slot
    late = [threading.Thread(target=job, args=(i,)) for i in range(6, 9)]
    for t in late:
        t.start()
    for t in threads + late:
        t.join(10)
    assert len(intervals) == 9
    for device, start, _ in intervals:  # jobs on the device of this one, running when it started
        running = [1 for d, s, e in intervals if d == device and s <= start < e]
        assert len(running) <= 2, (device, intervals)
    first_six = sorted(intervals, key=lambda i: i[1])[:6]
    assert sorted(d for d, _, _ in first_six) == ["0", "0", "1", "1", "2", "2"]
    first_end = min(e for _, _, e in first_six)
    assert all(s >= first_end for _, s, _ in sorted(intervals, key=lambda i: i[1])[6:])


def test_jobs_spread_over_the_devices_before_sharing_one(tmp_path):
    held = [try_claim(["0", "1", "2"], 2, tmp_path) for _ in range(3)]
    assert sorted(s.device for s in held) == ["0", "1", "2"]
    held += [try_claim(["0", "1", "2"], 2, tmp_path) for _ in range(3)]
    assert try_claim(["0", "1", "2"], 2, tmp_path) is None  # all six taken
    held.pop(4).release()
    again = try_claim(["0", "1", "2"], 2, tmp_path)
    assert again is not None and try_claim(["0", "1", "2"], 2, tmp_path) is None


def test_a_killed_job_frees_its_slot(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from segkd.gpu_slots import claim; "
        f"slot = claim(['0'], 1, Path({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert try_claim(["0"], 1, tmp_path) is None
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert try_claim(["0"], 1, tmp_path) is not None  # the lock file is still there; its lock is not


def test_a_pinned_job_sees_its_device_alone(tmp_path, capsys):
    env = environment(2, 1, tmp_path)
    assert env == {"SEGKD_GPUS": "0,1", "SEGKD_JOBS_PER_GPU": "1", "SEGKD_GPU_SLOTS": str(tmp_path)}
    first, second = pin_this_process("a", env=dict(env)), None
    env2 = dict(env)
    second = pin_this_process("b", env=env2)
    assert (first.device, second.device, env2["CUDA_VISIBLE_DEVICES"]) == ("0", "1", "1")
    assert "[b] on GPU 1 (slot 1 of 1 there)" in capsys.readouterr().err
    assert pin_this_process("c", env={}) is None  # no slots handed out: nothing claimed, nothing pinned


def test_gpus_name_a_count_or_devices():
    assert parse_devices("3") == ["0", "1", "2"] and parse_devices("2,5") == ["2", "5"]
    assert environment(2, 2, "d", visible="4,6,7")["SEGKD_GPUS"] == "4,6"  # the first 2 the user shows
    for bad in ("0", "x", "1,1"):
        with pytest.raises(UserError, match="gpus:"):
            parse_devices(bad)
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES shows 1"):
        environment(2, 1, "d", visible="3")
    with pytest.raises(UserError, match="jobs_per_gpu"):
        environment(1, 0, "d")
