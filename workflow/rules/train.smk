# Training: a teacher per (teacher, fold); a student per (teacher, method, seed, fold), each variant of
# a method grid being a method of its own (segkd.sweep), or with train.share_teacher a cohort of them
# per (teacher, seed, fold); the no-KD baseline per (seed, fold). Each
# job's hyperparameters are its run spec, passed through params: so that changing one method's weight
# re-runs only that method's jobs, and growing a grid runs only the new variants.

TRAIN_INPUT = dict(
    manifest=rules.prepare.output.manifest,
    folds=FOLDS_FILE,
)
SHARE_TEACHER = STUDY.params["train"]["share_teacher"]


TRAIN_CMD = (  # paths quoted: variant names hold '=' (freq-high=kd-ratio=0.1)
    "{SEGKD} train --spec {params.spec:q} --out {params.out:q} --threads {threads} > {log:q} 2>&1"
)


rule teacher:
    input:
        **TRAIN_INPUT,
    output:
        checkpoint=f"{TEACHER_RUN}/{layout.CHECKPOINT}",
        metrics=f"{TEACHER_RUN}/{layout.METRICS}",
    params:
        spec=lambda wc: spec_json(STUDY.run_spec("teacher", teacher=wc.teacher, fold=int(wc.fold))),
        out=lambda wc: teacher_dir(wc.teacher, wc.fold),
        code=CODE["train"],
    log:
        run_log(TEACHER_RUN),
    priority: 10  # on the critical path: every student of the fold waits for its teacher
    threads: 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    shell:
        TRAIN_CMD


rule baseline:
    input:
        **TRAIN_INPUT,
    output:
        checkpoint=f"{BASELINE_RUN}/{layout.CHECKPOINT}",
        metrics=f"{BASELINE_RUN}/{layout.METRICS}",
    params:
        spec=lambda wc: spec_json(
            STUDY.run_spec("student", method="baseline", seed=int(wc.seed), fold=int(wc.fold))
        ),
        out=lambda wc: student_dir("none", "baseline", wc.seed, wc.fold),
        code=CODE["train"],
    log:
        run_log(BASELINE_RUN),
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=360,
    shell:
        TRAIN_CMD


# A distilled student's output is its metrics.json; its checkpoint is run-directory state (as partial.pt
# is), not an output, so that a student job re-run for a reason that leaves its spec, code and data as
# they were (train.share_teacher switched, its cohort re-run for another method) evaluates the finished
# checkpoint again instead of retraining; `--replace-stale` retrains one whose spec changed. To retrain
# a student whose spec, code and data are unchanged (a new torch), remove its run directory.
STUDENT_CMD = TRAIN_CMD.replace(" --threads", " --replace-stale --threads")

if not SHARE_TEACHER:

    rule student:
        input:
            **TRAIN_INPUT,
            teacher=rules.teacher.output.metrics,  # small, checksummed; the checkpoint is read by path
        output:
            metrics=f"{STUDENT_RUN}/{layout.METRICS}",
        params:
            spec=lambda wc: spec_json(
                STUDY.run_spec("student", teacher=wc.teacher, method=wc.method, seed=int(wc.seed), fold=int(wc.fold))
            ),
            out=lambda wc: student_dir(wc.teacher, wc.method, wc.seed, wc.fold),
            code=CODE["student"],
        log:
            run_log(STUDENT_RUN),
        threads: 1
        resources:
            gpu=1,
            mem_mb=12000,
            runtime=480,
        shell:
            STUDENT_CMD

else:
    # train.share_teacher: one job per (teacher, seed, fold) trains the students of every method (and
    # grid variant) together, with one teacher forward per batch (segkd.engine.train). When one method's
    # spec changes, the cohort job re-runs (its params hold every spec), and in it each student whose
    # finished checkpoint has the same spec, code and data is evaluated again, not retrained: a changed
    # method costs its own students' training, the others an evaluation each.
    rule cohort:
        input:
            **TRAIN_INPUT,
            teacher=rules.teacher.output.metrics,
        output:
            metrics=[f"{layout.student_dir('{teacher}', m, '{seed}', '{fold}')}/{layout.METRICS}" for m in STUDY.methods],
        params:
            specs=lambda wc: json.dumps(cohort_specs(wc.teacher, wc.seed, wc.fold), sort_keys=True),
            outs=lambda wc: " ".join(
                f"--out {shlex.quote(student_dir(wc.teacher, m, wc.seed, wc.fold))}" for m in STUDY.methods
            ),
            code=CODE["student"],
        log:
            str(layout.cohort_log("{teacher}", "{seed}", "{fold}")),
        threads: 1
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=480,
        shell:
            "{SEGKD} cohort --specs {params.specs:q} {params.outs} --threads {threads} > {log:q} 2>&1"  # replaces stale runs


rule teachers:
    """Target: every teacher of the study (the DVC 'teachers' stage runs this)."""
    input:
        run_files("teacher"),
    localrule: True


rule students:
    """Target: every student and baseline run of the study (the DVC 'students' stage runs this)."""
    input:
        run_files(("baseline", "student")),
    localrule: True
