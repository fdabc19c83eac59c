# Aggregation: every run's metrics.json -> tables, statistics, plots, report.md and summary.json;
# and the band figure of each frequency-distilled method (first seed, first fold).

GRID = any(v.swept for v in STUDY.variants.values())  # a method grid adds the sensitivity figure
FREQ_VARIANTS = [name for name, v in STUDY.variants.items() if freq_term(v.terms)]  # each draws a band figure
BAND_FIGURES = [f"results/bands/{t}/{m}.png" for t in STUDY.teachers for m in FREQ_VARIANTS]


rule bands:
    input:
        metrics=lambda wc: f"{student_dir(wc.teacher, wc.method, STUDY.seeds[0], STUDY.folds[0])}/metrics.json",
    output:
        "results/bands/{teacher}/{method}.png",
    params:
        run=lambda wc: student_dir(wc.teacher, wc.method, STUDY.seeds[0], STUDY.folds[0]),
        code=CODE["bands"],
    log:
        "logs/bands/{teacher}/{method}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "{SEGKD} bands --run {params.run} --out {output} --threads {threads} > {log} 2>&1"


rule aggregate:
    input:
        metrics=run_files(),
        bands=BAND_FIGURES,  # not read: `snakemake aggregate` (rule all, DVC's report stage) draws them too
        probes=PROBE_TABLES,  # the low-pass probe tables (probe.smk), when the study enables the probe
    output:
        runs="results/runs.csv",
        report="results/report.md",
        report_html="results/report.html",  # the same page, figures inlined (renders in MLflow)
        summary="results/summary.json",
        summary_table="results/summary.csv",  # DVC's summary plot
        metrics="results/metrics.json",  # DVC's metrics file
        plots=expand(
            "results/plots/{plot}.png",
            plot=["miou", "class_deltas", "loss"] + (["sensitivity"] if GRID else []) + (["lowpass"] if PROBE_TABLES else []),
        ),
    params:
        study=json.dumps(STUDY.params, sort_keys=True),
        code=CODE["report"],
    log:
        "logs/aggregate.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "{SEGKD} aggregate --params {params.study:q} --runs runs --out results > {log} 2>&1"
