# The study (params.yaml or a --configfile), its validation, its run grid and the code fingerprint of
# each job kind.
#
# `snakemake --lint` reports two lints, 16 in all, that are kept on purpose (tests/test_workflow.py
# counts them, so a new lint fails the suite):
# - "Specify a conda environment or container for each rule" (8 rules): the environment is the
#   project's own (.venv from requirements.lock, `make`), and every job runs with the interpreter that
#   runs Snakemake (SEGKD below); a conda or container directive would be a second, drifting copy.
# - "Shell command directly uses variable SEGKD from outside of the rule" (8 rules): as a params entry
#   the interpreter's path would be a job parameter, and moving or re-creating the environment would
#   re-run every job of a days-long study (Snakemake's params trigger).
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from segkd import fingerprint, gpu_slots, layout, preflight
from segkd.config import Study, spec_json
from segkd.errors import UserError
from segkd.data import prepare as prepared_files
from segkd.config import validate as validate_study
from segkd.runs import expected_runs
from segkd.sweep import NAME_PATTERN
from segkd.terms import freq_term


def study_files_on_the_command_line():
    """The --configfile paths. A study file is a whole study: it replaces params.yaml rather than being
    merged into it, as Snakemake's `configfile:` directive would. Snakemake has no public accessor
    for these paths (`config` is already their merge), so this reads Workflow's attribute, here
    alone; every workflow test fails at once (AttributeError) if Snakemake renames it."""
    return workflow.overwrite_configfiles


if not study_files_on_the_command_line():
    configfile: "params.yaml"

# Jobs run segkd with the interpreter running Snakemake, not the first `segkd` on PATH: so
# `.venv/bin/snakemake` works in a shell without the environment activated, and no other install
# of segkd can stand in for this checkout's.
SEGKD = f"{shlex.quote(sys.executable)} -m segkd"

# A GPU workstation (workflow/profiles/gpu): `gpus` and `jobs_per_gpu` are the machine's, not the
# study's (they change no number), so they leave the config before it is read as the study. Training
# jobs inherit the slots through the environment and each claims one (segkd.gpu_slots).
GPU_KEYS = ("gpus", "jobs_per_gpu")
if any(key in config for key in GPU_KEYS):
    if "gpus" not in config:
        raise WorkflowError("jobs_per_gpu is set but gpus is not: name the GPUs (--config gpus=2)")
    try:
        os.environ.update(gpu_slots.environment(config.pop("gpus"), config.pop("jobs_per_gpu", 1),
                                                layout.GPU_SLOTS.resolve(),
                                                visible=os.environ.get("CUDA_VISIBLE_DEVICES")))
    except UserError as err:
        raise WorkflowError(str(err)) from None

# segkd's own check first: its errors name the key (train.lr: ...); then Snakemake's, on the same schema.
# The methods' loss options are checked once per change of them (config.check_method_terms's memo),
# so that re-planning an unchanged study does not import torch.
STUDY = Study(validate_study(config, memo=layout.WORKFLOW_MEMO / "checked-terms"))
validate(config, "../schemas/params.schema.yaml")
DATASET = STUDY.dataset["name"]
PREPARED = str(layout.prepared_dir(DATASET))
FOLDS_FILE = str(layout.folds_file(DATASET))

# Every file the study names (the dataset root, each pretrained checkpoint, loaded into its model)
# is checked before any job is planned, also by a dry run: one line per problem, not hours in.
PROBLEMS = preflight.check_study(STUDY, prepared=Path(PREPARED, prepared_files.MANIFEST).exists())
if PROBLEMS:
    raise WorkflowError(f"the study names {len(PROBLEMS)} missing or unusable file(s):\n  " + "\n  ".join(PROBLEMS))


wildcard_constraints:
    teacher=r"segformer_b[0-5]",
    fold=r"\d+",
    seed=r"\d+",
    method=NAME_PATTERN,  # method and grid variant names (freq-high=kd-ratio=0.1)


# Each job depends on a fingerprint of the code that can change its numbers (segkd.fingerprint), as a
# parameter: a touched, re-checked-out, reformatted or commented file re-runs nothing, and CLI wording,
# tracking and plots are not training inputs. The workflow's own checkout is hashed: its code is what
# a user edits.
CODE = fingerprint.job_fingerprints(Path(workflow.basedir) / "src" / "segkd")
RUNS = expected_runs(STUDY)  # the study's run grid, shared with `segkd aggregate` and `segkd status`
# Run directories as wildcard patterns, from segkd.layout (the one place paths are spelt).
TEACHER_RUN = str(layout.teacher_dir("{teacher}", "{fold}"))
BASELINE_RUN = str(layout.student_dir(None, "baseline", "{seed}", "{fold}"))
STUDENT_RUN = str(layout.student_dir("{teacher}", "{method}", "{seed}", "{fold}"))


def teacher_dir(teacher, fold):
    return str(layout.teacher_dir(teacher, int(fold)))


def student_dir(teacher, method, seed, fold):
    return str(layout.student_dir(None if teacher == "none" else teacher, method, int(seed), int(fold)))


def run_log(run_dir):
    return str(layout.log_file(run_dir))


def run_files(kind=None, name=layout.METRICS):
    """`name` in the run directory of every run of the study (of one job kind: teacher, baseline, student)."""
    return [str(run.dir / name) for run in RUNS if kind is None or run.kind in kind]


def cohort_specs(teacher, seed, fold):
    """The run specs of a cohort job (train.share_teacher): every method's student of a (teacher, seed, fold)."""
    return [STUDY.run_spec("student", teacher=teacher, method=m, seed=int(seed), fold=int(fold)) for m in STUDY.methods]


def tracking_uri():
    return STUDY.params["tracking"]["uri"] or ""
