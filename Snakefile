# segkd study workflow: prepare -> split -> teachers -> students (+ baseline) -> probes -> aggregate.
#   snakemake --cores all                                  # the study in params.yaml
#   snakemake --cores all --configfile studies/camvid.yaml # another study (replaces params.yaml)
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.aggregate.output,
    default_target: True


onstart:
    # Create the MLflow store, experiment and run tree once, before jobs fan out: parallel first
    # use of a fresh SQLite store corrupts it.
    if STUDY.params["tracking"]["enabled"]:
        from segkd import tracking

        experiment = tracking.init_study(STUDY, uri=STUDY.params["tracking"]["uri"])
        print(tracking.browse_hint(experiment, STUDY.params["tracking"]["uri"]), file=sys.stderr)
