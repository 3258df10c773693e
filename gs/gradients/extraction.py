"""Gradient features of the training pool, computed in streaming passes that never store gradients.

``rules/gradients.smk``, rule ``extract_gradient_features``, after the warm-up
(:mod:`gs.gradients.warmup`): one pass over the pool through the warm-up adapter. The per-sample
LoRA gradients come a window at a time (w, d) (:func:`gs.gradients.passes.gradient_window` records,
batched by length inside it; d the full LoRA dimension), are L2-normalised (clustering by direction,
cosine geometry) and fed to (a) the online SVD (:mod:`gs.gradients.svd`) in full dimension, one
``batch_size`` chunk at a time, and (b) the seeded random projectors of the ELREA baseline and the
projection-size ablation (:mod:`gs.gradients.projection`), the whole window in one call; then the window
is dropped. Memory: O(d (r + w) + n r + n p). The SVD state sits on the model's device by default, and
the whole streaming state is checkpointed at the first window end after every ``checkpoint_every``
batches to ``<out>/.extract_state/`` so that a killed job resumes.

The coherence pass after clustering is :mod:`gs.cluster.coherence`; the sharded form of this pass
(``gradients.shards > 1``) is :mod:`gs.gradients.shards`.
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
import torch

from gs.data.prepare import load_records
from gs.gradients.passes import add_pass_arguments, gradient_model, normalise_rows, pool_gradients, state_device
from gs.gradients.projection import Projector, projector_dtype
from gs.gradients.svd import OnlineSVD, make_online_svd
from gs.io import InputError, atomic_path, parse_params, run_cli, write_json
from gs.models.lora import seed_everything

# --------------------------------------------------------------------------- resumable state

STATE_DIR = ".extract_state"  # beside the outputs: results/gradients/.extract_state/
DIE_AFTER_ENV = "GS_TEST_DIE_AFTER_BATCHES"  # tests only: SIGKILL at the first window end after that many batches


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
    and dtype, and for a shard (:mod:`gs.gradients.shards`) its ``(index, count)``. A saved state with another
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


class Progress:
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


def _load_state(state_file: Path, fingerprint: str, progress: Progress, svd: OnlineSVD) -> bool:
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

    done: Progress
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

    ``dtype``: a Rademacher projector's, :func:`gs.gradients.projection.projector_dtype` of the model's dtype and
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
    at the first window end after every ``checkpoint_every`` batches the state goes to ``state_file``
    (module docstring of :func:`extract_features`), and a valid state there is resumed from (at a
    window's end, so the resumed run forms the same windows and the SVD the same updates). ``keep``: also write the
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
    done = Progress(dims)
    if not _load_state(state_file, fingerprint, done, svd):
        done, svd = Progress(dims), new_online_svd(params, device)  # nothing half-restored survives
    proj_dtype = projector_dtype(next(model.parameters()).dtype, device)
    projectors: dict[int, Projector] = {} if done.d is None else make_projectors(params, done.d, seed, proj_dtype)
    die_after, ran = int(os.environ.get(DIE_AFTER_ENV, "0")), 0
    start = time.perf_counter()
    resumed_at = saved_at = done.batches
    rest = records[done.batches * batch_size :]

    def stream(loss: str, progress: bool):
        return pool_gradients(model, tok, rest, params, loss_on=loss, progress=progress, on_device=on_device)

    # Both streams come window by window (gs.gradients.passes.gradient_window, a multiple of batch_size,
    # counted from ``rest``'s start: a resumed run restarts at a saved window's end and forms the same
    # windows). The SVD sees each window in consecutive chunks of batch_size rows, the update sequence of
    # one batch at a time; the projectors see the whole window in one call.
    elrea_stream = stream(elrea_loss, False) if elrea_loss != loss_on else None
    kept: np.memmap | None = None
    for window_ids, grads in stream(loss_on, True):
        if not projectors:
            done.d = int(grads.shape[1])
            projectors = make_projectors(params, done.d, seed, proj_dtype)
        if keep is not None and kept is None:
            kept = open_kept_gradients(keep, len(records), int(grads.shape[1]), resume=done.batches > 0)
        done.ids.extend(window_ids)
        done.norms.append(grads.norm(dim=1).cpu().numpy())
        feats = normalise_rows(grads, inplace=True) if normalise else grads  # the raw rows are not used again
        if kept is not None:
            row = done.batches * batch_size
            kept[row : row + feats.shape[0]] = feats.float().cpu().numpy()
        for chunk in range(0, feats.shape[0], batch_size):
            svd.partial_fit(feats[chunk : chunk + batch_size])
        for p, proj in projectors.items():
            done.projected[p].append(proj.transform(feats))
        if elrea_stream is None:
            done.elrea.append(done.projected[elrea_dim][-1])
        else:
            elrea_ids, elrea_grads = next(elrea_stream)
            if elrea_ids != window_ids:
                raise InputError(f"the {elrea_loss} gradients came in windows other than the {loss_on} ones")
            elrea_feats = normalise_rows(elrea_grads, inplace=True) if normalise else elrea_grads
            done.elrea.append(projectors[elrea_dim].transform(elrea_feats))
            del elrea_grads, elrea_feats
        window_batches = -(-feats.shape[0] // batch_size)
        del grads, feats
        done.batches += window_batches
        # A checkpoint only at a window's end, once checkpoint_every batches have passed since the last.
        if every and done.batches - saved_at >= every and done.batches < n_batches:
            if kept is not None:
                kept.flush()  # the rows up to this checkpoint are on disk before the state says so
            _save_state(state_file, done.payload(fingerprint, svd, done.seconds + time.perf_counter() - start))
            saved_at = done.batches
        ran += window_batches
        if die_after and ran >= die_after:
            os.kill(os.getpid(), signal.SIGKILL)  # tests only: a real, uncatchable kill at a window's end
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
    done: Progress,
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
    ``normalize``), for the projection ablation (:mod:`gs.cluster.ablation`): 177 MB at the CPU default, never at
    paper scale (n d floats).

    Checkpoints: at the first window end after every ``checkpoint_every`` batches (0: never; windows:
    :func:`gs.gradients.passes.gradient_window`) the SVD state, the features so far
    and the position in the pool go to ``out_dir/.extract_state/state.pt`` (atomically, one file;
    not a workflow output). A run that finds a state with this extraction's
    :func:`extraction_fingerprint` continues after its last batch and ends with bit-identical
    results; a stale or unreadable state is discarded with a log line. The folder is removed on
    success. A method without tracked coordinates (FD) checkpoints once more before its second
    pass, which itself restarts from the pool's start after a kill. The SVD state lives on
    ``svd.device`` (``auto``: the model's device) in ``svd.dtype`` (:mod:`gs.gradients.svd`); gradients stay
    on the model's device when that is the SVD's. Device memory beyond the model: the SVD's peak
    (``d (2 m + 3 b)`` state-dtype words, :class:`gs.gradients.svd.OnlineSVD`) plus the ``(w, d)`` float32
    window of gradients (normalised in place; two with ``elrea_loss_on != loss_on``) and the ``(b, d)``
    batch being computed (none when the window is one batch).
    The sharded form of this pass (``gradients.shards > 1``) is :mod:`gs.gradients.shards`.
    """

    seed_everything(seed)
    records = load_records(train_path)
    model, tok = gradient_model(model_dir, warmup_dir)
    rank = int(params["svd"]["rank"])
    if rank > len(records):
        raise InputError(f"svd rank={rank} is larger than the number of samples n={len(records)}")
    device, on_device = state_device(model, params)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Streaming gradient features of the pool (one pass).")
    add_pass_arguments(parser)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    extract_features(args.model_dir, args.warmup, args.train, parse_params(args.params), args.seed, args.out_dir)


if __name__ == "__main__":
    run_cli(main)
