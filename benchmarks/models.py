"""Training-step throughput of segkd's SegFormer against Hugging Face's, side by side.

One step = forward + cross-entropy on the 1/4-resolution logits + backward, in train mode, batch 8.
Both models hold the same weights (the transformers model's, imported by segkd.models.weights).
segkd runs as the training loop runs it (channels_last model and input); transformers as shipped.
Steps of the two implementations alternate, so that load from other processes hits both alike;
the table reports the median over repeats after warm-up.

Defaults to one torch thread: on a small machine shared with other jobs, OpenMP threads waiting on
each other at every barrier made 2-thread timings an order of magnitude slower and erratic. On a CPU
without native bf16 (no AVX512-BF16/AMX) bf16 matmuls and depthwise convs fall back to slow kernels, so
there bf16 steps are far slower than fp32 for both implementations.

    .venv/bin/python benchmarks/models.py [--quick] [--threads N]

Two sections instead of that table, each timing two ways of computing the same numbers in the same
process, alternating, on the B0 training step (96x128, batch 8, channels_last, forward + backward):
  --stages  the encoder through timm's public `forward_intermediates` (what segkd runs) against a
            hand-written stage loop over timm's modules that keeps the (B, H, W, C) token layout
            between stages (what segkd ran before; it skips timm's NCHW copy per stage);
  --head    the head's folded fast path (the default) against its reference branch, for the B0
            student's training step and the B2 teacher's frozen forward.
Each prints the CPU (lscpu's model name, torch's CPU capability) and the ratio.

    .venv/bin/python benchmarks/models.py --stages [--repeats 11]
    .venv/bin/python benchmarks/models.py --head
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import tempfile
import time
import types

import timm
import torch
import torch.nn.functional as F
import transformers

from segkd.models import create_model

BATCH = 8
HF_CONFIGS = {
    "segformer_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "segformer_b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}


def build_pair(name: str):
    """(segkd model, transformers model) with identical weights, both in train mode."""
    config = transformers.SegformerConfig(num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
                                          num_labels=11, **HF_CONFIGS[name])
    hf = transformers.SegformerForSemanticSegmentation(config)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = create_model(name, num_classes=11, pretrained=tmp)
    return ours.to(memory_format=torch.channels_last).train(), hf.train()


def make_step(model, images, labels, precision: str, segkd: bool):
    """A closure running one training step (gradients zeroed, not applied)."""
    if segkd:
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images).logits if segkd else model(pixel_values=images).logits
        F.cross_entropy(logits.float(), labels).backward()

    return step


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(name: str, size: tuple[int, int], precision: str, warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    ours, hf = build_pair(name)
    images = torch.randn(BATCH, 3, *size)
    labels = torch.randint(0, 11, (BATCH, size[0] // 4, size[1] // 4))
    steps = {"segkd": make_step(ours, images, labels, precision, True),
             "transformers": make_step(hf, images, labels, precision, False)}
    times = {impl: [] for impl in steps}
    for i in range(warmup + repeats):
        for impl, step in steps.items():
            elapsed = timed(step)
            if i >= warmup:
                times[impl].append(elapsed)
    return {impl: BATCH / statistics.median(t) for impl, t in times.items()}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown CPU"


def alternate(steps: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each step over `repeats` rounds after `warmup`; within a round every step runs
    once, in an order reversed every other round (so neither gains from always running first)."""
    times = {k: [] for k in steps}
    for i in range(warmup + repeats):
        for k in (list(steps) if i % 2 == 0 else list(steps)[::-1]):
            elapsed = timed(steps[k])
            if i >= warmup:
                times[k].append(elapsed)
    return times


