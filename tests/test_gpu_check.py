"""benchmarks/gpu_check.py runs on a CPU at small sizes: every table row, the reference steps and the
bf16 / fp32 parity run, so that the script is ready for the machine with a GPU."""

import json

from conftest import benchmark


def test_gpu_check_runs_at_small_sizes_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    rc = benchmark("gpu_check").main(["--device", "cpu", "--size", "32x48", "--batch", "2", "--warmup", "0",
                                      "--repeats", "1", "--teachers", "segformer_b2", "--parity-iterations", "2",
                                      "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    steps = {(r["step"], r["impl"], r["precision"]) for r in report["steps"]}
    segkd_steps = {"plain B0", "kd", "at", "sp", "freq"}
    assert steps == ({(s, "segkd", p) for s in segkd_steps for p in ("bf16", "fp32")}
                     | {(s, "transformers", "fp32") for s in ("plain B0", "kd", "freq")})
    assert all(r["images_per_s"] > 0 for r in report["steps"])
    assert set(report["parity"]) == {"fp32", "bf16", "difference_points"}
    assert 0 <= report["parity"]["fp32"]["mIoU"] <= 1 and 0 <= report["parity"]["bf16"]["mIoU"] <= 1
