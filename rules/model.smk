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
        mem_mb=8000,
    params:
        spec=json_param(config["model"]),
    shell:
        "python -m gs.models --spec {params.spec} --out {output} > {log} 2>&1"
