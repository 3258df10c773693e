rule tables_and_figures:
    input:
        evals=expand("results/eval/{system}.json", system=SYSTEMS),
        selection_evals=expand("results/eval/{system}.json", system=SELECTION_SYSTEMS),
        selections=expand("results/selection/{target}/selection.json", target=TARGETS),
        latency="results/latency/latency.csv" if GRADIENTSPACE else [],
        cpu_dtype="results/plan/cpu_dtype.json",
        # Not read: the compute table lists every job's benchmark, so every other product of `all` ends
        # first (with the longest path scheduled first, cluster quality could otherwise end after it).
        others=OTHER_PRODUCTS,
    output:
        main=report(
            "results/tables/main.md",
            caption="../report/main_table.rst",
            category="Tables",
        ),
        main_csv="results/tables/main.csv",
        likelihood=report(
            "results/tables/likelihood.md",
            caption="../report/likelihood_table.rst",
            category="Tables",
        ),
        likelihood_csv="results/tables/likelihood.csv",
        likelihood_paired_csv="results/tables/likelihood_paired.csv",
        likelihood_png=report(
            "results/figures/likelihood.png",
            caption="../report/likelihood_figure.rst",
            category="Figures",
        ),
        paired=report(
            "results/tables/paired.md",
            caption="../report/paired_table.rst",
            category="Tables",
        ),
        paired_csv="results/tables/paired.csv",
        latency=report(
            "results/tables/latency.md",
            caption="../report/latency_table.rst",
            category="Tables",
        ),
        clusterucb=report(
            "results/tables/clusterucb.md",
            caption="../report/clusterucb_table.rst",
            category="Tables",
        ),
        clusterucb_paired_csv="results/tables/clusterucb_paired.csv",
        clusterucb_budget=report(
            "results/tables/clusterucb_budget.md",
            caption="../report/clusterucb_budget_table.rst",
            category="Tables",
        ),
        clusterucb_ablation=report(
            "results/tables/clusterucb_ablation.md",
            caption="../report/clusterucb_ablation_table.rst",
            category="Tables",
        ),
        budget_png=report(
            "results/figures/clusterucb_budget.png",
            caption="../report/clusterucb_budget_figure.rst",
            category="Figures",
        ),
        compute="results/tables/compute.csv",
    log:
        "logs/tables_and_figures/report.log",
    benchmark:
        "benchmarks/tables_and_figures/report.tsv"
    conda:
        "../envs/report.yaml"
    params:
        evals=" ".join(f"{s}=results/eval/{s}.json" for s in SYSTEMS),
        selection_evals=" ".join(
            f"{s}=results/eval/{s}.json" for s in SELECTION_SYSTEMS
        ),
        targets=" ".join(TARGETS),
        seed=config["seed"],
        latency=lambda wildcards, input: input.latency or "none",
    shell:
        "python -m gs.report.build --eval {params.evals} --selection-eval {params.selection_evals}"
        " --targets {params.targets} --seed {params.seed}"
        " --cpu-dtype {input.cpu_dtype} --latency {params.latency} > {log} 2>&1"
