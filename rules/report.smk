rule latency:
    input:
        plan=PLAN,
        model=model_dir(),
    output:
        csv="results/latency/latency.csv",
        png=report("results/figures/latency.png", category="Latency"),
    log:
        "logs/latency/latency.log",
    benchmark:
        "benchmarks/latency/latency.tsv"
    conda:
        "../envs/torch.yaml"
    # The modes are timed side by side in one process, so their ratios hold under load; one thread
    # lets the job overlap another on a 2-core machine.
    threads: 1
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        cfg=json_param(config["latency"]),
        seed=config["seed"],
    shell:
        "python -m gs.latency --model-dir {input.model} --params {params.cfg} --seed {params.seed}"
        " --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"


rule tables_and_figures:
    input:
        evals=expand("results/eval/{system}.json", system=SYSTEMS),
        selection_evals=expand("results/eval/{system}.json", system=SELECTION_SYSTEMS),
        selections=expand("results/selection/{target}/selection.json", target=TARGETS),
        latency="results/latency/latency.csv",
        cpu_dtype="results/plan/cpu_dtype.json",
        # Not read: the compute table lists every job's benchmark, so every other product of `all` ends
        # first (with the longest path scheduled first, cluster quality could otherwise end after it).
        others=OTHER_PRODUCTS,
    output:
        main=report("results/tables/main.md", category="Tables"),
        main_csv="results/tables/main.csv",
        likelihood=report("results/tables/likelihood.md", category="Tables"),
        likelihood_csv="results/tables/likelihood.csv",
        likelihood_paired_csv="results/tables/likelihood_paired.csv",
        likelihood_png=report("results/figures/likelihood.png", category="Figures"),
        paired=report("results/tables/paired.md", category="Tables"),
        paired_csv="results/tables/paired.csv",
        latency=report("results/tables/latency.md", category="Tables"),
        clusterucb=report("results/tables/clusterucb.md", category="Tables"),
        clusterucb_paired_csv="results/tables/clusterucb_paired.csv",
        clusterucb_budget=report(
            "results/tables/clusterucb_budget.md", category="Tables"
        ),
        clusterucb_ablation=report(
            "results/tables/clusterucb_ablation.md", category="Tables"
        ),
        budget_png=report("results/figures/clusterucb_budget.png", category="Figures"),
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
        domains=" ".join(DOMAINS),
        seed=config["seed"],
    shell:
        "python -m gs.report --eval {params.evals} --selection-eval {params.selection_evals}"
        " --targets {params.targets} --domains {params.domains} --seed {params.seed}"
        " --cpu-dtype {input.cpu_dtype} > {log} 2>&1"
