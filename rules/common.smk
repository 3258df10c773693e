# Helpers shared by the rule files: config sections as shell-safe JSON, and paths.
import json
import shlex

DOMAINS = list(config["data"]["domains"])


def as_json(section):
    """A config section as one shell-quoted JSON argument (the gs CLIs take --params JSON)."""
    return shlex.quote(json.dumps(section, sort_keys=True))


def model_dir():
    return f"resources/models/{config['model']['name']}"
