"""Per-turn records and their summary: tau, acceptance, tokens/s, speedup vs plain, greedy match.

Conventions (Spec-Bench / EAGLE): tau = committed tokens per target forward; acceptance =
accepted drafted tokens / drafted tokens; a question's tokens/s is its total new tokens over its
total wall time (all turns); speedup = mean over questions of (method tokens/s / plain tokens/s),
plain having run on the same questions in the same process.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TurnRecord:
    method: str
    question_id: str
    category: str
    turn: int
    repeat: int
    new_tokens: int
    wall_s: float
    target_forwards: int
    drafted: int
    accepted: int
    token_ids: tuple[int, ...]
    text: str = ""
    route: str | None = None  # knn-ssd: routed domain of the turn

    def to_dict(self) -> dict:
        d = asdict(self)
        d["token_ids"] = list(self.token_ids)
        return d


def _question_totals(records: list[TurnRecord]) -> dict[tuple[str, str], dict]:
    """(method, question_id) -> summed counters over turns and repeats, plus output ids of repeat 0."""
    out: dict[tuple[str, str], dict] = {}
    for r in records:
        t = out.setdefault((r.method, r.question_id), {
            "category": r.category, "new_tokens": 0, "wall_s": 0.0, "target_forwards": 0, "drafted": 0,
            "accepted": 0, "ids": {}, "route": None})
        t["new_tokens"] += r.new_tokens
        t["wall_s"] += r.wall_s
        t["target_forwards"] += r.target_forwards
        t["drafted"] += r.drafted
        t["accepted"] += r.accepted
        if r.repeat == 0:
            t["ids"][r.turn] = r.token_ids
            if r.turn == 0:
                t["route"] = r.route
    return out


def _stats(rows: list[tuple[str, dict]], plain: dict[str, dict] | None, compare_outputs: bool) -> dict:
    new = sum(t["new_tokens"] for _, t in rows)
    fwd = sum(t["target_forwards"] for _, t in rows)
    drafted = sum(t["drafted"] for _, t in rows)
    wall = sum(t["wall_s"] for _, t in rows)
    ratios, matches = [], []
    for qid, t in rows:
        if plain is not None and qid in plain and plain[qid]["wall_s"] > 0 and t["wall_s"] > 0:
            p = plain[qid]
            ratios.append((t["new_tokens"] / t["wall_s"]) / (p["new_tokens"] / p["wall_s"]))
            matches.append(t["ids"] == p["ids"])
    return {
        "tau": new / fwd if fwd else None,
        "acceptance_rate": sum(t["accepted"] for _, t in rows) / drafted if drafted else None,
        "tokens_per_s": new / wall if wall else None,
        "speedup": statistics.fmean(ratios) if ratios else None,
        "speedup_median": statistics.median(ratios) if ratios else None,
        "new_tokens": new,
        "questions": len(rows),
        "greedy_match": statistics.fmean(matches) if matches and compare_outputs else None,
        **({"routing_accuracy": statistics.fmean(t["route"] == t["category"] for _, t in routed)}
           if (routed := [(q, t) for q, t in rows if t["route"] is not None]) else {}),
    }


def summarize(records: list[TurnRecord], baseline: str = "plain", compare_outputs: bool = True) -> dict:
    """{METHOD: {"overall": {...}, "categories": {CATEGORY: {...}}}} with the metrics above.

    compare_outputs=False (sampled runs, where outputs differ by design) leaves greedy_match None."""
    totals = _question_totals(records)
    methods = list(dict.fromkeys(r.method for r in records))
    plain = {q: t for (m, q), t in totals.items() if m == baseline} or None
    out = {}
    for m in methods:
        rows = [(q, t) for (mm, q), t in totals.items() if mm == m]
        cats = sorted({t["category"] for _, t in rows})
        out[m] = {
            "overall": _stats(rows, plain, compare_outputs),
            "categories": {c: _stats([(q, t) for q, t in rows if t["category"] == c], plain, compare_outputs)
                           for c in cats},
        }
    return out
