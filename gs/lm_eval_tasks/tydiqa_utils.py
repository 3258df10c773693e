"""Hooks of the ``tydiqa_goldp`` lm-eval task: TyDi QA GoldP as open-instruct / ClusterUCB score it.

The reference is ClusterUCB's ``eval/tydiqa/run_eval.py`` (open-instruct's, run by
``eval/scripts/eval_tydiqa.sh`` with its defaults: 1 shot, passages, all dev questions):

* Data: ``tydiqa-goldp-v1.1-dev.json`` (the questions) and ``tydiqa-goldp-v1.1-train.json`` (the
  demonstrations), SQuAD format; a question's language is its id's prefix (``"english-...-1"``).
* One shot per language: ``random.seed(42)``, then for each dev language in sorted order
  ``random.sample(<that language's train questions, file order>, 1)``: one generator across the
  languages, so a language's example depends on the sizes of the languages before it.
* Prompt (the user turn): the language's instruction, ``"\\n\\n"``, the demonstration (``Passage: c``,
  ``Question: q``, ``Answer: a`` on three lines), ``"\\n\\n"``, then ``Passage: c`` and ``Question: q``
  each on a line. The reference puts the answer label (``"Answer:"``) after the chat template's
  assistant tag; the suite's gs-routed model applies the chat template to the user turn and has no
  assistant prefix, so here the label ends the user turn (as the reference's non-chat prompt does).
* Generation: greedy, at most 50 new tokens, no newline stop in chat format; the output is stripped.
* Scores: the SQuAD v1.1 metric (``evaluate``'s ``squad``, whose ``compute_score.py`` is the official
  script: lower case, punctuation and the English articles a/an/the removed, whitespace collapsed;
  token F1 and exact match, each the maximum over the gold answers), computed per language; the
  headline ``average`` is the plain mean of the per-language numbers, not weighted by the languages'
  sizes. lm-eval's ``f1`` and ``exact_match`` here are that mean over languages, on [0, 1] (the
  reference reports percentages).

The documents are built by :func:`load_tydiqa_goldp` (the task's ``custom_dataset``): lm-eval's
``process_docs`` sees one split and the prompt needs the train split's demonstration, so the loader
reads both and precomputes each question's prompt.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from gs.data.less_eval import TYDIQA_TEMPLATES
from gs.io import InputError

DEV_FILE = "tydiqa-goldp-v1.1-dev.json"
TRAIN_FILE = "tydiqa-goldp-v1.1-train.json"
REFERENCE_SEED = 42
PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    """SQuAD v1.1 token F1 of one prediction against one gold answer."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def max_over_answers(metric: Any, prediction: str, answers: list[str]) -> float:
    """The best score of ``prediction`` over the gold ``answers`` (SQuAD's metric_max_over_ground_truths)."""
    return max(metric(prediction, a) for a in answers)


