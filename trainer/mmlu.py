"""MMLU questions for the capability cost (hendrycks/test CSVs: question, A, B, C, D, answer; no header).

Reads a folder of `<split>/<subject>_<split>.csv` files or the shared tarball (`mmlu_data.tar.gz`) in
place: nothing is extracted or copied. `load(path, n=...)` takes a subject-balanced subset: a seeded
round-robin over subjects, so a small n still spans the subjects. `prompts` asks them as every task is
asked (`trainer.prompts`): four lettered options, the answer token " A".." D" after "Answer:".
"""

import csv
import io
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import DataError
from trainer.prompts import Prompt, first_token, render

QUESTION = "{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer with the letter of the correct option."
ANSWER_PREFIX = "Answer:"


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A".."D"


def _parse(subject: str, text: str) -> list[Question]:
    out = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) == 6 and row[5].strip() in ("A", "B", "C", "D"):
            out.append(Question(subject, row[0], (row[1], row[2], row[3], row[4]), row[5].strip()))
    return out


def _read_all(path: Path, split: str) -> list[Question]:
    suffix = f"_{split}.csv"
    questions: list[Question] = []
    if path.is_dir():
        tarball = path / "mmlu_data.tar.gz"
        if tarball.is_file():
            return _read_all(tarball, split)
        for file in sorted((path / split).glob(f"*{suffix}")):
            questions += _parse(file.name[: -len(suffix)], file.read_text(encoding="utf-8"))
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and member.name.split("/")[-2:-1] == [split] and name.endswith(suffix):
                    text = tar.extractfile(member).read().decode("utf-8")
                    questions += _parse(name[: -len(suffix)], text)
    return questions


def load(path: str | Path, n: int = 200, split: str = "test", seed: int = 0) -> list[Question]:
    """A subject-balanced, seeded subset of n questions (all of them when n <= 0)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--mmlu {path}: no such file or folder (e.g. ../shared/data/mmlu)")
    questions = _read_all(path, split)
    if not questions:
        raise DataError(f"--mmlu {path}: no MMLU '{split}' CSVs found (expected {split}/<subject>_{split}.csv "
                        "in a folder or in mmlu_data.tar.gz)")
    if n <= 0 or n >= len(questions):
        return questions
    rng = random.Random(seed)
    by_subject: dict[str, list[Question]] = {}
    for q in questions:
        by_subject.setdefault(q.subject, []).append(q)
    queues = [rng.sample(qs, len(qs)) for _, qs in sorted(by_subject.items())]
    rng.shuffle(queues)
    out: list[Question] = []
    depth = 0
    while len(out) < n:
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out[:n]


def prompts(tokenizer, questions: list[Question]) -> list[Prompt]:
    """Prompts for MMLU questions: four lettered options, the right letter's index as `correct`."""
    out = []
    for i, q in enumerate(questions):
        ids = render(tokenizer, QUESTION.format(question=q.question, **dict(zip("ABCD", q.choices))),
                     ANSWER_PREFIX)
        options = tuple((first_token(tokenizer, letter),) for letter in "ABCD")
        out.append(Prompt(tuple(ids), options, tuple("ABCD"), "ABCD".index(q.answer), "", i))
    return out
