# The low-pass probe (segkd probe): each chosen run (probe.runs: teachers, baselines, students)
# evaluated with its tapped feature replaced by its low band, then its high band, at each ratio of
# probe.ratios; one table per run under results/probe/, which the aggregate reads. The probe's keys are
# no part of any run spec, so changing them re-runs these jobs and the aggregate, never a training job.

PROBE = STUDY.params["probe"]
PROBE_TABLES = (
    [str(layout.probe_table(run.dir)) for run in RUNS if run.kind in PROBE["runs"]] if PROBE["enabled"] else []
)


rule probe:
    input:
        metrics=f"{layout.RUNS}/{{run}}/{layout.METRICS}",  # small; the checkpoint is read by path
    output:
        str(layout.probe_table(f"{layout.RUNS}/{{run}}")),
    params:
        run=lambda wc: f"{layout.RUNS}/{wc.run}",
        ratios=",".join(str(r) for r in PROBE["ratios"]),
        band=PROBE["band"],
        ratio_mode=PROBE["ratio_mode"],
        tap=PROBE["tap"],
        code=CODE["probe"],
    wildcard_constraints:
        run=r"(teachers|students)/.+",
    log:
        "logs/probe/{run}.log",
    threads: 1  # the training jobs' own count: the probe's ratio-1 row is then the run's evaluation bit for bit
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{SEGKD} probe --run {params.run:q} --ratios {params.ratios} --band {params.band} "
        "--ratio-mode {params.ratio_mode} --tap {params.tap} --out {output:q} --threads {threads} > {log:q} 2>&1"
