"""Sharded gradient passes: the pool split into ``S`` contiguous slices, one job each, then a merge.

With ``gradients.shards: S > 1`` (``rules/gradients.smk``, ``rules/cluster.smk``) the extraction and the
coherence pass of :mod:`gs.gradients.extraction` run as ``S`` jobs over the slices :func:`shard_bounds` gives
(pool order kept), and a merge job makes the same files the single pass makes. ``S = 1`` is the single
pass itself (its rules and files, no code from here).

Extraction (:func:`extract_shard`): each shard streams its slice's per-sample gradients through
:func:`gs.gradients.extraction.stream_features` into its own online SVD and the projectors (same seeds in every
shard, so projected features are per-sample and simply concatenate), checkpointing to its own
``shards/<i>/.extract_state/state.pt`` as the single pass does (a killed shard resumes by itself), and
saves its final state as ``shards/<i>/shard.pt``. The merge (:func:`merge_shards`) combines the ``S``
SVD states as exactly as each algorithm allows:

Brand (:func:`merge_brand`)
    Shard ``i`` holds ``A_i ~= U_i diag(s_i) V_i^T`` (``U_i`` ``(n_i, m_i)``, ``V_i^T`` ``(m_i, d)``, its
    whole internal state, ``m_i <= rank + oversample``). Then ``A = [A_1; ...; A_S] ~= blkdiag(U_i) M``
    with ``M = [diag(s_1) V_1^T; ...; diag(s_S) V_S^T]`` ``(sum m_i, d)``. Take the exact SVD
    ``M = P Sigma W^T`` (from the small Gram matrix ``M M^T``, block by block, so the ``(sum m_i, d)``
    stack is never formed: :func:`merge_brand`). Since ``blkdiag(U_i)`` and
    ``P`` have orthonormal columns, so has their product, and ``blkdiag(U_i) P Sigma W^T`` is an SVD of
    the shards' combined approximation: the merged basis is the top-``rank`` rows of ``W^T`` and the
    coordinates of shard ``i``'s samples are ``U_i P_i Sigma = U_i diag(s_i) V_i^T W`` (``P_i`` the
    rows of ``P`` of block ``i``): the projection of the shard's rank-``m_i`` approximation onto the
    merged right basis, no second pass. On data of rank ``<= rank`` this is exact (as Brand itself);
    otherwise each shard's truncation error enters as it would have in the single pass, but at other
    points of the stream, so merged and single results differ by truncation-level amounts
    (``tests/gradients/test_shards.py`` measures it).
Frequent Directions (:func:`merge_frequent_directions`)
    FD sketches are mergeable summaries (Agarwal, Cormode, Huang, Phillips, Wei, Yi, "Mergeable
    summaries", PODS 2012 / TODS 2013; Ghashami et al., SIAM J. Comput. 2016, Sec. 3): stacking the
    sketches ``B_i`` and sketching them again keeps the guarantee with the shrinkages added,
    ``0 <= A^T A - B^T B <= sum_i delta_i + delta_merge`` (each term is PSD-bounded by its own
    shrinkage). FD keeps no left factor, so coordinates need the merged basis first: a basis job
    (:func:`merge_basis`) writes it, one coordinate job per shard makes the second pass over its slice
    (:func:`shard_coordinates`, ``x_i W``, exact as in the single pass), and the merge reads both.

LESS influence (:func:`influence_shard`, :func:`merge_influence`): a sample's influence on a target
depends only on its own gradient and the target's mean direction, which every shard recomputes from the
same checkpoints and seeded projector; the slices' scores concatenate and their gradient counts add.

Coherence (:func:`coherence_shard`, :func:`merge_coherence`): per-cluster sums of normalised gradients
add across slices (``S_c = sum_i S_c^(i)``), so the shards write their ``(k, d)`` sums and counts and
the merge adds them before :func:`gs.cluster.quality.coherence_from_sums`. The sums are ``sum_m k_m d`` float32
words per shard file (summed on the host in float64), the price of the exact ``||S_c||`` (a norm of a
sum is not a sum of norms).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gs.data.prepare import load_records
from gs.gradients.extraction import (
    STATE_DIR,
    Progress,
    extraction_fingerprint,
    make_projectors,
    projection_dims,
    second_pass_coordinates,
    stream_features,
    write_features,
)
from gs.gradients.passes import (
    add_pass_arguments,
    check_shard_field,
    gradient_model,
    shard_bounds,
    shard_records,
    state_device,
)
from gs.gradients.projection import projector_dtype
from gs.gradients.svd import (
    FLOAT64_EPS,
    BrandSVD,
    FrequentDirections,
    OnlineSVD,
    inner,
    make_online_svd,
    resolve_device,
    sign_flips,
    small,
)
from gs.io import InputError, atomic_path, parse_params, run_cli, write_json
from gs.models.lora import seed_everything

SHARD_FILE = "shard.pt"


# --------------------------------------------------------------------------- merging SVD states


def merge_brand(states: list[BrandSVD]) -> tuple[BrandSVD, np.ndarray]:
    """Merged SVD of the shards' Brand states and every sample's coordinates (module docstring).

    ``states`` in pool order, same rank, dimension, device and dtype. The SVD ``M = P Sigma W^T`` of the
    stacked ``M = [diag(s_i) V_i^T]`` ``(sum m_i, d)`` is taken from its small Gram matrix
    ``M M^T = P Sigma^2 P^T`` (blocks ``diag(s_i) V_i^T V_j diag(s_j)``, inner products over ``d`` in
    float64, :func:`gs.gradients.svd.inner`), and ``W^T = Sigma^-1 P^T M`` is accumulated shard by shard, so the
    stack is never formed: device memory is the shards' states plus the ``(k, d)`` result,
    ``d (sum m_i + k)`` state-dtype words. Only the top ``k <= rank`` directions are formed; the Gram
    route resolves singular values down to ``sqrt(eps)`` of the largest, far below any top-``rank`` one
    of real gradients (directions under that are dropped, as in :func:`gs.gradients.svd.exact_top_svd`).

    Returns the merged :class:`~gs.gradients.svd.BrandSVD` (``components_`` ``(k, d)`` = the top rows of ``W^T``,
    ``singular_values_`` ``(k,)``, left factor ``[U_i P_i]``) and the ``(sum n_i, k)`` coordinates
    ``U_i P_i Sigma`` of the samples, pool order, signs matching ``components_``.
    """
    first = states[0]
    factors = [s.state_factors() for s in states]
    sizes = [s.shape[0] for _, s in factors]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    gram = np.zeros((offsets[-1], offsets[-1]))
    for i, (vt_i, s_i) in enumerate(factors):
        for j in range(i, len(factors)):
            vt_j, s_j = factors[j]
            block = s_i[:, None] * inner(vt_i, vt_j) * s_j[None, :]
            gram[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]] = block
            gram[offsets[j] : offsets[j + 1], offsets[i] : offsets[i + 1]] = block.T
    lam, vec = np.linalg.eigh(gram)
    lam, vec = lam[::-1], vec[:, ::-1]
    sig = np.sqrt(np.maximum(lam, 0.0))
    top = float(sig[0]) if sig.size else 0.0
    floor = max(FLOAT64_EPS * max(first.dim or 1, gram.shape[0]) * top, np.sqrt(FLOAT64_EPS) * top)
    k = min(first.rank, int(np.count_nonzero(sig > floor)))
    sig, p = sig[:k], vec[:, :k]
    wt = factors[0][0].new_zeros((k, first.dim))
    for (vt_i, s_i), lo, hi in zip(factors, offsets[:-1], offsets[1:], strict=True):
        if k and hi > lo:
            wt.addmm_(small((p[lo:hi] * s_i[:, None]).T / sig[:, None], wt), vt_i)
    signs = sign_flips(wt)
    left = np.concatenate(
        [state.left_factor()[:, :m] @ p[lo : lo + m] for state, m, lo in zip(states, sizes, offsets, strict=False)]
    )
    merged = BrandSVD(first.rank, oversample=first.oversample, device=first.device, dtype=first.dtype)
    merged.load_state_dict(
        {
            "method": merged.method,
            "rank": merged.rank,
            "options": {"oversample": merged.oversample},
            "dtype": str(merged.dtype).removeprefix("torch."),
            "dim": first.dim,
            "n_seen": left.shape[0],
            "vt": wt.cpu(),
            "s": torch.from_numpy(sig.copy()),
            "u_rows": [torch.from_numpy(left)],
            "u_pos": [0],
            "w": [],
        }
    )
    return merged, left * (sig * signs)[None, :]


def merge_frequent_directions(states: list[FrequentDirections]) -> FrequentDirections:
    """The FD sketch of the stacked shard sketches (module docstring): ``shrinkage_`` is the sum of
    the shards' and the merge's own, a bound on ``||A^T A - B^T B||_2`` for the whole pool."""
    first = states[0]
    merged = FrequentDirections(first.rank, sketch_size=first.sketch_size, device=first.device, dtype=first.dtype)
    for state in states:
        vt, s = state.state_factors()
        merged.partial_fit(vt * torch.as_tensor(s, dtype=vt.dtype, device=vt.device)[:, None])
    merged.shrinkage_ += sum(state.shrinkage_ for state in states)
    return merged


def _restore(params: dict[str, Any], state: dict[str, Any], device: torch.device) -> OnlineSVD:
    """An online SVD of the config's method loaded from a saved ``state_dict`` (its own dtype)."""
    svd_cfg = params["svd"]
    svd = make_online_svd(
        svd_cfg["method"], int(svd_cfg["rank"]), device=device, dtype=state["dtype"], **svd_cfg.get("options", {})
    )
    return svd.load_state_dict(state)


