"""Distillation training step: segkd against the transformers-based equivalent, side by side in one run.

Measures images/s and peak memory of
  (a) the plain B0 student step (segkd, and transformers for reference),
  (b) the B0 student + B2 teacher step of each method as `segkd train` runs it (`step_losses`, the
      optimizer from `create_optimizer`), and
  (c) the same distillation step written on `transformers.SegformerForSemanticSegmentation` in fp32, the
      way a user would: teacher under no_grad, KD on the logits, `freq` with a forward hook on the decode
      head's activation, torch.fft masks and a full-resolution 1x1 adapter, plain torch AdamW;
at each size, batch 8. Steps of all variants alternate within every repeat, so load from other processes
hits all alike; medians after warm-up.

It also counts FLOPs per step (torch.utils.flop_counter) and prints achieved GFLOP/s of the student step,
the teacher forward and the whole `freq` step against this machine's matmul peak, measured here too;
the teacher forward's share of step time against its FLOP share, and its FLOPs and time beside the
transformers teacher forward's; and the `freq` loss's share of the
step (the term's forward + backward on real decoder features, timed alone).

Levers (--levers HxW): the shipped `freq` step with one knob turned each. Every lever step runs right
after a shipped step and the table gives the median of those paired ratios, which stays honest when
the machine's speed drifts during the run (it does on shared CPUs, by 10-15% within minutes).

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

from segkd.distill.registry import build_distillation
from segkd.engine.allocator import retain_freed_memory
from segkd.engine.evaluate import autocast
from segkd.engine.optim import create_optimizer
from segkd.engine.train import step_losses
from segkd.models import create_model

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
}


# ---------------------------------------------------------------- segkd steps (as `segkd train` runs them)
def segkd_step(student, teacher, terms, x, y, precision="fp32"):
    distill = build_distillation(terms, student.feature_dims, teacher.feature_dims) if terms else None
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
        k = torch.arange(n)
        return (torch.minimum(k, n - k) <= int(ratio * n / 2)).float()
    mask = axis(h)[:, None] * axis(w)[None, :]
    return torch.fft.ifft2(torch.fft.fft2(x) * mask).real


def hf_step(student, teacher, method, x, y):
    s_feat, t_feat = decoder_feature(student), decoder_feature(teacher)
    adapter = torch.nn.Conv2d(256, 768, 1) if method == "freq" else None
    params = list(student.parameters()) + (list(adapter.parameters()) if adapter else [])
    optimizer = torch.optim.AdamW(params, lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])

    def step():
        out = student(pixel_values=x, labels=y)  # upsamples the logits, cross-entropy with ignore 255
        loss = out.loss
        if method is not None:
            with torch.no_grad():
                t_logits = teacher(pixel_values=x).logits
            if method == "kd":
                loss = loss + 0.01 * F.kl_div(F.log_softmax(out.logits, 1), F.softmax(t_logits, 1),
                                              reduction="none").sum(1).mean()
            else:
                s, t = adapter(s_feat["x"]), t_feat["x"]
                low_s = fft_low(s, 0.2)
                loss = loss + 0.1 * (F.mse_loss(low_s, fft_low(t, 0.2)) + (s - low_s).abs().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


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
    steps, probes = build_steps(h, w)
    memory = {k: memory_in_child(k, h, w) for k in steps}
    timers = {**steps, "teacher forward alone": probes["teacher_forward"], "freq term": probes["freq_term"],
              "transformers teacher forward alone": probes["hf_teacher_forward"]}
    med = alternate(timers, warmup, repeats)
    teacher_in_step = statistics.median(probes["teacher in step"][-repeats:])

    print(f"\n### {h}x{w}, batch {BATCH}\n")
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
