"""Tokenizer, chat template and incremental detokenization (the only place that knows about text)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import SpecdraftError

Messages = list[dict[str, str]]


def special_ids(hf) -> set[int]:
    """The ids of an HF tokenizer's special tokens (added tokens marked special)."""
    return {i for i, t in hf.added_tokens_decoder.items() if t.special}


def same_vocab(path: Path, tokenizer: "Tokenizer") -> bool:
    """Whether the tokenizer in `path` has `tokenizer`'s vocabulary. Byte-equal tokenizer.json
    files decide it without loading the second tokenizer (about 1 s for Qwen's 151k tokens)."""
    a, b = Path(path) / "tokenizer.json", tokenizer.path / "tokenizer.json"
    if a.is_file() and b.is_file() and a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes():
        return True
    return Tokenizer(path).hf.get_vocab() == tokenizer.hf.get_vocab()


class Tokenizer:
    def __init__(self, path: Path):
        self.path = Path(path)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        try:
            self.hf = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise SpecdraftError(f"cannot load the tokenizer from {path}: {e}") from None
        self.eos_ids = frozenset(self._eos_ids(path))

    def _eos_ids(self, path: Path) -> set[int]:
        ids: set[int] = set()
        for name in ("generation_config.json", "config.json"):
            f = path / name
            if f.is_file():
                v = json.loads(f.read_text()).get("eos_token_id")
                ids.update(v if isinstance(v, list) else [] if v is None else [v])
        if self.hf.eos_token_id is not None:
            ids.add(self.hf.eos_token_id)
        if (path / "specdraft.json").is_file():
            # A zoo conversion made by an older version also listed "</s>" where it is ordinary text
            # (Qwen's vocabulary: an HTML tag); only special tokens end a zoo model's turn.
            ids &= special_ids(self.hf) | {self.hf.eos_token_id}
        return ids

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode_prompt(self, prompt: str | Messages, chat: bool | None = None) -> list[int]:
        """Token ids of a prompt: a string (one user turn when chat) or chat messages.

        chat=True applies the chat template (an error for a model without one); chat=False takes
        the text as it is (messages: their contents, a blank line after each), with the BOS token
        the tokenizer adds; None (the default) is True when the model has a chat template, else
        False -- a base model continues the text."""
        if chat is None:
            chat = self.has_chat_template
        if isinstance(prompt, str):
            if not prompt.strip():
                raise SpecdraftError("the prompt is empty: give some text to continue")
            if not chat:  # raw text, with the BOS token a tokenizer adds (Gemma's; none for Qwen, SmolLM2)
                return self.hf(prompt)["input_ids"]
            prompt = [{"role": "user", "content": prompt}]
        if not prompt:
            raise SpecdraftError("the conversation has no messages")
        if not chat:
            return self.hf("".join(m["content"] + "\n\n" for m in prompt))["input_ids"]
        if not self.has_chat_template:
            raise SpecdraftError("this model has no chat template (a base model): give it text to continue "
                                 "(generate --no-chat, chat=False in the API, /v1/completions on the server)")
        text = self.hf.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)


class Detokenizer:
    """Turns a growing list of ids into text pieces, holding back incomplete UTF-8 sequences.

    Decoding a short window (from `prefix` on) and diffing against the previous window keeps
    spaces and merges right without re-decoding the whole text each step.
    """

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # ids up to here have been emitted

    def push(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        before = self.tok.decode(self.ids[self.prefix:self.read])
        now = self.tok.decode(self.ids[self.prefix:])
        if now.endswith("\ufffd") or len(now) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before):]

    def flush(self) -> str:
        """At the end of generation: whatever is still held back (an incomplete UTF-8 sequence
        comes out as U+FFFD, as the whole text's decode has it)."""
        before = self.tok.decode(self.ids[self.prefix:self.read])
        now = self.tok.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):] if len(now) > len(before) else ""
