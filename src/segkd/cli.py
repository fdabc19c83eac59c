"""`segkd` command line: one subcommand per workflow step (prepare, split, train, cohort, evaluate, probe,
aggregate, bands), and two about a whole study (status, estimate).

Each subcommand imports its implementation lazily, so `segkd --help` stays fast and a step pays
only for what it uses. Errors in user input (bad params, missing files) print one clear line and
exit with status 2; they never leave partial output behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_PARAMS = "params.yaml"


def _json_option(text: str, option: str, *, from_file: bool = False, kind: type = dict):
    """The JSON object (or, with `kind=list`, list) an option holds (or, with from_file, the file an
    ``@path`` value names).

    Bad JSON is the user's typo, so it is one line naming the option and the place, not a traceback.
    """
    from segkd.errors import UserError

    where = option
    if from_file and text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{option}: file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{option}: cannot read {path} ({err})") from None
        where = f"{option} {path}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg}: line {err.lineno} column {err.colno})") from None
    if not isinstance(value, kind):
        raise UserError(f"{where}: expected a JSON {'object' if kind is dict else 'list'}, got {type(value).__name__}")
    return value


def _study(args, check_methods: bool = True):
    """The study from --params: a YAML file, or inline JSON (what the workflow passes)."""
    from segkd.config import Study, load_study, validate

    if args.params.lstrip().startswith("{"):
        return Study(validate(_json_option(args.params, "--params"), check_methods=check_methods))
    return load_study(args.params, check_methods=check_methods)


def _section(args, name: str) -> dict:
    """One section of the study: inline JSON from --<name>, else read from --params."""
    inline = getattr(args, name)
    return _json_option(inline, f"--{name}") if inline else _study(args).params[name]


def cmd_prepare(args) -> None:
    from segkd import layout
    from segkd.data.prepare import prepare

    dataset = _section(args, "dataset")
    out = Path(args.out) if args.out else layout.prepared_dir(dataset["name"])
    prepare(dataset, out, force=args.force)


def cmd_split(args) -> None:
    from segkd import layout
    from segkd.data.folds import split

    name = _section(args, "dataset")["name"]
    prepared = Path(args.prepared) if args.prepared else layout.prepared_dir(name)
    out = Path(args.out) if args.out else layout.folds_file(name)
    f = _section(args, "folds")
    split(prepared, out, strategy=f["strategy"], k=f.get("k", 2), guard=f.get("guard", 2))


def _spec_from_args(args) -> dict:
    """The run spec of --spec, or the one the study in --params gives; validated either way, so a
    spec that cannot run stops here with its key named instead of failing inside the job."""
    from segkd.config import validate_spec

    if args.spec:
        return validate_spec(_json_option(args.spec, "--spec", from_file=True), source="--spec")
    study = _study(args)
    if args.role == "teacher":
        spec = study.run_spec("teacher", teacher=args.teacher, fold=args.fold)
    else:
        spec = study.run_spec("student", teacher=args.teacher, method=args.method, seed=args.seed, fold=args.fold)
    return validate_spec(spec)


def _run_dir(spec: dict) -> Path:
    from segkd import layout

    if spec["role"] == "teacher":
        return layout.teacher_dir(spec["model"], spec["fold"])
    return layout.student_dir(spec["teacher"], spec["method"], spec["seed"], spec["fold"])


_GPU_SLOT = None  # the GPU slot this training process holds until it exits (segkd.gpu_slots)


def _training_process(spec: dict, threads: int | None) -> None:
    """Set up this process for training: its GPU slot where the workflow hands out slots (before
    anything initialises CUDA), torch threads and, on CPU, the allocator."""
    global _GPU_SLOT
    from segkd.gpu_slots import pin_this_process

    _GPU_SLOT = pin_this_process(name=f"{spec['role']}:{spec['model']}/{spec['method'] or ''}".rstrip("/"))
    if threads:
        import torch

        torch.set_num_threads(threads)
    from segkd.engine.evaluate import resolve_device

    if resolve_device(spec["train"]["device"]).type == "cpu":
        # A training process keeps freed host memory for the next step (see engine.allocator); it is
        # process-wide, so the process's owner opts in here rather than the library's train().
        from segkd.engine.allocator import retain_freed_memory

        retain_freed_memory()


def cmd_train(args) -> None:
    from segkd.engine.train import train

    spec = _spec_from_args(args)
    _training_process(spec, args.threads)
    train(spec, Path(args.out) if args.out else _run_dir(spec), replace_stale=args.replace_stale)


def _cohort_specs(args) -> list[dict]:
    """The run specs of --specs (a JSON list, or @file), or the cohort the study in --params gives."""
    from segkd.config import validate_spec

    if args.specs:
        specs = _json_option(args.specs, "--specs", from_file=True, kind=list)
        return [validate_spec(spec, source=f"--specs[{i}]") for i, spec in enumerate(specs)]
    study = _study(args)
    methods = args.methods.split(",") if args.methods else list(study.methods)
    return [validate_spec(study.run_spec("student", teacher=args.teacher, method=m, seed=args.seed, fold=args.fold))
            for m in methods]


def cmd_cohort(args) -> None:
    from segkd.engine.train import train_cohort
    from segkd.errors import UserError

    specs = _cohort_specs(args)
    outs = [Path(o) for o in args.out] if args.out else [_run_dir(spec) for spec in specs]
    if len(outs) != len(specs):
        raise UserError(f"--out: {len(outs)} run directories for {len(specs)} runs")
    _training_process(specs[0], args.threads)
    train_cohort(specs, outs, replace_stale=True)


def cmd_evaluate(args) -> None:
    from segkd.engine.evaluate import check_output, evaluate_checkpoint
    from segkd.jsonfiles import write_text

    if args.out:  # before evaluating: a typo in --out must not cost an evaluation
        check_output(args.out, "--out")
    metrics = evaluate_checkpoint(args.checkpoint, fold=args.fold, prepared=args.prepared,
                                  folds_file=args.folds_file, device=args.device)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if args.out:
        write_text(Path(args.out), text + "\n")
    print(text)


def cmd_aggregate(args) -> None:
    from segkd.report.aggregate import aggregate

    study = _study(args, check_methods=False)  # reads the run grid and results; the workflow checks the losses' options
    aggregate(study, runs=Path(args.runs), out=Path(args.out), allow_missing=args.allow_missing,
              exclude_stale=args.exclude_stale, probes=Path(args.probes))


def cmd_bands(args) -> None:
    from segkd.report.band_figure import bands

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(bands(args.run, images=args.images, out=args.out))


def cmd_probe(args) -> None:
    from segkd.probe import main_probe, parse_ratios

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    main_probe(args.run, out=args.out, band=args.band, ratio_mode=args.ratio_mode, tap=args.tap,
               device=args.device, **({"ratios": parse_ratios(args.ratios)} if args.ratios else {}))


def cmd_status(args) -> None:
    from segkd import preflight, status
    from segkd.errors import UserError

    if args.jobs < 1:
        raise UserError(f"--jobs: expected at least 1 parallel job, got {args.jobs}")
    study = _study(args, check_methods=False)  # reads the run grid; the workflow checks the losses' options
    report = status.study_status(study, runs_root=Path(args.runs), logs_root=Path(args.logs), jobs=args.jobs,
                                 problems=preflight.check_study(study))
    print(json.dumps(status.as_json(report), indent=1) if args.json else status.format_text(report, args.all))


def cmd_estimate(args) -> None:
    from segkd import estimate
    from segkd.errors import UserError

    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs: expected at least 1 training job at once, got {args.jobs}")
    if args.steps < 1:
        raise UserError(f"--steps: expected at least 1, got {args.steps}")
    study = _study(args)
    est = estimate.estimate(study, steps=args.steps, warmup=args.warmup, slots=args.jobs,
                            progress=lambda text: print(f"[estimate] {text}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(estimate.as_json(est, study), indent=1))
    else:
        print(estimate.render(est, study, estimate.machine_name()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segkd", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_, desc):
        sp = sub.add_parser(name, help=help_, description=desc)
        sp.add_argument("--params", default=DEFAULT_PARAMS,
                        help="study definition: YAML file or inline JSON (default: %(default)s)")
        sp.set_defaults(func=func)
        return sp

    sp = add("prepare", cmd_prepare, "decode, resize and store the dataset as compact arrays",
             "Read the raw dataset named in params (CamVid or generated synthetic scenes), resize it to "
             "the study resolution and write uint8 arrays plus a manifest (split, sequence, source, "
             "checksum per item) to data/prepared/<dataset>/, so training never decodes images. "
             "Idempotent: an up-to-date output is left alone; the output directory appears atomically.")
    sp.add_argument("--out", help="output directory (default: data/prepared/<dataset>)")
    sp.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    sp.add_argument("--dataset", help="the dataset section as inline JSON (instead of reading --params)")

    sp = add("split", cmd_split, "write the train/test folds of the prepared dataset",
             "Cut the prepared dataset into folds: 'official' (the given train+val / test split) or "
             "'sequence-blocked' (K folds of contiguous frame blocks per sequence, with a guard gap of "
             "dropped frames so no test frame is adjacent to a training frame). Writes "
             "data/folds/<dataset>.json and prints per-fold image counts and class pixel shares.")
    sp.add_argument("--prepared", help="prepared dataset directory (default: data/prepared/<dataset>)")
    sp.add_argument("--out", help="folds file (default: data/folds/<dataset>.json)")
    sp.add_argument("--dataset", help="the dataset section as inline JSON (instead of reading --params)")
    sp.add_argument("--folds", help="the folds section as inline JSON (instead of reading --params)")

    sp = add("train", cmd_train, "train one teacher or student run on one fold, then evaluate it",
             "Train one model on one fold (a teacher, the no-KD baseline, or a student distilled by a "
             "method of the study), evaluate the final model on the held-out fold, and write "
             "checkpoint.pt and metrics.json to the run directory. A partial run resumes from its last "
             "checkpoint. --spec takes the exact run description the workflow passes (JSON or @file).")
    sp.add_argument("--role", choices=["teacher", "student"], default="student")
    sp.add_argument("--teacher", help="teacher model (teacher runs: the model to train)")
    sp.add_argument("--method", default="baseline", help="student method from params (default: baseline)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--fold", type=int, default=0)
    sp.add_argument("--spec", help="run spec as JSON, or @path to a JSON file (overrides the options above)")
    sp.add_argument("--out", help="run directory (default: the study layout under runs/)")
    sp.add_argument("--replace-stale", action="store_true",
                    help="retrain a run directory whose checkpoint has another spec (default: refuse)")
    sp.add_argument("--threads", type=int, help="torch CPU threads (results are bit-reproducible per thread count)")

    sp = add("cohort", cmd_cohort, "train the students of several methods of one teacher, seed and fold together",
             "Train a cohort: the students of the given methods (default: every method of the study) of one "
             "teacher, seed and fold, in one process that draws each batch once and runs the teacher once "
             "per batch (train.share_teacher in the workflow). Each student gets its own run directory, "
             "checkpoint, metrics.json and MLflow run, with exactly the numbers it has when trained alone. "
             "A killed cohort resumes each student from its checkpoint; a student whose finished "
             "checkpoint has the same spec, code and data is evaluated again, not retrained; one of "
             "another spec is retrained.")
    sp.add_argument("--teacher", help="the cohort's teacher")
    sp.add_argument("--methods", help="comma-separated methods of the study (default: all)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--fold", type=int, default=0)
    sp.add_argument("--specs", help="the run specs as a JSON list, or @path to a JSON file (overrides the options above)")
    sp.add_argument("--out", action="append", help="run directory of each run, in order (repeat; default: the "
                                                   "study layout under runs/)")
    sp.add_argument("--threads", type=int, help="torch CPU threads (results are bit-reproducible per thread count)")

    sp = add("evaluate", cmd_evaluate, "evaluate a checkpoint on a fold",
             "Evaluate any checkpoint on the held-out part of any fold: per-class IoU, mIoU, mPA, aAcc.")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--fold", type=int, help="fold to evaluate on (default: the checkpoint's own fold)")
    sp.add_argument("--prepared", help="prepared dataset directory (default: the checkpoint's)")
    sp.add_argument("--folds-file", help="folds file (default: the checkpoint's)")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--out", help="also write the metrics to this JSON file")

    sp = add("aggregate", cmd_aggregate, "collect every run into tables, statistics, plots and a report",
             "Read every metrics.json of the study into results/runs.csv, then write the per-teacher "
             "tables, per-method summaries (mean, std, 95%% t-interval), paired tests against the "
             "baseline, plots and results/report.md.")
    sp.add_argument("--runs", default="runs")
    sp.add_argument("--out", default="results")
    sp.add_argument("--allow-missing", action="store_true", help="report missing runs instead of failing")
    sp.add_argument("--probes", default="results/probe",
                    help="the low-pass probe tables, one per run (default: %(default)s; read when params probe.enabled)")
    sp.add_argument("--exclude-stale", action="store_true",
                    help="report runs trained under another spec than the study's (stale) and leave them out, "
                         "instead of failing")

    sp = add("bands", cmd_bands, "draw a frequency-distilled student's bands against its teacher's",
             "For the first few test images of a student run's fold, draw the teacher's decoder feature and "
             "the student's (through the freq term's adapter) as their first principal component, their low "
             "and high bands, and the band difference maps; save a PNG and log it to the run's MLflow run. "
             "Needs a finished student run whose method has a freq term, and its teacher's checkpoint.")
    sp.add_argument("--run", required=True,
                    help="student run directory (runs/students/<teacher>/<method>/seed<s>/fold<f>)")
    sp.add_argument("--images", type=int, default=3, help="test images shown (default: %(default)s)")
    sp.add_argument("--out", help="PNG file (default: <run>/bands.png)")
    sp.add_argument("--threads", type=int, help="torch CPU threads")

    sp = add("probe", cmd_probe, "evaluate a run with a feature replaced by its low band, then its high band",
             "The low-pass probe: evaluate a finished run (teacher, baseline or student) on its own held-out "
             "fold with the tapped feature (the decoder feature after linear_fuse by default) replaced by its "
             "low band at each ratio, then by its high band, with the freq term's band definitions; write one "
             "row per (band, ratio) with mIoU, mPA and aAcc. With a band that keeps every frequency (box at "
             "ratio 1) the row is the run's own evaluation.")
    sp.add_argument("--run", required=True, help="run directory (runs/teachers/... or runs/students/...)")
    sp.add_argument("--ratios", help="comma-separated cut-offs in [0, 1] (default: 0.02,0.05,0.1,0.2,0.3,0.5,0.75,1.0)")
    sp.add_argument("--band", default="box", help="box | radial | gaussian | butterworth | dct (default: %(default)s)")
    sp.add_argument("--ratio-mode", default="axis", help="axis | area (default: %(default)s)")
    sp.add_argument("--tap", default="decoder", help="decoder | stage1..stage4 | logits (default: %(default)s)")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--out", help="CSV file (default: <run>/probe.csv)")
    sp.add_argument("--threads", type=int, help="torch CPU threads (the run's own for bit-identical numbers)")

    sp = add("status", cmd_status, "where the study's runs stand, and how long the rest takes",
             "List the study's runs (the workflow's run grid) by state: done, stale (trained under another "
             "spec, will re-train), running, interrupted (resumable from partial.pt), failed (the log's last "
             "error shown) or missing; count them per teacher and method; estimate the compute time left from "
             "the speed of finished runs. Reads metrics.json, progress.json and log tails, never a checkpoint. "
             "First lists the problems (dataset root, pretrained files) that would make every job fail.")
    sp.add_argument("--runs", default="runs", help="run tree (default: %(default)s)")
    sp.add_argument("--logs", default="logs", help="job logs (default: %(default)s)")
    sp.add_argument("--jobs", type=int, default=1,
                    help="parallel jobs for the wall-time estimate: compute time / jobs (default: %(default)s)")
    sp.add_argument("--all", action="store_true", help="list every run, not only those that are not done")
    sp.add_argument("--json", action="store_true", help="everything as JSON, for scripts")

    sp = add("estimate", cmd_estimate, "what the study costs on this machine, before it is launched",
             "Time a few training steps of each job kind of the study (each teacher, the baseline, each "
             "method's student with each teacher) on this machine's device, at the study's sizes, and a "
             "job's fixed cost (start, imports, MLflow), evaluation and checkpoint writes; print per-kind "
             "step and job times, the study's compute hours and its wall time with the workflow's "
             "parallelism (one training job per core on the CPU; --jobs for a GPU profile: GPUs x jobs "
             "per GPU).")
    sp.add_argument("--configfile", dest="params", help="the study file (as snakemake --configfile; same as --params)")
    sp.add_argument("--jobs", type=int, help="training jobs at once (default: one per core on the CPU, 1 on a GPU)")
    sp.add_argument("--steps", type=int, default=5, help="timed steps per job kind (default: %(default)s)")
    sp.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default: %(default)s)")
    sp.add_argument("--json", action="store_true", help="the estimate as JSON, for scripts")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from segkd.errors import TrainingDiverged, UserError

    try:
        args.func(args)
    except UserError as err:
        print(f"segkd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"segkd {args.command}: training diverged: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
