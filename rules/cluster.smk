rule cluster_samples:
    input:
        unpack(match_k_input),
        features="results/gradients/features.npz",
        train="results/data/pool/train.jsonl",
    output:
        assignments="results/clusters/{method}/assignments.csv",
        info="results/clusters/{method}/cluster_info.json",
        seeds="results/clusters/{method}/seed_labels.csv",
    log:
        "logs/cluster_samples/{method}.log",
    benchmark:
        "benchmarks/cluster_samples/{method}.tsv"
    wildcard_constraints:
        method="[a-z0-9_]+",
    priority: CHAIN_PRIORITY
    conda:
        "../envs/torch.yaml"
    params:
        # Without the ablation section: changing the sweep reruns rule ablation only, not the clusters downstream.
        cfg=json_param({k: v for k, v in config["cluster"].items() if k != "ablation"}),
        seed=config["seed"],
        seeds=config["cluster"].get("quality_seeds", 5),
        match_k=match_k_arg,
    shell:
        "python -m gs.cluster.methods --method {wildcards.method} --features {input.features}"
        " --train {input.train} --params {params.cfg} --seed {params.seed} --seeds {params.seeds} {params.match_k}"
        " --out-dir results/clusters/{wildcards.method} > {log} 2>&1"


rule gradient_coherence:
    input:
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
        assignments=expand(
            "results/clusters/{method}/assignments.csv", method=QUALITY_METHODS
        ),
    output:
        "results/clusters/coherence.json",
    log:
        "logs/gradient_coherence/coherence.log",
    benchmark:
        "benchmarks/gradient_coherence/coherence.tsv"
    conda:
        "../envs/torch.yaml"
    threads: HEAVY_THREADS
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(GRADIENT_PARAMS),
        dirs=expand("results/clusters/{method}", method=QUALITY_METHODS),
        seed=config["seed"],
    shell:
        "python -m gs.cluster.coherence single --model-dir {input.model} --warmup {input.warmup}"
        " --train {input.train} --clusters {params.dirs} --params {params.cfg}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


if SHARDS > 1:

    ruleorder: merge_coherence_shards > gradient_coherence

else:

    ruleorder: gradient_coherence > merge_coherence_shards


rule gradient_coherence_shard:
    # gradients.shards > 1: one slice's per-cluster gradient sums (gs.cluster.coherence); they add across slices.
    input:
        model=model_dir(),
        warmup="results/gradients/warmup",
        train="results/data/pool/train.jsonl",
        assignments=expand(
            "results/clusters/{method}/assignments.csv", method=QUALITY_METHODS
        ),
    output:
        temp("results/clusters/coherence_shards/{shard}.pt"),
    log:
        "logs/gradient_coherence_shard/{shard}.log",
    benchmark:
        "benchmarks/gradient_coherence_shard/{shard}.tsv"
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
        dirs=expand("results/clusters/{method}", method=QUALITY_METHODS),
        seed=config["seed"],
        shards=SHARDS,
    shell:
        "python -m gs.cluster.coherence shard --model-dir {input.model} --warmup {input.warmup}"
        " --train {input.train} --clusters {params.dirs} --params {params.cfg}"
        " --seed {params.seed} --shard {wildcards.shard} --shards {params.shards}"
        " --out {output} > {log} 2>&1"


rule merge_coherence_shards:
    input:
        expand("results/clusters/coherence_shards/{shard}.pt", shard=SHARD_IDS),
    output:
        "results/clusters/coherence.json",
    log:
        "logs/merge_coherence_shards/merge.log",
    benchmark:
        "benchmarks/merge_coherence_shards/merge.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=grow(16000),
        runtime=grow(60),
    shell:
        "python -m gs.cluster.coherence merge --shard-files {input} --out {output} > {log} 2>&1"


rule cluster_quality:
    input:
        **KEPT_INPUT,
        features="results/gradients/features.npz",
        train="results/data/pool/train.jsonl",
        assignments=expand(
            "results/clusters/{method}/assignments.csv", method=QUALITY_METHODS
        ),
        seed_labels=expand(
            "results/clusters/{method}/seed_labels.csv", method=QUALITY_METHODS
        ),
        coherence="results/clusters/coherence.json",
    output:
        csv=report(
            "results/clusters/quality.csv",
            caption="../report/cluster_quality_csv.rst",
            category="Clustering",
        ),
        md="results/clusters/quality.md",
        png=report(
            "results/figures/clusters.png",
            caption="../report/clusters_figure.rst",
            category="Clustering",
        ),
        seeds="results/clusters/quality_by_seed.csv",
        table=report(
            "results/tables/cluster_quality.md",
            caption="../report/cluster_quality_table.rst",
            category="Tables",
        ),
        table_csv="results/tables/cluster_quality.csv",
    log:
        "logs/cluster_quality/quality.log",
    benchmark:
        "benchmarks/cluster_quality/quality.tsv"
    conda:
        "../envs/report.yaml"
    params:
        dirs=expand("results/clusters/{method}", method=QUALITY_METHODS),
        gradients=KEPT_ARG,
    shell:
        "python -m gs.cluster.quality --features {input.features} --train {input.train}"
        " --clusters {params.dirs} --coherence {input.coherence} {params.gradients} --out-csv {output.csv}"
        " --out-md {output.md} --out-png {output.png} --out-seeds {output.seeds}"
        " --out-table results/tables/cluster_quality > {log} 2>&1"


rule ablation:
    # Full dimension vs. random projections of every size, each clustered on its rows and on its top-r SVD
    # coordinates, over seeds (gs.cluster.ablation); from the kept gradients, else the extraction's features.
    input:
        **KEPT_INPUT,
        features="results/gradients/features.npz",
        train="results/data/pool/train.jsonl",
    output:
        per_seed="results/ablation/per_seed.csv",
        cost="results/ablation/cost.json",
        table=report(
            "results/tables/ablation.md",
            caption="../report/projection_ablation_table.rst",
            category="Tables",
        ),
        table_csv="results/tables/ablation.csv",
        png=report(
            "results/figures/ablation.png",
            caption="../report/projection_ablation_figure.rst",
            category="Figures",
        ),
    log:
        "logs/ablation/ablation.log",
    benchmark:
        "benchmarks/ablation/ablation.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=grow(8000),
        runtime=grow(60),
    params:
        cfg=json_param(config["cluster"]),
        rank=config["gradients"]["svd"]["rank"],
        seed=config["seed"],
        gradients=KEPT_ARG,
    shell:
        "python -m gs.cluster.ablation --features {input.features} --train {input.train} {params.gradients}"
        " --params {params.cfg} --rank {params.rank} --seed {params.seed} --out-dir results/ablation"
        " --out-table results/tables/ablation --out-png {output.png} > {log} 2>&1"
