"""Distillation training step: segkd against the transformers-based equivalent, side by side in one run.

Measures images/s and peak memory of
  (a) the plain B0 student step (segkd, and transformers for reference),
  (b) the B0 student + B2 teacher step of each method as `segkd train` runs it (`step_losses`, the
      optimizer from `create_optimizer`), and
  (c) the same distillation step written on `transformers.SegformerForSemanticSegmentation` in fp32, the
      way a user would, computing segkd's loss: teacher under no_grad; `kd` as KL(teacher || student) on
      the 1/4-resolution logits (T = 1, mean over non-void pixels); `freq` with a forward hook on the decode
      head's activation, a full-resolution 1x1 adapter (256 -> 768), a torch.fft box low-pass,
      F.mse_loss of the adapted student's low band against the teacher's, plus the L1 of the student's own
      high band (before the adapter); plain torch AdamW;
at each size, batch 8. Steps of all variants alternate within every repeat, so load from other processes
hits all alike; medians after warm-up.

Before timing, at each size, it checks that (c) computes segkd's loss (`reference_check`): the `kd` and
`freq` terms on the same features and logits, with segkd's adapter weights in the reference's adapter
(values, `freq`'s low and high parts, gradients), both against the reference in float64, and the whole
step loss with segkd's weights exported into the transformers models.

It also counts FLOPs per step (torch.utils.flop_counter) and prints achieved GFLOP/s of the student step,
the teacher forward and the whole `freq` step against this machine's matmul peak, measured here too;
the teacher forward's share of step time against its FLOP share, and its FLOPs and time beside the
transformers teacher forward's; and the `freq` loss's share of the
step (the term's forward + backward on real decoder features, timed alone).

Levers (--levers HxW): the shipped `freq` step with one knob turned each. Every lever step runs right
after a shipped step and the table gives the median of those paired ratios, which stays honest when
the machine's speed drifts during the run (it does on shared CPUs).

Peak memory: the first step of each variant in a fresh process (so the optimizer state it creates
counts); on CUDA torch.cuda.max_memory_allocated, on CPU the rise of the resident-set high-water mark
(VmHWM, reset through /proc/self/clear_refs) over the resident set before the step.

    .venv/bin/python benchmarks/train_step.py [--sizes 96x128 180x240] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from torch.utils.flop_counter import FlopCounterMode

from segkd.distill.frequency import band_loss
from segkd.distill.registry import build_distillation
from segkd.engine.allocator import retain_freed_memory
from segkd.engine.evaluate import autocast
from segkd.engine.optim import create_optimizer
from segkd.engine.train import step_losses
from segkd.models import create_model
from segkd.models.weights import export

BATCH = 8
TRAIN = {"lr": 6e-4, "head_lr_mult": 10.0, "weight_decay": 0.01}
METHODS = {
    "kd": {"kd": {"weight": 0.01}},
    "at": {"at": {"weight": 1000.0}},
    "sp": {"sp": {"weight": 1.0}},
    "freq": {"freq": {"weight": 0.1, "ratio": 0.2, "high": "regularize"}},
}
HF_CONFIGS = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
}


# ---------------------------------------------------------------- segkd steps (as `segkd train` runs them)
def segkd_step(student, teacher, terms, x, y, precision="fp32"):
    distill = build_distillation(terms, student.feature_dims, teacher.feature_dims).to(x.device) if terms else None
    optimizer = create_optimizer(student, distill, TRAIN)

    def step():
        losses = step_losses(student, x, y, precision, teacher if distill else None, distill)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


# ---------------------------------------------------------------- the transformers-based equivalent
def hf_model(name: str):
    config = transformers.SegformerConfig(num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
                                          num_labels=11, semantic_loss_ignore_index=255, **HF_CONFIGS[name])
    return transformers.SegformerForSemanticSegmentation(config)


def decoder_feature(model) -> dict:
    """Capture the decode head's feature after linear_fuse + BN + ReLU (before dropout) with a hook."""
    store = {}
    model.decode_head.activation.register_forward_hook(lambda m, i, o: store.__setitem__("x", o))
    return store


