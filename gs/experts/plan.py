"""Which cluster trains which expert: the cluster -> expert map, with the small-cluster rule
(:func:`plan_experts`), shared by the experts' training (:mod:`gs.experts.train`) and the router,
which learns the same map without the trained experts."""

from __future__ import annotations

from typing import Any

import pandas as pd

from gs.cluster.assignments import validate_assignments
from gs.io import InputError

SMALL_CLUSTER_RULES = ("error", "merge")


def plan_experts(assignments: pd.DataFrame, *, min_cluster_size: int, small_clusters: str) -> dict[int, int]:
    """Map every cluster present in ``assignments`` to an expert id.

    Clusters with at least ``min_cluster_size`` samples each get their own expert, numbered
    ``0..m-1`` in ascending cluster order. A cluster with fewer samples follows ``small_clusters``:

    * ``"error"``: :class:`InputError` naming each small cluster and its size;
    * ``"merge"``: its samples go to the expert of the LARGEST cluster (ties: lowest cluster id).
      Why the largest cluster rather than the nearest one: the suite compares clustering methods
      that live in different spaces (gradients, text embeddings, projections, random), so there is
      no common geometry in which "nearest" means the same thing for all of them; "the largest
      cluster" is a rule that applies identically to every method, and it is the expert whose
      training distribution is already the broadest. The merges are recorded in the manifest.

    If every cluster is small under ``"merge"``, the largest one still gets its expert (there must be
    at least one). Returns ``{cluster: expert}``; :func:`small_cluster_merges` lists the merges.
    """
    if small_clusters not in SMALL_CLUSTER_RULES:
        raise InputError(f"small_clusters must be one of {SMALL_CLUSTER_RULES}, got {small_clusters!r}")
    if int(min_cluster_size) < 1:
        raise InputError(f"min_cluster_size must be at least 1, got {min_cluster_size}")
    frame = validate_assignments(assignments)
    sizes = cluster_sizes(frame)
    small = {c: n for c, n in sizes.items() if n < min_cluster_size}
    if small and small_clusters == "error":
        listed = ", ".join(f"cluster {c} has {n} sample(s)" for c, n in small.items())
        raise InputError(
            f"{listed}: fewer than min_cluster_size={min_cluster_size} "
            "(set small_clusters: merge to fold small clusters into the largest one)"
        )
    largest = max(sizes, key=lambda c: (sizes[c], -c))
    kept = [c for c in sizes if c not in small or c == largest]
    mapping = {c: j for j, c in enumerate(sorted(kept))}
    for c in small:
        if c not in mapping:
            mapping[c] = mapping[largest]
    return dict(sorted(mapping.items()))


def cluster_sizes(assignments: pd.DataFrame) -> dict[int, int]:
    """``{cluster: number of samples}`` in ascending cluster order."""
    counts = assignments["cluster"].astype(int).value_counts()
    return {int(c): int(counts[c]) for c in sorted(counts.index)}


def small_cluster_merges(assignments: pd.DataFrame, mapping: dict[int, int]) -> list[dict[str, int]]:
    """The clusters that share an expert with a larger cluster: ``[{cluster, size, expert}]``."""
    sizes = cluster_sizes(validate_assignments(assignments))
    owner: dict[int, int] = {}
    for c in sorted(mapping, key=lambda c: (-sizes[c], c)):
        owner.setdefault(mapping[c], c)
    return [
        {"cluster": c, "size": sizes[c], "expert": e, "into_cluster": owner[e]}
        for c, e in mapping.items()
        if owner[e] != c
    ]


def expert_labels(records: list[dict[str, Any]], assignments: pd.DataFrame, mapping: dict[int, int]) -> list[int]:
    """The expert id of each record, in ``records`` order (length n).

    Raises:
        InputError: a record id without an assignment, an assigned id with no record, a duplicate
            record id, or a cluster absent from ``mapping``.
    """
    frame = validate_assignments(assignments)
    by_id = dict(zip(frame["id"], frame["cluster"], strict=True))
    seen: set[str] = set()
    labels = []
    for r in records:
        rid = str(r.get("id"))
        if rid in seen:
            raise InputError(f"sample id {rid!r} appears more than once in the records")
        seen.add(rid)
        if rid not in by_id:
            raise InputError(f"sample id {rid!r} is in the records but has no cluster assignment")
        cluster = int(by_id[rid])
        if cluster not in mapping:
            raise InputError(f"cluster {cluster} (sample {rid!r}) has no expert in the plan")
        labels.append(mapping[cluster])
    extra = [i for i in frame["id"] if i not in seen]
    if extra:
        raise InputError(f"sample id {extra[0]!r} is in the assignments but not in the records")
    return labels


def plan_experts_from_params(assignments: pd.DataFrame, params: dict[str, Any]) -> dict[int, int]:
    """:func:`plan_experts` with the experts config section's ``min_cluster_size`` and ``small_clusters``
    (the map :func:`train_experts` trains by, and the router learns without the trained experts)."""
    for key in ("min_cluster_size", "small_clusters"):
        if key not in params:
            raise InputError(f"params: missing key {key!r}")
    return plan_experts(
        assignments, min_cluster_size=int(params["min_cluster_size"]), small_clusters=str(params["small_clusters"])
    )
