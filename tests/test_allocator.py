"""The retained-memory setting applies where it can (glibc) and says so; its effect on page faults is
measured by benchmarks/allocator_and_data.py, not asserted here."""

import subprocess
import sys

import pytest

PROBE = "from segkd.engine.allocator import retain_freed_memory; print(retain_freed_memory())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_retained_memory_setting_applies_on_glibc():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
