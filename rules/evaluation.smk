rule evaluate_system:
    input:
        system_inputs,
        plan=PLAN,
        data=lambda w: target_data(system_targets(w.system)),
    output:
        "results/eval/{system}.json",
    log:
        "logs/evaluate_system/{system}.log",
    benchmark:
        "benchmarks/evaluate_system/{system}.tsv"
    wildcard_constraints:
        system="|".join(SYSTEMS + SELECTION_SYSTEMS),
    priority: evaluation_priority
    conda:
        "../envs/evaluation.yaml"
    # One thread: decoding a 135M model on a CPU is latency-bound, so two 1-thread jobs side by side
    # finish sooner than one 2-thread job (measured); a GPU box ignores this.
    threads: 1
    resources:
        gpu=GPU_REQUEST,
        mem_mb=grow(16000),
        runtime=grow(60),
    params:
        system=lambda w: quote_json(system_spec(w.system)),
        targets=lambda w: quote_json(
            {t: TARGET_SPECS[t] for t in system_targets(w.system)}, sort_keys=False
        ),
        # What gs.evaluation.run reads (the modes decide which systems exist, not how one is scored).
        cfg=json_param(
            {
                k: v
                for k, v in config["evaluation"].items()
                if k not in ("modes", "targets", "limit")
            }
        ),
        limit=(
            f"--limit {config['evaluation']['limit']}"
            if config["evaluation"].get("limit")
            else ""
        ),
        seed=config["seed"],
    shell:
        "HF_DATASETS_OFFLINE=1 python -m gs.evaluation.run --system {params.system}"
        " --data-dir results/data --targets {params.targets} {params.limit} --params {params.cfg}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


rule latency:
    input:
        plan=PLAN,
        model=model_dir(),
    output:
        csv="results/latency/latency.csv",
        png=report(
            "results/figures/latency.png",
            caption="../report/latency_figure.rst",
            category="Latency",
        ),
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
        "python -m gs.evaluation.latency --model-dir {input.model} --params {params.cfg} --seed {params.seed}"
        " --out-csv {output.csv} --out-png {output.png} > {log} 2>&1"
