"""GPU slots of a workstation: each training job runs on one GPU, and no GPU runs more than its share.

Snakemake caps the training jobs running at once (each requests ``gpu=1``; the gpu profile sets the
total, GPUs x jobs per GPU), but it does not say *which* GPU a job may use: left alone, every job
would start on GPU 0. So a training job claims a slot first: slot files ``gpu<id>.slot<k>`` in a
directory shared by the study's jobs, one exclusive ``flock`` each. The job takes a free slot on the
GPU with the most free slots (spreading jobs over the devices), and from then on sees that device alone
(``CUDA_VISIBLE_DEVICES``, set before CUDA is initialised). The operating system releases the lock
when the process ends, however it ends: a killed job frees its slot, and no stale lock file can
block a later job. With every slot taken (another study on the same GPUs), the job waits, and says so.

The workflow passes the slots to its jobs through the environment (see workflow/rules/common.smk):
``SEGKD_GPUS`` (device ids, e.g. ``0,1``), ``SEGKD_JOBS_PER_GPU`` and ``SEGKD_GPU_SLOTS`` (the
directory). Without them a job claims nothing and sees every device, as torch does by default.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from segkd import layout
from segkd.errors import UserError

GPUS_ENV, PER_GPU_ENV, DIR_ENV = "SEGKD_GPUS", "SEGKD_JOBS_PER_GPU", "SEGKD_GPU_SLOTS"
DEVICE_ID = re.compile(r"\d+|(?:GPU|MIG)-[0-9A-Za-z/-]+")  # what CUDA_VISIBLE_DEVICES accepts


@dataclass
class Slot:
    """A claimed slot: held for as long as its lock file stays open (normally the job's life)."""

    device: str
    index: int
    file: object  # the open, locked slot file

    def release(self) -> None:
        self.file.close()


def parse_devices(text: str) -> list[str]:
    """Device ids from ``'0,1,3'`` (indices, or the UUIDs CUDA_VISIBLE_DEVICES takes), or ``'3'`` for
    the first three (``0,1,2``)."""
    text = text.strip()
    if text.isdigit() and "," not in text:
        count = int(text)
        if count < 1:
            raise UserError(f"gpus: needs at least one GPU, got {text}")
        return [str(i) for i in range(count)]
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices or len(set(devices)) < len(devices) or not all(DEVICE_ID.fullmatch(d) for d in devices):
        raise UserError(f"gpus: expected a count or distinct device ids (0,1,... or GPU-<uuid>), got {text!r}")
    return devices


def environment(gpus, jobs_per_gpu, directory: Path, visible: str | None = None) -> dict[str, str]:
    """The variables that hand a workflow's slots to its jobs. `gpus` is a count or a list of ids; a
    count takes the first devices of `visible` (the user's CUDA_VISIBLE_DEVICES) where it is set."""
    devices = parse_devices(",".join(map(str, gpus)) if isinstance(gpus, (list, tuple)) else str(gpus))
    if visible and str(gpus).isdigit():
        shown = [d.strip() for d in visible.split(",") if d.strip()]
        if len(devices) > len(shown):
            raise UserError(f"gpus: {len(devices)} GPUs asked for, CUDA_VISIBLE_DEVICES shows {len(shown)} ({visible})")
        devices = shown[: len(devices)]
    if int(jobs_per_gpu) < 1:
        raise UserError(f"jobs_per_gpu: needs at least 1, got {jobs_per_gpu}")
    return {GPUS_ENV: ",".join(devices), PER_GPU_ENV: str(int(jobs_per_gpu)), DIR_ENV: str(directory)}


def try_claim(devices: list[str], per_gpu: int, directory: Path) -> Slot | None:
    """A free slot on the device with the most free slots (the first such device), or None if all
    are taken. Probing locks every free slot for a moment; all but the chosen one are let go."""
    directory.mkdir(parents=True, exist_ok=True)
    free: list[Slot] = []
    for device in devices:
        for index in range(per_gpu):
            f = open(directory / f"gpu{device}.slot{index}", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            free.append(Slot(device, index, f))
    if not free:
        return None
    counts = {d: sum(s.device == d for s in free) for d in devices}
    chosen = next(s for s in free if counts[s.device] == max(counts.values()))
    for slot in free:
        if slot is not chosen:
            slot.release()
    return chosen


def claim(devices: list[str], per_gpu: int, directory: Path, *, poll_s: float = 2.0, name: str = "job") -> Slot:
    """Claim a slot, waiting while every slot is taken."""
    waited = False
    while True:
        slot = try_claim(devices, per_gpu, directory)
        if slot is not None:
            if waited:
                print(f"[{name}] a GPU slot came free", file=sys.stderr, flush=True)
            return slot
        if not waited:
            print(f"[{name}] waiting for a GPU slot: all {len(devices) * per_gpu} taken "
                  f"({len(devices)} GPUs x {per_gpu}; {directory})", file=sys.stderr, flush=True)
            waited = True
        time.sleep(poll_s)


def pin_this_process(name: str = "job", env=os.environ) -> Slot | None:
    """Claim a slot for this process and let it see that GPU alone, when the workflow hands out slots.
    Call before anything initialises CUDA. Returns the slot (kept until the process ends), or None."""
    if not env.get(GPUS_ENV):
        return None
    devices = parse_devices(env[GPUS_ENV])
    per_gpu = int(env.get(PER_GPU_ENV, "1"))
    slot = claim(devices, per_gpu, Path(env.get(DIR_ENV, layout.GPU_SLOTS)), name=name)
    env["CUDA_VISIBLE_DEVICES"] = slot.device
    print(f"[{name}] on GPU {slot.device} (slot {slot.index + 1} of {per_gpu} there)", file=sys.stderr, flush=True)
    return slot
