# gradientspace-bench: GradientSpace (arXiv 2512.06678) and ClusterUCB (arXiv 2506.10288).
# Embedded default: `snakemake --cores all`. Paper scale: `--configfile config/paper.yaml`.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


# Snakemake merges a --configfile into config/config.yaml key by key. The pool's parts and the targets
# are a config's own: a config that names them replaces the default's (gs.io.take_own_sections).
import yaml as _yaml

from gs.io import take_own_sections

for _path in workflow.overwrite_configfiles or []:
    with open(_path, encoding="utf-8") as _f:
        take_own_sections(config, _yaml.safe_load(_f) or {})


validate(config, "config/schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/plan.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/gradients.smk"
include: "rules/cluster.smk"
include: "rules/experts.smk"
include: "rules/router.smk"
include: "rules/selection.smk"
include: "rules/evaluation.smk"
include: "rules/report.smk"


rule all:
    input:
        OTHER_PRODUCTS,
        "results/tables/main.md",
        "results/tables/clusterucb.md",
