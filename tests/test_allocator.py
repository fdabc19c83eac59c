"""Freed host memory stays in the process: training steps stop page-faulting their activations in."""

import subprocess
import sys

import pytest

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_retained_memory_is_reused_without_page_faults():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        applied, count = out.stdout.split()
        return applied, int(count)

    _, default_faults = faults("default")
    applied, retained_faults = faults("retain")
    assert applied == "True"
    assert default_faults > 3000  # glibc hands big activations back and faults them in every step
    assert retained_faults < default_faults / 10
