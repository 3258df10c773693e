"""Influence on demand: the LESS influence of exactly the pool samples a selector asks for, computed then.

ClusterUCB computes a drawn sample's gradient when it draws it (``cluster_ucb_select_data.py``:
``Cluster.draw_batch`` calls ``get_training_gradients`` on the chosen samples, Adam-preconditioned with
the checkpoint's optimizer state, projected with the TRAK Rademacher projector, L2-normalised, then
``matching`` against the validation gradients). :class:`OnDemandInfluence` is that call for one target:
an ``influence_fn`` for :func:`gs.selection.bandit.cluster_ucb` that runs the model on the requested samples only
and counts every per-sample gradient it computes, so a run's cost is measured, not asserted.

The pipeline is :mod:`gs.selection.influence`'s (same tokenisation,
:func:`gs.selection.influence.preconditioned_gradients`: windows of gradients batched by length,
:func:`gs.selection.less.adam_precondition` with the checkpoint's moments, the same seeded projector a
window a call, unit rows,
the mean of the target's normalised validation directions, checkpoint weights from the mean learning
rates, one direction per subtask of the target, the checkpoint-weighted sum per subtask, then the max
over subtasks: LESS ``less/data_selection/matching.py`` :75-79, as ClusterUCB's ``matching``,
``cluster_ucb_select_data.py`` :57-59, scores a draw), so a drawn sample's influence equals the full
pass's value for it (up to float32 summation order; the test checks it). Influence checkpoints whose
every-sample influence is already known (the clustering pass at that checkpoint,
:mod:`gs.selection.ucb_clustering`) are read, not recomputed, and not charged.

One model is loaded; the checkpoints' adapters are swapped in by their weights (peft
``set_peft_model_state_dict``), so memory is one model plus, per checkpoint computed, its adapter
weights (4 d bytes), Adam moments (8 d bytes, on the model's device) and the target's subtask
directions (4 S_t p bytes, S_t its subtasks; one without subtasks has one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gs.checks import index_array
from gs.io import InputError

__all__ = ["OnDemandInfluence"]


class OnDemandInfluence:
    """``influence_fn(indices) -> (len(indices),)`` LESS influences of pool samples on one target.

    ``checkpoints``: which warm-up checkpoints (indices in epoch order) the influence sums over (all by
    default; Dynamic-ClusterUCB uses one at a time), with LESS's weights renormalised over them.
    ``known``: checkpoint index -> influences already computed there (the clustering pass), not charged:
    (S_t, n) per subtask of the target (``clustering.npz`` ``influence_subtask``'s rows of the target, in
    :func:`gs.selection.influence.subtask_groups` order), or (n,) for a target without subtasks.
    Influence = max over the target's subtasks of the checkpoint-weighted per-subtask sums.
    Counters: ``gradient_computations`` (training samples x checkpoints computed here) and
    ``validation_computations`` (validation samples x checkpoints computed here).
    """

    def __init__(
        self,
        model_dir: str,
        warmup_dir: str,
        pool: list[dict[str, Any]],
        validation: list[dict[str, Any]],
        params: dict[str, Any],
        seed: int,
        *,
        checkpoints: list[int] | None = None,
        known: dict[int, np.ndarray] | None = None,
    ) -> None:
        from peft.utils import load_peft_weights

        from gs.models.load import load_model, load_tokenizer
        from gs.models.lora import load_adapter, seed_everything
        from gs.selection.influence import (
            ProjectedFeatures,
            checkpoint_weights,
            influence_settings,
            load_moments,
            read_checkpoints,
            subtask_groups,
            target_directions,
        )

        all_ckpts = read_checkpoints(warmup_dir)
        use = list(range(len(all_ckpts))) if checkpoints is None else list(checkpoints)
        if not use or any(not 0 <= c < len(all_ckpts) for c in use):
            raise InputError(f"{warmup_dir}: checkpoints {use} out of range (it has {len(all_ckpts)})")
        self.weights = checkpoint_weights([all_ckpts[c]["mean_lr"] for c in use])
        self.use = use
        self.n_subtasks = len(subtask_groups(validation, "the on-demand target")[0])
        self.known = {}
        for c, s in (known or {}).items():
            if c not in use:
                continue
            arr = np.asarray(s, dtype=np.float64)
            arr = arr[None, :] if arr.ndim == 1 else arr
            if arr.shape != (self.n_subtasks, len(pool)):
                raise InputError(
                    f"known influences of checkpoint {c}: shape {np.shape(s)}, expected "
                    f"({self.n_subtasks}, {len(pool)}) (subtasks, pool)"
                )
            self.known[c] = arr
        self.pool, self.params = pool, params
        self.gradient_computations = 0
        self.validation_computations = 0
        dim, kind = influence_settings(params)
        seed_everything(seed)
        self.tok = load_tokenizer(model_dir)
        self.compute = [c for c in use if c not in self.known]
        self.model = None
        self.state: dict[int, dict[str, Any]] = {}
        for c in self.compute:
            ckpt_dir = all_ckpts[c]["dir"]
            if self.model is None:
                self.model = load_adapter(load_model(model_dir), ckpt_dir, trainable=True)
                first = next(self.model.parameters())  # as the full pass: the projector's device and dtype
                self.device = first.device
                # The model's dtype fixes TRAK's matrix on a GPU (gs.gradients.projection.projector_dtype): a
                # float32 projector there would score draws with another matrix than the full pass.
                self.feats = ProjectedFeatures(dim, kind, seed, self.device, first.dtype)
            weights = load_peft_weights(str(ckpt_dir), device=str(self.device))
            self._set_adapter(weights)
            direction = target_directions(self.model, self.tok, {"t": validation}, ["t"], self.feats, params)
            self.validation_computations += len(validation)
            m, v = load_moments(ckpt_dir, self.device)
            self.state[c] = {"adapter": weights, "direction": direction, "m": m, "v": v, "dir": ckpt_dir}

    def _set_adapter(self, weights: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, weights)
        if getattr(result, "unexpected_keys", None):
            raise InputError(f"adapter weights do not fit the model: {result.unexpected_keys[:3]}")

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        """Influences of pool samples ``indices`` (k,), float64, computing k gradients per checkpoint:
        per subtask the checkpoint-weighted sum, then the max over the subtasks (LESS's order)."""
        from gs.gradients.projection import projection_rows
        from gs.selection.influence import preconditioned_gradients

        idx = index_array(indices, "indices", len(self.pool))
        total = np.zeros((self.n_subtasks, idx.size))
        for w, c in zip(self.weights, self.use, strict=True):
            if c in self.known:
                total += w * self.known[c][:, idx]
                continue
            st = self.state[c]
            self._set_adapter(st["adapter"])
            scores, start = np.zeros((self.n_subtasks, idx.size)), 0
            # As the full pass: windows of gradients batched by length (gs.gradients.passes.gradient_window),
            # Adam directions a batch at a time, one projector call per window (the buffer holds a window).
            drawn = [self.pool[i] for i in idx.tolist()]
            directions = preconditioned_gradients(
                self.model, self.tok, drawn, self.params, st["m"], st["v"], str(st["dir"]), progress=False
            )
            for _, x in self.feats.in_buffers(directions, projection_rows(self.params)):  # (b, p) unit rows
                block = (x @ st["direction"].T).double().cpu().numpy()  # (b, S_t), as the full pass
                scores[:, start : start + x.shape[0]] = block.T
                start += x.shape[0]
            self.gradient_computations += idx.size
            total += w * scores
        return total.max(axis=0)
