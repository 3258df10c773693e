import re


# Reads the hub for `source: hf` splits (paper config): on SLURM it runs where snakemake runs.
localrules:
    prepare_target,


# One job per pool part. A rule's outputs are one pattern for all its jobs, so parts that make
# different split files (a ClusterUCB pool file has only train) get one rule each set of files:
# prepare_part for the first set, prepare_part_2, ... for the others.
_PART_GROUPS = {}
PART_RULES = []
for _part, _files in PART_FILES.items():
    _PART_GROUPS.setdefault(tuple(_files), []).append(_part)

for _i, (_files, _parts) in enumerate(_PART_GROUPS.items(), 1):
    PART_RULES.append("prepare_part" if _i == 1 else f"prepare_part_{_i}")

    rule:
        name:
            PART_RULES[-1]
        localrule: True
        output:
            expand("results/data/{{part}}/{split}.jsonl", split=_files),
        log:
            "logs/prepare_part/{part}.log",
        benchmark:
            "benchmarks/prepare_part/{part}.tsv"
        wildcard_constraints:
            part="|".join(re.escape(p) for p in _parts),
        conda:
            "../envs/data.yaml"
        params:
            spec=lambda w: quote_json(PARTS[w.part]),
            seed=config["seed"],
        shell:
            "python -m gs.data.prepare part --part {wildcards.part} --params {params.spec}"
            " --seed {params.seed} --out-dir results/data/{wildcards.part} > {log} 2>&1"


rule prepare_target:
    # A target's own validation examples (ClusterUCB: less_data's per-subtask few-shot files).
    output:
        "results/data/targets/{target}/validation.jsonl",
    log:
        "logs/prepare_target/{target}.log",
    benchmark:
        "benchmarks/prepare_target/{target}.tsv"
    conda:
        "../envs/data.yaml"
    params:
        spec=lambda w: quote_json(TARGET_SPECS[w.target]["validation"]),
        seed=config["seed"],
    shell:
        "python -m gs.data.prepare target --target {wildcards.target} --params {params.spec}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


rule pool_data:
    input:
        [f for part in PARTS for f in part_outputs(part)],
    output:
        train="results/data/pool/train.jsonl",
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
        dirs=expand("results/data/{part}", part=list(PARTS)),
        spec=json_param(PARTS),
        seed=config["seed"],
    shell:
        "python -m gs.data.prepare pool --part-dirs {params.dirs} --params {params.spec} --seed {params.seed}"
        " --out-dir results/data/pool --summary {output.summary} > {log} 2>&1"
