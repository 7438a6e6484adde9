"""A user's own prompts, read from a file, for training drafters on their traffic.

Formats, told by the file's suffix (or, for another suffix, by its first character):
- `.jsonl`: one JSON object per line: `{"prompt": "..."}` (an `"answer"` / `"completion"` /
  `"response"` next to it is the written answer), or OpenAI `{"messages": [...]}`, or one
  ShareGPT `{"conversations": [...]}`;
- `.json`: a ShareGPT file, a list of `{"conversations": [{"from": "human"|"gpt"|"system",
  "value": ...}]}` (a list of the JSONL objects above works too);
- anything else (`.txt`): one prompt per line, blank lines skipped.

A conversation becomes a prompt (every message before its last assistant message, as chat
messages) and a written answer (that last assistant message), or only a prompt when it ends with a
user turn. Errors name the file and the line (JSONL, text) or the item (JSON) at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecdraftError

ANSWER_KEYS = ("answer", "completion", "response")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


@dataclass(frozen=True)
class Example:
    prompt: str | tuple[dict, ...]  # plain text, or chat messages ({"role", "content"})
    answer: str | None  # the written answer, when the file has one
    where: str  # "FILE:LINE" or "FILE[item]": for error messages

    def messages(self) -> list[dict] | str:
        return [dict(m) for m in self.prompt] if isinstance(self.prompt, tuple) else self.prompt


def read_prompts(path: str | Path) -> list[Example]:
    """Every example of the file at `path`, in order; a SpecdraftError naming the line for a bad one
    and for a file with none."""
    path = Path(path)
    if not path.is_file():
        raise SpecdraftError(f"no prompts file {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecdraftError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    kind = {".jsonl": "jsonl", ".json": "json", ".txt": "text"}.get(path.suffix.lower())
    if kind is None:
        first = text.lstrip()[:1]
        kind = "json" if first == "[" else "jsonl" if first == "{" else "text"
    out = {"jsonl": _jsonl, "json": _json, "text": _text}[kind](text, path.name)
    if not out:
        raise SpecdraftError(f"{path} holds no prompts")
    return out


def _text(text: str, name: str) -> list[Example]:
    return [Example(line.strip(), None, f"{name}:{i}") for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _jsonl(text: str, name: str) -> list[Example]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecdraftError(f"{where}: not JSON ({e.msg}, column {e.colno})") from None
        out.append(_example(obj, where))
    return out


def _json(text: str, name: str) -> list[Example]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecdraftError(f"{name}:{e.lineno}: not JSON ({e.msg}, column {e.colno})") from None
    if isinstance(items, dict):  # {"data": [...]}-style wrappers are not guessed at
        raise SpecdraftError(f"{name}: a JSON file of prompts holds a list of conversations, not an object")
    if not isinstance(items, list):
        raise SpecdraftError(f"{name}: a JSON file of prompts holds a list of conversations")
    return [_example(obj, f"{name}[{i}]") for i, obj in enumerate(items)]


def _example(obj, where: str) -> Example:
    if not isinstance(obj, dict):
        raise SpecdraftError(f"{where}: expected an object with \"prompt\", \"messages\" or \"conversations\"")
    if "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise SpecdraftError(f"{where}: \"prompt\" must be a non-empty string")
        answer = next((obj[k] for k in ANSWER_KEYS if k in obj), None)
        if answer is not None and not isinstance(answer, str):
            raise SpecdraftError(f"{where}: the answer must be a string")
        return Example(prompt.strip(), answer.strip() or None if answer else None, where)
    if "messages" in obj:
        return _conversation(_openai_messages(obj["messages"], where), where)
    if "conversations" in obj:
        return _conversation(_sharegpt_messages(obj["conversations"], where), where)
    raise SpecdraftError(f"{where}: expected \"prompt\", \"messages\" or \"conversations\" (has {sorted(obj)[:5]})")


def _openai_messages(msgs, where: str) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise SpecdraftError(f"{where}: \"messages\" must be a non-empty list")
    out = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise SpecdraftError(f"{where}: message {j} needs a role of system, user or assistant")
        content = m.get("content")
        if not isinstance(content, str):
            raise SpecdraftError(f"{where}: message {j} needs text content")
        out.append({"role": m["role"], "content": content})
    return out


def _sharegpt_messages(turns, where: str) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise SpecdraftError(f"{where}: \"conversations\" must be a non-empty list")
    out = []
    for j, t in enumerate(turns):
        role = SHAREGPT_ROLES.get(t.get("from")) if isinstance(t, dict) else None
        if role is None or not isinstance(t.get("value"), str):
            raise SpecdraftError(f"{where}: turn {j} needs \"from\" (human, gpt or system) and a \"value\" string")
        out.append({"role": role, "content": t["value"]})
    return out


def _conversation(msgs: list[dict], where: str) -> Example:
    """The prompt (every message before the last assistant one) and the written answer (that one);
    a conversation ending in a user turn is all prompt."""
    answer = None
    if msgs[-1]["role"] == "assistant":
        answer = msgs.pop()["content"].strip() or None
    if not any(m["role"] == "user" and m["content"].strip() for m in msgs):
        raise SpecdraftError(f"{where}: no user message before the answer")
    return Example(tuple(msgs), answer, where)


def encode_fitting(tok, context: int, rows: list[dict], max_new_tokens: int, answer_tokens: list[int] | None = None,
                   max_answer_tokens: int | None = None) -> list[list[int]]:
    """Every row's prompt (`{"prompt", "where"}`) encoded whole by `tok`; a SpecdraftError naming
    the row's place in its file when the prompt and its answer (`max_new_tokens` generated, or its
    written `answer_tokens` cut to `max_answer_tokens`) do not fit the model's `context`."""
    out = []
    for j, row in enumerate(rows):
        e = tok.encode_prompt(row["prompt"])
        need = max_new_tokens if answer_tokens is None else min(answer_tokens[j], max_answer_tokens)
        if len(e) + need > context:
            raise SpecdraftError(f"{row['where']}: the prompt is {len(e)} tokens; with {need} answer tokens it "
                                 f"exceeds the model's context of {context} (shorten it, or lower --max-new-tokens)")
        out.append(e)
    return out


__all__ = ["Example", "encode_fitting", "read_prompts"]
