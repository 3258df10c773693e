"""The model architecture a plan traces: its Hugging Face config, found without loading any weights.

In order: the prepared model folder's ``config.json`` (``resources/models/<name>``, written by
``prepare_model``), the GGUF file's metadata for ``source: gguf`` (transformers reads the header),
the local folder of ``source: local``, then :data:`KNOWN_ARCHITECTURES`, copied from the hub
repositories' ``config.json`` (a plan runs before ``prepare_model`` and offline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gs.io import InputError

# ``config.json`` fields of architectures a plan may meet before the model is fetched, keyed by the
# config's ``model.repo`` (hub) or ``model.name``. Values as published on the hub:
# meta-llama/Llama-3.1-8B/config.json, meta-llama/Llama-2-7b-hf/config.json and
# HuggingFaceTB/SmolLM2-135M-Instruct/config.json.
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    },
    "meta-llama/Llama-2-7b-hf": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "HuggingFaceTB/SmolLM2-135M-Instruct": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    },
}
# The suite's model names for the same architectures (config ``model.name``).
ALIASES = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def _from_dict(fields: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def model_config(model: dict[str, Any], models_root: str | Path = "resources/models") -> tuple[Any, str]:
    """The transformers config of the ``model`` config section and where it came from.

    Returns ``(config, source)``; ``source`` names the file or table entry that was read.

    Raises:
        InputError: the architecture is in none of the places above.
    """
    from transformers import AutoConfig

    name = str(model.get("name", ""))
    prepared = Path(models_root) / name / "config.json"
    if name and prepared.is_file():
        return AutoConfig.from_pretrained(prepared.parent), str(prepared)
    source = model.get("source")
    if source == "gguf":
        from gs.models.prepare import locate_gguf

        path = locate_gguf(model["package"], model["gguf_file"])
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name), str(path)
    if source == "local" and (Path(str(model.get("path"))) / "config.json").is_file():
        return AutoConfig.from_pretrained(model["path"]), str(Path(model["path"]) / "config.json")
    key = model.get("repo") if model.get("repo") in KNOWN_ARCHITECTURES else ALIASES.get(name)
    if key is None:
        raise InputError(
            f"model {name!r}: no config.json at {prepared} and not a known architecture "
            f"({', '.join(KNOWN_ARCHITECTURES)}); run prepare_model first or add it to gs.plan.arch"
        )
    return _from_dict(KNOWN_ARCHITECTURES[key]), f"gs.plan.arch.KNOWN_ARCHITECTURES[{key!r}]"
