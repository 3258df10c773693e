# gradientspace-bench: GradientSpace (arXiv 2512.06678) and ClusterUCB (arXiv 2506.10288).
# Embedded default: `snakemake --cores all`. Paper scale: `--configfile config/paper.yaml`.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


# Snakemake merges a --configfile into config/config.yaml key by key. The pool's parts and the targets
# are a config's own: a config that names them replaces the default's (gs.io.take_own_sections).
from snakemake.exceptions import WorkflowError

from gs.io import InputError, read_config_file, take_own_sections

# Read again here, strictly: a key repeated within one mapping (two parts of one name) is an error rather
# than PyYAML's silent last-wins.
try:
    read_config_file("config/config.yaml")
    for _path in workflow.overwrite_configfiles or []:
        take_own_sections(config, read_config_file(_path))
except InputError as _err:
    raise WorkflowError(str(_err)) from None


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
