"""Gradient features of the training pool, computed in streaming passes that never store gradients.

Three steps (``rules/gradients.smk``):

1. ``warmup``: a short LoRA on a seeded fraction of the pooled training data (as LESS and ELREA
   do: per-sample gradients of an untrained LoRA are degenerate, its B being zero), with
   per-epoch checkpoints and Adam moments (LESS's preconditioner, used by :mod:`gs.selection`).
2. ``extract``: one pass over the pool through the warm-up adapter. Each batch of per-sample
   LoRA gradients (b, d), d the full LoRA dimension, is L2-normalised (clustering by direction,
   cosine geometry) and fed to (a) the online SVD (:mod:`gs.svd`) in full dimension and (b) the
   seeded random projectors of the ELREA baseline and the projection-size ablation
   (:mod:`gs.projection`); then the batch is dropped. Memory: O(d (r + b) + n r + n p). The
   SVD state sits on the model's device by default, and the whole streaming state is checkpointed
   every ``checkpoint_every`` batches to ``<out>/.extract_state/`` so that a killed job resumes.
3. ``coherence`` (after clustering): one more pass that sums the normalised gradients per cluster
   of every method, which gives each cluster's exact mean pairwise cosine (:mod:`gs.quality`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from gs.data import load_records
from gs.io import InputError, atomic_path, parse_params, run_cli, write_json
from gs.models import load_model, load_tokenizer
from gs.projection import Projector, projector_dtype
from gs.svd import OnlineSVD, make_online_svd, resolve_device
from gs.training import LoraSpec, TrainSpec, load_adapter, seed_everything, train_lora


def warmup_subset(records: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """A seeded random ``fraction`` of the pool (at least one sample), in pool order."""
    if not 0 < fraction <= 1:
        raise InputError(f"warm-up fraction must be in (0, 1], got {fraction}")
    n = max(1, int(round(fraction * len(records))))
    keep = set(np.random.default_rng(seed).choice(len(records), size=n, replace=False).tolist())
    return [r for i, r in enumerate(records) if i in keep]


def run_warmup(model_dir: str, train_path: str, params: dict[str, Any], seed: int, out_dir: str) -> dict[str, Any]:
    """Train the warm-up adapter with per-epoch checkpoints; returns the training summary."""
    records = load_records(train_path)
    subset = warmup_subset(records, float(params["fraction"]), seed)
    model = load_model(model_dir)
    tok = load_tokenizer(model_dir)
    summary = train_lora(
        model,
        tok,
        subset,
        LoraSpec.from_config(params["lora"]),
        TrainSpec.from_config(params["train"]),
        out_dir,
        seed=seed,
        checkpoints=True,
        desc="warm-up LoRA",
    )
    print(json.dumps({k: summary[k] for k in ("samples", "steps", "first_loss", "last_loss")}))
    return summary


def normalise_rows(grads: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; zero rows stay zero (no NaN)."""
    norms = grads.norm(dim=1, keepdim=True)
    return grads / norms.clamp_min(torch.finfo(grads.dtype).tiny)


def _gradient_model(model_dir: str, warmup_dir: str) -> tuple[Any, Any]:
    """The prepared model (its saved dtype and device) with the warm-up adapter, and its tokenizer."""
    model = load_adapter(load_model(model_dir), warmup_dir, trainable=True)
    return model, load_tokenizer(model_dir)


def pool_gradients(
    model: Any,
    tok: Any,
    records: list[dict[str, Any]],
    params: dict[str, Any],
    *,
    loss_on: str | None = None,
    progress: bool = True,
    on_device: bool = False,
):
    """:func:`gs.gradients.iter_gradients` with the ``gradients`` config's batch size, length and loss."""
    from gs.gradients import iter_gradients

    return iter_gradients(
        model,
        tok,
        records,
        batch_size=int(params["batch_size"]),
        max_length=int(params["max_length"]),
        loss_on=loss_on or params.get("loss_on", "response"),
        progress=progress,
        on_device=on_device,
    )


