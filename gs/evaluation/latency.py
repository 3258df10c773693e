"""Inference latency of single-expert routing against expert ensembles (GradientSpace's latency figure).

GradientSpace (arXiv 2512.06678) claims that routing each prompt to ONE expert cuts inference latency
compared with ELREA-style ensembles (arXiv 2502.00089). This module measures it, side by side in one
process, through the same :class:`gs.evaluation.routed_model.RoutedLM` the evaluation uses:

* ``base``: the base model, no adapter (the floor);
* ``single``: the router (encoder + classifier) picks one expert; router time included;
* ``uniform``: all n experts mixed with equal weights (n forwards per decoding step);
* ``elrea``: the prompt's gradient through the warm-up adapter, its projection and the centroid
  similarities computed on the fly (included), then the ``top_m`` experts mixed.

For latency the experts' quality does not matter, only their number and shape. So, for each n in
``n_experts_list``, n fresh seeded LoRA adapters are written to a temporary folder with the real
experts' LoRA config, their ``B`` set to small seeded Gaussian values (peft initialises ``B = 0``,
which would make every adapter a no-op that a clever implementation could skip); a router with the
configured encoder is fitted on synthetic prompts labelled round-robin (its cost is the encoder's,
not the labels'); a warm-up adapter (same construction), a projector with the real dimensions (d
from the warm-up adapter, p = ``projection_dim``) and random unit features with round-robin cluster
assignments give ELREA's centroids. These artifacts have exactly the formats of the trained ones.
Optionally the trained experts/router (and ELREA's artifacts) are timed as well (``artifacts`` column).

Measured per (mode, n), after one warm-up call: batch size 1, greedy, exactly ``max_new_tokens``
tokens (EOS ignored): time to first token (``ttft_s``, from the call, so routing / gradients and the
prefill are inside it) and the per-token latency after the first (``per_token_s``), each the mean over
``repeats`` calls (prompts cycled); the throughput ``tokens_per_s`` of a batch of ``throughput_batch``
prompts (mean over ``repeats`` calls). ``router_s`` and ``gradient_s`` are the batch-1 routing and
ELREA gradient+projection times; ``forwards_per_token`` counts decoder forward passes per generated
token at batch 1 (1 for one expert, n for an n-expert ensemble). Ratios to ``single`` at the same n:
``*_vs_single``. The ``base`` mode does not depend on n; it is timed once and its row repeated per n.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gs.io import InputError, atomic_path, run_cli, write_json

LATENCY_MODES = ("base", "single", "uniform", "elrea")
# Prompts of four kinds of task (arithmetic, code, finance, writing), used both to time generation and to
# fit the synthetic router.
DEFAULT_PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "A bond pays a 5% annual coupon on a face value of 1000 dollars. What is the yearly coupon payment?",
    "Write a short story about a lighthouse keeper who discovers a message in a bottle.",
    "What is 17 times 23? Show your reasoning.",
    "Implement binary search in Python and explain its complexity.",
    "Explain the difference between a stock and a bond to a new investor.",
    "Compose a poem about the first snow of winter.",
]
COLUMNS = [
    "device",
    "artifacts",
    "mode",
    "n_experts",
    "ttft_s",
    "per_token_s",
    "tokens_per_s",
    "router_s",
    "gradient_s",
    "forwards_per_token",
    "new_tokens",
    "ttft_vs_single",
    "per_token_vs_single",
    "tokens_per_s_vs_single",
]


def device_name(device: str | torch.device) -> str:
    """Human-readable device: the CUDA device name, or the CPU's model, what torch dispatches to there
    (:func:`gs.models.dtype.cpu_capability`: AVX2, AVX512, native bfloat16, caps in force) and the cores this
    process may use."""
    from gs.models.dtype import cpu_capability, cpu_model

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()} CPU ({cpu_capability()}; {cores} cores)"


# --------------------------------------------------------------------------------------------------
# Synthetic artifacts (the formats of the trained ones)
# --------------------------------------------------------------------------------------------------


def make_synthetic_adapter(model: Any, lora: Any, seed: int, out_dir: str | os.PathLike, b_std: float = 0.02) -> int:
    """Save a fresh seeded LoRA adapter of ``lora`` (a :class:`gs.models.lora.LoraSpec`) for ``model``.

    ``A`` gets peft's seeded init, ``B`` seeded N(0, b_std^2) values instead of zeros so the adapter
    changes the model's outputs. ``model`` is left unwrapped afterwards. Returns d, the number of
    LoRA parameters (the length of a per-sample gradient through this adapter).
    """
    from gs.models.lora import attach_lora

    peft_model = attach_lora(model, lora, seed)
    gen = torch.Generator().manual_seed(seed + 7919)
    d = 0
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" not in name:
                continue
            d += p.numel()
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * b_std)
    peft_model.save_pretrained(str(out_dir))
    peft_model.unload()
    return d


def make_synthetic_experts(
    model: Any, n: int, lora: Any, out_dir: str | os.PathLike, *, seed: int, b_std: float = 0.02
) -> Path:
    """Write an experts folder with ``n`` synthetic adapters (``expert_<j>``, seed ``seed + j``) and a
    manifest of the trained shape (expert j owns cluster j and a synthetic label ``part<j>``)."""
    from gs.experts.folders import MANIFEST, expert_dir_name

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    experts = []
    for j in range(n):
        make_synthetic_adapter(model, lora, seed + j, out / expert_dir_name(j), b_std)
        experts.append(
            {"expert": j, "dir": expert_dir_name(j), "clusters": [j], "n_train": 8, "domains": {f"part{j}": 8}}
        )
    write_json(
        out / MANIFEST,
        {
            "kind": "synthetic",
            "method": "synthetic",
            "seed": seed,
            "n_experts": n,
            "n_clusters": n,
            "cluster_to_expert": {str(j): j for j in range(n)},
            "lora": dict(lora.__dict__),
            "experts": experts,
        },
    )
    return out


def make_synthetic_router(
    model_dir: str | os.PathLike, n: int, out_dir: str | os.PathLike, *, encoder: str, seed: int
) -> Path:
    """Fit and save a :class:`gs.router.train.Router` with ``encoder`` over experts ``0..n-1`` on synthetic
    prompts labelled round-robin: what matters for latency is the encoder's cost per prompt."""
    from gs.router.train import Router

    texts = [f"{p} (variant {k})" for k in range(max(2, -(-2 * n // len(DEFAULT_PROMPTS)))) for p in DEFAULT_PROMPTS]
    labels = [i % n for i in range(len(texts))]
    router = Router(encoder, model_dir=model_dir, holdout=0.0, seed=seed)
    router.fit(texts, labels, expert_ids=list(range(n)))
    return router.save(out_dir, extra={"method": "synthetic"})


def make_synthetic_elrea(
    n: int, d: int, out_dir: str | os.PathLike, *, dim: int, seed: int, samples_per_expert: int = 8
) -> dict[str, Path]:
    """ELREA's routing artifacts for n experts: ``features.npz`` (random projected features,
    ``elrea_dim = dim``), ``projector_<dim>.joblib`` (a real projector from d to dim) and
    ``assignments.csv`` (sample i in cluster i mod n). Returns their paths."""
    from gs.gradients.projection import Projector

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    m = n * samples_per_expert
    ids = np.array([f"s{i}" for i in range(m)])
    feats = rng.standard_normal((m, dim)).astype(np.float32)
    with open(out / "features.npz", "wb") as f:
        np.savez(f, ids=ids, elrea_dim=np.array(dim), **{f"projected_{dim}": feats})
    Projector("sparse", d, dim, seed).save(out / f"projector_{dim}.joblib")
    pd.DataFrame({"id": ids, "cluster": np.arange(m) % n}).to_csv(out / "assignments.csv", index=False)
    return {
        "features_path": out / "features.npz",
        "projector_path": out / f"projector_{dim}.joblib",
        "assignments_path": out / "assignments.csv",
    }


def make_synthetic_suite(
    model_dir: str | os.PathLike,
    n_experts_list: Sequence[int],
    work_dir: str | os.PathLike,
    *,
    lora: Any,
    warmup_lora: Any = None,
    router_encoder: str = "minilm",
    projection_dim: int = 256,
    seed: int = 0,
    b_std: float = 0.02,
    modes: Sequence[str] = LATENCY_MODES,
    device: str | None = None,
) -> dict[int, dict[str, Path]]:
    """All synthetic artifacts, per n: ``{n: {experts_dir, router_dir, warmup_dir, features_path,
    projector_path, assignments_path}}`` (router only if ``single`` is timed). The base model is
    loaded once, in its own (the configured) dtype, straight to ``device`` (default: CUDA if
    visible): no float32 copy on the host; one warm-up adapter is shared by every n."""
    from gs.models.load import load_model

    work = Path(work_dir)
    model = load_model(model_dir) if device is None else load_model(model_dir, device=device)
    warmup_dir = work / "warmup"
    d = make_synthetic_adapter(model, warmup_lora or lora, seed + 1000, warmup_dir, b_std)
    suite: dict[int, dict[str, Path]] = {}
    for n in tqdm(list(n_experts_list), desc="synthetic experts", mininterval=5.0):
        base = work / f"n{n}"
        paths: dict[str, Path] = {
            "experts_dir": make_synthetic_experts(model, n, lora, base / "experts", seed=seed, b_std=b_std),
            "warmup_dir": warmup_dir,
        }
        if "single" in modes:
            paths["router_dir"] = make_synthetic_router(
                model_dir, n, base / "router", encoder=router_encoder, seed=seed
            )
        if "elrea" in modes:
            paths.update(make_synthetic_elrea(n, d, base / "elrea", dim=projection_dim, seed=seed + n))
        suite[n] = paths
    del model
    gc.collect()
    return suite


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


def time_generation(
    lm: Any, prompts: Sequence[str], *, max_new_tokens: int, repeats: int, throughput_batch: int
) -> dict[str, float]:
    """Latency of ``lm`` (a :class:`gs.evaluation.routed_model.RoutedLM`): TTFT, per-token latency, routing times
    (batch 1, prompts cycled, mean over ``repeats`` after one warm-up call) and the throughput of a
    batch of ``throughput_batch`` prompts (mean over ``repeats`` after a warm-up call)."""
    if max_new_tokens < 2:
        raise InputError(f"latency needs max_new_tokens >= 2 (a first token and one after), got {max_new_tokens}")
    if repeats < 1:
        raise InputError(f"repeats must be at least 1, got {repeats}")
    prompts = list(prompts)
    kw = {"max_new_tokens": max_new_tokens, "ignore_eos": True}
    lm.generate(prompts[:1], batch_size=1, **kw)  # warm-up: allocator, kernels, encoder load
    ttft, per_token, router, gradient, forwards = [], [], [], [], []
    for r in range(repeats):
        lm.generate([prompts[r % len(prompts)]], batch_size=1, **kw)
        t = lm.last_timing
        ttft.append(t["first_token_s"])
        per_token.append((t["total_s"] - t["first_token_s"]) / max(1, t["new_tokens"] - 1))
        router.append(t["route_s"] - t["gradient_s"])
        gradient.append(t["gradient_s"])
        forwards.append(t["forward_calls"] / max(1, t["new_tokens"]))
    batch = [prompts[i % len(prompts)] for i in range(throughput_batch)]
    lm.generate(batch, batch_size=throughput_batch, **kw)
    tps = []
    for _ in range(repeats):
        lm.generate(batch, batch_size=throughput_batch, **kw)
        tps.append(lm.last_timing["new_tokens"] / lm.last_timing["total_s"])
    return {
        "ttft_s": float(np.mean(ttft)),
        "per_token_s": float(np.mean(per_token)),
        "tokens_per_s": float(np.mean(tps)),
        "router_s": float(np.mean(router)),
        "gradient_s": float(np.mean(gradient)),
        "forwards_per_token": float(np.mean(forwards)),
        "new_tokens": int(max_new_tokens),
    }


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _lora_spec(lora: Any) -> Any:
    from gs.models.lora import LoraSpec

    if lora is None:
        return LoraSpec()
    if isinstance(lora, LoraSpec):
        return lora
    try:
        return LoraSpec.from_config(dict(lora))
    except KeyError as e:
        raise InputError(f"latency params.lora: missing key {e.args[0]!r}") from None


def _add_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``<metric>_vs_single``: each row's metric over the ``single`` row's at the same artifacts and n."""
    for col, out in (
        ("ttft_s", "ttft_vs_single"),
        ("per_token_s", "per_token_vs_single"),
        ("tokens_per_s", "tokens_per_s_vs_single"),
    ):
        ref = df[df["mode"] == "single"].set_index(["artifacts", "n_experts"])[col].to_dict()
        df[out] = [
            value / ref[key] if key in ref else np.nan
            for value, key in zip(df[col], zip(df["artifacts"], df["n_experts"], strict=True), strict=True)
        ]
    return df


def measure(
    model_dir: str | os.PathLike,
    *,
    modes: Sequence[str] = LATENCY_MODES,
    n_experts_list: Sequence[int] = (2, 4, 8),
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    repeats: int = 3,
    throughput_batch: int = 8,
    lora: Any = None,
    warmup_lora: Any = None,
    inference_params: dict[str, Any] | None = None,
    router_encoder: str = "minilm",
    projection_dim: int = 256,
    b_std: float = 0.02,
    trained: dict[str, str | os.PathLike] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    seed: int = 0,
    work_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Time every mode in ``modes`` for every n in ``n_experts_list`` (see the module doc).

    Args:
        lora / warmup_lora: the experts' (and warm-up adapter's, default the same) LoRA config, a
            :class:`gs.models.lora.LoraSpec` or its config dict (rank, alpha, dropout, target_modules).
        inference_params: :class:`gs.evaluation.routed_model.RoutedLM` params (``temperature``, ``top_m``, ...).
        trained: optional real artifacts, timed as rows with ``artifacts="trained"``: ``experts_dir``
            and ``router_dir`` (single, uniform), ``elrea_experts_dir``, ``warmup_dir``,
            ``features_path``, ``projector_path``, ``assignments_path`` (elrea).
        work_dir: where the synthetic artifacts go (default: a temporary folder, removed after).
        dtype: the weights' dtype name (``auto``: :func:`gs.models.load.run_dtype`); default (None): the prepared
            model's own (the configured one).

    Returns:
        One row per (artifacts, mode, n) with the columns of :data:`COLUMNS`.
    """
    from gs.evaluation.routed_model import RoutedLM
    from gs.models.load import default_device, run_dtype

    bad = [m for m in modes if m not in LATENCY_MODES]
    if bad:
        raise InputError(f"unknown latency mode(s) {bad}; expected some of {', '.join(LATENCY_MODES)}")
    if not n_experts_list or min(int(n) for n in n_experts_list) < 1:
        raise InputError(f"n_experts_list must list positive numbers, got {list(n_experts_list)}")
    prompts = list(prompts or DEFAULT_PROMPTS)
    dev = torch.device(device or default_device())
    name = device_name(dev)
    dtype = run_dtype(model_dir, dtype, str(dev))  # auto: decided for this device (gs.models.dtype)
    lora_spec, warm_spec = _lora_spec(lora), _lora_spec(warmup_lora if warmup_lora is not None else lora)
    timing = {"max_new_tokens": max_new_tokens, "repeats": repeats, "throughput_batch": throughput_batch}
    common = {"params": inference_params, "device": str(dev), "dtype": dtype, "seed": seed}
    rows: list[dict[str, Any]] = []

    def run(mode: str, n: int, artifacts: str, **paths: Any) -> dict[str, Any]:
        lm = RoutedLM(model_dir, mode=mode, **paths, **common)
        try:
            result = time_generation(lm, prompts, **timing)
        finally:
            del lm
            _free(dev)
        return {"device": name, "artifacts": artifacts, "mode": mode, "n_experts": int(n), **result}

    ctx = tempfile.TemporaryDirectory(prefix="gs-latency-") if work_dir is None else None
    work = Path(ctx.name if ctx is not None else work_dir)  # type: ignore[arg-type]
    try:
        suite = make_synthetic_suite(
            model_dir,
            [int(n) for n in n_experts_list],
            work,
            lora=lora_spec,
            warmup_lora=warm_spec,
            router_encoder=router_encoder,
            projection_dim=projection_dim,
            seed=seed,
            b_std=b_std,
            modes=modes,
            device=str(dev),
        )
        jobs = [(m, n) for n in suite for m in modes if m != "base"]
        if "base" in modes:
            base_row = run("base", 0, "synthetic")
            rows.extend({**base_row, "n_experts": int(n)} for n in suite)
        for mode, n in tqdm(jobs, desc="latency", mininterval=5.0):
            p = suite[n]
            if mode == "single":
                rows.append(run(mode, n, "synthetic", experts_dir=p["experts_dir"], router_dir=p["router_dir"]))
            elif mode == "uniform":
                rows.append(run(mode, n, "synthetic", experts_dir=p["experts_dir"]))
            else:
                rows.append(
                    run(
                        mode,
                        n,
                        "synthetic",
                        experts_dir=p["experts_dir"],
                        warmup_dir=p["warmup_dir"],
                        features_path=p["features_path"],
                        projector_path=p["projector_path"],
                        assignments_path=p["assignments_path"],
                    )
                )
        rows.extend(_measure_trained(run, trained or {}, modes))
    finally:
        if ctx is not None:
            ctx.cleanup()
    df = pd.DataFrame(rows)
    df = _add_ratios(df)
    return df[COLUMNS].sort_values(["artifacts", "n_experts", "mode"], kind="stable").reset_index(drop=True)


def _measure_trained(run: Any, trained: dict[str, Any], modes: Sequence[str]) -> list[dict[str, Any]]:
    """Rows for the trained artifacts that were given (``artifacts="trained"``)."""
    from gs.experts.folders import load_manifest

    rows = []
    if trained.get("experts_dir"):
        n = len(load_manifest(trained["experts_dir"])["experts"])
        if "single" in modes and trained.get("router_dir"):
            rows.append(
                run("single", n, "trained", experts_dir=trained["experts_dir"], router_dir=trained["router_dir"])
            )
        if "uniform" in modes:
            rows.append(run("uniform", n, "trained", experts_dir=trained["experts_dir"]))
    keys = ("elrea_experts_dir", "warmup_dir", "features_path", "assignments_path")
    if "elrea" in modes and all(trained.get(k) for k in keys):
        n = len(load_manifest(trained["elrea_experts_dir"])["experts"])
        rows.append(
            run(
                "elrea",
                n,
                "trained",
                experts_dir=trained["elrea_experts_dir"],
                warmup_dir=trained["warmup_dir"],
                features_path=trained["features_path"],
                projector_path=trained.get("projector_path"),
                assignments_path=trained["assignments_path"],
            )
        )
    return rows


# --------------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------------


def plot_latency(df: pd.DataFrame, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Per-token latency and time to first token (ms) against the number of experts, one line per
    mode (synthetic experts; trained experts as hollow markers), the device in the title. PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if df.empty:
        raise InputError("no latency rows to plot")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {
        "base": ("k", "--", "o"),
        "single": ("C0", "-", "o"),
        "uniform": ("C1", "-", "s"),
        "elrea": ("C3", "-", "^"),
    }
    for ax, col, label in (
        (axes[0], "per_token_s", "per-token latency (ms/token)"),
        (axes[1], "ttft_s", "time to first token (ms)"),
    ):
        for mode, part in df[df["artifacts"] == "synthetic"].groupby("mode", sort=False):
            color, ls, marker = styles.get(str(mode), ("C7", "-", "x"))
            part = part.sort_values("n_experts")
            ax.plot(part["n_experts"], part[col] * 1000, ls=ls, marker=marker, color=color, label=str(mode))
        for mode, part in df[df["artifacts"] == "trained"].groupby("mode", sort=False):
            color, _, marker = styles.get(str(mode), ("C7", "-", "x"))
            ax.scatter(
                part["n_experts"],
                part[col] * 1000,
                marker=marker,
                facecolors="none",
                edgecolors=color,
                s=80,
                label=f"{mode} (trained)",
            )
        ax.set_xlabel("number of experts")
        ax.set_ylabel(label)
        ax.set_xticks(sorted(df["n_experts"].unique()))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    devices = ", ".join(sorted(df["device"].astype(str).unique()))
    fig.suptitle(title or f"Inference latency vs number of experts (batch 1, greedy), {devices}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from gs.io import parse_params
    from gs.models.lora import seed_everything

    parser = argparse.ArgumentParser(description="Latency of single-expert routing vs expert ensembles.")
    parser.add_argument("--model-dir", required=True, help="prepared base model folder")
    parser.add_argument(
        "--params",
        default="{}",
        help="JSON: lora, warmup_lora, inference, router_encoder, projection_dim, n_experts, max_new_tokens, "
        "repeats, throughput_batch, modes, dtype, b_std",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--device", help="default: CUDA if visible, else CPU")
    parser.add_argument("--n-experts", type=int, nargs="+", help="overrides params.n_experts")
    parser.add_argument("--modes", nargs="+", help="overrides params.modes")
    parser.add_argument("--max-new-tokens", type=int, help="overrides params.max_new_tokens")
    parser.add_argument("--repeats", type=int, help="overrides params.repeats")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--work-dir", help="keep the synthetic artifacts here (default: a temporary folder)")
    parser.add_argument("--experts-dir", help="also time these trained GradientSpace experts (single, uniform)")
    parser.add_argument("--router-dir", help="their trained router")
    parser.add_argument("--elrea-experts-dir", help="also time trained ELREA experts (with the next four)")
    parser.add_argument("--warmup-dir")
    parser.add_argument("--features")
    parser.add_argument("--projector")
    parser.add_argument("--assignments")
    args = parser.parse_args(argv)
    params = parse_params(args.params)
    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    trained = {
        "experts_dir": args.experts_dir,
        "router_dir": args.router_dir,
        "elrea_experts_dir": args.elrea_experts_dir,
        "warmup_dir": args.warmup_dir,
        "features_path": args.features,
        "projector_path": args.projector,
        "assignments_path": args.assignments,
    }
    df = measure(
        args.model_dir,
        modes=args.modes or params.get("modes", LATENCY_MODES),
        n_experts_list=args.n_experts or params.get("n_experts", (2, 4, 8)),
        max_new_tokens=args.max_new_tokens or int(params.get("max_new_tokens", 32)),
        repeats=args.repeats or int(params.get("repeats", 3)),
        throughput_batch=int(params.get("throughput_batch", 8)),
        lora=params.get("lora"),
        warmup_lora=params.get("warmup_lora"),
        inference_params=params.get("inference"),
        router_encoder=str(params.get("router_encoder", "minilm")),
        projection_dim=int(params.get("projection_dim", 256)),
        b_std=float(params.get("b_std", 0.02)),
        trained={k: v for k, v in trained.items() if v},
        device=args.device,
        dtype=params.get("dtype"),
        seed=args.seed,
        work_dir=args.work_dir,
    )
    with atomic_path(args.out_csv) as tmp:
        df.to_csv(tmp, index=False)
    plot_latency(df, args.out_png)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(json.dumps({"csv": args.out_csv, "png": args.out_png}))


if __name__ == "__main__":
    run_cli(main)
