"""Does reduced precision cost accuracy? The same short schedule in fp32 and bf16, over seeds.

Trains the B0 baseline of params.yaml (synthetic data, fold 0) with `segkd train`'s code for each seed in
fp32 and in bf16 autocast, then prints mIoU per seed, the mean and std (n-1) per precision and a paired
t-test over seeds (statsmodels/scipy). "Same within seed noise" means the paired difference's 95%
interval contains 0 and is narrow against the seed-to-seed spread. Runs without MLflow, in a temporary
folder. On CPUs without native bf16 (AVX2 only) a bf16 run takes about ten times longer than fp32.

    .venv/bin/python benchmarks/precision_parity.py [--iterations 120] [--seeds 0 1 2] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from scipy import stats

from segkd.config import Study, validate
from segkd.data.folds import split
from segkd.data.prepare import prepare
from segkd.engine.train import train


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--iterations", type=int, default=120)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = p.parse_args(argv)
    study = Study(validate(yaml.safe_load(Path(args.params).read_text())))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepared = prepare(study.dataset, tmp / "prepared")
        f = study.params["folds"]
        split(Path(prepared), tmp / "folds.json", strategy=f["strategy"], k=f["k"], guard=f["guard"])
        results = {}
        for precision in args.precisions:
            for seed in args.seeds:
                spec = copy.deepcopy(study.run_spec("student", method="baseline", seed=seed, fold=0))
                spec.update(prepared=str(prepared), folds_file=str(tmp / "folds.json"),
                            tracking={"enabled": False}, iterations=args.iterations)
                spec["train"].update(precision=precision, threads=1)
                start = time.perf_counter()
                metrics = train(spec, tmp / f"{precision}-seed{seed}")
                results[precision, seed] = 100 * metrics["mIoU"]
                print(f"{precision} seed {seed}: mIoU {results[precision, seed]:.2f} ({time.perf_counter() - start:.0f} s)",
                      flush=True)
    print(f"\nB0 baseline, {study.dataset['name']} {study.dataset['height']}x{study.dataset['width']}, "
          f"fold 0, {args.iterations} iterations\n")
    print("| precision | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | std |")
    print("|---|" + "---:|" * (len(args.seeds) + 2))
    for precision in args.precisions:
        values = [results[precision, s] for s in args.seeds]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"| {precision} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {statistics.mean(values):.3f} | {sd:.3f} |")
    if len(args.precisions) == 2 and len(args.seeds) > 1:
        a, b = ([results[pr, s] for s in args.seeds] for pr in args.precisions)
        diff = [y - x for x, y in zip(a, b)]
        test = stats.ttest_rel(b, a)
        ci = test.confidence_interval(0.95)
        print(f"\n{args.precisions[1]} - {args.precisions[0]}: mean {statistics.mean(diff):+.3f} mIoU, "
              f"95% CI [{ci.low:+.3f}, {ci.high:+.3f}], paired t p = {test.pvalue:.3f}")


if __name__ == "__main__":
    main()
