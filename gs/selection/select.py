"""The selection step for one target: full LESS, ClusterUCB (on demand), its variants, random; compute charged.

Pieces, one module each: LESS's scorer :mod:`gs.selection.less`; the bandit :mod:`gs.selection.bandit`; ClusterUCB's own
clusters :mod:`gs.selection.ucb_clustering`; influence on demand :mod:`gs.selection.on_demand`; the baselines and
recovery
metrics :mod:`gs.selection.baselines`; the compute unit :mod:`gs.selection.accounting`; the budget curve
:mod:`gs.selection.budget_curve`. This module runs them for one target and writes ``selection.json`` and the
selected subsets.

Methods (``selection.json`` ``methods``), every one charged in per-sample gradient computations
(:mod:`gs.selection.accounting`):

* ``full``: LESS's top ``keep`` from the full pass (``n * C``);
* ``clusterucb``: the bandit on ``selection.clusters`` (ClusterUCB's own clusters by default), its
  draws' influences computed on demand when a model is given (:class:`gs.selection.on_demand.OnDemandInfluence`;
  the measured count must equal the charge), else read from the full pass;
* ``clusterucb_<arms>`` for each of ``selection.compare_clusters`` (e.g. GradientSpace's clusters):
  the same bandit on those arms, read from the full pass and charged as if on demand (their clustering
  pass is the gradient extraction, ``n`` plain gradients at the final warm-up adapter, which covers no
  influence checkpoint);
* ``clusterucb_dynamic`` (``selection.dynamic``): Dynamic-ClusterUCB, the reference's schedule
  (``cluster_ucb_selection.sh``): one selection per influence checkpoint with that checkpoint's
  influence alone, full LESS at the clustering checkpoint when it is one (its gradients are known),
  the bandit at every other; the row reports the last checkpoint's selection;
* ``random``: ``keep`` uniform samples, no gradients.

``ablation``: the reference's arm rules (``ucb_beta``, ``ucb1``, ``ucb_threshhard``,
``ucb_threshnormal``; :data:`gs.selection.bandit.REFERENCE_NAMES`) x arm sets x schedule (one-shot, dynamic) over
``curve_seeds`` seeds, read from the full pass and charged as if on demand. ``budget_curve``:
:mod:`gs.selection.budget_curve` over ``budget_curve`` fractions, ``curve_k`` and the seeds.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gs.checks import count_from_fraction
from gs.io import InputError, parse_params, run_cli
from gs.selection.accounting import Charge, clusterucb_charge, full_charge
from gs.selection.bandit import ESTIMATORS, REFERENCE_NAMES, ClusterUCBResult, cluster_ucb
from gs.selection.baselines import mean_influence_ratio, overlap, select_random
from gs.selection.budget_curve import budget_curve, summarise_curve
from gs.selection.less import adam_precondition, influence_scores, select_full

# adam_precondition and influence_scores are re-exported for callers of the former single module.
__all__ = ["SelectionInputs", "adam_precondition", "influence_scores", "main", "select_for_target"]

OnDemand = Callable[[list[int] | None], Any]  # checkpoints -> an influence_fn with .gradient_computations


@dataclass
class SelectionInputs:
    """One target's arrays. ``per_checkpoint`` the full pass's influences at each checkpoint: (C, n), or
    (C, S_t, n) per subtask of the target (``influence.npz`` ``subtask_per_checkpoint``'s rows of it);
    ``weights`` (C,); ``labels`` (n,) the bandit's arms; ``covered`` the influence checkpoint the arms' clustering pass
    computed every gradient at (None if none); ``n_validation`` the target's validation samples;
    ``compare`` other arm sets (name -> (n,) labels); ``curve_labels`` k -> (n,) labels."""

    per_checkpoint: np.ndarray
    weights: np.ndarray
    labels: np.ndarray
    covered: int | None
    n_validation: int
    compare: dict[str, np.ndarray] = field(default_factory=dict)
    curve_labels: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def by_subtask(self) -> np.ndarray:
        """(C, S_t, n): ``per_checkpoint`` with its subtask axis (S_t = 1 when it has none)."""
        pc = np.asarray(self.per_checkpoint)
        return pc[:, None, :] if pc.ndim == 2 else pc

    @property
    def n_checkpoints(self) -> int:
        return int(self.by_subtask.shape[0])

    @property
    def n(self) -> int:
        return int(self.by_subtask.shape[2])

    @property
    def scores(self) -> np.ndarray:
        """(n,) influences, LESS ``matching.py`` :75-79: the checkpoint-weighted sum per subtask, then the
        max over subtasks (one subtask: the checkpoint-weighted sum, computed as before subtasks)."""
        pc = np.asarray(self.per_checkpoint)
        if pc.ndim == 3 and pc.shape[1] == 1:
            pc = pc[:, 0, :]
        if pc.ndim == 2:
            return self.weights @ pc
        return np.einsum("c,csn->sn", self.weights, pc).max(axis=0)

    def checkpoint_scores(self, c: int) -> np.ndarray:
        """(n,) influences at checkpoint ``c`` alone (Dynamic-ClusterUCB): the max over its subtasks."""
        pc = np.asarray(self.per_checkpoint)
        return pc[c] if pc.ndim == 2 else pc[c].max(axis=0)


def _bandit_kwargs(params: dict[str, Any], estimator: str | None = None) -> dict[str, Any]:
    return {
        "cold_start": params["cold_start"],
        "exploration": float(params["exploration"]),
        "draw_size": int(params.get("draw_size", 1)),
        "estimator": estimator or params.get("estimator", "ucb_beta"),
    }


def _cold(result: ClusterUCBResult) -> int:
    return int(result.cold_start_per_cluster.sum())


def _ahead(result: ClusterUCBResult) -> int:
    """Samples computed ahead of the draws (selection.lookahead) and never drawn."""
    return result.n_evaluated - result.n_computations


def _lookahead(params: dict[str, Any]) -> dict[str, int]:
    """The on-demand runs' lookahead (selections equal at any value; the ablation and curve leave it at 1)."""
    return {"lookahead": int(params.get("lookahead", 1))}


def _dynamic(
    inputs: SelectionInputs,
    labels: np.ndarray,
    keep: int,
    draws: int,
    kwargs: dict[str, Any],
    seed: int,
    on_demand: OnDemand | None,
) -> tuple[list[dict[str, Any]], int, int, int]:
    """Dynamic-ClusterUCB: a selection per checkpoint; returns them, draws charged, samples computed ahead and
    never drawn, gradients measured."""
    epochs, charged, ahead, measured = [], 0, 0, 0
    for c in range(inputs.n_checkpoints):
        s = inputs.checkpoint_scores(c)
        if c == inputs.covered:
            picked = select_full(s, keep)  # the clustering pass's gradients: full LESS, no new ones
        else:
            fn = on_demand([c]) if on_demand else (lambda i, s=s: s[i])
            r = cluster_ucb(labels, fn, budget=draws, keep=keep, seed=seed, **kwargs)
            picked = r.selected
            charged += draws
            ahead += _ahead(r)
            measured += getattr(fn, "gradient_computations", r.n_evaluated)
        epochs.append(
            {"checkpoint": c, "selected": picked, "overlap_with_checkpoint_full": overlap(picked, select_full(s, keep))}
        )
    return epochs, charged, ahead, measured


def select_for_target(
    inputs: SelectionInputs, params: dict[str, Any], seed: int, on_demand: OnDemand | None = None
) -> dict[str, Any]:
    """Every method for one target (module docstring); ``params`` is the ``selection`` section."""
    scores = inputs.scores
    n_ckpt, n = inputs.n_checkpoints, inputs.n
    keep = count_from_fraction(n, float(params["keep_fraction"]), what="keep_fraction")
    draws = count_from_fraction(n, float(params["budget_fraction"]), what="budget_fraction")
    kwargs = _bandit_kwargs(params)
    full = select_full(scores, keep)
    full_cost = full_charge(n, n_ckpt, inputs.n_validation * n_ckpt)
    val = inputs.n_validation * (n_ckpt + (inputs.covered is None))
    per_draw = n_ckpt - (inputs.covered is not None)

    methods: dict[str, dict[str, Any]] = {}

    def add(name: str, selected: np.ndarray, charge: Charge, **extra: Any) -> None:
        methods[name] = {
            "selected": np.asarray(selected).tolist(),
            "computations": charge.total,
            "charge": charge.to_dict(full_cost.total),
            "computation_ratio_vs_full": charge.total / full_cost.total,
            "mean_influence": float(scores[np.asarray(selected)].mean()),
            "overlap_with_full": overlap(selected, full),
            "mean_influence_ratio": mean_influence_ratio(selected, full, scores),
            **extra,
        }

    add("full", full, full_cost)
    fn = on_demand(None) if on_demand else (lambda i: scores[i])
    ucb = cluster_ucb(inputs.labels, fn, budget=draws, keep=keep, seed=seed, **kwargs, **_lookahead(params))
    charge = clusterucb_charge(n, _cold(ucb), ucb.n_computations - _cold(ucb), per_draw, val, _ahead(ucb))
    measured = n + getattr(fn, "gradient_computations", ucb.n_evaluated * per_draw)
    if measured != charge.total:
        raise RuntimeError(f"ClusterUCB computed {measured} per-sample gradients but is charged {charge.total}")
    add(
        "clusterucb",
        ucb.selected,
        charge,
        on_demand=on_demand is not None,
        measured_gradient_computations=measured,
        pulls_per_cluster=ucb.pulls_per_cluster.tolist(),
    )
    for name, labels in inputs.compare.items():
        r = cluster_ucb(labels, lambda i: scores[i], budget=draws, keep=keep, seed=seed, **kwargs, **_lookahead(params))
        charge = clusterucb_charge(
            n, _cold(r), r.n_computations - _cold(r), n_ckpt, inputs.n_validation * n_ckpt, _ahead(r)
        )
        add(f"clusterucb_{name}", r.selected, charge)
    if params.get("dynamic", False):
        on_demand_kwargs = {**kwargs, **_lookahead(params)}
        epochs, charged, ahead, measured = _dynamic(
            inputs, inputs.labels, keep, draws, on_demand_kwargs, seed, on_demand
        )
        charge = clusterucb_charge(n, 0, charged, 1, inputs.n_validation * (n_ckpt + (inputs.covered is None)), ahead)
        for e in epochs:
            e["selected"] = e["selected"].tolist()
        add(
            "clusterucb_dynamic",
            np.asarray(epochs[-1]["selected"]),
            charge,
            epochs=epochs,
            measured_gradient_computations=n + measured,
        )
    add("random", select_random(n, keep, seed), Charge(0, 0, 0, 0, 0))

    seeds = [seed + i for i in range(int(params.get("curve_seeds", 5)))]
    return {
        "n": n,
        "keep": keep,
        "draws": draws,
        "checkpoints": n_ckpt,
        "clustering_covers_checkpoint": inputs.covered,
        "methods": methods,
        "ablation": _ablation(inputs, params, keep, draws, seeds),
        "budget_curve": _curve(inputs, params, keep, seeds),
    }


def _ablation(
    inputs: SelectionInputs, params: dict[str, Any], keep: int, draws: int, seeds: list[int]
) -> list[dict[str, Any]]:
    """Arm rule x arm set x schedule, mean and std over seeds (read from the full pass)."""
    scores = inputs.scores
    full = select_full(scores, keep)
    arm_sets = {"clusterucb": inputs.labels, **inputs.compare}
    names = {v: k for k, v in REFERENCE_NAMES.items()}
    rows = []
    for rule in ESTIMATORS:
        # The reference's indices: beta from the config for ucb_beta, UCB1's bonus as written (c = 1),
        # no bonus for the threshold rules.
        bonus = {"mean_std": float(params["exploration"]), "mean": 1.0}.get(rule, 0.0)
        kwargs = {**_bandit_kwargs(params, rule), "exploration": bonus}
        for arms, labels in arm_sets.items():
            for schedule in ("one_shot", "dynamic") if arms == "clusterucb" else ("one_shot",):
                ov, ratio = [], []
                for s in seeds:
                    if schedule == "one_shot":
                        sel = cluster_ucb(
                            labels, lambda i: scores[i], budget=draws, keep=keep, seed=s, **kwargs
                        ).selected
                    else:
                        sel = np.asarray(_dynamic(inputs, labels, keep, draws, kwargs, s, None)[0][-1]["selected"])
                    ov.append(overlap(sel, full))
                    ratio.append(mean_influence_ratio(sel, full, scores))
                rows.append(
                    {
                        "rule": names[rule],
                        "arms": arms,
                        "schedule": schedule,
                        "seeds": len(seeds),
                        "overlap_mean": float(np.mean(ov)),
                        "overlap_std": float(np.std(ov)),
                        "ratio_mean": float(np.mean(ratio)),
                        "ratio_std": float(np.std(ratio)),
                    }
                )
    return rows


def _curve(inputs: SelectionInputs, params: dict[str, Any], keep: int, seeds: list[int]) -> list[dict[str, Any]]:
    fractions = [float(b) for b in params.get("budget_curve", [])]
    if not fractions or not inputs.curve_labels:
        return []
    curve = budget_curve(
        inputs.scores,
        inputs.n_checkpoints,
        int(inputs.covered is not None),
        inputs.curve_labels,
        keep=keep,
        fractions=fractions,
        seeds=seeds,
        bandit=_bandit_kwargs(params),
    )
    summary = summarise_curve(curve)
    return json.loads(summary.to_json(orient="records"))


# --------------------------------------------------------------------------- CLI


def _labels_for(path: str, ids: list[str]) -> np.ndarray:
    import pandas as pd

    frame = pd.read_csv(path, dtype={"id": str})
    for col in ("id", "cluster"):
        if col not in frame.columns:
            raise InputError(f"{path}: column {col!r} missing")
    by_id = dict(zip(frame["id"], frame["cluster"].astype(int), strict=True))
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InputError(f"{path}: sample {missing[0]!r} has no cluster")
    return np.unique(np.array([by_id[i] for i in ids]), return_inverse=True)[1].astype(np.int64)


def main(argv: list[str] | None = None) -> None:
    from gs.data.prepare import load_records
    from gs.io import write_json, write_jsonl
    from gs.selection.influence import read_checkpoints

    parser = argparse.ArgumentParser(description="ClusterUCB, LESS and random selection for one target.")
    parser.add_argument("--influence", required=True, help="the full LESS pass (influence.npz)")
    parser.add_argument("--assignments", help="the bandit's arms (id,cluster); default: --clustering's main k")
    parser.add_argument("--clustering", help="ClusterUCB's clustering.npz (its arms, curve k, influences)")
    parser.add_argument("--compare", nargs="*", default=[], help="NAME=assignments.csv: other arm sets")
    parser.add_argument("--train", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--validation", help="the target's validation.jsonl (on-demand influence)")
    parser.add_argument("--model-dir", help="with --warmup: compute ClusterUCB's influences on demand")
    parser.add_argument("--warmup")
    parser.add_argument("--gradients", help="the gradients config section as JSON (on demand)")
    parser.add_argument("--params", required=True, help="the selection config section as JSON")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    data = np.load(args.influence)
    targets = data["targets"].tolist()
    if args.target not in targets:
        raise InputError(f"{args.influence}: no influence for target {args.target!r} (has {', '.join(targets)})")
    t = targets.index(args.target)
    ids = data["ids"].astype(str).tolist()
    pool = load_records(args.train)
    if [str(r["id"]) for r in pool] != ids:
        raise InputError(f"{args.train}: its samples are not those of {args.influence}, in the same order")
    params = parse_params(args.params)
    if not args.assignments and not args.clustering:
        raise InputError("give --assignments or --clustering: the bandit needs its arms")
    covered, known, curve_labels, labels = None, {}, {}, None
    if args.clustering:
        clu = np.load(args.clustering)
        if clu["ids"].astype(str).tolist() != ids:
            raise InputError(f"{args.clustering}: its pool order differs from {args.influence}'s")
        curve_labels = {int(k): clu[f"labels_k{int(k)}"] for k in params.get("ucb_clustering", {}).get("curve_k", [])}
        if not args.assignments:  # ClusterUCB's own arms: their clustering pass may cover a checkpoint
            labels = clu[f"labels_k{int(params['ucb_clustering']['k'])}"]
            if args.warmup:
                names = [c["dir"].name for c in read_checkpoints(args.warmup)]
                if str(clu["checkpoint"]) in names:
                    covered = names.index(str(clu["checkpoint"]))
                    ct = clu["targets"].tolist().index(args.target)
                    # Per subtask when the file has them (summed over checkpoints before the max).
                    sub = "influence_subtask" in clu.files
                    known = {
                        covered: clu["influence_subtask"][clu["subtask_target"] == ct] if sub else clu["influence"][ct]
                    }
    if labels is None:
        labels = _labels_for(args.assignments, ids)
    validation = load_records(args.validation) if args.validation else []
    # influence.npz: per subtask when written with them (gs.selection.influence.compute_influence), else (C, n).
    if "subtask_per_checkpoint" in data.files:
        per_checkpoint = data["subtask_per_checkpoint"][:, data["subtask_target"] == t, :]
    else:
        per_checkpoint = data["per_checkpoint"][:, t, :]
    inputs = SelectionInputs(
        per_checkpoint=per_checkpoint,
        weights=data["weights"],
        labels=labels,
        covered=covered,
        n_validation=len(validation),
        compare={name: _labels_for(path, ids) for name, path in (s.split("=", 1) for s in args.compare)},
        curve_labels=curve_labels,
    )
    on_demand = None
    if args.model_dir and args.warmup:
        from gs.selection.on_demand import OnDemandInfluence

        grads = parse_params(args.gradients)

        def on_demand(checkpoints: list[int] | None) -> OnDemandInfluence:
            use = known if checkpoints is None else {c: s for c, s in known.items() if c in checkpoints}
            return OnDemandInfluence(
                args.model_dir, args.warmup, pool, validation, grads, args.seed, checkpoints=checkpoints, known=use
            )

    result = select_for_target(inputs, params, args.seed, on_demand)
    records = {str(r["id"]): r for r in pool}
    out = Path(args.out_dir)
    for name in ("clusterucb", "full", "random"):
        write_jsonl(out / f"{name}.jsonl", [records[ids[i]] for i in result["methods"][name]["selected"]])
    for m in result["methods"].values():
        m["selected_ids"] = [ids[i] for i in m.pop("selected")]
        for e in m.get("epochs", []):
            e["selected_ids"] = [ids[i] for i in e.pop("selected")]
    result["target"] = args.target
    if args.clustering:
        result["clustering_note"] = str(np.load(args.clustering)["note"])
    write_json(out / "selection.json", result)
    print(
        json.dumps(
            {k: {kk: v[kk] for kk in ("computations", "overlap_with_full")} for k, v in result["methods"].items()}
        )
    )


if __name__ == "__main__":
    run_cli(main)
