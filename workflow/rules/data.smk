# Data: decode and resize once into compact arrays, then cut the folds.
# Downstream rules depend on the small manifest.json (it carries the arrays' checksums), never on the
# arrays: Snakemake compares small inputs by checksum, so a `dvc checkout` that only rewrites file
# times re-runs nothing, and a re-run of `prepare` that writes the same data re-trains nothing.


rule prepare:
    output:
        images=f"{PREPARED}/{prepared_files.IMAGES}",
        labels=f"{PREPARED}/{prepared_files.LABELS}",
        manifest=f"{PREPARED}/{prepared_files.MANIFEST}",
    params:
        dataset=json.dumps(STUDY.dataset, sort_keys=True),
        out=lambda wc, output: str(Path(output.manifest).parent),
        code=CODE["data"],
    log:
        f"logs/prepare/{DATASET}.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{SEGKD} prepare --dataset {params.dataset:q} --out {params.out} --force > {log} 2>&1"


rule split:
    input:
        manifest=rules.prepare.output.manifest,
    output:
        FOLDS_FILE,
    params:
        dataset=json.dumps({"name": DATASET}),
        folds=json.dumps(STUDY.params["folds"], sort_keys=True),
        prepared=lambda wc, input: str(Path(input.manifest).parent),
        code=CODE["data"],
    log:
        f"logs/split/{DATASET}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "{SEGKD} split --dataset {params.dataset:q} --folds {params.folds:q} --prepared {params.prepared} "
        "--out {output} > {log} 2>&1"
