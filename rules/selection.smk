rule less_influence:
    input:
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
        validation=expand("results/data/{target}/validation.jsonl", target=TARGETS),
    output:
        "results/selection/influence.npz",
    log:
        "logs/less_influence/influence.log",
    benchmark:
        "benchmarks/less_influence/influence.tsv"
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(config["gradients"]),
        targets=" ".join(f"{t}=results/data/{t}/validation.jsonl" for t in TARGETS),
        seed=config["seed"],
    shell:
        "python -m gs.influence --model-dir {input.model} --warmup {input.warmup} --train {input.train}"
        " --targets {params.targets} --params {params.cfg} --seed {params.seed} --out {output} > {log} 2>&1"


rule select_data:
    input:
        influence="results/selection/influence.npz",
        assignments=f"results/clusters/{config['selection']['clusters']}/assignments.csv",
        train="results/data/pool/train.jsonl",
    output:
        selection="results/selection/{target}/selection.json",
        subsets=expand(
            "results/selection/{{target}}/{selector}.jsonl", selector=SELECTORS
        ),
    log:
        "logs/select_data/{target}.log",
    benchmark:
        "benchmarks/select_data/{target}.tsv"
    conda:
        "../envs/torch.yaml"
    params:
        cfg=json_param(config["selection"]),
        seed=config["seed"],
    shell:
        "python -m gs.selection --influence {input.influence} --assignments {input.assignments}"
        " --train {input.train} --target {wildcards.target} --params {params.cfg}"
        " --seed {params.seed} --out-dir results/selection/{wildcards.target} > {log} 2>&1"


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
        "python -m gs.experts --model-dir {input.model} --train {input.subset} --multitask"
        " --method {wildcards.selector} --params {params.cfg} --seed {params.seed} --out {output} > {log} 2>&1"
