"""RoutedLM: greedy decoding against transformers, routing, ensemble mixtures, input errors.

All on the tiny 2-layer model with synthetic adapters whose ``B`` is random (so experts differ).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gs.data.prompting import format_prompt
from gs.evaluation.latency import make_synthetic_adapter, make_synthetic_elrea, make_synthetic_experts
from gs.evaluation.routed_model import RoutedLM, mixture_weights
from gs.io import InputError, write_json
from gs.models.lora import LoraSpec

LORA = LoraSpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
PROMPTS = ["What is 2 + 2?", "Write a short poem about the sea and the wind at night.", "Sort [3, 1, 2]."]
TOKENS = 6


# Tiny matmuls on a shared 2-core machine: thread hand-offs cost ~50x the work itself.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def art(tiny_model_dir, tmp_path_factory):
    """Experts folders with 1 and 2 synthetic experts, a warm-up adapter and ELREA artifacts."""
    from gs.models.load import load_model

    root = tmp_path_factory.mktemp("inference")
    model = load_model(tiny_model_dir, device="cpu")
    # A large B on a width-32 model: the two experts' greedy outputs differ.
    one = make_synthetic_experts(model, 1, LORA, root / "one", seed=1, b_std=0.5)
    two = make_synthetic_experts(model, 2, LORA, root / "two", seed=1, b_std=0.5)
    d = make_synthetic_adapter(model, LORA, 99, root / "warmup", b_std=0.5)
    elrea = make_synthetic_elrea(2, d, root / "elrea", dim=16, seed=3)
    return {"one": one, "two": two, "warmup": root / "warmup", "d": d, **elrea, "root": root}


def _constant_router(path, expert: int):
    from gs.router.train import Router

    r = Router("minilm", holdout=0.0).fit_embeddings(np.zeros((3, 0), dtype=np.float32), [expert] * 3)
    return r.save(path)


def _elrea(tiny_model_dir, art, **params):
    return RoutedLM(
        tiny_model_dir,
        mode="elrea",
        experts_dir=art["two"],
        warmup_dir=art["warmup"],
        features_path=art["features_path"],
        assignments_path=art["assignments_path"],
        params=params or None,
        device="cpu",
    )


def _hf_logits(tiny_model_dir, adapter_dir, prompt: str) -> torch.Tensor:
    """Last-position logits (V,) of one unpadded prompt, base model + one adapter, plain peft."""
    from peft import PeftModel

    from gs.models.load import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, device="cpu")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    ids = tok(format_prompt(tok, {"instruction": prompt}), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**ids).logits[0, -1].float()


def test_base_matches_transformers_generate(tiny_model_dir):
    lm = RoutedLM(tiny_model_dir, mode="base", device="cpu")
    out = lm.generate(PROMPTS, max_new_tokens=TOKENS, batch_size=3)  # one left-padded batch
    tok = lm.tokenizer
    for prompt, text in zip(PROMPTS, out, strict=True):
        ids = tok(format_prompt(tok, {"instruction": prompt}), add_special_tokens=False, return_tensors="pt")
        ref = lm.model.generate(**ids, max_new_tokens=TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert lm.last_routing == [{"experts": [], "weights": []}] * 3
    assert lm.generate(PROMPTS, max_new_tokens=TOKENS, batch_size=1) == out  # batching changes nothing
    assert lm.generate([], max_new_tokens=TOKENS) == []


def test_stop_strings_cut_output(tiny_model_dir):
    lm = RoutedLM(tiny_model_dir, mode="base", device="cpu")
    full = lm.generate(PROMPTS[:1], max_new_tokens=12, ignore_eos=True)[0]
    assert len(full) > 6
    stop = full[3:5]
    cut = lm.generate(PROMPTS[:1], max_new_tokens=12, stop=[stop, "\x00never"], ignore_eos=True)[0]
    assert cut == full[: full.find(stop)]
    assert lm.last_timing["new_tokens"] <= 12


def test_uniform_with_one_expert_equals_single_and_multitask(tiny_model_dir, art):
    router = _constant_router(art["root"] / "router_one", 0)
    single = RoutedLM(tiny_model_dir, mode="single", experts_dir=art["one"], router_dir=router, device="cpu")
    uniform = RoutedLM(tiny_model_dir, mode="uniform", experts_dir=art["one"], device="cpu")
    multitask = RoutedLM(tiny_model_dir, mode="multitask", experts_dir=art["one"], device="cpu")
    base = RoutedLM(tiny_model_dir, mode="base", device="cpu")
    kw = {"max_new_tokens": TOKENS, "batch_size": 2}
    a = single.generate(PROMPTS, **kw)
    assert uniform.generate(PROMPTS, **kw) == a
    assert multitask.generate(PROMPTS, **kw) == a
    assert single.last_routing == uniform.last_routing == [{"experts": [0], "weights": [1.0]}] * 3
    assert single.last_timing["forward_calls"] == uniform.last_timing["forward_calls"]
    # The adapter is not a no-op: the base model's step-0 distribution differs.
    assert not torch.allclose(base.next_token_distribution(PROMPTS), single.next_token_distribution(PROMPTS))


def test_uniform_step0_mixture_equals_hand_mixed_softmaxes(tiny_model_dir, art):
    lm = RoutedLM(tiny_model_dir, mode="uniform", experts_dir=art["two"], device="cpu")
    mix = lm.next_token_distribution(PROMPTS[:2])  # (2, V), left-padded batch
    for i, prompt in enumerate(PROMPTS[:2]):
        logits = [_hf_logits(tiny_model_dir, art["two"] / f"expert_{j}", prompt) for j in (0, 1)]
        assert (logits[0] - logits[1]).abs().max() > 1e-2  # the experts really differ
        p = [torch.softmax(x, -1) for x in logits]
        torch.testing.assert_close(mix[i], 0.5 * p[0] + 0.5 * p[1], atol=1e-6, rtol=1e-4)
    assert lm.last_routing[0] == {"experts": [0, 1], "weights": [0.5, 0.5]}
    out = lm.generate(PROMPTS[:2], max_new_tokens=TOKENS, ignore_eos=True)
    assert lm.last_timing["forward_calls"] == 2 * TOKENS  # one KV cache per expert, advanced each step
    assert all(isinstance(t, str) for t in out)


def _hf_token_logprobs(tiny_model_dir, adapter_dir, prompt: str, continuation: str) -> torch.Tensor:
    """Log-probabilities (n,) of the continuation's tokens after one unpadded prompt, plain peft."""
    from peft import PeftModel

    from gs.models.load import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, device="cpu")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    ctx = tok(format_prompt(tok, {"instruction": prompt}), add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(cont)[:, None])[:, 0]


