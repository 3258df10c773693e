"""``python -m gs.plan --configfile FILE``: the resource plan of a config (see :mod:`gs.plan`)."""

from gs.io import run_cli
from gs.plan.cli import main

if __name__ == "__main__":
    run_cli(main)
