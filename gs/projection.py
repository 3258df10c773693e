"""Random projection of gradients: the ELREA/LESS baseline that GradientSpace argues against.

LESS projects LoRA gradients with TRAK's Rademacher projector on the GPU; ELREA (arXiv 2502.00089)
likewise reduces them with a random projection before clustering. A dense d x p Rademacher matrix
for d = 460,800 (SmolLM2-135M, LoRA r=8 on q/v) and p = 1024 would take 1.9 GB, so the CPU default
uses very sparse random projections (Li, Hastie & Church, KDD 2006; entries +-sqrt(s) with
probability 1/(2s), s = sqrt(d)), which preserve inner products like the dense one, through
scikit-learn's ``SparseRandomProjection``; ``kind="gaussian"`` gives the dense Gaussian matrix for
small d. The projector is fitted from (kind, d, p, seed) alone, so it is regenerated exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from gs.io import InputError, atomic_path

KINDS = ("sparse", "gaussian")


class Projector:
    """A seeded random projection from gradient space (d) to ``dim`` coordinates."""

    def __init__(self, kind: str, d: int, dim: int, seed: int) -> None:
        from sklearn.random_projection import GaussianRandomProjection, SparseRandomProjection

        if kind not in KINDS:
            raise InputError(f"unknown projector {kind!r}; expected one of {', '.join(KINDS)}")
        if dim < 1 or d < 1:
            raise InputError(f"projection needs d >= 1 and dim >= 1, got d={d}, dim={dim}")
        self.kind, self.d, self.dim, self.seed = kind, int(d), int(dim), int(seed)
        cls = SparseRandomProjection if kind == "sparse" else GaussianRandomProjection
        kwargs = {"dense_output": True} if kind == "sparse" else {}
        self._proj = cls(n_components=self.dim, random_state=self.seed, **kwargs)
        # fit() only reads the number of features; a one-row placeholder avoids a (n, d) input.
        self._proj.fit(np.zeros((1, self.d), dtype=np.float32))

    def transform(self, grads: Any) -> np.ndarray:
        """Project a (b, d) block (numpy or torch) to (b, dim) float32."""
        x = grads.detach().cpu().numpy() if hasattr(grads, "detach") else np.asarray(grads)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise InputError(f"projector expects (b, {self.d}) gradients, got shape {tuple(x.shape)}")
        return np.asarray(self._proj.transform(x.astype(np.float32, copy=False)), dtype=np.float32)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            joblib.dump({"kind": self.kind, "d": self.d, "dim": self.dim, "seed": self.seed}, tmp)


def load_projector(path: str | os.PathLike) -> Projector:
    """Rebuild a saved projector (only its spec is stored; the matrix is regenerated)."""
    if not Path(path).is_file():
        raise InputError(f"{path}: projector file not found")
    spec = joblib.load(path)
    return Projector(spec["kind"], spec["d"], spec["dim"], spec["seed"])
