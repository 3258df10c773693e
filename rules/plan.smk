# The resource plan: predicted device/host memory and time of every stage against the resources the profile
# gives it (gs.plan); it fails with one line when one cannot fit.
PLAN_CONFIGFILE = (
    [str(f) for f in workflow.overwrite_configfiles] or ["config/config.yaml"]
)[-1]


# It reads the prepared pool's token lengths (its model's tokenizer), so it runs after the data rules and
# prepare_model, before any rule that runs the model.
rule plan:
    input:
        config=PLAN_CONFIGFILE,
        pool="results/data/pool/train.jsonl",
        model=model_dir(),
    output:
        csv="results/plan/plan.csv",
        md="results/plan/plan.md",
        # What dtype: auto runs in on this CPU (measured, gs.models.dtype), read by compute.md.
        dtype="results/plan/cpu_dtype.json",
    log:
        "logs/plan/plan.log",
    benchmark:
        "benchmarks/plan/plan.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m gs.plan --configfile {input.config} --pool {input.pool} --model-dir {input.model}"
        " --out-csv {output.csv} --out-md {output.md} --out-dtype {output.dtype} > {log} 2>&1"