def _state_device(model: Any, params: dict[str, Any]) -> tuple[torch.device, bool]:
    """The device of the streaming state (config ``svd.device``; ``auto``: the model's) and whether
    it is the model's, in which case gradients stay there."""
    model_device = next(model.parameters()).device
    name = params["svd"].get("device", "auto")
    device = model_device if name == "auto" else resolve_device(name)
    return device, device == model_device


# --------------------------------------------------------------------------- resumable state

STATE_DIR = ".extract_state"  # beside the outputs: results/gradients/.extract_state/
DIE_AFTER_ENV = "GS_TEST_DIE_AFTER_BATCHES"  # tests only: SIGKILL this process after that many batches


def _sha256_file(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def extraction_fingerprint(
    model_dir: str,
    warmup_dir: str,
    train_path: str,
    params: dict[str, Any],
    seed: int,
    svd: OnlineSVD,
    shard: tuple[int, int] | None = None,
) -> str:
    """sha256 of everything an extraction's result depends on: the ``gradients`` params (less
    ``checkpoint_every`` and ``shards``), the seed, the pool file's bytes (ids and texts), the warm-up
    adapter's files, the model folder's JSON files and weight file sizes, the SVD state's device kind
    and dtype, and for a shard (:mod:`gs.shards`) its ``(index, count)``. A saved state with another
    fingerprint is stale."""
    h = hashlib.sha256()
    kept = {k: v for k, v in params.items() if k not in ("checkpoint_every", "shards")}
    meta: dict[str, Any] = {"params": kept, "seed": seed, "svd": [svd.device.type, str(svd.dtype)]}
    if shard is not None:
        meta["shard"] = list(shard)
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    _sha256_file(Path(train_path), h)
    for f in sorted(p for p in Path(warmup_dir).iterdir() if p.is_file()):
        h.update(f.name.encode())
        _sha256_file(f, h)
    for f in sorted(p for p in Path(model_dir).iterdir() if p.is_file()):
        h.update(f.name.encode())
        if f.suffix == ".json":
            _sha256_file(f, h)
        else:
            h.update(str(f.stat().st_size).encode())
    return h.hexdigest()


class _Progress:
    """What an extraction has streamed so far: the parts a checkpoint holds, besides the SVD."""

    def __init__(self, dims: list[int]) -> None:
        self.batches = 0
        self.d: int | None = None
        self.ids: list[str] = []
        self.norms: list[np.ndarray] = []
        self.projected: dict[int, list[np.ndarray]] = {p: [] for p in dims}
        self.elrea: list[np.ndarray] = []
        self.seconds = 0.0

    def payload(self, fingerprint: str, svd: OnlineSVD, seconds: float) -> dict[str, Any]:
        """The checkpoint: CPU tensors and plain values only (``torch.load(weights_only=True)``)."""

        def cat(parts: list[np.ndarray], width: int) -> torch.Tensor:
            return torch.from_numpy(np.concatenate(parts) if parts else np.zeros((0, width), np.float32))

        return {
            "fingerprint": fingerprint,
            "batches": self.batches,
            "d": self.d,
            "ids": list(self.ids),
            "norms": torch.from_numpy(np.concatenate(self.norms) if self.norms else np.zeros(0, np.float32)),
            "projected": {str(p): cat(v, p) for p, v in self.projected.items()},
            "elrea": cat(self.elrea, 0),
            "seconds": seconds,
            "svd": svd.state_dict(),
        }

    def restore(self, state: dict[str, Any], svd: OnlineSVD) -> None:
        """Take over a checkpoint's arrays and load its SVD state into ``svd``."""
        if sorted(state["projected"]) != sorted(str(p) for p in self.projected):
            raise InputError(f"projection sizes {sorted(state['projected'])} differ")
        self.batches, self.d, self.ids = int(state["batches"]), state["d"], list(state["ids"])
        self.norms = [state["norms"].numpy()]
        self.projected = {p: [state["projected"][str(p)].numpy()] for p in self.projected}
        self.elrea = [state["elrea"].numpy()]
        self.seconds = float(state["seconds"])
        svd.load_state_dict(state["svd"])
        if svd.n_seen_ != len(self.ids) or len(self.norms[0]) != len(self.ids):
            raise InputError(f"state holds {svd.n_seen_} SVD rows for {len(self.ids)} ids")


def _load_state(state_file: Path, fingerprint: str, progress: _Progress, svd: OnlineSVD) -> bool:
    """Resume from ``state_file`` if it is a valid state of this extraction; a stale or unreadable
    one is discarded with a log line. Returns whether it resumed."""
    if not state_file.is_file():
        return False
    try:
        state = torch.load(state_file, weights_only=True, map_location="cpu")
        if state.get("fingerprint") != fingerprint:
            raise InputError("it was made for other inputs (params, pool, warm-up adapter, model or SVD device)")
        progress.restore(state, svd)
    except Exception as e:  # noqa: BLE001 -- any unusable state is discarded, never trusted
        print(f"discarding the extraction state {state_file}: {e}", file=sys.stderr)
        shutil.rmtree(state_file.parent, ignore_errors=True)
        return False
    print(f"resuming the extraction from {state_file} after {progress.batches} batches", file=sys.stderr)
    return True


def _save_state(state_file: Path, payload: dict[str, Any]) -> None:
    with atomic_path(state_file) as tmp:
        torch.save(payload, tmp)


class Streamed(NamedTuple):
    """What one streaming pass over (a slice of) the pool leaves: the features so far, the online
    SVD, the projectors (``{p: Projector}``, empty if no gradient came) and the pass's seconds."""

    done: _Progress
    svd: OnlineSVD
    projectors: dict[int, Projector]
    seconds: float
    fingerprint: str
    elrea_dim: int
    elrea_loss: str
    resumed_at: int


def new_online_svd(params: dict[str, Any], device: torch.device) -> OnlineSVD:
    """The ``gradients.svd`` config's online SVD, its state on ``device``."""
    svd_cfg = params["svd"]
    options = svd_cfg.get("options", {})
    return make_online_svd(
        svd_cfg["method"], int(svd_cfg["rank"]), device=device, dtype=svd_cfg.get("dtype", "auto"), **options
    )


def projection_dims(params: dict[str, Any]) -> list[int]:
    """Every projection size of one extraction: the ablation's ``dims`` and ELREA's ``elrea_dim``."""
    proj_cfg = params["projection"]
    return sorted({int(p) for p in proj_cfg["dims"]} | {int(proj_cfg["elrea_dim"])})


def make_projectors(
    params: dict[str, Any], d: int, seed: int, dtype: torch.dtype = torch.float32
) -> dict[int, Projector]:
    """``{p: Projector}`` of gradient dimension ``d``, seeded ``seed + p`` (the same in every shard).

    ``dtype``: a Rademacher projector's, :func:`gs.projection.projector_dtype` of the model's dtype and
    device (the model's on a GPU, as LESS ``collect_grads`` builds it; float32 on the CPU).
    """
    kind = params["projection"].get("kind", "sparse")
    extra = {"dtype": dtype} if kind == "rademacher" else {}
    return {p: Projector(kind, d, p, seed + p, **extra) for p in projection_dims(params)}


def stream_features(
    model: Any,
    tok: Any,
    records: list[dict[str, Any]],
    params: dict[str, Any],
    seed: int,
    state_file: Path,
    fingerprint_of: Any,
    device: torch.device,
    on_device: bool,
    keep: Path | None = None,
) -> Streamed:
    """One resumable streaming pass of ``records`` into a fresh online SVD and the projectors.

    ``fingerprint_of(svd)`` gives the extraction's fingerprint (:func:`extraction_fingerprint`);
    every ``checkpoint_every`` batches the state goes to ``state_file`` (module docstring of
    :func:`extract_features`), and a valid state there is resumed from. ``keep``: also write the
    rows the SVD sees, ``(n, d)`` float32, into this ``.npy`` file (:func:`open_kept_gradients`).
    """
    svd = new_online_svd(params, device)
    dims = projection_dims(params)
    normalise = bool(params.get("normalize", True))
    loss_on = params.get("loss_on", "response")
    # ELREA takes its gradient features on the instruction tokens (a test prompt has no answer, and
    # its routing gradient must live in the same space): a second gradient of the same batch.
    elrea_loss = params.get("elrea_loss_on", "instruction")
    elrea_dim = int(params["projection"]["elrea_dim"])
    batch_size, every = int(params["batch_size"]), int(params.get("checkpoint_every", 100))
    n_batches = -(-len(records) // batch_size)

    fingerprint = fingerprint_of(svd)
    done = _Progress(dims)
    if not _load_state(state_file, fingerprint, done, svd):
        done, svd = _Progress(dims), new_online_svd(params, device)  # nothing half-restored survives
    proj_dtype = projector_dtype(next(model.parameters()).dtype, device)
    projectors: dict[int, Projector] = {} if done.d is None else make_projectors(params, done.d, seed, proj_dtype)
    die_after, ran = int(os.environ.get(DIE_AFTER_ENV, "0")), 0
    start = time.perf_counter()
    resumed_at = done.batches
    rest = records[done.batches * batch_size :]

    def stream(loss: str, progress: bool):
        return pool_gradients(model, tok, rest, params, loss_on=loss, progress=progress, on_device=on_device)

    elrea_stream = stream(elrea_loss, False) if elrea_loss != loss_on else None
    kept: np.memmap | None = None
    for batch_ids, grads in stream(loss_on, True):
        if not projectors:
            done.d = int(grads.shape[1])
            projectors = make_projectors(params, done.d, seed, proj_dtype)
        if keep is not None and kept is None:
            kept = open_kept_gradients(keep, len(records), int(grads.shape[1]), resume=done.batches > 0)
        done.ids.extend(batch_ids)
        done.norms.append(grads.norm(dim=1).cpu().numpy())
        feats = normalise_rows(grads) if normalise else grads
        if kept is not None:
            row = done.batches * batch_size
            kept[row : row + feats.shape[0]] = feats.float().cpu().numpy()
        svd.partial_fit(feats)
        for p, proj in projectors.items():
            done.projected[p].append(proj.transform(feats))
        if elrea_stream is None:
            done.elrea.append(done.projected[elrea_dim][-1])
        else:
            _, elrea_grads = next(elrea_stream)
            elrea_feats = normalise_rows(elrea_grads) if normalise else elrea_grads
            done.elrea.append(projectors[elrea_dim].transform(elrea_feats))
        del grads, feats
        done.batches += 1
        if every and done.batches % every == 0 and done.batches < n_batches:
            if kept is not None:
                kept.flush()  # the rows up to this checkpoint are on disk before the state says so
            _save_state(state_file, done.payload(fingerprint, svd, done.seconds + time.perf_counter() - start))
        ran += 1
        if ran == die_after:
            os.kill(os.getpid(), signal.SIGKILL)  # tests only: a real, uncatchable kill
    if kept is not None:
        kept.flush()
        del kept
    done.seconds += time.perf_counter() - start
    return Streamed(done, svd, projectors, done.seconds, fingerprint, elrea_dim, elrea_loss, resumed_at)


KEPT_GRADIENTS = "gradients.npy"  # gradients.keep_gradients: the (n, d) rows the SVD saw, beside features.npz


def open_kept_gradients(path: Path, n: int, d: int, *, resume: bool) -> np.memmap:
    """The ``(n, d)`` float32 ``.npy`` memory map the extraction writes its rows into, in pool order.

    A fresh pass creates it (``w+``); a resumed one reopens it (``r+``): the rows before the resumed
    batch were flushed before their checkpoint was saved. A missing or mis-shaped file on resume is an
    :class:`InputError` (the state folder holds both; delete it to start over).
    """
    if not resume:
        path.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    if not path.is_file():
        raise InputError(f"{path}: kept gradients missing beside the extraction state; delete {path.parent}")
    kept = np.lib.format.open_memmap(path, mode="r+")
    if kept.shape != (n, d) or kept.dtype != np.float32:
        raise InputError(f"{path}: kept gradients are {kept.dtype} {kept.shape}, expected float32 ({n}, {d})")
    return kept


def second_pass_coordinates(
    model: Any, tok: Any, records: list[dict[str, Any]], params: dict[str, Any], svd: OnlineSVD, on_device: bool
) -> np.ndarray:
    """``(n, k)`` coordinates ``x_i @ components_.T`` of ``records``' (normalised) gradients: one more pass."""
    normalise = bool(params.get("normalize", True))
    parts = [
        svd.transform(normalise_rows(g) if normalise else g)
        for _, g in pool_gradients(model, tok, records, params, on_device=on_device)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, svd.components_tensor().shape[0]))


def write_features(
    out: Path,
    done: _Progress,
    coords: np.ndarray,
    singular_values: np.ndarray,
    components: torch.Tensor,
    projectors: dict[int, Projector],
    elrea_dim: int,
    elrea_loss: str,
) -> dict[str, np.ndarray]:
    """Write ``features.npz``, ``svd_components.npy`` and ``projector_<p>.joblib`` (arrays as in
    :func:`extract_features`); returns the arrays."""
    arrays = {
        "ids": np.array(done.ids),
        "norms": np.concatenate(done.norms).astype(np.float32),
        "svd_coords": np.asarray(coords, dtype=np.float32),
        "singular_values": np.asarray(singular_values, dtype=np.float64),
        "elrea_dim": np.array(elrea_dim),
        "elrea_features": np.concatenate(done.elrea),
        "elrea_loss_on": np.array(elrea_loss),
        **{f"projected_{p}": np.concatenate(v) for p, v in done.projected.items()},
    }
    with atomic_path(out / "features.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    with atomic_path(out / "svd_components.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, components.float().cpu().numpy())
    for p, proj in projectors.items():
        proj.save(out / f"projector_{p}.joblib")
    return arrays


def extract_features(
    model_dir: str,
    warmup_dir: str,
    train_path: str,
    params: dict[str, Any],
    seed: int,
    out_dir: str,
) -> dict[str, Any]:
    """Stream the pool's per-sample gradients into the online SVD and the projectors, resumably.

    Writes ``out_dir/features.npz`` (``ids`` (n,) (no domain labels), ``norms`` (n,), ``svd_coords``
    (n, r), ``singular_values`` (r,), ``projected_<p>`` (n, p) for each size p of the same gradients,
    ``elrea_features`` (n, elrea_dim): ELREA's features, the projection of gradients taken with
    ``elrea_loss_on`` (default instruction tokens), and ``elrea_dim``), ``svd_components.npy``
    (r, d), ``projector_<p>.joblib`` and ``extract.json`` (d, n, timings, streaming state size); with
    ``keep_gradients: true`` also ``gradients.npy`` (n, d) float32, the rows the SVD saw (normalised when
    ``normalize``), for the projection ablation (:mod:`gs.ablation`): 177 MB at the CPU default, never at
    paper scale (n d floats).

    Checkpoints: every ``checkpoint_every`` batches (0: never) the SVD state, the features so far
    and the position in the pool go to ``out_dir/.extract_state/state.pt`` (atomically, one file;
    not a workflow output). A run that finds a state with this extraction's
    :func:`extraction_fingerprint` continues after its last batch and ends with bit-identical
    results; a stale or unreadable state is discarded with a log line. The folder is removed on
    success. A method without tracked coordinates (FD) checkpoints once more before its second
    pass, which itself restarts from the pool's start after a kill. The SVD state lives on
    ``svd.device`` (``auto``: the model's device) in ``svd.dtype`` (:mod:`gs.svd`); gradients stay
    on the model's device when that is the SVD's. Device memory beyond the model: the SVD's peak
    (``d (2 m + 3 b)`` state-dtype words, :class:`gs.svd.OnlineSVD`) plus the ``(b, d)`` float32
    gradients (two, normalised and raw; three with ``elrea_loss_on != loss_on``).
    The sharded form of this pass (``gradients.shards > 1``) is :mod:`gs.shards`.
    """

    seed_everything(seed)
    records = load_records(train_path)
    model, tok = _gradient_model(model_dir, warmup_dir)
    rank = int(params["svd"]["rank"])
    if rank > len(records):
        raise InputError(f"svd rank={rank} is larger than the number of samples n={len(records)}")
    device, on_device = _state_device(model, params)
    out = Path(out_dir)
    state_file = out / STATE_DIR / "state.pt"

    def fingerprint_of(svd: OnlineSVD) -> str:
        return extraction_fingerprint(model_dir, warmup_dir, train_path, params, seed, svd)

    keep = out / STATE_DIR / KEPT_GRADIENTS if params.get("keep_gradients") else None
    res = stream_features(model, tok, records, params, seed, state_file, fingerprint_of, device, on_device, keep=keep)
    done, svd = res.done, res.svd
    every = int(params.get("checkpoint_every", 100))
    n_batches = -(-len(records) // int(params["batch_size"]))
    start = time.perf_counter()
    coords = svd.seen_coordinates()
    second_pass = coords is None
    if second_pass:  # methods that do not track the left factor need a second pass
        if every and not (state_file.is_file() and res.resumed_at == n_batches):
            _save_state(state_file, done.payload(res.fingerprint, svd, res.seconds))
        coords = second_pass_coordinates(model, tok, records, params, svd, on_device)
    seconds = res.seconds + time.perf_counter() - start
    d = done.d
    arrays = write_features(
        out, done, coords, svd.singular_values_, svd.components_tensor(), res.projectors, res.elrea_dim, res.elrea_loss
    )
    batch_size = int(params["batch_size"])
    state_bytes = 4 if svd.dtype == torch.float32 else 8
    summary = {
        "n": len(done.ids),
        "d": int(d or 0),
        "rank": rank,
        "svd_method": params["svd"]["method"],
        "svd_device": svd.device.type,
        "svd_dtype": str(svd.dtype).removeprefix("torch."),
        "singular_values": arrays["singular_values"].tolist(),
        "projection_dims": projection_dims(params),
        "seconds": round(seconds, 2),
        "second_pass": second_pass,
        "streaming_state_mb": round(state_bytes * (int(d or 0) * (rank + batch_size)) / 2**20, 1),
        "stacked_gradients_mb": round(4 * int(d or 0) * len(done.ids) / 2**20, 1),
    }
    if keep is not None:  # complete: moved beside features.npz in one rename, before the state folder goes
        os.replace(keep, out / KEPT_GRADIENTS)
        summary["kept_gradients"] = KEPT_GRADIENTS
    write_json(out / "extract.json", summary)
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    print(json.dumps(summary))
    return summary


def cluster_gradient_sums(
    model_dir: str,
    warmup_dir: str,
    train_path: str,
    cluster_dirs: list[str],
    params: dict[str, Any],
    seed: int,
    shard: tuple[int, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per method, the sum of normalised full gradients and the size of each cluster (one pass).

    ``shard=(i, S)`` streams only the pool's ``i``-th of ``S`` contiguous slices
    (:func:`gs.shards.shard_bounds`); the sums and counts of the ``S`` slices add up to the pool's.

    Returns ``{method: {"sums": (k, d) tensor, "counts": (k,) int64, "sq_norms": (k,) float64}}``:
    ``sq_norms`` the squared norms ``||S_c||^2`` (all that :func:`gs.quality.coherence_from_sums`
    needs). Methods are named by their folder (``results/clusters/<method>``), which holds
    ``assignments.csv``. The sums live on the host in float64 whatever the model's device (each
    batch is normalised where the gradients are and copied to the host once, then added to every
    method's sums): ``sum_m k_m * d`` float64 words, e.g. 12 clusters x 109M x 8 B = 10.5 GB per method
    at paper scale, which on a GPU would sit beside the gradient step (7 methods: 84 GiB > 80 GB).
    """

    seed_everything(seed)
    records = load_records(train_path)
    if shard is not None:
        from gs.shards import shard_records

        records = shard_records(records, *shard)
    labels: dict[str, dict[str, int]] = {}
    for d in cluster_dirs:
        path = Path(d) / "assignments.csv"
        if not path.is_file():
            raise InputError(f"{path}: assignments file not found")
        frame = pd.read_csv(path, dtype={"id": str})
        labels[Path(d).name] = dict(zip(frame["id"], frame["cluster"].astype(int), strict=True))
    model, tok = _gradient_model(model_dir, warmup_dir)
    _, on_device = _state_device(model, params)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, np.ndarray] = {}
    for batch_ids, grads in pool_gradients(model, tok, records, params, on_device=on_device):
        feats = normalise_rows(grads).to(device="cpu", dtype=torch.float64)  # (b, d), one copy to the host
        for method, lab in labels.items():
            try:
                idx = torch.tensor([lab[i] for i in batch_ids])
            except KeyError as e:
                raise InputError(f"{method}: sample {e.args[0]!r} has no cluster assignment") from None
            k = max(lab.values()) + 1
            if method not in sums:
                sums[method] = torch.zeros(k, feats.shape[1], dtype=torch.float64)
                counts[method] = np.zeros(k, dtype=np.int64)
            sums[method].index_add_(0, idx, feats)
            np.add.at(counts[method], idx.numpy(), 1)
    return {
        m: {
            "sums": sums[m],
            "counts": counts[m],
            "sq_norms": np.array([float(row.square().sum()) for row in sums[m]]),
        }
        for m in sums
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Warm-up LoRA and streaming gradient features.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("warmup", "extract", "coherence"):
        p = sub.add_parser(name)
        p.add_argument("--model-dir", required=True)
        p.add_argument("--train", required=True)
        p.add_argument("--params", required=True, help="the gradients config section as JSON")
        p.add_argument("--seed", type=int, required=True)
        if name != "warmup":
            p.add_argument("--warmup", required=True)
        if name == "coherence":
            p.add_argument("--clusters", nargs="+", required=True)
            p.add_argument("--out", required=True)
        else:
            p.add_argument("--out-dir" if name == "extract" else "--out", required=True)
    args = parser.parse_args(argv)
    params = parse_params(args.params)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.cmd == "warmup":
        run_warmup(args.model_dir, args.train, params["warmup"], args.seed, args.out)
    elif args.cmd == "extract":
        extract_features(args.model_dir, args.warmup, args.train, params, args.seed, args.out_dir)
    else:
        from gs.quality import coherence_from_sums

        result = {}
        for method, s in cluster_gradient_sums(
            args.model_dir, args.warmup, args.train, args.clusters, params, args.seed
        ).items():
            # The coherence needs only ||S_c||: pass the (k, 1) norms, not the (k, d) sums.
            result[method] = coherence_from_sums(np.sqrt(s["sq_norms"])[:, None], s["counts"])
        write_json(args.out, result)
        print(json.dumps(result, default=str))


if __name__ == "__main__":
    run_cli(main)
