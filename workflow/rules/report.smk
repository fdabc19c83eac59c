# Aggregation: every run's metrics.json -> tables, statistics, plots, report.md and summary.json.


rule aggregate:
    input:
        metrics=[f"{d}/metrics.json" for d in all_run_dirs()],
        code=REPORT_CODE,
    output:
        runs="results/runs.csv",
        report="results/report.md",
        summary="results/summary.json",
        plots=expand("results/plots/{plot}.png", plot=["miou", "class_deltas", "loss"]),
    params:
        study=json.dumps(STUDY.params, sort_keys=True),
    log:
        "logs/aggregate.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "segkd aggregate --params {params.study:q} --runs runs --out results > {log} 2>&1"
