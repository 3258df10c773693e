"""The gradient stage's features as the clustering stage reads them (``results/gradients/features.npz``).

Written by :func:`gs.gradients.extraction.write_features`; read here into a validated
:class:`GradientFeatures` by the clustering methods (:mod:`gs.cluster.methods`), the cluster-quality
tables (:mod:`gs.cluster.quality`) and the projection-size ablation (:mod:`gs.cluster.ablation`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from gs.io import InputError


@dataclasses.dataclass(frozen=True)
class GradientFeatures:
    """What the gradient stage stores (``features.npz``); all arrays in pool order.

    ``ids`` ``(n,)`` str; ``svd_coords`` ``(n, r)`` coordinates of the normalised gradients in the
    top-``r`` singular directions; ``singular_values`` ``(r,)`` (``None``: taken from
    ``svd_coords``, whose singular values equal the top-``r`` singular values of the gradient matrix
    when the directions are exact); ``norms`` ``(n,)`` gradient norms (unused for clustering);
    ``projected`` ``{p: (n, p)}`` random projections; ``elrea_dim`` the ``p`` ELREA uses;
    ``elrea_features`` ``(n, elrea_dim)`` ELREA's own features (projected gradients of the
    instruction tokens), used by ``elrea`` in place of ``projected_<elrea_dim>`` when present.
    """

    ids: np.ndarray
    svd_coords: np.ndarray
    singular_values: np.ndarray | None = None
    norms: np.ndarray | None = None
    projected: Mapping[int, np.ndarray] = dataclasses.field(default_factory=dict)
    elrea_dim: int | None = None
    elrea_features: np.ndarray | None = None

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids).astype(str)
        object.__setattr__(self, "ids", ids)
        if ids.ndim != 1:
            raise InputError(f"features: ids must be 1-D, got shape {ids.shape}")
        n = ids.shape[0]
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"features: sample id {str(uniq[np.argmax(counts > 1)])!r} appears more than once")
        coords = np.asarray(self.svd_coords)
        if coords.ndim != 2 or coords.shape[0] != n:
            raise InputError(f"features: svd_coords must be (n={n}, r), got shape {coords.shape}")
        object.__setattr__(self, "svd_coords", coords)
        if self.singular_values is not None:
            sv = np.asarray(self.singular_values, dtype=np.float64).ravel()
            if sv.shape[0] != coords.shape[1]:
                raise InputError(
                    f"features: {sv.shape[0]} singular values but svd_coords has r={coords.shape[1]} columns"
                )
            object.__setattr__(self, "singular_values", sv)
        if self.norms is not None and np.asarray(self.norms).shape != (n,):
            raise InputError(f"features: norms must be (n={n},), got shape {np.asarray(self.norms).shape}")
        projected = {}
        for p, arr in dict(self.projected).items():
            arr = np.asarray(arr)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise InputError(f"features: projected_{p} must be (n={n}, {p}), got shape {arr.shape}")
            projected[int(p)] = arr
        object.__setattr__(self, "projected", projected)
        if self.elrea_features is not None:
            arr = np.asarray(self.elrea_features)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise InputError(f"features: elrea_features must be (n={n}, p), got shape {arr.shape}")
            object.__setattr__(self, "elrea_features", arr)

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])


def load_features(path: str | os.PathLike) -> GradientFeatures:
    """Read ``features.npz`` (module docstring of the gradient stage for its arrays)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: features file not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: not a readable .npz of plain arrays ({e})") from None
    for name in ("ids", "svd_coords"):
        if name not in arrays:
            raise InputError(f"{p}: missing array {name!r} (has {', '.join(sorted(arrays)) or 'none'})")
    projected = {}
    for name, arr in arrays.items():
        m = re.fullmatch(r"projected_(\d+)", name)
        if m:
            projected[int(m.group(1))] = arr
    elrea = arrays.get("elrea_dim")
    return GradientFeatures(
        ids=arrays["ids"],
        svd_coords=arrays["svd_coords"],
        singular_values=arrays.get("singular_values"),
        norms=arrays.get("norms"),
        projected=projected,
        elrea_dim=None if elrea is None else int(np.asarray(elrea).item()),
        elrea_features=arrays.get("elrea_features"),
    )