ANSWERS = ["4", "The sea is dark,\nthe wind is cold, and the night is long.", "[1, 2, 3]"]


def test_loglikelihood_base_matches_transformers_and_batching(tiny_model_dir):
    lm = RoutedLM(tiny_model_dir, mode="base", device="cpu")
    batched = lm.loglikelihood(PROMPTS, ANSWERS, batch_size=3)  # one left-padded batch, ragged answers
    one_by_one = lm.loglikelihood(PROMPTS, ANSWERS, batch_size=1)
    assert [x[0] for x in one_by_one] == pytest.approx([x[0] for x in batched], rel=1e-5)
    assert [x[1:] for x in one_by_one] == [x[1:] for x in batched]
    for prompt, answer, (logprob, _greedy, n) in zip(PROMPTS, ANSWERS, batched, strict=True):
        ref = _hf_token_logprobs(tiny_model_dir, None, prompt, answer)
        assert n == len(ref)
        assert logprob == pytest.approx(float(ref.sum()), rel=1e-4, abs=1e-4)
    assert lm.last_timing["forward_calls"] == 3
    # The model's own greedy first token is greedy; another token is not, and is less likely.
    first = int(lm.next_token_distribution(PROMPTS[:1])[0].argmax())
    text = lm.tokenizer.decode([first])
    assert lm.tokenizer(text, add_special_tokens=False)["input_ids"] == [first]  # round-trips (it is "\n")
    ((lp, is_greedy, n),) = lm.loglikelihood(PROMPTS[:1], [text])
    assert is_greedy and n == 1
    ((lp_other, is_greedy_other, _),) = lm.loglikelihood(PROMPTS[:1], ["Paris"])
    assert not is_greedy_other and lp_other < lp


def test_loglikelihood_uniform_is_the_mixture_of_the_experts(tiny_model_dir, art):
    lm = RoutedLM(tiny_model_dir, mode="uniform", experts_dir=art["two"], device="cpu")
    scores = lm.loglikelihood(PROMPTS[:2], ANSWERS[:2], batch_size=2)
    assert lm.last_timing["forward_calls"] == 2  # one teacher-forced forward per expert
    for prompt, answer, (logprob, _, _) in zip(PROMPTS[:2], ANSWERS[:2], scores, strict=True):
        per_expert = [_hf_token_logprobs(tiny_model_dir, art["two"] / f"expert_{j}", prompt, answer) for j in (0, 1)]
        assert (per_expert[0] - per_expert[1]).abs().max() > 1e-3
        mixed = torch.logsumexp(torch.stack(per_expert) + np.log(0.5), dim=0).sum()
        assert logprob == pytest.approx(float(mixed), rel=1e-4, abs=1e-4)
        # Not the mean of the experts' sequence log-likelihoods: the mixture is per token.
        assert logprob >= float(0.5 * (per_expert[0].sum() + per_expert[1].sum())) - 1e-4
    with pytest.raises(InputError, match="empty"):
        lm.loglikelihood(PROMPTS[:1], [""])
    with pytest.raises(InputError, match="continuations"):
        lm.loglikelihood(PROMPTS[:2], ANSWERS[:1])


