# Training: a teacher per (teacher, fold); a student per (teacher, method, seed, fold), each variant of
# a method grid being a method of its own (segkd.sweep); the no-KD baseline per (seed, fold). Each
# job's hyperparameters are its run spec, passed through params: so that changing one method's weight
# re-runs only that method's jobs, and growing a grid runs only the new variants.

TRAIN_INPUT = dict(
    manifest=rules.prepare.output.manifest,
    folds=FOLDS_FILE,
)
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


rule student:
    input:
        **TRAIN_INPUT,
        teacher=rules.teacher.output.metrics,  # small, checksummed; the checkpoint is read by path
    output:
        checkpoint=f"{STUDENT_RUN}/{layout.CHECKPOINT}",
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
        TRAIN_CMD


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
