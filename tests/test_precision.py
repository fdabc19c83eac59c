"""Precision `auto` resolves from what the hardware computes natively, through torch's private CPU probes
(isolated in `cpu_has_native_bf16`): if torch renames them, this fails instead of every CPU run silently
choosing fp32 or failing later."""

import torch

from segkd.engine.evaluate import cpu_has_native_bf16, resolve_precision


def test_torch_still_has_the_private_cpu_probes():
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        assert callable(getattr(torch.cpu, probe, None)), f"torch.cpu.{probe} is gone: update cpu_has_native_bf16"
        assert isinstance(getattr(torch.cpu, probe)(), bool)


def test_auto_precision_on_cpu_follows_the_probe():
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