def test_single_routes_each_prompt_to_its_expert(tiny_model_dir, art):
    """Each prompt's output equals plain transformers generation with the routed expert alone."""
    from peft import PeftModel

    from gs.models.load import load_model
    from gs.router.train import Router

    texts = [f"math question {k}: what is {k} + {k}?" for k in range(6)] + [
        f"write a poem number {k}" for k in range(6)
    ]
    Router("base", model_dir=tiny_model_dir, holdout=0.0).fit(texts, [0] * 6 + [1] * 6).save(art["root"] / "r2")
    lm = RoutedLM(tiny_model_dir, mode="single", experts_dir=art["two"], router_dir=art["root"] / "r2", device="cpu")
    prompts = [texts[0], texts[7], texts[1], texts[8]]
    out = lm.generate(prompts, max_new_tokens=TOKENS, batch_size=8)
    chosen = [r["experts"][0] for r in lm.last_routing]
    assert chosen == [int(j) for j in lm.router.predict(prompts)]
    assert set(chosen) == {0, 1}  # both adapters used within one call
    tok = lm.tokenizer
    for j in (0, 1):
        ref_model = PeftModel.from_pretrained(load_model(tiny_model_dir, device="cpu"), str(art["two"] / f"expert_{j}"))
        for prompt, text, e in zip(prompts, out, chosen, strict=True):
            if e != j:
                continue
            ids = tok(format_prompt(tok, {"instruction": prompt}), add_special_tokens=False, return_tensors="pt")
            ref = ref_model.generate(**ids, max_new_tokens=TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
            assert text == tok.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_elrea_weights_similarities_and_mixture(tiny_model_dir, art):
    from gs.data.prompting import collate, encode_example
    from gs.gradients.per_sample import per_sample_lora_gradients
    from gs.gradients.projection import load_projector
    from gs.models.load import load_model, load_tokenizer
    from gs.models.lora import load_adapter

    lm = _elrea(tiny_model_dir, art, temperature=0.05)
    mix = lm.next_token_distribution(PROMPTS[:2])
    routes = lm.last_routing
    assert lm.last_timing["gradient_s"] > 0
    # Similarities = cosine(projected normalised warm-up gradient, expert centroid), recomputed standalone.
    tok = load_tokenizer(tiny_model_dir)
    warm = load_adapter(load_model(tiny_model_dir, device="cpu"), art["warmup"], trainable=True)
    enc = [encode_example(tok, {"instruction": p}, 512, "instruction") for p in PROMPTS[:2]]
    g = per_sample_lora_gradients(warm, collate(enc, tok.pad_token_id))
    assert g.shape[1] == art["d"]
    x = load_projector(art["projector_path"]).transform(g / g.norm(dim=1, keepdim=True)).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ lm.centroids.T
    np.testing.assert_allclose([r["similarities"] for r in routes], sims, atol=1e-5)
    for i, r in enumerate(routes):
        assert r["experts"] == sorted([0, 1], key=lambda j: -sims[i, j])
        np.testing.assert_allclose(sum(r["weights"]), 1.0, atol=1e-9)
        z = np.exp(sims[i] / 0.05)  # by hand: softmax(similarity / T) over both experts
        np.testing.assert_allclose(r["weights"], (z / z.sum())[r["experts"]], rtol=1e-9)
        p = {j: torch.softmax(_hf_logits(tiny_model_dir, art["two"] / f"expert_{j}", PROMPTS[i]), -1) for j in (0, 1)}
        hand = sum(w * p[j] for j, w in zip(r["experts"], r["weights"], strict=True))
        torch.testing.assert_close(mix[i], hand.float(), atol=1e-6, rtol=1e-4)
    # top_m = 1: one expert per prompt, weight 1, the most similar one; one forward per step.
    top1 = _elrea(tiny_model_dir, art, top_m=1)
    top1.generate(PROMPTS[:2], max_new_tokens=3, ignore_eos=True, batch_size=1)
    assert [r["experts"] for r in top1.last_routing] == [[r["experts"][0]] for r in routes]
    assert [r["weights"] for r in top1.last_routing] == [[1.0], [1.0]]
    assert top1.last_timing["forward_calls"] == 2 * 3


def test_mixture_weights_topm_and_temperature():
    sims = np.array([[0.1, 0.3, 0.2], [0.0, 0.0, 0.0]])
    w = mixture_weights(sims, 0.1, 2)
    # By hand: top 2 of row 0 are 0.3, 0.2 -> softmax([3, 2]) = [e/(e+1), 1/(e+1)]; column 0 is cut.
    e = np.e
    np.testing.assert_allclose(w[0], [0.0, e / (e + 1), 1 / (e + 1)], rtol=1e-12)
    np.testing.assert_allclose(w[1], [0.5, 0.5, 0.0])  # ties: lower index first
    # All three, T = 0.05: softmax([2, 6, 4]).
    z = np.exp([2.0, 6.0, 4.0])
    np.testing.assert_allclose(mixture_weights(sims[:1], 0.05, None)[0], z / z.sum(), rtol=1e-12)
    np.testing.assert_allclose(mixture_weights(sims, 1e6, None)[0], [1 / 3] * 3, atol=1e-5)
    np.testing.assert_allclose(mixture_weights(sims[:1], 0.1, 1)[0], [0.0, 1.0, 0.0])


def test_oracle_picks_expert_with_most_domain_samples(tiny_model_dir, art, tmp_path):
    import json
    import shutil

    d = tmp_path / "experts"
    shutil.copytree(art["two"], d)
    manifest = json.loads((d / "experts.json").read_text())
    manifest["experts"][0]["domains"] = {"math": 5, "code": 3}
    manifest["experts"][0]["n_train"] = 8
    manifest["experts"][1]["domains"] = {"math": 5, "writing": 1}  # ties on math, purer: wins
    manifest["experts"][1]["n_train"] = 6
    write_json(d / "experts.json", manifest)
    lm = RoutedLM(tiny_model_dir, mode="oracle", experts_dir=d, device="cpu")
    lm.generate(PROMPTS, max_new_tokens=2, domains=["math", "code", "writing"])
    assert [r["experts"] for r in lm.last_routing] == [[1], [0], [1]]
    with pytest.raises(InputError, match="one domain per prompt"):
        lm.generate(PROMPTS, max_new_tokens=2)
    with pytest.raises(InputError, match="finance"):
        lm.generate(PROMPTS[:1], max_new_tokens=2, domains=["finance"])


def test_input_errors(tiny_model_dir, art, tmp_path):
    with pytest.raises(InputError, match="unknown inference mode 'ensemble'"):
        RoutedLM(tiny_model_dir, mode="ensemble")
    with pytest.raises(InputError, match=str(tmp_path / "nope")):
        RoutedLM(tiny_model_dir, mode="uniform", experts_dir=tmp_path / "nope")
    with pytest.raises(InputError, match="needs experts folder"):
        RoutedLM(tiny_model_dir, mode="single")
    with pytest.raises(InputError, match="router_dir"):
        RoutedLM(tiny_model_dir, mode="single", experts_dir=art["two"])
    with pytest.raises(InputError, match="expects one expert"):
        RoutedLM(tiny_model_dir, mode="multitask", experts_dir=art["two"])
    with pytest.raises(InputError, match=str(tmp_path / "warm")):
        RoutedLM(tiny_model_dir, mode="elrea", experts_dir=art["two"], warmup_dir=tmp_path / "warm")
    with pytest.raises(InputError, match="temperature"):
        RoutedLM(tiny_model_dir, mode="base", params={"temperature": 0})
    with pytest.raises(InputError, match=r"unknown inference param\(s\) \['topm'\]"):
        RoutedLM(tiny_model_dir, mode="base", params={"topm": 2})
    # A router whose expert 7 is not in the manifest: named in the error.
    router = _constant_router(tmp_path / "router7", 7)
    with pytest.raises(InputError, match=r"expert\(s\) \[7\]"):
        RoutedLM(tiny_model_dir, mode="single", experts_dir=art["two"], router_dir=router, device="cpu")
    lm = RoutedLM(tiny_model_dir, mode="base", device="cpu")
    with pytest.raises(InputError, match="max_new_tokens"):
        lm.generate(PROMPTS, max_new_tokens=0)


# -- multi-step decoding and likelihood against plain peft models (issue 16) ------------------------


@pytest.fixture(scope="module")
def plain_experts(tiny_model_dir, art):
    """The two experts as two separate plain peft models (no shared weights, no adapter switching)."""
    from peft import PeftModel

    from gs.models.load import load_model

    return [
        PeftModel.from_pretrained(load_model(tiny_model_dir, device="cpu"), str(art["two"] / f"expert_{j}")).eval()
        for j in (0, 1)
    ]


def _hand_greedy(models, weights, tok, prompt: str, n: int) -> str:
    """Greedy decoding from sum_e w_e softmax(logits_e), by hand: every step a full forward of the
    unpadded prompt + tokens so far (no KV cache), softmaxes in numpy float64; EOS not special."""
    ids = tok(format_prompt(tok, {"instruction": prompt}), add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for _ in range(n):
        mix = 0.0
        for model, w in zip(models, weights, strict=True):
            with torch.no_grad():
                z = model(input_ids=torch.tensor([ids + out])).logits[0, -1].double().numpy()
            p = np.exp(z - z.max())
            mix = mix + w * p / p.sum()
        out.append(int(np.argmax(mix)))
    return tok.decode(out, skip_special_tokens=True)


def _hand_elrea_similarities(tiny_model_dir, art, prompts, key: str | None = None) -> np.ndarray:
    """Cosines (b, 2) of each prompt's projected unit warm-up gradient to the two experts' centroids,
    the centroids built here from features.npz and the assignments (synthetic: cluster j -> expert j)."""
    import pandas as pd

    from gs.data.prompting import collate, encode_example
    from gs.gradients.per_sample import per_sample_lora_gradients
    from gs.gradients.projection import load_projector
    from gs.models.load import load_model, load_tokenizer
    from gs.models.lora import load_adapter

    with np.load(art["features_path"]) as f:
        feats = f[key or f"projected_{int(f['elrea_dim'])}"].astype(np.float64)
        ids = [str(i) for i in f["ids"]]
    frame = pd.read_csv(art["assignments_path"], dtype={"id": str})
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    centroids = []
    for j in (0, 1):
        rows = [ids.index(i) for i in frame.loc[frame["cluster"] == j, "id"]]
        c = unit[rows].mean(axis=0)
        centroids.append(c / np.linalg.norm(c))
    tok = load_tokenizer(tiny_model_dir)
    warm = load_adapter(load_model(tiny_model_dir, device="cpu"), art["warmup"], trainable=True)
    enc = [encode_example(tok, {"instruction": p}, 512, "instruction") for p in prompts]
    g = per_sample_lora_gradients(warm, collate(enc, tok.pad_token_id))
    x = load_projector(art["projector_path"]).transform(g / g.norm(dim=1, keepdim=True)).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x @ np.stack(centroids).T


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def test_uniform_greedy_decoding_equals_hand_mixture(tiny_model_dir, art, plain_experts):
    lm = RoutedLM(tiny_model_dir, mode="uniform", experts_dir=art["two"], device="cpu")
    # One left-padded batch of prompts of different lengths: each expert's KV cache holds padding.
    out = lm.generate(PROMPTS, max_new_tokens=TOKENS, batch_size=3, ignore_eos=True)
    tok = lm.tokenizer
    assert len({len(x) for x in lm._encode(PROMPTS)}) == 3
    for prompt, text in zip(PROMPTS, out, strict=True):
        assert text == _hand_greedy(plain_experts, [0.5, 0.5], tok, prompt, TOKENS)
    # The experts alone disagree somewhere, so the mixture is not one of them in disguise.
    alone = [[_hand_greedy([m], [1.0], tok, p, TOKENS) for p in PROMPTS] for m in plain_experts]
    assert alone[0] != alone[1]


def test_elrea_greedy_decoding_equals_hand_mixture(tiny_model_dir, art, plain_experts):
    lm = _elrea(tiny_model_dir, art, temperature=0.05)
    out = lm.generate(PROMPTS, max_new_tokens=TOKENS, batch_size=3, ignore_eos=True)
    sims = _hand_elrea_similarities(tiny_model_dir, art, PROMPTS)
    np.testing.assert_allclose([r["similarities"] for r in lm.last_routing], sims, atol=1e-5)
    for i, (prompt, text) in enumerate(zip(PROMPTS, out, strict=True)):
        w = _softmax(sims[i] / 0.05)  # by hand: softmax(similarity / T) over both experts
        assert abs(w[0] - 0.5) > 1e-3  # really non-uniform
        assert text == _hand_greedy(plain_experts, list(w), lm.tokenizer, prompt, TOKENS)


def _np_logprob_matrix(model, tok, prompt: str, answer: str) -> tuple[np.ndarray, list[int]]:
    """Log-softmax (n, V) float64 at the answer's n positions after one unpadded prompt (the model's
    full (tokens, vocabulary) logits in one forward, log-softmax in numpy), and the answer's ids."""
    ctx = tok(format_prompt(tok, {"instruction": prompt}), add_special_tokens=False)["input_ids"]
    cont = tok(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        z = model(input_ids=torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1].double().numpy()
    lse = z.max(axis=1, keepdims=True) + np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True))
    return z - lse, cont


def _np_token_logprobs(model, tok, prompt: str, answer: str) -> np.ndarray:
    """Answer-token log-probabilities (n,) float64 (:func:`_np_logprob_matrix`)."""
    lp, cont = _np_logprob_matrix(model, tok, prompt, answer)
    return lp[np.arange(len(cont)), cont]


def _np_mixture(per_expert: list[np.ndarray], weights) -> np.ndarray:
    """Per-token log sum_e w_e p_e, by hand in float64."""
    return np.log(sum(w * np.exp(lp) for w, lp in zip(weights, per_expert, strict=True)))


def test_loglikelihood_elrea_non_uniform_weights(tiny_model_dir, art, plain_experts):
    lm = _elrea(tiny_model_dir, art, temperature=0.05)
    scores = lm.loglikelihood(PROMPTS, ANSWERS, batch_size=3, chunk_tokens=4)
    sims = _hand_elrea_similarities(tiny_model_dir, art, PROMPTS)
    for i, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS, strict=True)):
        per_expert = [_np_token_logprobs(m, lm.tokenizer, prompt, answer) for m in plain_experts]
        expected = _np_mixture(per_expert, _softmax(sims[i] / 0.05)).sum()
        assert scores[i][0] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert scores[i][2] == len(per_expert[0])