def _squad_rows(path: Path) -> list[dict[str, Any]]:
    """The questions of a SQuAD-format file in file order: id, lang, context, question, answer texts."""
    if not path.is_file():
        raise InputError(f"tydiqa_goldp: {path} is not a file")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        {
            "id": qa["id"],
            "lang": qa["id"].split("-")[0],
            "context": paragraph["context"],
            "question": qa["question"],
            "answers": [a["text"] for a in qa["answers"]],
        }
        for article in data["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]


def _hub_rows(hub: str, name: str, split: str) -> list[dict[str, Any]]:
    """The same rows from a hub copy (``google-research-datasets/tydiqa``, config ``secondary_task``)."""
    from datasets import load_dataset

    return [
        {
            "id": r["id"],
            "lang": r["id"].split("-")[0],
            "context": r["context"],
            "question": r["question"],
            "answers": list(r["answers"]["text"]),
        }
        for r in load_dataset(hub, name, split=split)
    ]


def build_docs(
    dev: list[dict[str, Any]],
    train: list[dict[str, Any]],
    n_shot: int = 1,
    max_num_examples_per_lang: int | None = None,
    truncate: Any = None,
) -> list[dict[str, Any]]:
    """The dev questions with their prompts, as run_eval.py builds them (module doc).

    ``truncate`` (a function of a passage) shortens every passage after the draws, as the
    reference's ``max_context_length`` does with the model's tokenizer.
    """
    rng = random.Random(REFERENCE_SEED)
    languages = sorted({ex["lang"] for ex in dev})
    unknown = [lang for lang in languages if lang not in TYDIQA_TEMPLATES]
    if unknown:
        raise InputError(f"tydiqa_goldp: no template for languages {unknown}")
    if max_num_examples_per_lang:
        sampled = []
        for lang in languages:
            rows = [ex for ex in dev if ex["lang"] == lang]
            sampled += rng.sample(rows, max_num_examples_per_lang) if len(rows) > max_num_examples_per_lang else rows
        dev = sampled
    shots: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if n_shot > 0:
        pools = {lang: [ex for ex in train if ex["lang"] == lang] for lang in languages}
        for lang in languages:
            if len(pools[lang]) < n_shot:
                raise InputError(f"tydiqa_goldp: {len(pools[lang])} train questions in {lang!r}, {n_shot} needed")
            shots[lang] = [dict(ex) for ex in rng.sample(pools[lang], n_shot)]
    docs = []
    for ex in dev:
        lang = ex["lang"]
        instruction, p_label, q_label, a_label = TYDIQA_TEMPLATES[lang]
        context = truncate(ex["context"]) if truncate else ex["context"]
        demos = [
            f"{p_label} {truncate(s['context']) if truncate else s['context']}\n{q_label} {s['question']}\n"
            f"{a_label} {s['answers'][0]}"
            for s in shots[lang]
        ]
        prompt = instruction + "\n\n" + ("\n\n".join(demos) + "\n\n" if demos else "")
        prompt += f"{p_label} {context}\n{q_label} {ex['question']}\n{a_label}"
        docs.append({**ex, "context": context, "prompt": prompt})
    return docs


def _truncator(tokenizer: str, max_context_length: int) -> Any:
    """run_eval.py's passage cut: encode, keep ``max_context_length`` tokens, decode (special tokens kept)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)

    def cut(text: str) -> str:
        ids = tok.encode(text)
        return tok.decode(ids[:max_context_length]) if len(ids) > max_context_length else text

    return cut


def load_tydiqa_goldp(
    data_dir: str | None = None,
    hub: str | None = None,
    hub_name: str = "secondary_task",
    n_shot: int = 1,
    max_num_examples_per_lang: int | None = None,
    tokenizer: str | None = None,
    max_context_length: int = 512,
    **_: Any,
) -> Any:
    """lm-eval ``custom_dataset``: ``{"test": <dev questions with prompts>}`` (a ``DatasetDict``).

    ``data_dir``: a folder with ``tydiqa-goldp-v1.1-{dev,train}.json`` (SQuAD format, as open-instruct
    downloads them); or ``hub``: a hub copy with ``train`` and ``validation`` splits in the flat SQuAD
    columns (``google-research-datasets/tydiqa``, config ``hub_name``). ``tokenizer`` (a model folder
    or hub id) turns on the reference's passage cut to ``max_context_length`` tokens (its default 512);
    without it passages are whole. lm-eval passes the task's ``metadata`` too; it is ignored.
    """
    from datasets import Dataset, DatasetDict

    if data_dir:
        root = Path(data_dir)
        if not root.is_dir():
            raise InputError(f"tydiqa_goldp: data_dir {root} is not a folder")
        dev = _squad_rows(root / DEV_FILE)
        train = _squad_rows(root / TRAIN_FILE) if n_shot > 0 else []
    elif hub:
        dev = _hub_rows(hub, hub_name, "validation")
        train = _hub_rows(hub, hub_name, "train") if n_shot > 0 else []
    else:
        raise InputError("tydiqa_goldp: dataset_kwargs needs data_dir (a local folder) or hub (a hub dataset id)")
    truncate = _truncator(tokenizer, int(max_context_length)) if tokenizer else None
    docs = build_docs(dev, train, int(n_shot), max_num_examples_per_lang, truncate)
    return DatasetDict({"test": Dataset.from_list(docs)})


def doc_to_text(doc: dict[str, Any]) -> str:
    """The precomputed user turn."""
    return doc["prompt"]


def doc_to_target(doc: dict[str, Any]) -> str:
    """The first gold answer (for the logged samples; scoring uses them all)."""
    return doc["answers"][0]


def process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, tuple[str, float]]:
    """Per question ``(language, score)`` for ``f1`` and ``exact_match``; the aggregation averages per language."""
    first = results[0] if results else ""
    if isinstance(first, list | tuple):
        first = first[0] if first else ""
    prediction = (first if isinstance(first, str) else "").strip()
    return {
        "f1": (doc["lang"], max_over_answers(f1_score, prediction, doc["answers"])),
        "exact_match": (doc["lang"], max_over_answers(exact_match_score, prediction, doc["answers"])),
    }


def mean_over_languages(items: list[tuple[str, float]]) -> float:
    """The mean over languages of each language's mean score (run_eval.py's ``average``)."""
    by_lang: dict[str, list[float]] = defaultdict(list)
    for lang, score in items:
        by_lang[lang].append(float(score))
    if not by_lang:
        return float("nan")
    return sum(sum(v) / len(v) for v in by_lang.values()) / len(by_lang)