def _merge_device(params: dict[str, Any]) -> torch.device:
    """Where a merge holds the stacked states: ``svd.device`` (``auto``: CUDA if visible)."""
    return resolve_device(params["svd"].get("device", "auto"))


def load_shards(shard_dirs: list[str]) -> list[dict[str, Any]]:
    """The ``shard.pt`` payloads of ``shard_dirs``, checked to be the pool's ``S`` slices in order."""
    payloads = []
    for i, d in enumerate(shard_dirs):
        path = Path(d) / SHARD_FILE
        if not path.is_file():
            raise InputError(f"{path}: shard state not found")
        try:
            payload = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 -- an unreadable file is bad input
            raise InputError(f"{path}: not a shard state ({e})") from None
        check_shard_field(path, payload.get("shard"), i, len(shard_dirs))
        payloads.append(payload)
    n = payloads[0]["n_pool"]
    expected = shard_bounds(n, len(payloads))
    for d, payload, bounds in zip(shard_dirs, payloads, expected, strict=True):
        if payload["n_pool"] != n or tuple(payload["bounds"]) != bounds:
            raise InputError(f"{d}/{SHARD_FILE}: field bounds is {payload['bounds']}, expected {list(bounds)}")
        if payload["d"] != payloads[0]["d"]:
            raise InputError(f"{d}/{SHARD_FILE}: field d is {payload['d']}, other shards have {payloads[0]['d']}")
    return payloads