def fft_low(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Box low-pass with torch.fft: keep |k| <= floor(ratio * n / 2) on each axis."""
    h, w = x.shape[-2:]
    def axis(n):
        k = torch.arange(n, device=x.device)
        return (torch.minimum(k, n - k) <= int(ratio * n / 2)).float()
    mask = axis(h)[:, None] * axis(w)[None, :]
    return torch.fft.ifft2(torch.fft.fft2(x) * mask).real


def reference_kd(s_logits, t_logits, y):
    """segkd's `kd` (T = 1), written plainly: KL(teacher || student) over the classes of the 1/4-resolution
    logits, averaged over the pixels whose label (resized by nearest) is not void (255)."""
    valid = F.interpolate(y[:, None].float(), size=s_logits.shape[-2:], mode="nearest")[:, 0] != 255
    kl = F.kl_div(F.log_softmax(s_logits, 1), F.softmax(t_logits, 1), reduction="none").sum(1)
    return kl[valid].mean()


def reference_freq(s, t, adapter, ratio=0.2):
    """segkd's `freq` (box band, high: regularize), written plainly: MSE between the low bands of the
    adapted student feature (1x1 conv 256 -> 768 on the full map) and of the teacher's feature, plus the
    L1 of the student's own high band (256 channels, before the adapter)."""
    low_s = fft_low(s, ratio)
    return F.mse_loss(fft_low(adapter(s), ratio), fft_low(t, ratio)) + (s - low_s).abs().mean()


def hf_loss(student, teacher, method, adapter, s_feat, t_feat, x, y):
    """Task loss + weighted term of one step on the transformers models (the hooks fill s_feat / t_feat)."""
    out = student(pixel_values=x, labels=y)  # upsamples the logits, cross-entropy with ignore 255
    if method is None:
        return out.loss
    with torch.no_grad():
        t_logits = teacher(pixel_values=x).logits
    if method == "kd":
        return out.loss + 0.01 * reference_kd(out.logits, t_logits, y)
    return out.loss + 0.1 * reference_freq(s_feat["x"], t_feat["x"], adapter, 0.2)


def hf_step(student, teacher, method, x, y):
    s_feat, t_feat = decoder_feature(student), decoder_feature(teacher)
    adapter = torch.nn.Conv2d(256, 768, 1).to(x.device) if method == "freq" else None
    params = list(student.parameters()) + (list(adapter.parameters()) if adapter else [])
    optimizer = torch.optim.AdamW(params, lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])

    def step():
        loss = hf_loss(student, teacher, method, adapter, s_feat, t_feat, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


# ---------------------------------------------------------------- the reference computes segkd's loss
def as_hf(model, name: str):
    """A transformers model holding a segkd model's weights (the same mode)."""
    hf = hf_model(name)
    hf.load_state_dict(export(model.state_dict(), "hf"), strict=True)
    return hf.train(model.training)


def randomise_norms(model, seed: int) -> None:
    """Non-default norm affines and BN statistics (any model: segkd's or transformers'), so that a
    mix-up in them changes the outputs (tests/conftest.py uses this too)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))


def randomise(model, seed: int) -> None:
    """`randomise_norms`, and a classifier 10x its init, so that the check compares non-trivial numbers
    (logits of unit scale, not the near-uniform ones of a fresh model)."""
    randomise_norms(model, seed)
    with torch.no_grad():
        model.decode_head.linear_pred.weight.mul_(10)


def reference_check(h: int, w: int, batch: int = BATCH, seed: int = 0) -> dict[str, dict[str, float]]:
    """segkd's loss and the transformers reference's on the same inputs, by quantity:
    {"segkd", "reference", "exact"} (exact: the reference in float64; None where not computed).

    * Terms: segkd's weighted `kd` / `freq` terms (`Distillation`, as `step_losses` calls it) and the
      reference's (0.01 `reference_kd`, 0.1 `reference_freq` with segkd's adapter weights copied into
      its Conv2d) on the same student / teacher decoder features and logits; `freq`'s low and high
      parts unweighted (segkd's `band_loss` with high none / with low_weight 0), and the gradients
      of the weighted term with respect to the adapter's weight and to the student's feature (on the
      maps where the L1's sign is defined in float32: the high band nowhere 0 up to rounding).
    * Steps: segkd's models' weights exported into the transformers models, both in eval mode (no
      dropout / drop path): the step loss of `step_losses` (task + term) against `hf_loss`
      (transformers' task loss, the hooked decoder features). transformers' LayerNorm eps differs
      (1e-5 everywhere; MiT's 1e-6 in the blocks, as segkd).
    Labels include void (255) pixels, so KD's mask counts.
    """
    torch.manual_seed(seed)
    x = torch.randn(batch, 3, h, w)
    y = torch.randint(0, 11, (batch, h, w))
    y[:, : h // 6] = 255  # void pixels, which KD leaves out
    student = create_model("segformer_b0", num_classes=11).eval()
    teacher = create_model("segformer_b2", num_classes=11).eval().requires_grad_(False)
    randomise(student, seed + 1)
    randomise(teacher, seed + 2)
    hf_s, hf_t = as_hf(student, "b0"), as_hf(teacher, "b2")
    s_feat, t_feat = decoder_feature(hf_s), decoder_feature(hf_t)
    s_out = student(x)
    with torch.inference_mode():
        t_out = teacher(x)
    s_logits, s_dec = s_out.logits.detach(), s_out.decoder.detach()
    t_logits, t_dec = t_out.logits.clone(), t_out.decoder.clone()
    rows = {}

    def row(name, ours, ref, exact=None):
        rows[name] = {"segkd": ours.item() if ours.numel() == 1 else ours.abs().max().item(),
                      "reference": ref.item() if ref.numel() == 1 else ref.abs().max().item(),
                      "max |diff|": (ours.double() - ref.double()).abs().max().item(),
                      "exact": exact,
                      "ours": ours.detach(), "ref": ref.detach()}

    # kd
    kd = build_distillation(METHODS["kd"], student.feature_dims, teacher.feature_dims)
    row("kd term (weighted)", kd(s_out._replace(logits=s_logits), t_out, y)["kd"],
        0.01 * reference_kd(s_logits, t_logits, y), 0.01 * reference_kd(s_logits.double(), t_logits.double(), y))
    # freq: value, parts, gradients
    freq = build_distillation(METHODS["freq"], student.feature_dims, teacher.feature_dims)
    term = freq.terms["freq"]
    adapter, exact_adapter = torch.nn.Conv2d(256, 768, 1), torch.nn.Conv2d(256, 768, 1).double()
    adapter.load_state_dict(term.adapter.state_dict())
    exact_adapter.load_state_dict(term.adapter.state_dict())
    with torch.no_grad():
        row("freq low part: MSE(low(A s), low(t))", band_loss(s_dec, t_dec, term.band, "none", adapter=term.adapter),
            F.mse_loss(fft_low(adapter(s_dec), 0.2), fft_low(t_dec, 0.2)),
            F.mse_loss(fft_low(exact_adapter(s_dec.double()), 0.2), fft_low(t_dec.double(), 0.2)))
        row("freq high part: mean |high(s)|", band_loss(s_dec, t_dec, term.band, "regularize", adapter=term.adapter,
                                                        low_weight=0.0),
            (s_dec - fft_low(s_dec, 0.2)).abs().mean(), (s_dec.double() - fft_low(s_dec.double(), 0.2)).abs().mean())
    feature, ref_feature = s_dec.clone().requires_grad_(), s_dec.clone().requires_grad_()
    ours = freq(s_out._replace(decoder=feature), t_out, y)["freq"]
    ref = 0.1 * reference_freq(ref_feature, t_dec, adapter, 0.2)
    exact_feature = s_dec.double().requires_grad_()
    exact = 0.1 * reference_freq(exact_feature, t_dec.double(), exact_adapter, 0.2)
    row("freq term (weighted)", ours, ref, exact)
    for loss in (ours, ref, exact):
        loss.backward()
    # The L1's gradient is sign(high(s)) - low(sign(high(s))), per map: where the exact high band is 0 up
    # to float32 rounding (at a pixel, or everywhere in a map the ReLU zeroes), its float32 sign is noise in
    # either implementation and so is the gradient of that whole map. Compared on the other maps.
    with torch.no_grad():
        high = s_dec.double() - fft_low(s_dec.double(), 0.2)
        kept = (high.abs() > 1e-5 * s_dec.abs().max()).flatten(2).all(2)[..., None, None].expand_as(high)
    name = (f"freq term: d/d student feature (maps with every |high(s)| > 1e-5 max |s|: "
            f"{100 * kept.double().mean():.1f}%)")
    row(name, feature.grad[kept], ref_feature.grad[kept])
    rows[name]["exact"] = exact_feature.grad[kept]
    row("freq term: d/d adapter weight", term.adapter.weight.grad, adapter.weight.grad)
    rows["freq term: d/d adapter weight"]["exact"] = exact_adapter.weight.grad
    # whole step losses
    with torch.no_grad():
        for method, distill in (("kd", kd), ("freq", freq)):
            row(f"{method} step loss (task + term), eval mode",
                sum(step_losses(student, x, y, "fp32", teacher, distill).values()),
                hf_loss(hf_s, hf_t, method, adapter, s_feat, t_feat, x, y))
    for r in rows.values():  # relative errors
        ours, ref, exact = r.pop("ours"), r.pop("ref"), r["exact"]
        scale = lambda t: max(t.double().abs().max().item(), 1e-30)  # noqa: E731
        r["rel diff"] = r["max |diff|"] / scale(ours)
        if exact is not None:
            r["segkd rel err"] = (ours.double() - exact.double()).abs().max().item() / scale(exact)
            r["reference rel err"] = (ref.double() - exact.double()).abs().max().item() / scale(exact)
            r["exact"] = exact.item() if exact.numel() == 1 else exact.abs().max().item()
    return rows


def print_reference_check(h: int, w: int) -> None:
    start = time.perf_counter()
    rows = reference_check(h, w)
    print(f"\nreference check at {h}x{w}, batch {BATCH}: segkd's loss and the transformers reference's, same "
          f"weights and inputs, fp32 (exact: the reference in float64; gradients: max |.| of the tensor, "
          f"diff and errors max-abs over its scale; {time.perf_counter() - start:.0f} s)\n")
    print("| quantity | segkd | reference | rel diff | exact (float64) | segkd rel err | reference rel err |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, r in rows.items():
        f = lambda key, spec: "" if r.get(key) is None else format(r[key], spec)  # noqa: E731
        print(f"| {k} | {r['segkd']:.7g} | {r['reference']:.7g} | {r['rel diff']:.1e} | {f('exact', '.7g')} | "
              f"{f('segkd rel err', '.1e')} | {f('reference rel err', '.1e')} |")


# ---------------------------------------------------------------- measurement helpers
def vm_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def peak_memory_mib(step) -> float:
    """Memory a step needs on top of what the process held before it (see the module docstring)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = vm_kib("VmRSS")
    step()
    return (vm_kib("VmHWM") - before) / 1024


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


#: the kernels that carry the FLOPs FlopCounterMode counts on CPU (GEMM, convolution, attention)
FLOP_KERNELS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
                "aten::_scaled_dot_product_flash_attention_for_cpu"}


def kernel_fraction(fn, calls: int = 3) -> float:
    """Share of fn's profiled CPU time spent inside FLOP_KERNELS (self times; the rest is elementwise
    work, norms, copies and dispatch)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    events = prof.key_averages()
    return sum(e.self_cpu_time_total for e in events if e.key in FLOP_KERNELS) / sum(
        e.self_cpu_time_total for e in events)


def matmul_peak(dtype: torch.dtype, seconds: float = 0.4) -> float:
    """Best achieved GFLOP/s of square matmuls of a few sizes: this machine's practical peak for dtype."""
    best = 0.0
    for n in (256, 512, 1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start) / 1e9)
    return best


def alternate(fns: dict, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each fn, calls interleaved."""
    times = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def freq_term_timer(student, teacher, x):
    """The `freq` term's forward + backward alone, on real decoder features of this batch."""
    distill = build_distillation(METHODS["freq"], student.feature_dims, teacher.feature_dims)
    with torch.no_grad():
        s_out, t_out = student(x), teacher(x)
    s_dec = s_out.decoder.detach().clone().requires_grad_()

    def run():
        loss = sum(distill(s_out._replace(decoder=s_dec), t_out, None).values())
        loss.backward()
        s_dec.grad = None
        distill.zero_grad(set_to_none=True)

    return run


def build_steps(h: int, w: int, only: str | None = None) -> tuple[dict, dict]:
    """The step closures at one size (just `only`, if given) and the probes used for the FLOP breakdown."""
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, h, w)
    y = torch.randint(0, 11, (BATCH, h, w))
    xc = x.contiguous(memory_format=torch.channels_last)
    wanted = (lambda name: only is None or name == only)

    def teacher():
        return create_model("segformer_b2", num_classes=11).to(memory_format=torch.channels_last).eval().requires_grad_(False)

    def student():
        return create_model("segformer_b0", num_classes=11, drop_path_rate=0.1).to(memory_format=torch.channels_last).train()

    shared_teacher = teacher() if only is None or only.startswith("segkd") else None
    hf_teacher = hf_model("b2").eval().requires_grad_(False) if only is None or only.startswith("transformers") else None
    steps, probes = {}, {}
    if wanted("segkd plain B0"):
        steps["segkd plain B0"] = segkd_step(student(), shared_teacher, None, xc, y)
    for m, terms in METHODS.items():
        if wanted(f"segkd {m}"):
            t = shared_teacher
            if m == "freq" and only is None:  # its own teacher, timed inside the step by hooks
                t, probes["teacher in step"] = teacher(), []
                t.register_forward_pre_hook(lambda *_: probes.__setitem__("t0", time.perf_counter()))
                t.register_forward_hook(lambda *_: probes["teacher in step"].append(time.perf_counter() - probes["t0"]))
            steps[f"segkd {m}"] = segkd_step(student(), t, terms, xc, y)
    for m in (None, "kd", "freq"):
        name = f"transformers {m or 'plain B0'}"
        if wanted(name):
            steps[name] = hf_step(hf_model("b0").train(), hf_teacher, m, x, y)
    if only is None:
        def teacher_forward():  # as the freq step runs it: only the decoder feature its term reads
            with torch.inference_mode():
                shared_teacher(xc, taps={"decoder"})

        def hf_teacher_forward():  # as the transformers steps run it
            with torch.no_grad():
                hf_teacher(pixel_values=x)

        probes.update(teacher_forward=teacher_forward, hf_teacher_forward=hf_teacher_forward,
                      plain=segkd_step(student(), shared_teacher, None, xc, y),
                      freq_term=freq_term_timer(student().eval(), shared_teacher, xc))
    return steps, probes


def child(*args: str) -> list[float]:
    """Run this script in a fresh process (same thread count) and return the numbers it prints last."""
    out = subprocess.run([sys.executable, __file__, *args, "--threads", str(ARGS.threads)],
                         capture_output=True, text=True, check=True)
    return [float(v) for v in out.stdout.strip().splitlines()[-1].split()]


def step_in_child(name: str, h: int, w: int, warmup: int, repeats: int, default_allocator: bool) -> tuple[float, float]:
    """(median s/step, minor page faults per step) of one step variant in a fresh process."""
    args = ["--step-time-of", name, "--sizes", f"{h}x{w}", "--warmup", str(warmup), "--repeats", str(repeats)]
    return tuple(child(*args, *(["--glibc-default-allocator"] if default_allocator else [])))


def memory_in_child(name: str, h: int, w: int) -> float:
    """Peak memory of one step, measured in a fresh process so that no freed heap of other steps hides it."""
    return child("--memory-of", name, "--sizes", f"{h}x{w}")[0]


def bench_size(h: int, w: int, warmup: int, repeats: int) -> None:
    print(f"\n### {h}x{w}, batch {BATCH}")
    print_reference_check(h, w)
    steps, probes = build_steps(h, w)
    memory = {k: memory_in_child(k, h, w) for k in steps}
    timers = {**steps, "teacher forward alone": probes["teacher_forward"], "freq term": probes["freq_term"],
              "transformers teacher forward alone": probes["hf_teacher_forward"]}
    med = alternate(timers, warmup, repeats)
    teacher_in_step = statistics.median(probes["teacher in step"][-repeats:])

    print(f"\nsteps at {h}x{w}, batch {BATCH}:\n")
    print("| step | s/step | images/s | peak memory (MiB) | x transformers same method |")
    print("|---|---:|---:|---:|---:|")
    for k, fn in steps.items():
        method = k.split(" ", 1)[1]
        ref = f"transformers {method}"
        ratio = f"{med[ref] / med[k]:.2f}" if ref in med and not k.startswith("transformers") else ""
        print(f"| {k} | {med[k]:.3f} | {BATCH / med[k]:.1f} | {memory[k]:.0f} | {ratio} |")
    print(f"\nsegkd freq vs transformers fp32 kd step: {med['transformers kd'] / med['segkd freq']:.2f}x; "
          f"vs transformers freq step: {med['transformers freq'] / med['segkd freq']:.2f}x")

    # FLOPs and achieved rates of the segkd freq step and its parts
    f_student, f_teacher, f_step = flops(probes["plain"]), flops(probes["teacher_forward"]), flops(steps["segkd freq"])
    f_hf_teacher = flops(probes["hf_teacher_forward"])
    share_t, share_f = teacher_in_step / med["segkd freq"], f_teacher / f_step
    print("\n| part (segkd freq step) | GFLOP | s | GFLOP/s | % of fp32 matmul peak |")
    print("|---|---:|---:|---:|---:|")
    for name, f, t in (("student step (plain B0 step)", f_student, med["segkd plain B0"]),
                       ("teacher forward (B2), inside the freq step", f_teacher, teacher_in_step),
                       ("teacher forward (B2), alone", f_teacher, med["teacher forward alone"]),
                       ("transformers teacher forward (B2), alone", f_hf_teacher, med["transformers teacher forward alone"]),
                       ("whole freq step", f_step, med["segkd freq"])):
        print(f"| {name} | {f / 1e9:.2f} | {t:.3f} | {f / t / 1e9:.1f} | {100 * f / t / 1e9 / PEAK['fp32']:.0f}% |")
    print(f"\nteacher forward: {100 * share_t:.0f}% of step time, {100 * share_f:.0f}% of step FLOPs "
          f"(time share / FLOP share = {share_t / share_f:.2f}, goal <= 1.2). FLOPs are those executed: the "
          f"folded head skips the 4E -> E fuse conv at 1/4 resolution, so segkd's teacher forward runs "
          f"{f_teacher / 1e9:.1f} GFLOP where transformers' runs {f_hf_teacher / 1e9:.1f}, and takes "
          f"{med['transformers teacher forward alone'] / med['teacher forward alone']:.2f}x less time")
    kernels = kernel_fraction(probes["teacher_forward"])
    t_kernels = kernels * teacher_in_step
    bound = t_kernels / (med["segkd freq"] - teacher_in_step + t_kernels) / share_f
    print(f"teacher forward, profiled: {100 * kernels:.0f}% of its time in GEMM / convolution / attention "
          f"kernels ({f_teacher / t_kernels / 1e9:.1f} GFLOP/s there); with every other op of the teacher "
          f"free, time share / FLOP share would be {bound:.2f}")
    print(f"freq term forward+backward: {1000 * med['freq term']:.1f} ms = "
          f"{100 * med['freq term'] / med['segkd freq']:.1f}% of the freq step (goal <= 3%)")


# ---------------------------------------------------------------- levers, each against the shipped step
def lever_step(student, teacher, terms, x, y, *, precision="fp32", teacher_precision=None, grad_mode="inference",
               optimizer="fused", kd_full_resolution=False, threads=None, all_taps=False):
    """A distillation step like `step_losses` with one knob turned (the shipped step has the defaults)."""
    distill = build_distillation(terms, student.feature_dims, teacher.feature_dims)
    if optimizer == "fused":
        opt = create_optimizer(student, distill, TRAIN)
    else:
        opt = torch.optim.AdamW(list(student.parameters()) + list(distill.parameters()), lr=TRAIN["lr"],
                                foreach=optimizer == "foreach")
    teacher_ctx = torch.inference_mode if grad_mode == "inference" else torch.no_grad

    def step():
        if threads:
            torch.set_num_threads(threads)
        with autocast(x.device, precision):
            s_out = student(x)
            logits = F.interpolate(s_out.logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits.float(), y, ignore_index=255)
            with teacher_ctx(), autocast(x.device, teacher_precision or precision):
                t_out = teacher(x, taps=None if all_taps else distill.taps)
            if kd_full_resolution:  # the KL at label resolution, both logits upsampled first
                t_logits = F.interpolate(t_out.logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
                loss = loss + 0.01 * F.kl_div(F.log_softmax(logits.float(), 1), F.softmax(t_logits.float(), 1),
                                              reduction="none").sum(1).mean()
            else:
                loss = loss + sum(distill(s_out, t_out, y).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if threads:
            torch.set_num_threads(ARGS.threads)

    return step


def bench_levers(h: int, w: int, warmup: int, repeats: int, compile_teacher: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, h, w)
    y = torch.randint(0, 11, (BATCH, h, w))
    xc = x.contiguous(memory_format=torch.channels_last)

    def teacher(cl=True):
        t = create_model("segformer_b2", num_classes=11).eval().requires_grad_(False)
        return t.to(memory_format=torch.channels_last) if cl else t

    def student(cl=True):
        s = create_model("segformer_b0", num_classes=11, drop_path_rate=0.1).train()
        return s.to(memory_format=torch.channels_last) if cl else s

    t_cl = teacher()
    unfolded = teacher()
    unfolded.decode_head.frozen_folded_projections = unfolded.decode_head.folded_projections
    kd, freq = METHODS["kd"], METHODS["freq"]
    levers = {
        "shipped freq step (fp32, channels_last, inference_mode teacher, fused AdamW)":
            lever_step(student(), t_cl, freq, xc, y),
        "contiguous NCHW instead of channels_last": lever_step(student(False), teacher(False), freq, x, y),
        "teacher under no_grad instead of inference_mode": lever_step(student(), t_cl, freq, xc, y, grad_mode="no_grad"),
        "teacher folds its head every pass (no cache)": lever_step(student(), unfolded, freq, xc, y),
        "teacher computes every tap (its logits too)": lever_step(student(), t_cl, freq, xc, y, all_taps=True),
        "AdamW foreach instead of fused": lever_step(student(), t_cl, freq, xc, y, optimizer="foreach"),
        "AdamW for-loop instead of fused": lever_step(student(), t_cl, freq, xc, y, optimizer="loop"),
        "teacher in bf16 autocast": lever_step(student(), t_cl, freq, xc, y, teacher_precision="bf16"),
        "whole step in bf16 autocast": lever_step(student(), t_cl, freq, xc, y, precision="bf16"),
        f"{max(2, ARGS.threads * 2)} threads instead of {ARGS.threads}":
            lever_step(student(), t_cl, freq, xc, y, threads=max(2, ARGS.threads * 2)),
        "shipped kd step (KL on 1/4-resolution logits)": lever_step(student(), t_cl, kd, xc, y),
        "kd with logits upsampled to full resolution": lever_step(student(), t_cl, kd, xc, y, kd_full_resolution=True),
    }
    compile_note = ""
    if compile_teacher:
        compiled = torch.compile(teacher())
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(xc)
        compile_note = f" (compile time {time.perf_counter() - start:.0f} s, counted separately)"
        levers["teacher under torch.compile" + compile_note] = lever_step(student(), compiled, freq, xc, y)
    shipped_freq = next(iter(levers))
    shipped_kd = "shipped kd step (KL on 1/4-resolution logits)"
    pairs = {k: (shipped_kd if k.startswith("kd ") else shipped_freq, fn) for k, fn in levers.items()
             if not k.startswith("shipped")}
    rows = paired(levers, pairs, warmup, repeats)
    runs = {False: [], True: []}
    for _ in range(max(2, repeats // 2)):  # the allocator is per process: fresh processes, in pairs
        for default in (False, True):
            runs[default].append(step_in_child("segkd freq", h, w, warmup, repeats, default))
    faults = {d: statistics.median(r[1] for r in runs[d]) for d in runs}
    rows[f"glibc's default allocator, fresh process ({faults[True]:.0f} page faults/step; shipped "
         f"{faults[False]:.0f})"] = (statistics.median(r[0] for r in runs[True]),
                                    statistics.median(a[0] / b[0] for a, b in zip(runs[True], runs[False])))
    print(f"\n### Levers at {h}x{w}, batch {BATCH} (x shipped = median over repeats of lever time / time of "
          f"the shipped step run just before it; > 1 is slower)\n")
    print("| variant | s/step | x shipped |")
    print("|---|---:|---:|")
    for k, (seconds, ratio) in rows.items():
        print(f"| {k} | {seconds:.3f} | {ratio:.2f} |")


def paired(fns: dict, pairs: dict, warmup: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(median seconds, median ratio to its base) of each lever, each call right after its base's
    call, so that a drift of the machine's speed during the run cancels in the ratio. The bases
    (the shipped steps) get their own rows with ratio 1."""
    times = {k: [] for k in fns}
    ratios = {k: [] for k in pairs}
    for r in range(warmup + repeats):
        for k, (base, fn) in pairs.items():
            t0 = time.perf_counter()
            fns[base]()
            t1 = time.perf_counter()
            fn()
            t2 = time.perf_counter()
            if r >= warmup:
                times[base].append(t1 - t0)
                times[k].append(t2 - t1)
                ratios[k].append((t2 - t1) / (t1 - t0))
    return {k: (statistics.median(times[k]), statistics.median(ratios[k]) if k in ratios else 1.0)
            for k in fns}


PEAK: dict[str, float] = {}
ARGS = argparse.Namespace(threads=1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="*", default=["96x128", "180x240"],
                   help="HxW of the side-by-side tables (none given: only the levers table)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--levers", default="96x128", help="size of the levers table ('none' to skip)")
    p.add_argument("--compile", action="store_true", help="also measure a torch.compile'd teacher (slow to compile)")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: one step's peak memory, in a child process
    p.add_argument("--step-time-of", help=argparse.SUPPRESS)  # internal: one step's time, in a child process
    p.add_argument("--glibc-default-allocator", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    ARGS.threads = args.threads
    torch.set_num_threads(args.threads)
    if not args.glibc_default_allocator:
        retain_freed_memory()  # as `segkd train` does on CPU
    if args.step_time_of:
        h, w = map(int, args.sizes[0].split("x"))
        steps, _ = build_steps(h, w, only=args.step_time_of)
        seconds, faults = [], []
        for r in range(args.warmup + args.repeats):
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            steps[args.step_time_of]()
            if r >= args.warmup:
                seconds.append(time.perf_counter() - t0)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        print(statistics.median(seconds), statistics.median(faults))
        return
    if args.memory_of:
        h, w = map(int, args.sizes[0].split("x"))
        steps, _ = build_steps(h, w, only=args.memory_of)
        print(peak_memory_mib(steps[args.memory_of]))
        return
    PEAK["fp32"] = matmul_peak(torch.float32)
    PEAK["bf16"] = matmul_peak(torch.bfloat16)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s), "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; median of {args.repeats} after "
          f"{args.warmup} warm-up; matmul peak fp32 {PEAK['fp32']:.1f} GFLOP/s, bf16 {PEAK['bf16']:.1f} GFLOP/s")
    for size in args.sizes:
        h, w = map(int, size.split("x"))
        bench_size(h, w, args.warmup, args.repeats)
    if args.levers != "none":
        h, w = map(int, args.levers.split("x"))
        bench_levers(h, w, args.warmup, args.repeats, args.compile)


if __name__ == "__main__":
    main()