def test_loglikelihood_single_routes_rows_to_several_adapters(tiny_model_dir, art, plain_experts):
    from gs.router.train import Router

    texts = [f"math question {k}: what is {k} + {k}?" for k in range(6)] + [
        f"write a poem number {k}" for k in range(6)
    ]
    Router("base", model_dir=tiny_model_dir, holdout=0.0).fit(texts, [0] * 6 + [1] * 6).save(art["root"] / "r_ll")
    lm = RoutedLM(tiny_model_dir, mode="single", experts_dir=art["two"], router_dir=art["root"] / "r_ll", device="cpu")
    prompts = [texts[0], texts[7], texts[1], texts[8]]
    answers = ["0", "The sea at night.", "2 and 2 make four, so the answer is 4.", "Roses"]
    scores = lm.loglikelihood(prompts, answers, batch_size=8, chunk_tokens=3)
    chosen = [r["experts"][0] for r in lm.last_routing]
    assert set(chosen) == {0, 1}
    for prompt, answer, e, (logprob, _, n) in zip(prompts, answers, chosen, scores, strict=True):
        ref = _np_token_logprobs(plain_experts[e], lm.tokenizer, prompt, answer)
        assert n == len(ref)
        assert logprob == pytest.approx(ref.sum(), rel=1e-4, abs=1e-4)


