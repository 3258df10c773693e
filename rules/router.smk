rule train_router:
    input:
        model=model_dir(),
        train="results/data/pool/train.jsonl",
        # Not the trained experts: the router learns the cluster -> expert map the experts' rule plans
        # from the same assignments and config (gs.experts.plan.plan_experts), so a method that no system
        # evaluates (random, oracle in the default) gets its router-table row without its experts.
        assignments="results/clusters/{method}/assignments.csv",
    output:
        directory("results/router/{method}"),
    log:
        "logs/train_router/{method}.log",
    benchmark:
        "benchmarks/train_router/{method}.tsv"
    wildcard_constraints:
        method="|".join(METHODS),
    priority: CHAIN_PRIORITY
    conda:
        "../envs/torch.yaml"
    # A GPU only for the base-model encoder; the sentence encoders (minilm) are small enough for the CPU.
    resources:
        gpu=GPU_REQUEST if config["router"].get("encoder") == "base" else 0,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(config["router"]),
        experts=json_param(config["experts"]),
        seed=config["seed"],
    shell:
        "python -m gs.router.train --train {input.train} --expert-params {params.experts} --method {wildcards.method}"
        " --assignments {input.assignments} --params {params.cfg} --model-dir {input.model}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


rule router_table:
    input:
        expand("results/router/{method}", method=METHODS),
    output:
        md=report(
            "results/tables/router.md",
            caption="../report/router_table.rst",
            category="Tables",
        ),
        csv="results/tables/router.csv",
    log:
        "logs/router_table/router_table.log",
    benchmark:
        "benchmarks/router_table/router_table.tsv"
    conda:
        "../envs/report.yaml"
    params:
        routers=" ".join(f"{m}=results/router/{m}" for m in METHODS),
    shell:
        "python -m gs.router.table --routers {params.routers} --out-table results/tables/router > {log} 2>&1"
