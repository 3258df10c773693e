rule cluster_samples:
    input:
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
    shell:
        "python -m gs.cluster --method {wildcards.method} --features {input.features}"
        " --train {input.train} --params {params.cfg} --seed {params.seed}"
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
        cfg=json_param(config["gradients"]),
        dirs=expand("results/clusters/{method}", method=QUALITY_METHODS),
        seed=config["seed"],
    shell:
        "python -m gs.features coherence --model-dir {input.model} --warmup {input.warmup}"
        " --train {input.train} --clusters {params.dirs} --params {params.cfg}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


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
