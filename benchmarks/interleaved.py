"""Shared by the tuning scripts: drafter settings timed against plain decoding, interleaved per prompt."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def mini_prompts(categories: tuple[str, ...] | None = None) -> list[str]:
    """First turns of benchmarks/prompts/mini.jsonl (optionally only some categories)."""
    rows = [json.loads(line) for line in (Path(__file__).parent / "prompts" / "mini.jsonl").read_text().splitlines()]
    return [r["turns"][0] for r in rows if categories is None or r["category"] in categories]


def versus_plain(llm, prompts: list[str], drafters: dict, max_new_tokens: int) -> dict[str, list[tuple[float, float, float]]]:
    """Per setting, per prompt: (tau, tokens/s ratio to the plain run of the same prompt just
    before, share of wall time spent drafting). Every drafter is warmed up first."""
    llm.generate("hi", max_new_tokens=8)
    for d in drafters.values():
        llm.generate("hi", max_new_tokens=8, drafter=d)
    res: dict[str, list] = {k: [] for k in drafters}
    for q in prompts:
        plain = llm.generate(q, max_new_tokens=max_new_tokens, drafter=None).stats
        for k, d in drafters.items():
            s = llm.generate(q, max_new_tokens=max_new_tokens, drafter=d).stats
            res[k].append((s.tau, s.tokens_per_s / plain.tokens_per_s, s.draft_s / s.wall_s))
    return res


def table(res: dict[str, list[tuple[float, float, float]]], first: str = "drafter") -> str:
    """`versus_plain`'s result as a markdown table: mean tau, mean / median speedup, drafting share."""
    rows = [f"| {first} | tau | speedup (mean / median) | drafting share of wall time |", "|---|---|---|---|"]
    for k, v in res.items():
        sp = [x[1] for x in v]
        rows.append(f"| {k} | {statistics.fmean(x[0] for x in v):.2f} | {statistics.fmean(sp):.2f}x / "
                    f"{statistics.median(sp):.2f}x | {statistics.fmean(x[2] for x in v):.2f} |")
    return "\n".join(rows)
