"""Source kind ``less_eval``: the target-validation examples of LESS / ClusterUCB, from a local folder.

LESS (princeton-nlp/LESS) and ClusterUCB (ZigeW/ClusterUCB, arXiv 2506.10288) compute the *validation*
gradients their selection targets from a few examples per task, built by
``data_selection/get_validation_dataset.py`` from the hub dataset ``princeton-nlp/less_data``'s ``eval/``
tree. This source reads a local copy of that tree (``huggingface-cli download princeton-nlp/less_data
--repo-type dataset --local-dir <path>``) and returns the same examples, with the same texts, in the
same order. Options: ``path`` (the folder that holds ``eval/``) and ``task``:

* ``mmlu``: subjects are the sorted ``<subject>_test.csv`` names of ``eval/mmlu/test/``; each subject's
  first 5 rows of ``eval/mmlu/dev/<subject>_dev.csv`` (read by pandas with ``header=None``, as the
  reference), zero-shot: ``"The following are multiple choice questions (with answers) about
  {subject}.\\n\\n"`` (the subject's words each after a space, so two spaces follow "about"), the
  question, ``"\\nA. ..."`` per choice and ``"\\nAnswer:"``; the answer is the letter.
* ``bbh``: per task of ``eval/bbh/bbh-three-shot.json`` (the file's order), the prompt's last three
  ``"\\n\\n"``-separated examples, each in turn the target with the other two as demonstrations
  after the task description.
* ``tydiqa``: per language of ``eval/tydiqa/tydiqa-one-shot.json``, its first example with the
  language's template (instruction, ``Passage:``, ``Question:``; no separator after the instruction,
  as in the reference).
* ``gsm``: ClusterUCB reads GSM8K's test file from a path fixed relative to its working directory
  (``../data/gsm/test.jsonl``, not under ``eval/``); here ``eval/gsm/test.jsonl`` under ``path``, or
  the ``file`` option. Rows are ``{"question", "answer"}``; ``random.seed(42)`` then
  ``random.sample(rows, 50)`` (``get_dataset`` passes ``k=50, replace_format=False``: the answer is
  GSM8K's own, ``"...\\n#### 72"``). Prompt ``"Answer the following question.\\n\\nQuestion: "`` +
  question + ``"\\n"``.
* ``humaneval``: ``eval/codex-humaneval/HumanEval.jsonl.gz`` and ``humanevalpack.jsonl`` (the
  reference's ``help=True`` default); ``random.seed(42)`` then ``random.sample`` of 10 problems in
  file order; the user turn is humanevalpack's ``instruction``, the answer the canonical solution
  then a closing code fence.

Mapping onto the suite's records. The reference wraps each prompt in a chat format and appends an
answer prefix after the assistant tag (its ``chat_format="huggingface"`` path, the one for a
tokenizer's own chat template: ``"The answer is:"`` for mmlu, ``"A:"`` for bbh, the language's
``"Answer:"`` for tydiqa, ``"Answer:"`` for gsm, ``"Here is the function:\\n\\n```python\\n"`` plus
the function's header for humaneval) and puts the loss on the answer after it. The suite applies the
tokenizer's chat template itself to ``instruction`` and has no assistant prefix, so:
``instruction`` is the reference's user-message content exactly (``messages[0]["content"]`` of that
path, trailing newline included where the reference has one), ``input`` is ``""`` and ``output`` is
the answer prefix followed by the answer exactly as the reference concatenates them (``"The answer
is: B"``, ``"A: Let's think ... (A)."``, ``"Answer: Paris"``); ``meta.answer_prefix`` holds the prefix,
so a stage that can mask it knows where the reference's loss starts (the suite's training loss covers
the whole output, prefix included). The reference's default chat format for validation gradients is
``tulu`` (``get_info.py --chat_format``); its texts differ from the huggingface path only in gsm's
prefix (``"Answer: \\n\\n"``) and the humaneval prefix's lack of the header; this source follows the
huggingface path.

``n``: ``None`` or at least the number of examples gives all of them in the reference's order; a
smaller ``n`` gives a subset drawn with the suite's ``seed``, still in the reference's order. For
gsm and humaneval ``n`` plays the reference's ``k`` (``None``: 50 and 10) and the draw is the
reference's own ``random.seed(42)`` sample; the suite's seed is not used there.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

from gs.io import InputError

Item = dict[str, Any]
TASKS = ("mmlu", "bbh", "tydiqa", "gsm", "humaneval")

#: ``encoding_templates_with_context`` of the reference (instruction, passage, question, answer labels).
TYDIQA_TEMPLATES: dict[str, tuple[str, str, str, str]] = {
    "english": (
        "Answer the following question based on the information in the given passage.",
        "Passage:",
        "Question:",
        "Answer:",
    ),
    "arabic": ("أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.", "المقطع:", "السؤال:", "الإجابة:"),
    "bengali": (
        "প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।",
        "অধ্যায়:",
        "প্রশ্ন:",
        "উত্তর:",
    ),
    "finnish": (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.",
        "Kappale:",
        "Kysymys:",
        "Vastaus:",
    ),
    "indonesian": (
        "Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.",
        "Bagian:",
        "Pertanyaan:",
        "Jawaban:",
    ),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "russian": ("Ответьте на следующий вопрос на основе информации в данном отрывке.", "Отрывок:", "Вопрос:", "Ответ:"),
    "swahili": (
        "Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.",
        "Kifungu:",
        "Swali:",
        "Jibu:",
    ),
    "telugu": ("ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "పేరా:", "ప్రశ్న:", "సమాధానం:"),
}

MMLU_SHOTS = 5  # get_mmlu_dataset's k: the first five dev rows of each subject
GSM_K = 50  # get_dataset("gsm") passes k=50
HUMANEVAL_K = 10  # get_dataset("humaneval") passes k=10
REFERENCE_SEED = 42  # random.seed(42) before the gsm and humaneval draws


def _item(instruction: str, prefix: str, answer: str, task: str, subtask: str, where: str) -> Item:
    return {
        "instruction": instruction,
        "input": "",
        "output": prefix + answer,
        "meta": {"source": "less_eval", "task": task, "subtask": subtask, "answer_prefix": prefix},
        "_where": where,
    }


def _file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"less_eval: {path} is not a file")
    return path


def _mmlu(root: Path) -> list[Item]:
    import pandas as pd

    base = root / "eval" / "mmlu"
    if not (base / "test").is_dir():
        raise InputError(f"less_eval: {base / 'test'} is not a folder (mmlu lists its subjects there)")
    subjects = sorted(f.split("_test.csv")[0] for f in (p.name for p in (base / "test").iterdir()) if "_test.csv" in f)
    if not subjects:
        raise InputError(f"less_eval: {base / 'test'} has no <subject>_test.csv files")
    items = []
    for subject in subjects:
        path = _file(base / "dev" / f"{subject}_dev.csv")
        try:
            dev = pd.read_csv(path, header=None)[:MMLU_SHOTS]
        except pd.errors.EmptyDataError:
            dev = pd.DataFrame()
        if len(dev) == 0:
            raise InputError(f"less_eval: mmlu subject {subject!r} has no examples in {path}")
        if dev.shape[1] < 3:
            raise InputError(f"less_eval: {path} needs a question, choices and an answer column")
        header = "The following are multiple choice questions (with answers) about {}.\n\n".format(
            "".join(" " + word for word in subject.split("_"))
        )
        k = dev.shape[1] - 2
        for i in range(len(dev)):
            prompt = str(dev.iloc[i, 0])
            for j in range(k):
                prompt += "\n{}. {}".format("ABCDEFGHIJ"[j], dev.iloc[i, j + 1])
            prompt += "\nAnswer:"
            items.append(
                _item(
                    header + prompt, "The answer is:", " " + str(dev.iloc[i, k + 1]), "mmlu", subject, f"{path}:{i + 1}"
                )
            )
    return items


def _bbh(root: Path) -> list[Item]:
    path = _file(root / "eval" / "bbh" / "bbh-three-shot.json")
    prompts = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(prompts, dict) or not prompts:
        raise InputError(f"less_eval: {path} must map each bbh task to its three-shot prompt")
    items = []
    for task, text in prompts.items():
        parts = str(text).split("\n\n")
        examples, description = parts[-3:], "\n\n".join(parts[:-3])
        split = [ex.split("\nA:") for ex in examples]
        if len(parts) < 4 or any(len(s) != 2 for s in split):
            raise InputError(
                f"less_eval: bbh task {task!r} in {path} has no three 'Q...\\nA:...' examples after its description"
            )
        for i, (question, answer) in enumerate(split):
            icl = "".join(q + "\nA:" + a + "\n\n" for j, (q, a) in enumerate(split) if j != i)
            items.append(
                _item(description.strip() + "\n\n" + icl + question, "A:", answer, "bbh", task, f"{path}:{task}#{i}")
            )
    return items


def _tydiqa(root: Path) -> list[Item]:
    path = _file(root / "eval" / "tydiqa" / "tydiqa-one-shot.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise InputError(f"less_eval: {path} must map each language to its examples")
    items = []
    for lang, examples in data.items():
        if lang not in TYDIQA_TEMPLATES:
            raise InputError(
                f"less_eval: {path}: language {lang!r} has no template (expected one of {', '.join(TYDIQA_TEMPLATES)})"
            )
        if not examples:
            raise InputError(f"less_eval: tydiqa language {lang!r} has no examples in {path}")
        ex = examples[0]
        instruction, passage, question, answer = TYDIQA_TEMPLATES[lang]
        prompt = instruction + passage + " " + ex["context"] + "\n" + question + " " + ex["question"] + "\n"
        items.append(_item(prompt, answer, " " + ex["answers"][0]["text"], "tydiqa", lang, f"{path}:{lang}"))
    return items


def _gsm(root: Path, k: int | None, options: dict[str, Any]) -> list[Item]:
    path = _file(Path(options["file"]) if options.get("file") else root / "eval" / "gsm" / "test.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise InputError(f"less_eval: gsm has no examples in {path}")
    for row in rows:
        if "\n####" not in row.get("answer", ""):  # the reference splits every answer on it
            raise InputError(f"less_eval: {path}: a gsm answer lacks its '\\n####' final line")
    k = GSM_K if k is None else k
    # random.seed(42); random.sample(rows, k): a sample depends on the population's size only, so
    # sampling line indices with a fresh Random(42) picks the same rows, leaving the global state alone.
    chosen = random.Random(REFERENCE_SEED).sample(range(len(rows)), min(k, len(rows)))
    instruction = "Answer the following question.\n\nQuestion: "
    return [
        _item(
            instruction + rows[i]["question"] + "\n", "Answer:", rows[i]["answer"], "gsm", "gsm", f"{path} row {i + 1}"
        )
        for i in chosen
    ]


def _humaneval(root: Path, k: int | None) -> list[Item]:
    base = root / "eval" / "codex-humaneval"
    path = _file(base / "HumanEval.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        examples = {r["task_id"]: r for r in (json.loads(line) for line in f if line.strip())}
    if not examples:
        raise InputError(f"less_eval: humaneval has no examples in {path}")
    pack = _file(base / "humanevalpack.jsonl")
    rows = [json.loads(line) for line in pack.read_text(encoding="utf-8").splitlines() if line.strip()]
    instructions = {r["task_id"].replace("Python", "HumanEval"): r["instruction"] for r in rows}
    k = HUMANEVAL_K if k is None else k
    # random.sample(examples.items(), k): Python < 3.11 turns the items view into a tuple first.
    chosen = random.Random(REFERENCE_SEED).sample(list(examples.items()), min(k, len(examples)))
    items = []
    for task_id, ex in chosen:
        if task_id not in instructions:
            raise InputError(f"less_eval: {pack} has no instruction for {task_id!r}")
        prefix = "Here is the function:\n\n```python\n" + ex["prompt"]
        item = _item(
            instructions[task_id],
            prefix,
            ex["canonical_solution"] + "\n```",
            "humaneval",
            "humaneval",
            f"{path}:{task_id}",
        )
        item["meta"]["task_id"] = task_id
        items.append(item)
    return items


def less_eval(n: int | None, seed: int, options: dict[str, Any]) -> list[Item]:
    """The reference's validation examples of ``options["task"]`` under ``options["path"]`` (module doc)."""
    for key in ("path", "task"):
        if key not in options:
            raise InputError(f"source 'less_eval' needs {key!r}")
    task = options["task"]
    if task not in TASKS:
        raise InputError(f"less_eval: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    root = Path(options["path"])
    if not root.is_dir():
        raise InputError(f"less_eval: {root} is not a folder (expected the less_data download holding eval/)")
    if n is not None and int(n) < 1:
        raise InputError(f"less_eval: n must be positive, got {n}")
    if task == "gsm":
        return _gsm(root, n, options)
    if task == "humaneval":
        return _humaneval(root, n)
    items = {"mmlu": _mmlu, "bbh": _bbh, "tydiqa": _tydiqa}[task](root)
    if n is None or n >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]
