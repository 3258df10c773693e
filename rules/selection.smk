rule less_influence:
    input:
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
        validation=[TARGET_VALIDATION[t] for t in TARGETS],
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
        targets=" ".join(f"{t}={TARGET_VALIDATION[t]}" for t in TARGETS),
        seed=config["seed"],
    shell:
        "python -m gs.selection.influence --model-dir {input.model} --warmup {input.warmup} --train {input.train}"
        " --targets {params.targets} --params {params.cfg} --seed {params.seed} --out {output} > {log} 2>&1"


rule clusterucb_clusters:
    # ClusterUCB's own arms (gs.selection.ucb_clustering): Adam-preconditioned, projected pool gradients at an early
    # warm-up checkpoint, cosine k-means (ZigeW/ClusterUCB kmeans_clustering.py); one pass of n gradients.
    input:
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
        validation=[TARGET_VALIDATION[t] for t in TARGETS],
    output:
        directory("results/selection/clusterucb_clusters"),
    log:
        "logs/clusterucb_clusters/clusters.log",
    benchmark:
        "benchmarks/clusterucb_clusters/clusters.tsv"
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        grads=json_param(config["gradients"]),
        cfg=json_param(config["selection"]["ucb_clustering"]),
        targets=" ".join(f"{t}={TARGET_VALIDATION[t]}" for t in TARGETS),
        seed=config["seed"],
    shell:
        "python -m gs.selection.ucb_clustering --model-dir {input.model} --warmup {input.warmup} --train {input.train}"
        " --targets {params.targets} --gradients {params.grads} --params {params.cfg} --seed {params.seed}"
        " --out-dir {output} > {log} 2>&1"


# The bandit's arms: ClusterUCB's own clusters, or another method's (selection.clusters).
UCB_ARMS = config["selection"]["clusters"]
COMPARE_ARMS = [
    m for m in config["selection"].get("compare_clusters", []) if m != UCB_ARMS
]
if CLUSTERUCB and not GRADIENTSPACE and (UCB_ARMS != "clusterucb" or COMPARE_ARMS):
    raise WorkflowError(
        "selection.clusters and compare_clusters: without the gradientspace study only ClusterUCB's own arms "
        f"(clusterucb) exist; got clusters {UCB_ARMS!r}, compare_clusters {COMPARE_ARMS}"
    )


rule select_data:
    input:
        influence="results/selection/influence.npz",
        clustering="results/selection/clusterucb_clusters",
        assignments=(
            []
            if UCB_ARMS == "clusterucb"
            else f"results/clusters/{UCB_ARMS}/assignments.csv"
        ),
        compare=expand("results/clusters/{method}/assignments.csv", method=COMPARE_ARMS),
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
        validation=lambda w: TARGET_VALIDATION[w.target],
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
    # ClusterUCB's draws run the model (gs.selection.on_demand): a GPU rule at paper scale.
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(config["selection"]),
        grads=json_param(config["gradients"]),
        arms=(
            ""
            if UCB_ARMS == "clusterucb"
            else f"--assignments results/clusters/{UCB_ARMS}/assignments.csv"
        ),
        compare=" ".join(
            f"{m}=results/clusters/{m}/assignments.csv" for m in COMPARE_ARMS
        ),
        seed=config["seed"],
    shell:
        # ClusterUCB's draws are computed on demand from the model (gs.selection.on_demand); the full pass is LESS's.
        "python -m gs.selection.select --influence {input.influence} --clustering {input.clustering}/clustering.npz"
        " {params.arms} --compare {params.compare} --model-dir {input.model} --warmup {input.warmup}"
        " --gradients {params.grads} --train {input.train} --validation {input.validation}"
        " --target {wildcards.target} --params {params.cfg}"
        " --seed {params.seed} --out-dir results/selection/{wildcards.target} > {log} 2>&1"


rule less_influence_shard:
    # gradients.shards > 1: LESS influence of one slice of the pool (gs.selection.influence_shards).
    input:
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
        validation=[TARGET_VALIDATION[t] for t in TARGETS],
    output:
        "results/selection/influence_shards/{shard}.npz",
    log:
        "logs/less_influence_shard/{shard}.log",
    benchmark:
        "benchmarks/less_influence_shard/{shard}.tsv"
    wildcard_constraints:
        shard="[0-9]+",
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(GRADIENT_PARAMS),
        targets=" ".join(f"{t}={TARGET_VALIDATION[t]}" for t in TARGETS),
        seed=config["seed"],
        shards=SHARDS,
    shell:
        "python -m gs.selection.influence_shards shard --model-dir {input.model} --warmup {input.warmup} --train {input.train}"
        " --targets {params.targets} --params {params.cfg} --seed {params.seed}"
        " --shard {wildcards.shard} --shards {params.shards} --out {output} > {log} 2>&1"


rule merge_influence_shards:
    input:
        expand("results/selection/influence_shards/{shard}.npz", shard=SHARD_IDS),
    output:
        "results/selection/influence.npz",
    log:
        "logs/merge_influence_shards/merge.log",
    benchmark:
        "benchmarks/merge_influence_shards/merge.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m gs.selection.influence_shards merge --shard-files {input} --out {output} > {log} 2>&1"
