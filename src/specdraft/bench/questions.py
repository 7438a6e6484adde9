"""Spec-Bench-format question files: one JSON object per line with question_id, category, turns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecdraftError


@dataclass(frozen=True)
class Question:
    question_id: str
    category: str
    turns: tuple[str, ...]


def read_questions(path: str | Path) -> list[Question]:
    """Read a question file; a malformed line is an error naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SpecdraftError(f"cannot read question file {path}: {e.strerror}") from None
    out = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecdraftError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise SpecdraftError(f"{where}: expected a JSON object")
        turns = d.get("turns")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise SpecdraftError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
        if "question_id" not in d or not isinstance(d.get("category"), str):
            raise SpecdraftError(f"{where}: needs 'question_id' and a string 'category'")
        out.append(Question(str(d["question_id"]), d["category"], tuple(turns)))
    if not out:
        raise SpecdraftError(f"{path}: no questions")
    return out


def per_category(questions: list[Question], k: int | None) -> list[Question]:
    """The first k questions of each category (all when k is None), in file order."""
    if k is None:
        return list(questions)
    seen: dict[str, int] = {}
    out = []
    for q in questions:
        if seen.get(q.category, 0) < k:
            seen[q.category] = seen.get(q.category, 0) + 1
            out.append(q)
    return out
