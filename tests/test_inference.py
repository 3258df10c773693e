"""RoutedLM: greedy decoding against transformers, routing, ensemble mixtures, input errors.

All on the tiny 2-layer model with synthetic adapters whose ``B`` is random (so experts differ).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gs.inference import RoutedLM, mixture_weights
from gs.io import InputError, write_json
from gs.latency import make_synthetic_adapter, make_synthetic_elrea, make_synthetic_experts
from gs.prompting import format_prompt
from gs.training import LoraSpec

LORA = LoraSpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
PROMPTS = ["What is 2 + 2?", "Write a short poem about the sea and the wind at night.", "Sort [3, 1, 2]."]
TOKENS = 6


# Tiny matmuls on a shared 2-core machine: thread hand-offs cost ~50x the work itself.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def art(tiny_model_dir, tmp_path_factory):
    """Experts folders with 1 and 2 synthetic experts, a warm-up adapter and ELREA artifacts."""
    from gs.models import load_model

    root = tmp_path_factory.mktemp("inference")
    model = load_model(tiny_model_dir, device="cpu")
    # A large B on a width-32 model: the two experts' greedy outputs differ.
    one = make_synthetic_experts(model, 1, LORA, root / "one", seed=1, b_std=0.5)
    two = make_synthetic_experts(model, 2, LORA, root / "two", seed=1, b_std=0.5)
    d = make_synthetic_adapter(model, LORA, 99, root / "warmup", b_std=0.5)
    elrea = make_synthetic_elrea(2, d, root / "elrea", dim=16, seed=3)
    return {"one": one, "two": two, "warmup": root / "warmup", "d": d, **elrea, "root": root}


def _constant_router(path, expert: int):
    from gs.router import Router

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

    from gs.models import load_model, load_tokenizer

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

    from gs.models import load_model, load_tokenizer

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

    from gs.models import load_model
    from gs.router import Router

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
    from gs.gradients import per_sample_lora_gradients
    from gs.models import load_model, load_tokenizer
    from gs.projection import load_projector
    from gs.prompting import collate, encode_example
    from gs.training import load_adapter

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
        np.testing.assert_allclose(r["weights"], mixture_weights(sims[i : i + 1], 0.05, None)[0][r["experts"]])
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
    assert w[0, 0] == 0 and w[0, 1] > w[0, 2] > 0
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w[1], [0.5, 0.5, 0.0])  # ties: lower index first
    np.testing.assert_allclose(mixture_weights(sims, 1e6, None)[0], [1 / 3] * 3, atol=1e-5)


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
