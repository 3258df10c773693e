# Reads the hub for `source: hf` splits (paper config): on SLURM it runs where snakemake runs.
localrules:
    prepare_domain,


rule prepare_domain:
    output:
        expand(
            "results/data/{{domain}}/{split}.jsonl",
            split=["train", "validation", "test", "reference"],
        ),
    log:
        "logs/prepare_domain/{domain}.log",
    benchmark:
        "benchmarks/prepare_domain/{domain}.tsv"
    conda:
        "../envs/data.yaml"
    params:
        spec=lambda w: quote_json(config["data"]["domains"][w.domain]),
        seed=config["seed"],
    shell:
        "python -m gs.data.prepare domain --domain {wildcards.domain} --params {params.spec}"
        " --seed {params.seed} --out-dir results/data/{wildcards.domain} > {log} 2>&1"


rule pool_data:
    input:
        expand(
            "results/data/{domain}/{split}.jsonl",
            domain=DOMAINS,
            split=["train", "validation", "test"],
        ),
    output:
        train="results/data/pool/train.jsonl",
        validation="results/data/pool/validation.jsonl",
        test="results/data/pool/test.jsonl",
        summary=report(
            "results/data/summary.csv",
            caption="../report/data_summary.rst",
            category="Data",
        ),
    log:
        "logs/pool_data/pool_data.log",
    benchmark:
        "benchmarks/pool_data/pool_data.tsv"
    conda:
        "../envs/data.yaml"
    params:
        dirs=expand("results/data/{domain}", domain=DOMAINS),
        spec=json_param(config["data"]["domains"]),
        seed=config["seed"],
    shell:
        "python -m gs.data.prepare pool --domain-dirs {params.dirs} --params {params.spec} --seed {params.seed}"
        " --out-dir results/data/pool --summary {output.summary} > {log} 2>&1"
