rule prepare_model:
    output:
        directory(model_dir()),
    params:
        spec=json_param(config["model"]),
    log:
        "logs/prepare_model/prepare_model.log",
    benchmark:
        "benchmarks/prepare_model/prepare_model.tsv"
    resources:
        mem_mb=8000,
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m gs.models --spec {params.spec} --out {output} > {log} 2>&1"
