# Data: decode and resize once into compact arrays, then cut the folds.
# Downstream rules depend on the small manifest.json (it carries the arrays' checksums), never on the
# arrays: Snakemake compares small inputs by checksum, so a `dvc checkout` that only rewrites file
# times re-runs nothing.


rule prepare:
    input:
        code=DATA_CODE,
    output:
        images=f"{PREPARED}/images.npy",
        labels=f"{PREPARED}/labels.npy",
        manifest=f"{PREPARED}/manifest.json",
    params:
        dataset=json.dumps(STUDY.dataset, sort_keys=True),
        out=PREPARED,
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
        code=SPLIT_CODE,
    output:
        FOLDS_FILE,
    params:
        dataset=json.dumps({"name": DATASET}),
        folds=json.dumps(STUDY.params["folds"], sort_keys=True),
        prepared=PREPARED,
    log:
        f"logs/split/{DATASET}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "{SEGKD} split --dataset {params.dataset:q} --folds {params.folds:q} --prepared {params.prepared} "
        "--out {output} > {log} 2>&1"