def merge_basis(shard_dirs: list[str], params: dict[str, Any], out_file: str) -> OnlineSVD:
    """Merge the shards' SVD states; write the merged ``state_dict`` to ``out_file`` (torch)."""
    payloads = load_shards(shard_dirs)
    device = _merge_device(params)
    states = [_restore(params, p["svd"], device) for p in payloads]
    merged = merge_brand(states)[0] if isinstance(states[0], BrandSVD) else merge_frequent_directions(states)
    with atomic_path(Path(out_file)) as tmp:
        torch.save(merged.state_dict(), tmp)
    return merged


# --------------------------------------------------------------------------- the shard jobs


def extract_shard(
    model_dir: str,
    warmup_dir: str,
    train_path: str,
    params: dict[str, Any],
    seed: int,
    index: int,
    shards: int,
    out_dir: str,
) -> dict[str, Any]:
    """Stream shard ``index`` of ``shards`` (:func:`shard_bounds`) into its own SVD and projections.

    Writes ``out_dir/shard.pt``: the final streaming state (:func:`gs.gradients.extraction.stream_features`:
    ids, norms, projected and ELREA features of the slice, the SVD ``state_dict``) plus ``shard``
    ``[index, shards]``, ``bounds`` and ``n_pool``; and ``out_dir/shard.json`` (n, seconds).
    Checkpoints go to ``out_dir/.extract_state/state.pt`` and a killed shard resumes from them.
    """
    seed_everything(seed)
    pool = load_records(train_path)
    rank = int(params["svd"]["rank"])
    if rank > len(pool):
        raise InputError(f"svd rank={rank} is larger than the number of samples n={len(pool)}")
    bounds = shard_bounds(len(pool), shards)[index] if 0 <= index < shards else None
    records = shard_records(pool, index, shards)
    model, tok = gradient_model(model_dir, warmup_dir)
    device, on_device = state_device(model, params)
    out = Path(out_dir)

    def fingerprint_of(svd: OnlineSVD) -> str:
        return extraction_fingerprint(model_dir, warmup_dir, train_path, params, seed, svd, shard=(index, shards))

    res = stream_features(
        model, tok, records, params, seed, out / STATE_DIR / "state.pt", fingerprint_of, device, on_device
    )
    payload = res.done.payload(res.fingerprint, res.svd, res.seconds)
    payload.update(shard=[index, shards], bounds=list(bounds), n_pool=len(pool))
    # The merge rebuilds the projectors to save them: in the dtype the shards projected in.
    payload["projector_dtype"] = str(projector_dtype(next(model.parameters()).dtype, device)).removeprefix("torch.")
    with atomic_path(out / SHARD_FILE) as tmp:
        torch.save(payload, tmp)
    summary = {"shard": index, "shards": shards, "bounds": list(bounds), "n": len(records), "d": res.done.d}
    summary["seconds"] = round(res.seconds, 2)
    write_json(out / "shard.json", summary)
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    print(json.dumps(summary))
    return summary