def test_score_batch_mixes_overlapping_adapter_rows(tiny_model_dir, art, plain_experts):
    """gs.evaluation.scoring directly: rows served by different, partly shared adapters with ragged answers."""
    from gs.evaluation.routing import adapter_groups
    from gs.evaluation.scoring import score_batch

    lm = RoutedLM(tiny_model_dir, mode="uniform", experts_dir=art["two"], device="cpu")
    routes = [
        {"experts": [0], "weights": [1.0]},
        {"experts": [1], "weights": [1.0]},
        {"experts": [1, 0], "weights": [0.7, 0.3]},
    ]
    tok = lm.tokenizer
    contexts = lm._encode(PROMPTS)
    answers = [ANSWERS[1], ANSWERS[0], ANSWERS[2]]  # the longest answer on the first adapter's row only
    targets = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]
    scores, forwards = score_batch(
        lm.model,
        lm._activate,
        contexts,
        targets,
        adapter_groups(routes, base=False),
        pad_id=lm.pad_id,
        device=lm.device,
        chunk_tokens=2,
    )
    assert forwards == 2
    lp = [[_np_token_logprobs(m, tok, p, a) for m in plain_experts] for p, a in zip(PROMPTS, answers, strict=True)]
    expected = [lp[0][0].sum(), lp[1][1].sum(), _np_mixture(lp[2], [0.3, 0.7]).sum()]
    assert [s[0] for s in scores] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert [s[2] for s in scores] == [len(t) for t in targets]


