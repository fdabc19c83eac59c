# segkd study workflow: prepare -> split -> teachers -> students (+ baseline) -> aggregate.
#   snakemake --cores all                                  # the study in params.yaml
#   snakemake --cores all --configfile studies/camvid.yaml # another study (replaces params.yaml)
from snakemake.utils import min_version

min_version("9.0")

# A study file is a whole study: --configfile replaces params.yaml rather than merging into it.
if not workflow.overwrite_configfiles:
    workflow.configfile("params.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
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

        tracking.init_study(STUDY, uri=STUDY.params["tracking"]["uri"])