def shard_coordinates(
    model_dir: str,
    warmup_dir: str,
    train_path: str,
    params: dict[str, Any],
    seed: int,
    index: int,
    shards: int,
    basis_file: str,
    out_file: str,
) -> np.ndarray:
    """Second pass over shard ``index``: ``(n_i, k)`` coordinates in the merged basis (``basis_file``
    from :func:`merge_basis`), written to ``out_file`` (``.npy``, float64). For methods without a
    left factor (FD)."""
    seed_everything(seed)
    records = shard_records(load_records(train_path), index, shards)
    model, tok = gradient_model(model_dir, warmup_dir)
    device, on_device = state_device(model, params)
    state = torch.load(basis_file, weights_only=True, map_location="cpu")
    svd = _restore(params, state, device)
    coords = second_pass_coordinates(model, tok, records, params, svd, on_device)
    with atomic_path(Path(out_file)) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, coords)
    return coords


def merge_shards(
    shard_dirs: list[str],
    params: dict[str, Any],
    seed: int,
    out_dir: str,
    *,
    basis_file: str | None = None,
    coords_files: list[str] | None = None,
) -> dict[str, Any]:
    """The single pass's outputs (``features.npz``, ``svd_components.npy``, ``projector_<p>.joblib``,
    ``extract.json``; :func:`gs.gradients.extraction.extract_features`) from the shards' states.

    Brand: merged basis and coordinates from the states alone (:func:`merge_brand`). FD: the merged
    basis from ``basis_file`` and the per-shard second-pass coordinates ``coords_files`` (pool order).
    """
    start = time.perf_counter()
    payloads = load_shards(shard_dirs)
    device = _merge_device(params)
    states = [_restore(params, p["svd"], device) for p in payloads]
    if isinstance(states[0], BrandSVD):
        merged, coords = merge_brand(states)
    else:
        if basis_file is None or coords_files is None or len(coords_files) != len(states):
            raise InputError(f"{params['svd']['method']}: the merge needs the basis and one coordinate file per shard")
        merged = _restore(params, torch.load(basis_file, weights_only=True, map_location="cpu"), device)
        parts = []
        for path, payload in zip(coords_files, payloads, strict=True):
            part = np.load(path)
            if part.shape[0] != len(payload["ids"]):
                raise InputError(f"{path}: {part.shape[0]} rows, shard has {len(payload['ids'])} samples")
            parts.append(part)
        coords = np.concatenate(parts)
    dims = projection_dims(params)
    done = Progress(dims)
    done.d = int(payloads[0]["d"])
    for p in payloads:
        done.ids.extend(p["ids"])
        done.norms.append(p["norms"].numpy())
        done.elrea.append(p["elrea"].numpy())
        for dim in dims:
            done.projected[dim].append(p["projected"][str(dim)].numpy())
    elrea_dim = int(params["projection"]["elrea_dim"])
    elrea_loss = params.get("elrea_loss_on", "instruction")
    proj_dtype = getattr(torch, str(payloads[0].get("projector_dtype", "float32")))
    projectors = make_projectors(params, done.d, seed, proj_dtype)
    out = Path(out_dir)
    arrays = write_features(
        out, done, coords, merged.singular_values_, merged.components_tensor(), projectors, elrea_dim, elrea_loss
    )
    merge_seconds = time.perf_counter() - start
    shard_seconds = [round(float(p["seconds"]), 2) for p in payloads]
    summary = {
        "n": len(done.ids),
        "d": done.d,
        "rank": int(params["svd"]["rank"]),
        "svd_method": params["svd"]["method"],
        "svd_device": merged.device.type,
        "svd_dtype": str(merged.dtype).removeprefix("torch."),
        "singular_values": arrays["singular_values"].tolist(),
        "projection_dims": dims,
        "seconds": round(sum(shard_seconds) + merge_seconds, 2),
        "second_pass": not isinstance(states[0], BrandSVD),
        "shards": len(payloads),
        "shard_seconds": shard_seconds,
        "merge_seconds": round(merge_seconds, 2),
    }
    write_json(out / "extract.json", summary)
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Sharded gradient passes and their merges.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("extract", "coords"):
        p = sub.add_parser(name)
        add_pass_arguments(p, sharded=True)
        if name == "extract":
            p.add_argument("--out-dir", required=True)
        else:
            p.add_argument("--out", required=True)
        if name == "coords":
            p.add_argument("--basis", required=True)
    p = sub.add_parser("basis")
    p.add_argument("--shard-dirs", nargs="+", required=True)
    p.add_argument("--params", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("merge")
    p.add_argument("--shard-dirs", nargs="+", required=True)
    p.add_argument("--params", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--basis")
    p.add_argument("--coords", nargs="+")
    args = parser.parse_args(argv)
    params = parse_params(args.params)
    if args.cmd == "extract":
        extract_shard(args.model_dir, args.warmup, args.train, params, args.seed, args.shard, args.shards, args.out_dir)
    elif args.cmd == "coords":
        shard_coordinates(
            args.model_dir, args.warmup, args.train, params, args.seed, args.shard, args.shards, args.basis, args.out
        )
    elif args.cmd == "basis":
        merge_basis(args.shard_dirs, params, args.out)
    else:
        merge_shards(args.shard_dirs, params, args.seed, args.out_dir, basis_file=args.basis, coords_files=args.coords)


if __name__ == "__main__":
    run_cli(main)
