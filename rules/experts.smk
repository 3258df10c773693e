rule train_experts:
    input:
        model=model_dir(),
        train="results/data/pool/train.jsonl",
        assignments="results/clusters/{method}/assignments.csv",
    output:
        directory("results/experts/{method}"),
    log:
        "logs/train_experts/{method}.log",
    benchmark:
        "benchmarks/train_experts/{method}.tsv"
    wildcard_constraints:
        method="|".join(METHODS),
    # On the longest path (rules/common.smk): before the evaluations that are ready earlier.
    priority: CHAIN_PRIORITY
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(config["experts"]),
        seed=config["seed"],
    shell:
        "python -m gs.experts.train --model-dir {input.model} --train {input.train}"
        " --assignments {input.assignments} --params {params.cfg} --seed {params.seed}"
        " --method {wildcards.method} --out {output} > {log} 2>&1"


rule train_multitask:
    input:
        plan=PLAN,
        model=model_dir(),
        train="results/data/pool/train.jsonl",
    output:
        directory("results/experts/multitask"),
    log:
        "logs/train_multitask/multitask.log",
    benchmark:
        "benchmarks/train_multitask/multitask.tsv"
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(config["experts"]),
        seed=config["seed"],
    shell:
        "python -m gs.experts.train --model-dir {input.model} --train {input.train} --multitask"
        " --params {params.cfg} --seed {params.seed} --out {output} > {log} 2>&1"


rule finetune_selected:
    input:
        model=model_dir(),
        subset="results/selection/{target}/{selector}.jsonl",
    output:
        directory("results/selection/{target}/{selector}_lora"),
    log:
        "logs/finetune_selected/{target}_{selector}.log",
    benchmark:
        "benchmarks/finetune_selected/{target}_{selector}.tsv"
    wildcard_constraints:
        selector="|".join(SELECTORS),
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(config["experts"]),
        seed=config["seed"],
    shell:
        "python -m gs.experts.train --model-dir {input.model} --train {input.subset} --multitask"
        " --method {wildcards.selector} --params {params.cfg} --seed {params.seed} --out {output} > {log} 2>&1"
