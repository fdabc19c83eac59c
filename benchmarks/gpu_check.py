"""GPU check: the smoke study on the GPU, the training step's speed and memory at the study's size, and
bf16 against fp32 on a short run. One prepared script, for a machine with a GPU lent for minutes.

1. Smoke study (``--smoke``): studies/smoke.yaml with ``train.device: cuda``, through Snakemake in a
   copy of the project, to the end (report included): every job kind runs on the device.
2. Steps at HxW (default 360x480, CamVid's), batch 8, in bf16 and fp32: images/s and peak memory of
   the plain B0 step and of the kd, at, sp and freq steps with each teacher (B2, B4), as `segkd train`
   runs them (`step_losses`, `create_optimizer`; channels-last, teacher under inference mode); and the
   transformers-based step computing the same losses (the plain, kd and freq steps of
   benchmarks/train_step.py, fp32 as a user would write it) for reference. Steps of a table row's
   variants alternate, medians after warm-up; on CUDA every timed step ends in a synchronize.
3. Compile (``--compile``): the B0 + B2 freq step with the student and the teacher under
   torch.compile (train.compile), its compile time (the first steps) and its speed beside eager.
4. Parity: a B0 baseline trained on the synthetic scenes for ``--parity-iterations`` steps in fp32
   and in bf16 from the same seed; their mIoU side by side.

    .venv/bin/python benchmarks/gpu_check.py                        # on the GPU, everything
    .venv/bin/python benchmarks/gpu_check.py --device cpu --size 32x48 --batch 2 --repeats 1 \
        --teachers segformer_b2 --parity-iterations 2               # the script itself, on a CPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from train_step import METHODS, hf_model, hf_step, segkd_step  # noqa: E402

from segkd.engine.evaluate import resolve_device  # noqa: E402
from segkd.models import create_model  # noqa: E402

HF_NAMES = {"segformer_b0": "b0", "segformer_b2": "b2", "segformer_b4": "b4"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(median seconds per call, peak MiB of the device during the calls) of each fn, calls alternating."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    peaks = {k: float("nan") for k in fns}
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peaks[k] = max(0.0 if peaks[k] != peaks[k] else peaks[k],
                               torch.cuda.max_memory_allocated(device) / 2**20)
    return {k: (sorted(v)[len(v) // 2], peaks[k]) for k, v in times.items()}


def batch(h: int, w: int, n: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, h, w, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 11, (n, h, w), generator=g).to(device)
    return x, y


def segkd_model(name: str, device: torch.device, teacher: bool = False):
    model = create_model(name, num_classes=11, drop_path_rate=0.0 if teacher else 0.1)
    model = model.to(device).to(memory_format=torch.channels_last)
    return model.eval().requires_grad_(False) if teacher else model.train()


def steps_table(args, device: torch.device) -> list[dict]:
    h, w = args.size
    x, y = batch(h, w, args.batch, device)
    rows = []
    for teacher_name in args.teachers:
        teacher = segkd_model(teacher_name, device, teacher=True)
        for precision in ("bf16", "fp32"):
            fns = {"plain B0": segkd_step(segkd_model("segformer_b0", device), teacher, {}, x, y, precision)}
            for method, terms in METHODS.items():
                fns[method] = segkd_step(segkd_model("segformer_b0", device), teacher, terms, x, y, precision)
            for name, (s, peak) in timed(fns, device, args.warmup, args.repeats).items():
                rows.append({"teacher": teacher_name, "step": name, "impl": "segkd", "precision": precision,
                             "images_per_s": args.batch / s, "peak_mib": peak})
        del teacher
        if args.reference:
            rows += reference_rows(args, device, teacher_name, x, y)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def reference_rows(args, device, teacher_name, x, y) -> list[dict]:
    """The transformers-based steps (train_step.py's), fp32, with this teacher."""
    hf_teacher = hf_model(HF_NAMES[teacher_name]).to(device).eval().requires_grad_(False)
    fns = {}
    for method in (None, "kd", "freq"):
        step = hf_step(hf_model("b0").to(device).train(), hf_teacher, method, x.contiguous(), y)
        fns["plain B0" if method is None else method] = step
    return [{"teacher": teacher_name, "step": name, "impl": "transformers", "precision": "fp32",
             "images_per_s": args.batch / s, "peak_mib": peak}
            for name, (s, peak) in timed(fns, device, args.warmup, args.repeats).items()]


def compile_rows(args, device: torch.device) -> list[dict]:
    """The B0 + B2 freq step eager and under torch.compile (student and teacher), bf16."""
    h, w = args.size
    x, y = batch(h, w, args.batch, device)
    out = []
    for compiled in (False, True):
        student = segkd_model("segformer_b0", device)
        teacher = segkd_model("segformer_b2", device, teacher=True)
        if compiled:
            student.compile()
            teacher.compile()
        step = segkd_step(student, teacher, METHODS["freq"], x, y, "bf16")
        sync(device)
        t0 = time.perf_counter()
        step()
        step()
        sync(device)
        first = time.perf_counter() - t0
        (s, peak), = timed({"freq": step}, device, args.warmup, args.repeats).values()
        out.append({"compiled": compiled, "first_two_steps_s": first, "images_per_s": args.batch / s, "peak_mib": peak})
    return out


def parity(args, device: torch.device) -> dict:
    """mIoU of a B0 baseline trained for a few steps in fp32 and in bf16 (same seed, same data)."""
    from segkd.config import Study, load_study
    from segkd.data.folds import split
    from segkd.data.prepare import prepare
    from segkd.engine.train import train

    study = load_study(REPO / "params.yaml")
    params = json.loads(json.dumps(study.params))
    params["tracking"]["enabled"] = False
    params["train"]["device"] = device.type
    params["train"]["iterations"]["student"] = args.parity_iterations
    params["train"]["checkpoint_every"] = max(args.parity_iterations, 1)
    params["train"]["log_every"] = max(args.parity_iterations // 4, 1)
    result = {}
    with tempfile.TemporaryDirectory() as d:
        prepared, folds = Path(d) / "prepared", Path(d) / "folds.json"
        prepare(params["dataset"], prepared)
        f = params["folds"]
        split(prepared, folds, strategy=f["strategy"], k=f["k"], guard=f["guard"])
        for precision in ("fp32", "bf16"):
            params["train"]["precision"] = precision
            spec = Study(params).run_spec("student", method="baseline", seed=0, fold=0)
            spec.update(prepared=str(prepared), folds_file=str(folds))
            metrics = train(spec, Path(d) / precision)
            result[precision] = {"mIoU": metrics["mIoU"], "images_per_s": metrics["images_per_s"]}
    result["difference_points"] = 100 * (result["bf16"]["mIoU"] - result["fp32"]["mIoU"])
    return result


def smoke(device: torch.device) -> dict:
    """The smoke study through Snakemake on `device`, in a copy of the project."""
    import yaml

    with tempfile.TemporaryDirectory() as d:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.split()
        for name in files:
            if (REPO / name).is_file():
                (Path(d) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, Path(d) / name)
        study = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
        study["train"]["device"] = device.type
        (Path(d) / "smoke_device.yaml").write_text(yaml.safe_dump(study))
        t0 = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", "4", "--configfile",
                               "smoke_device.yaml"], cwd=d, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        runs = sorted(Path(d, "runs").rglob("metrics.json"))
        devices = {json.loads(p.read_text())["device"] for p in runs}
        ok = proc.returncode == 0 and (Path(d) / "results" / "report.md").is_file()
        return {"ok": ok, "wall_s": wall, "runs": len(runs), "devices": sorted(devices),
                "log_tail": "" if ok else proc.stderr[-3000:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="360x480", type=lambda s: tuple(int(v) for v in s.split("x")))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--teachers", nargs="+", default=["segformer_b2", "segformer_b4"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--parity-iterations", type=int, default=200)
    p.add_argument("--smoke", action="store_true", help="also run the smoke study through Snakemake on the device")
    p.add_argument("--compile", action="store_true", help="also time the freq step under torch.compile")
    p.add_argument("--no-reference", dest="reference", action="store_false", help="skip the transformers steps")
    p.add_argument("--json", help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    print(f"# GPU check on {name}, torch {torch.__version__}, {args.size[0]}x{args.size[1]}, batch {args.batch}")
    report: dict = {"device": name, "size": args.size, "batch": args.batch}
    if args.smoke:
        report["smoke"] = smoke(device)
        print(f"smoke study: {'ok' if report['smoke']['ok'] else 'FAILED'}, {report['smoke']['runs']} runs on "
              f"{report['smoke']['devices']}, {report['smoke']['wall_s']:.0f} s\n{report['smoke']['log_tail']}")
    report["steps"] = steps_table(args, device)
    print(f"\n{'teacher':14} {'step':9} {'impl':13} {'prec':5} {'img/s':>8} {'peak MiB':>9}")
    for r in report["steps"]:
        print(f"{r['teacher']:14} {r['step']:9} {r['impl']:13} {r['precision']:5} {r['images_per_s']:8.1f} "
              f"{r['peak_mib']:9.0f}")
    if args.compile:
        report["compile"] = compile_rows(args, device)
        for r in report["compile"]:
            print(f"freq step B0+B2 bf16 {'compiled' if r['compiled'] else 'eager   '}: {r['images_per_s']:.1f} img/s, "
                  f"first two steps {r['first_two_steps_s']:.1f} s, peak {r['peak_mib']:.0f} MiB")
    if args.parity_iterations:
        report["parity"] = parity(args, device)
        par = report["parity"]
        print(f"\nparity, B0 baseline, {args.parity_iterations} steps: fp32 mIoU {100 * par['fp32']['mIoU']:.2f}, "
              f"bf16 {100 * par['bf16']['mIoU']:.2f} ({par['difference_points']:+.2f} points)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    ok = report.get("smoke", {"ok": True})["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
