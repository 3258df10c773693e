rule warmup_lora:
    input:
        model=model_dir(),
        train="results/data/pool/train.jsonl",
    output:
        directory("results/gradients/warmup"),
    log:
        "logs/warmup_lora/warmup_lora.log",
    benchmark:
        "benchmarks/warmup_lora/warmup_lora.tsv"
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(config["gradients"]),
        seed=config["seed"],
    shell:
        "python -m gs.features warmup --model-dir {input.model} --train {input.train}"
        " --params {params.cfg} --seed {params.seed} --out {output} > {log} 2>&1"


rule extract_gradient_features:
    input:
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
    output:
        features="results/gradients/features.npz",
        components="results/gradients/svd_components.npy",
        summary="results/gradients/extract.json",
        projectors=expand(
            "results/gradients/projector_{p}.joblib",
            p=sorted(
                set(config["gradients"]["projection"]["dims"])
                | {config["gradients"]["projection"]["elrea_dim"]}
            ),
        ),
    log:
        "logs/extract_gradient_features/extract.log",
    benchmark:
        "benchmarks/extract_gradient_features/extract.tsv"
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(config["gradients"]),
        seed=config["seed"],
    shell:
        "python -m gs.features extract --model-dir {input.model} --warmup {input.warmup}"
        " --train {input.train} --params {params.cfg} --seed {params.seed}"
        " --out-dir results/gradients > {log} 2>&1"