class _OpShapes:
    """Records the shape of every tensor any torch op returns (a TorchDispatchMode), except views of
    the model's parameters (the tied embedding matrix is (V, H) and is no activation)."""

    def __init__(self, model):
        from torch.utils._python_dispatch import TorchDispatchMode

        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        shapes: list[tuple[int, ...]] = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
                        shapes.append(tuple(t.shape))
                return out

        self.mode, self.shapes = Mode(), shapes

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)

    def largest_with(self, v: int) -> int:
        """The most elements of a recorded tensor with a dimension of size ``v``."""
        return max((int(np.prod(s)) for s in self.shapes if v in s), default=0)


def test_chunked_likelihood_equals_full_softmax_in_bounded_memory(tiny_model_dir, art, plain_experts):
    lm = RoutedLM(tiny_model_dir, mode="uniform", experts_dir=art["two"], device="cpu")
    lm.loglikelihood(PROMPTS[:1], ["x"])  # the one-off check that logits are lm_head(hidden states)
    v, chunk = lm.model.config.vocab_size, 2
    lengths = [len(lm.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in ANSWERS]
    assert max(lengths) > 4 * chunk
    # The mixture's own greedy 5 tokens after the first prompt: an answer whose is_greedy is true.
    greedy_text = lm.generate(PROMPTS[:1], max_new_tokens=5, ignore_eos=True)[0]
    answers = [greedy_text, *ANSWERS[1:]]
    with _OpShapes(lm.model) as rec:
        scores = lm.loglikelihood(PROMPTS, answers, batch_size=3, chunk_tokens=chunk)
    # Never more than one chunk of vocabulary-sized values: (batch 3, 2 positions, V).
    assert rec.largest_with(v) == 3 * chunk * v
    hand_greedy = []
    for (logprob, greedy, n), prompt, answer in zip(scores, PROMPTS, answers, strict=True):
        mats = [_np_logprob_matrix(m, lm.tokenizer, prompt, answer) for m in plain_experts]
        cont = mats[0][1]
        mixture = np.logaddexp(mats[0][0], mats[1][0]) + np.log(0.5)  # (n, V) by hand, unchunked
        assert n == len(cont)
        assert logprob == pytest.approx(mixture[np.arange(n), cont].sum(), rel=1e-4, abs=1e-4)
        assert greedy == bool((mixture.argmax(axis=1) == cont).all())
        hand_greedy.append(greedy)
    assert hand_greedy[0] and not all(hand_greedy)
    # One chunk for the whole answer gives the same (logprob, greedy, n) per answer, compared element by
    # element (pytest.approx takes no nested tuples from pytest 9 on).
    unchunked = lm.loglikelihood(PROMPTS, answers, batch_size=3, chunk_tokens=1000)
    assert len(unchunked) == len(scores)
    for (logprob, greedy, n), (want_logprob, want_greedy, want_n) in zip(unchunked, scores, strict=True):
        assert logprob == pytest.approx(want_logprob, rel=1e-5)
        assert (greedy, n) == (want_greedy, want_n)
    # Decoding: one (batch, vocabulary) distribution per step, never (batch, tokens, vocabulary).
    with _OpShapes(lm.model) as rec:
        lm.generate(PROMPTS, max_new_tokens=3, batch_size=3, ignore_eos=True)
    assert rec.largest_with(v) == 3 * v


def test_answer_cap_scores_the_first_tokens_and_says_so(tiny_model_dir):
    lm = RoutedLM(tiny_model_dir, mode="base", device="cpu")
    ref = _hf_token_logprobs(tiny_model_dir, None, PROMPTS[1], ANSWERS[1])
    assert len(ref) > 5
    ((logprob, _, n),) = lm.loglikelihood(PROMPTS[1:2], ANSWERS[1:2], max_answer_tokens=5, chunk_tokens=2)
    assert n == 5 and lm.last_answer_tokens == [len(ref)]
    assert logprob == pytest.approx(float(ref[:5].sum()), rel=1e-4, abs=1e-4)
    ((_, _, n_all),) = lm.loglikelihood(PROMPTS[1:2], ANSWERS[1:2], max_answer_tokens=len(ref) + 5)
    assert n_all == len(ref)
    for bad in ({"max_answer_tokens": 0}, {"chunk_tokens": 0}, {"batch_size": 0}):
        with pytest.raises(InputError, match=next(iter(bad))):
            lm.loglikelihood(PROMPTS[:1], ANSWERS[:1], **bad)


def test_elrea_centroids_from_elrea_features_when_present(tiny_model_dir, art, tmp_path):
    with np.load(art["features_path"]) as f:
        arrays = {k: f[k] for k in f.files}
    dim = int(arrays["elrea_dim"])
    arrays["elrea_features"] = np.random.default_rng(5).standard_normal((len(arrays["ids"]), dim)).astype(np.float32)
    with open(tmp_path / "features.npz", "wb") as fh:
        np.savez(fh, **arrays)
    paths = {**art, "features_path": tmp_path / "features.npz"}
    lm = RoutedLM(
        tiny_model_dir,
        mode="elrea",
        experts_dir=art["two"],
        warmup_dir=art["warmup"],
        features_path=paths["features_path"],
        projector_path=art["projector_path"],
        assignments_path=art["assignments_path"],
        device="cpu",
    )
    unit = arrays["elrea_features"].astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    clusters = np.arange(len(unit)) % 2  # make_synthetic_elrea: sample i in cluster i mod n, cluster j -> expert j
    hand = np.stack([unit[clusters == j].mean(axis=0) for j in (0, 1)])
    hand /= np.linalg.norm(hand, axis=1, keepdims=True)
    np.testing.assert_allclose(lm.centroids, hand, atol=1e-12)
    lm.next_token_distribution(PROMPTS[:2])
    sims = _hand_elrea_similarities(tiny_model_dir, paths, PROMPTS[:2], key="elrea_features")
    np.testing.assert_allclose([r["similarities"] for r in lm.last_routing], sims, atol=1e-5)


@pytest.fixture(scope="module")
def bf16_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model saved in bfloat16 (its config says so), like a paper-scale prepared folder."""
    from gs.models.load import load_model, load_tokenizer

    out = tmp_path_factory.mktemp("tiny_bf16")
    load_model(tiny_model_dir, device="cpu").to(torch.bfloat16).save_pretrained(out)
    load_tokenizer(tiny_model_dir).save_pretrained(out)
    return out


def test_model_runs_in_its_own_dtype_mixture_in_float32(bf16_model_dir, tiny_model_dir, art):
    lm = RoutedLM(bf16_model_dir, mode="uniform", experts_dir=art["two"], device="cpu")
    assert lm.model.get_input_embeddings().weight.dtype == torch.bfloat16
    mix = lm.next_token_distribution(PROMPTS[:2])
    assert mix.dtype == torch.float32
    torch.testing.assert_close(mix.sum(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    ref = RoutedLM(tiny_model_dir, mode="uniform", experts_dir=art["two"], device="cpu")
    assert ref.model.get_input_embeddings().weight.dtype == torch.float32
    # bfloat16 weights and activations: the same scores to about bfloat16's precision.
    got = [s[0] for s in lm.loglikelihood(PROMPTS, ANSWERS, chunk_tokens=4)]
    want = [s[0] for s in ref.loglikelihood(PROMPTS, ANSWERS, chunk_tokens=4)]
    assert got == pytest.approx(want, rel=0.05)
    assert got != want


def test_gs_routed_likelihood_settings_and_truncation_report(tiny_model_dir):
    from gs.evaluation.lm import GSRoutedLM
    from gs.evaluation.run import _likelihood_summary, model_args_for

    args = model_args_for(
        {"name": "base", "model_dir": str(tiny_model_dir)},
        {"likelihood": {"batch_size": 2, "max_answer_tokens": 5, "chunk_tokens": 3}},
        0,
    )
    assert "dtype" not in args  # the prepared folder's own
    assert {k: args[k] for k in ("likelihood_batch_size", "max_answer_tokens", "likelihood_chunk_tokens")} == {
        "likelihood_batch_size": 2,
        "max_answer_tokens": 5,
        "likelihood_chunk_tokens": 3,
    }
    with pytest.raises(InputError, match="likelihood"):
        model_args_for({"name": "b", "model_dir": "m"}, {"likelihood": {"chunk": 3}}, 0)
    lm = GSRoutedLM(**args, device="cpu")
    assert lm.likelihood_batch_size == 2 and lm.batch_size == 8

    from lm_eval.api.instance import Instance

    reqs = [
        Instance("loglikelihood", {"domain": "x"}, (p, a), 0, metadata=("t", k, 1))
        for k, (p, a) in enumerate(zip(PROMPTS, ANSWERS, strict=True))
    ]
    out = lm.loglikelihood(reqs)
    lengths = [len(lm.routed.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in ANSWERS]
    expected = lm.routed.loglikelihood(PROMPTS, ANSWERS, max_answer_tokens=5)
    assert [o[0] for o in out] == pytest.approx([e[0] for e in expected], rel=1e-5)
    assert [lm.likelihood_tokens[("t", k)] for k in range(3)] == [
        {"n_tokens": min(n, 5), "answer_tokens": n} for n in lengths
    ]
    samples = [{"doc_id": k, **lm.likelihood_tokens[("t", k)]} for k in range(3)]
    summary = _likelihood_summary("t", samples, lm)
    assert summary["n_truncated"] == sum(n > 5 for n in lengths) > 0
    assert summary["max_answer_tokens"] == 5 and summary["tokens_scored"] == sum(min(n, 5) for n in lengths)
