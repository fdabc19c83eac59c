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
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="96x128 only, 2 repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see above)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per cell after 1 warm-up step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
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
