# Gradient passes. gradients.shards = S > 1 splits the extraction into S jobs over contiguous slices of the pool
# (results/gradients/shards/<i>/) and a merge job that writes the single pass's files (gs.gradients.shards); S = 1 is the
# single job extract_gradient_features, and the shard rules never enter the DAG. The coherence pass
# (rules/cluster.smk) and LESS influence (less_influence, rules/selection.smk; its shards below) split the same way.
# gradients.keep_gradients: the single extraction also writes the (n, d) rows it streamed (gradients.npy), read by
# the projection ablation and the cluster-quality coherence of every seed (rules/cluster.smk). Only without shards.
KEEP_GRADIENTS = GRADIENTSPACE and bool(config["gradients"].get("keep_gradients", False))
KEPT_GRADIENTS = "results/gradients/gradients.npy"
if KEEP_GRADIENTS and SHARDS > 1:
    raise WorkflowError(
        "gradients.keep_gradients needs gradients.shards: 1 (the sharded extraction keeps no gradients)"
    )

# The kept gradients as a named input and as the CLI argument of the rules that read them.
KEPT_INPUT = {"gradients": KEPT_GRADIENTS} if KEEP_GRADIENTS else {}
KEPT_ARG = f"--gradients {KEPT_GRADIENTS}" if KEEP_GRADIENTS else ""


if SHARDS > 1:

    ruleorder: merge_gradient_shards > extract_gradient_features
    ruleorder: merge_influence_shards > less_influence

else:

    ruleorder: extract_gradient_features > merge_gradient_shards
    ruleorder: less_influence > merge_influence_shards


rule warmup_lora:
    input:
        plan=PLAN,
        model=model_dir(),
        train="results/data/pool/train.jsonl",
    output:
        directory("results/gradients/warmup"),
    log:
        "logs/warmup_lora/warmup_lora.log",
    benchmark:
        "benchmarks/warmup_lora/warmup_lora.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(GRADIENT_PARAMS),
        seed=config["seed"],
    shell:
        "python -m gs.gradients.warmup --model-dir {input.model} --train {input.train}"
        " --params {params.cfg} --seed {params.seed} --out {output} > {log} 2>&1"


rule extract_gradient_features:
    input:
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
    output:
        **KEPT_INPUT,
        features="results/gradients/features.npz",
        components="results/gradients/svd_components.npy",
        summary="results/gradients/extract.json",
        projectors=expand("results/gradients/projector_{p}.joblib", p=PROJECTION_DIMS),
    log:
        "logs/extract_gradient_features/extract.log",
    benchmark:
        "benchmarks/extract_gradient_features/extract.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(GRADIENT_PARAMS),
        seed=config["seed"],
    shell:
        "python -m gs.gradients.extraction --model-dir {input.model} --warmup {input.warmup}"
        " --train {input.train} --params {params.cfg} --seed {params.seed}"
        " --out-dir results/gradients > {log} 2>&1"


rule extract_gradient_shard:
    # One of S contiguous slices of the pool into its own online SVD and projections (gs.gradients.shards);
    # resumable from results/gradients/shards/<i>/.extract_state/ as the single pass is.
    input:
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
    output:
        state="results/gradients/shards/{shard}/shard.pt",
        summary="results/gradients/shards/{shard}/shard.json",
    log:
        "logs/extract_gradient_shard/{shard}.log",
    benchmark:
        "benchmarks/extract_gradient_shard/{shard}.tsv"
    wildcard_constraints:
        shard="[0-9]+",
    priority: CHAIN_PRIORITY
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(GRADIENT_PARAMS),
        seed=config["seed"],
        shards=SHARDS,
    shell:
        "python -m gs.gradients.shards extract --model-dir {input.model} --warmup {input.warmup}"
        " --train {input.train} --params {params.cfg} --seed {params.seed}"
        " --shard {wildcards.shard} --shards {params.shards}"
        " --out-dir results/gradients/shards/{wildcards.shard} > {log} 2>&1"


rule merge_gradient_basis:
    # Frequent Directions only: the merged sketch, the basis of the shards' second pass.
    input:
        expand("results/gradients/shards/{shard}/shard.pt", shard=SHARD_IDS),
    output:
        "results/gradients/shards/basis.pt",
    log:
        "logs/merge_gradient_basis/basis.log",
    benchmark:
        "benchmarks/merge_gradient_basis/basis.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(GRADIENT_PARAMS),
        dirs=expand("results/gradients/shards/{shard}", shard=SHARD_IDS),
    shell:
        "python -m gs.gradients.shards basis --shard-dirs {params.dirs} --params {params.cfg} --out {output} > {log} 2>&1"


rule gradient_shard_coordinates:
    # Frequent Directions only: a shard's samples in the merged basis (second pass over its slice).
    input:
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
        basis="results/gradients/shards/basis.pt",
    output:
        "results/gradients/shards/{shard}/coords.npy",
    log:
        "logs/gradient_shard_coordinates/{shard}.log",
    benchmark:
        "benchmarks/gradient_shard_coordinates/{shard}.tsv"
    wildcard_constraints:
        shard="[0-9]+",
    priority: CHAIN_PRIORITY
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(GRADIENT_PARAMS),
        seed=config["seed"],
        shards=SHARDS,
    shell:
        "python -m gs.gradients.shards coords --model-dir {input.model} --warmup {input.warmup}"
        " --train {input.train} --params {params.cfg} --seed {params.seed}"
        " --shard {wildcards.shard} --shards {params.shards} --basis {input.basis}"
        " --out {output} > {log} 2>&1"


rule merge_gradient_shards:
    # The single pass's files from the S shard states (gs.gradients.shards.merge_shards).
    input:
        unpack(merge_shard_inputs),
    output:
        features="results/gradients/features.npz",
        components="results/gradients/svd_components.npy",
        summary="results/gradients/extract.json",
        projectors=expand("results/gradients/projector_{p}.joblib", p=PROJECTION_DIMS),
    log:
        "logs/merge_gradient_shards/merge.log",
    benchmark:
        "benchmarks/merge_gradient_shards/merge.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(GRADIENT_PARAMS),
        seed=config["seed"],
        dirs=expand("results/gradients/shards/{shard}", shard=SHARD_IDS),
        fd=lambda wildcards, input: (
            f" --basis {input.basis} --coords {' '.join(input.coords)}"
            if SHARD_SECOND_PASS
            else ""
        ),
    shell:
        "python -m gs.gradients.shards merge --shard-dirs {params.dirs} --params {params.cfg} --seed {params.seed}"
        "{params.fd} --out-dir results/gradients > {log} 2>&1"
