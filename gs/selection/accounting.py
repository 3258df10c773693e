"""Compute accounting for data selection, in one unit: the per-sample gradient computation.

One unit is the gradient of one training sample at one checkpoint in one backward pass (LESS's
``collect_grad_reps.py`` computes one per sample and checkpoint; ClusterUCB's
``cluster_ucb_select_data.py`` computes one per drawn sample, ``get_training_gradients``). Every
selector is charged every unit it makes:

* full LESS: ``n * C`` (every pool sample at every one of the C influence checkpoints);
* ClusterUCB: the clustering pass (``n``: every pool sample once, at the clustering checkpoint;
  ``cluster_ucb_selection.sh`` step 1) plus, per drawn sample (cold start included), one unit per
  influence checkpoint whose gradient it does not already have. When the clustering checkpoint *is*
  an influence checkpoint (the embedded default, whose warm-up has fewer steps than the reference's
  step-20 checkpoint, clusters at its first epoch checkpoint), the clustering pass has already computed
  every sample's gradient there, so a draw costs ``C - 1``; this is what the reference does for its
  first epoch, which it selects with full LESS from the clustering pass's gradients
  (``cluster_ucb_selection.sh``, "select data for the first epoch using computed gradients");
* random selection: nothing.

With ``selection.lookahead`` > 1 (ours: gs.selection.bandit computes a cluster's next samples in one
batch), the samples computed ahead and never drawn are charged too (``ahead``, ``per_draw`` units each):
the GPU made them.

The validation gradients (one per validation sample and checkpoint) are the same for every
gradient-based selector and are reported in their own column, not in the total.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gs.checks import int_param
from gs.io import InputError

__all__ = ["Charge", "clusterucb_charge", "draws_for_total", "full_charge"]


@dataclass(frozen=True)
class Charge:
    """Per-sample gradient computations one selector makes, by what they are for."""

    clustering: int
    cold_start: int
    draws: int
    per_draw: int  # units per drawn sample: the influence checkpoints it is computed at
    validation: int
    ahead: int = 0  # units computed ahead of the draws (selection.lookahead) and never drawn

    @property
    def total(self) -> int:
        """Training-sample gradients: clustering pass + cold start + draws + computed ahead (validation apart)."""
        return self.clustering + self.cold_start + self.draws + self.ahead

    def to_dict(self, full_total: int) -> dict[str, float]:
        """The charge with its total and its ratio to full LESS's total."""
        return {**asdict(self), "total": self.total, "ratio_vs_full": self.total / full_total}


def full_charge(n: int, n_checkpoints: int, validation: int) -> Charge:
    """Full LESS: every one of ``n`` pool samples at each of ``n_checkpoints`` checkpoints."""
    n, c = int_param(n, "n", minimum=1), int_param(n_checkpoints, "n_checkpoints", minimum=1)
    return Charge(clustering=0, cold_start=0, draws=n * c, per_draw=c, validation=validation)


def clusterucb_charge(
    n_clustered: int, cold_draws: int, ucb_draws: int, per_draw: int, validation: int, ahead_draws: int = 0
) -> Charge:
    """ClusterUCB: the clustering pass over ``n_clustered`` samples, then ``per_draw`` units per draw and per
    sample computed ahead and never drawn (``ahead_draws``)."""
    return Charge(
        clustering=int(n_clustered),
        cold_start=int(cold_draws) * int(per_draw),
        draws=int(ucb_draws) * int(per_draw),
        per_draw=int(per_draw),
        validation=validation,
        ahead=int(ahead_draws) * int(per_draw),
    )


def draws_for_total(total: int, n: int, per_draw: int, clustering: int) -> int:
    """Samples a selector can draw with ``total`` units after a ``clustering`` pass, at ``per_draw`` each.

    ``per_draw == 0`` (every influence already known from the clustering pass) allows all ``n``.
    A total below the clustering pass allows none (returns 0; the caller reports it as infeasible).
    """
    if per_draw < 0 or clustering < 0:
        raise InputError(f"per_draw and clustering must be >= 0, got {per_draw} and {clustering}")
    left = int(total) - int(clustering)
    if left < 0:
        return 0
    return n if per_draw == 0 else min(n, left // per_draw)