def paired_ratio(times: dict, num: str, den: str) -> float:
    """Median over rounds of num's time / den's time in the same round: steady when the machine's speed
    drifts during the run (shared CPUs), where the ratio of two medians is not."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def token_layout_stages(self, x):
    """The stage loop segkd ran before it called timm's `forward_intermediates`: timm's modules, but the
    (B, H, W, C) token layout kept between stages (timm's stage forward ends with an NCHW copy), and
    each stage map returned as an NCHW view of it. It reaches into timm's stage internals and skips
    their options (gradient checkpointing)."""
    x = self.encoder.patch_embed(x)  # (B, H, W, C)
    stages = []
    for stage in self.encoder.stages:
        if stage.downsample is not None:
            x = stage.downsample(x)  # NCHW in, (B, H, W, C) out
        batch, height, width, channels = x.shape
        tokens = x.reshape(batch, height * width, channels)
        for block in stage.blocks:
            tokens = block(tokens, (height, width))
        tokens = stage.norm(tokens)
        x = tokens.view(batch, height, width, channels).permute(0, 3, 1, 2)
        stages.append(x)
    return stages


def header(what: str, warmup: int, repeats: int) -> None:
    print(f"{what}\nCPU: {cpu_name()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} thread(s); batch {BATCH}, "
          f"median of {repeats} after {warmup} warm-up, steps alternating\n")


def bench_stages(warmup: int, repeats: int, size=(96, 128)) -> None:
    """B0 training step (forward + cross-entropy + backward, channels_last) with the encoder run by timm's
    public API against the token-layout loop; both models hold the same weights."""
    header("Encoder stage loop: timm's forward_intermediates against a token-layout loop", warmup, repeats)
    torch.manual_seed(0)
    public = create_model("segformer_b0", num_classes=11).to(memory_format=torch.channels_last).train()
    loop = copy.deepcopy(public)
    loop.forward_stages = types.MethodType(token_layout_stages, loop)
    images = torch.randn(BATCH, 3, *size)
    labels = torch.randint(0, 11, (BATCH, size[0] // 4, size[1] // 4))
    with torch.no_grad():  # the same numbers (eval mode: no dropout, no batch statistics moved)
        xc = images.contiguous(memory_format=torch.channels_last)
        same = torch.equal(public.eval()(xc).logits, loop.eval()(xc).logits)
    public.train(), loop.train()
    times = alternate({"public": make_step(public, images, labels, "fp32", True),
                       "loop": make_step(loop, images, labels, "fp32", True)}, warmup, repeats)
    print("| encoder | B0 step fwd+bwd, median ms | img/s |")
    print("|---|---:|---:|")
    for key, label in (("public", "timm forward_intermediates (segkd)"), ("loop", "token-layout stage loop")):
        med = statistics.median(times[key])
        print(f"| {label} | {1000 * med:.1f} | {BATCH / med:.1f} |")
    ratio = paired_ratio(times, "loop", "public")
    print(f"\n{size[0]}x{size[1]}: loop / public step time = {ratio:.3f} (median of per-round ratios); the loop "
          f"saves {100 * (1 - ratio):+.1f}% of the training step (threshold for keeping it: 5%); "
          f"eval logits bit-identical: {same}")


def bench_head(warmup: int, repeats: int, size=(96, 128)) -> None:
    """The head alone, fast path against reference: B0 student (train mode, forward + backward of the
    head) and B2 teacher (eval, frozen, inference mode: the fold cached)."""
    header("Decode head: folded fast path against the reference branch", warmup, repeats)
    print("| head | pass | fast, median ms | reference, median ms | reference / fast (paired) |")
    print("|---|---|---:|---:|---:|")
    for name, frozen in (("segformer_b0", False), ("segformer_b2", True)):
        torch.manual_seed(0)
        model = create_model(name, num_classes=11).to(memory_format=torch.channels_last)
        x = torch.randn(BATCH, 3, *size).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            stages = model.eval().forward_stages(x)
        heads = {"fast": model.decode_head}
        heads["reference"] = copy.deepcopy(model.decode_head)
        heads["reference"].fused = False
        steps = {}
        for key, head in heads.items():
            if frozen:
                head.eval().requires_grad_(False)
                def forward(head=head):
                    with torch.inference_mode():
                        head(stages)
                steps[key] = forward
            else:
                head.train()
                leaves = [s.detach().requires_grad_() for s in stages]

                def step(head=head, leaves=leaves):
                    head.zero_grad(set_to_none=True)
                    decoder, logits = head(leaves)
                    logits.square().mean().backward()
                steps[key] = step
        times = alternate(steps, warmup, repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        what = "frozen teacher forward" if frozen else "training fwd+bwd"
        print(f"| {name} | {what}, {size[0]}x{size[1]} | {1000 * med['fast']:.1f} | "
              f"{1000 * med['reference']:.1f} | {paired_ratio(times, 'reference', 'fast'):.2f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="96x128 only, 2 repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see above)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per cell after warm-up (default 3; 11 for --stages / --head)")
    parser.add_argument("--stages", action="store_true", help="only the encoder stage-loop comparison")
    parser.add_argument("--head", action="store_true", help="only the fast path / reference head comparison")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.stages or args.head:
        repeats = args.repeats or 11
        if args.stages:
            bench_stages(2, repeats)
        if args.head:
            bench_head(2, repeats)
        return
    args.repeats = args.repeats or 3
    sizes = [(96, 128)] if args.quick else [(96, 128), (192, 256)]
    warmup, repeats = 1, (2 if args.quick else args.repeats)

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"batch {BATCH}, forward+backward, median of {repeats} after {warmup} warm-up\n")
    print("| model | input | precision | segkd img/s | transformers img/s | segkd / transformers |")
    print("|---|---|---|---:|---:|---:|")
    for name in HF_CONFIGS:
        for size in sizes:
            for precision in ("fp32", "bf16"):
                rate = measure(name, size, precision, warmup, repeats)
                print(f"| {name} | {size[0]}x{size[1]} | {precision} | {rate['segkd']:.1f} | "
                      f"{rate['transformers']:.1f} | {rate['segkd'] / rate['transformers']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
