rule cluster_samples:
    input:
        unpack(match_k_input),
        features="results/gradients/features.npz",
        train="results/data/pool/train.jsonl",
    output:
        assignments="results/clusters/{method}/assignments.csv",
        info="results/clusters/{method}/cluster_info.json",
    log:
        "logs/cluster_samples/{method}.log",
    benchmark:
        "benchmarks/cluster_samples/{method}.tsv"
    wildcard_constraints:
        method="[a-z0-9_]+",
    conda:
        "../envs/torch.yaml"
    params:
        cfg=json_param(config["cluster"]),
        seed=config["seed"],
        match_k=match_k_arg,
    shell:
        "python -m gs.cluster --method {wildcards.method} --features {input.features}"
        " --train {input.train} --params {params.cfg} --seed {params.seed} {params.match_k}"
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
        "python -m gs.features coherence --model-dir {input.model} --warmup {input.warmup}"
        " --train {input.train} --clusters {params.dirs} --params {params.cfg}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


if SHARDS > 1:

    ruleorder: merge_coherence_shards > gradient_coherence

else:

    ruleorder: gradient_coherence > merge_coherence_shards


rule gradient_coherence_shard:
    # gradients.shards > 1: one slice's per-cluster gradient sums (gs.shards); they add across slices.
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
        "python -m gs.shards coherence --model-dir {input.model} --warmup {input.warmup}"
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
        "python -m gs.shards merge-coherence --shard-files {input} --out {output} > {log} 2>&1"


rule cluster_quality:
    input:
        features="results/gradients/features.npz",
        train="results/data/pool/train.jsonl",
        assignments=expand(
            "results/clusters/{method}/assignments.csv", method=QUALITY_METHODS
        ),
        coherence="results/clusters/coherence.json",
    output:
        csv=report("results/clusters/quality.csv", category="Clustering"),
        md="results/clusters/quality.md",
        png=report("results/figures/clusters.png", category="Clustering"),
    log:
        "logs/cluster_quality/quality.log",
    benchmark:
        "benchmarks/cluster_quality/quality.tsv"
    conda:
        "../envs/report.yaml"
    params:
        dirs=expand("results/clusters/{method}", method=QUALITY_METHODS),
    shell:
        "python -m gs.quality --features {input.features} --train {input.train}"
        " --clusters {params.dirs} --coherence {input.coherence} --out-csv {output.csv}"
        " --out-md {output.md} --out-png {output.png} > {log} 2>&1"
