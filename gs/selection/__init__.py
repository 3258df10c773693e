"""The selection stage (``rules/selection.smk``): LESS and ClusterUCB data selection for a target.

LESS: ``influence`` (the influence stream), ``influence_shards`` (the same in shards), ``less`` (the
scorer on arrays). ClusterUCB: ``ucb_clustering`` (its arms), ``bandit``, ``on_demand`` (influence
of the samples a selector asks for), ``accounting`` (compute in per-sample gradients). Around them:
``select`` (one target's selection), ``baselines`` and ``budget_curve``.
"""
