"""Two host-side costs, measured side by side: page faults of a training step with and without the
retained-memory allocator setting (segkd.engine.allocator), and the synthetic scenes' generation rate.

    .venv/bin/python benchmarks/allocator_and_data.py

Each allocator mode runs in a fresh process (mallopt is process-wide): a B0 forward + backward at
128x128, batch 4, one thread, six steps; the faults of the last three are compared.
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

PROBE = """
import resource, sys, torch
from segkd.engine.allocator import retain_freed_memory
from segkd.models import create_model
applied = retain_freed_memory() if sys.argv[1] == "retain" else None
torch.set_num_threads(1)
model = create_model("segformer_b0", num_classes=11)
x = torch.randn(4, 3, 128, 128)
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(x).logits.sum().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[-3:]))
"""


def cpu_name() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    applied, count = out.stdout.split()
    return applied, int(count)


def main() -> None:
    print(cpu_name())
    _, default = faults("default")
    applied, retained = faults("retain")
    print(f"page faults of 3 steps: glibc defaults {default}, retained memory {retained} (applied: {applied}); "
          f"ratio {default / max(retained, 1):.0f}x")

    from segkd.data import synthetic

    start = time.perf_counter()
    frames = 0
    for sequence in range(2):
        street = synthetic.Street(5, sequence)
        for t in range(10):
            street.render(t, 96, 128)
            frames += 1
    elapsed = time.perf_counter() - start
    print(f"synthetic scenes: {frames} frames at 96x128 in {elapsed:.2f} s ({1000 * elapsed / frames:.1f} ms a frame)")


if __name__ == "__main__":
    main()
