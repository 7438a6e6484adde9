"""Run several methods on the same questions, interleaved per question so machine drift hits all
alike, after a warm-up; multi-turn questions run as conversations (turn 1's answer is in the
context of turn 2, each method continuing its own conversation)."""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, replace
from typing import Protocol

from ..api import LLM
from ..runtime.sampling import SamplingParams
from .metrics import TurnRecord
from .questions import Question


@dataclass(frozen=True)
class TurnResult:
    token_ids: tuple[int, ...]
    text: str
    wall_s: float
    target_forwards: int
    drafted: int = 0
    accepted: int = 0
    route: str | None = None  # knn-ssd: the domain the prompt was routed to ("fallback" if none)


GREEDY = SamplingParams()


class Method(Protocol):
    name: str

    def generate(self, messages: list[dict], max_new_tokens: int, sampling: SamplingParams = GREEDY) -> TurnResult:
        """One turn; `sampling` carries the turn's seed when it samples."""


def turn_seed(seed: int, question_id: str, turn: int, repeat: int) -> int:
    """The seed of one turn: the same for every method (and every run), different per turn."""
    return zlib.crc32(f"{seed}/{question_id}/{turn}/{repeat}".encode())


class SpecdraftMethod:
    """Our engine with one drafter spec (plain decoding for "plain")."""

    def __init__(self, llm: LLM, spec: str):
        self.llm, self.name = llm, spec
        llm.drafter(spec)  # build (and load any draft model) before timing starts

    def generate(self, messages: list[dict], max_new_tokens: int, sampling: SamplingParams = GREEDY) -> TurnResult:
        r = self.llm.generate(messages, max_new_tokens=max_new_tokens, drafter=self.name,
                              temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                              seed=sampling.seed)
        s = r.stats
        route = s.extra.get("route")
        return TurnResult(tuple(r.token_ids), r.text, s.wall_s, s.target_forwards, s.drafted, s.accepted,
                          None if route is None else (route["domain"] or "fallback"))


def run_methods(methods: list[Method], questions: list[Question], *, max_new_tokens: int, repeats: int = 1,
                sampling: SamplingParams = GREEDY, warmup: bool = True, progress: bool = True,
                failures: dict[str, str] | None = None) -> list[TurnRecord]:
    """Records of every turn. A method that raises is dropped from the rest of the run and its
    error kept in `failures` (method -> message): one broken peer must not sink a long run.

    With sampling (temperature > 0), every method samples each turn with the same seed
    (`turn_seed` of sampling.seed, default 0): runs are reproducible. The methods' outputs still
    differ, since a drafter consumes random numbers of its own; only their distribution is the same."""
    from tqdm.auto import tqdm

    failures = {} if failures is None else failures
    base_seed = 0 if sampling.seed is None else sampling.seed

    def params(qid: str, turn: int, rep: int) -> SamplingParams:
        return sampling if sampling.greedy else replace(sampling, seed=turn_seed(base_seed, qid, turn, rep))

    if warmup:
        for m in methods:
            try:
                m.generate([{"role": "user", "content": questions[0].turns[0]}], min(16, max_new_tokens),
                           params("warm-up", 0, 0))
            except Exception as e:  # noqa: BLE001 -- reported, not hidden
                failures[m.name] = f"warm-up: {type(e).__name__}: {e}"
    records: list[TurnRecord] = []
    counters = {m.name: [0, 0] for m in methods}  # new tokens, forwards: for the running tau
    bar = tqdm(total=len(questions) * len(methods) * repeats, desc="bench", unit="run", disable=not progress,
               file=sys.stderr)
    with bar:
        for q in questions:
            for rep in range(repeats):
                for m in methods:
                    if m.name in failures:
                        bar.update(1)
                        continue
                    messages: list[dict] = []
                    for turn, text in enumerate(q.turns):
                        messages.append({"role": "user", "content": text})
                        try:
                            r = m.generate(messages, max_new_tokens, params(q.question_id, turn, rep))
                        except Exception as e:  # noqa: BLE001 -- reported, not hidden
                            failures[m.name] = f"question {q.question_id} turn {turn}: {type(e).__name__}: {e}"
                            print(f"\n{m.name} failed and is dropped: {failures[m.name]}", file=sys.stderr)
                            records = [r for r in records if r.method != m.name]
                            break
                        messages.append({"role": "assistant", "content": r.text})
                        records.append(TurnRecord(m.name, q.question_id, q.category, turn, rep, len(r.token_ids),
                                                  r.wall_s, r.target_forwards, r.drafted, r.accepted, r.token_ids,
                                                  r.text, r.route))
                        c = counters[m.name]
                        c[0] += len(r.token_ids)
                        c[1] += r.target_forwards
                    bar.update(1)
                    bar.set_postfix_str(" ".join(f"{k}:tau={v[0] / v[1]:.2f}" for k, v in counters.items() if v[1]))
    return records


def mixed_stream(questions: list[Question], mix: float, seed: int = 0) -> list[Question]:
    """Order questions as a stream over their categories: after each prompt the stream switches to
    another category with probability `mix` (0 = one category after another, 1 = a switch after
    every prompt), as the KNN-SSD paper builds its mixed-domain streams."""
    import random

    rng = random.Random(seed)
    left: dict[str, list[Question]] = {}
    for q in questions:
        left.setdefault(q.category, []).append(q)
    out: list[Question] = []
    cur = rng.choice(sorted(left))
    while left:
        if cur not in left or (out and rng.random() < mix):
            others = sorted(c for c in left if c != cur) or sorted(left)
            cur = rng.choice(others)
        out.append(left[cur].pop(0))
        if not left[cur]:
            del left[cur]
    return out
