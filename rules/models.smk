# `gpu` (GPU_REQUEST, rules/common.smk) is a per-job request, not a workflow-wide budget, when jobs go
# to a cluster: the GPU box's cap of 1 (profiles/default) must not serialise SLURM's GPU jobs. A local
# scope is checked per submission only; local execution still counts it against the cap.
resource_scopes:
    gpu="local",


# Reads the hub at paper scale (compute nodes usually have no internet; HF_TOKEN for gated models):
# on SLURM it runs where snakemake runs. It downloads files and never loads the weights.
localrules:
    prepare_model,


rule prepare_model:
    output:
        directory(model_dir()),
    log:
        "logs/prepare_model/prepare_model.log",
    benchmark:
        "benchmarks/prepare_model/prepare_model.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=grow(8000),
    params:
        spec=json_param(config["model"]),
    shell:
        "python -m gs.models.prepare --spec {params.spec} --out {output} > {log} 2>&1"
