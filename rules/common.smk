# Helpers shared by the rule files: config sections as shell-safe JSON, and paths.
import json
import shlex

DOMAINS = list(config["data"]["domains"])


def as_json(section):
    """A config section as one shell-quoted JSON argument (the gs CLIs take --params JSON)."""
    return shlex.quote(json.dumps(section, sort_keys=True))


def model_dir():
    return f"resources/models/{config['model']['name']}"

# The clustering methods compared (wildcard {method}) and the projection-size ablation (rp<p>).
METHODS = list(config["cluster"]["methods"])
ABLATION_METHODS = [f"rp{p}" for p in config["cluster"].get("ablation_dims", [])]
QUALITY_METHODS = METHODS + ABLATION_METHODS

# ClusterUCB: the target domains and the selection methods compared at the same selected size.
TARGETS = list(config["selection"]["targets"])
SELECTORS = ["clusterucb", "full", "random"]
