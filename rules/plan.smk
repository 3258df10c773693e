# The resource plan, the DAG's first rule: predicted device/host memory and time of every stage
# against the resources the profile gives it (gs.plan); it fails with one line when one cannot fit.
PLAN_CONFIGFILE = (
    [str(f) for f in workflow.overwrite_configfiles] or ["config/config.yaml"]
)[-1]


rule plan:
    input:
        PLAN_CONFIGFILE,
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
        "python -m gs.plan --configfile {input} --out-csv {output.csv} --out-md {output.md}"
        " --out-dtype {output.dtype} > {log} 2>&1"
