"""How fast could any router over these drafters be? Upper bounds from a `specdraft bench` run.

A router picks one drafter per prompt. Whatever it knows, it cannot beat the router that picks,
in hindsight, the drafter that was fastest on that very prompt (per-question oracle), or on that
prompt's domain (per-domain oracle: what a perfect domain classifier with the best route per
domain would reach). Both are measured on the run's own timings, so noise favours them: they are
optimistic bounds. Methods whose name starts with `--exclude` prefixes (default: knn-ssd, the
routers themselves) are not candidates.

    .venv/bin/python benchmarks/router_bound.py runs/s6-knn-qwen [--questions FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def read_answers(run: Path) -> dict[str, dict[str, tuple[int, float]]]:
    """{method: {question_id: (new tokens, wall seconds)}} from a bench run's answers/*.jsonl."""
    out: dict[str, dict[str, tuple[int, float]]] = {}
    for f in sorted((run / "answers").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            c = r["choices"][0]
            out.setdefault(r["model_id"], {})[r["question_id"]] = (sum(c["new_tokens"]), sum(c["wall_time"]))
    return out


def speedups(answers: dict[str, dict[str, tuple[int, float]]], baseline: str = "plain") -> dict[str, dict[str, float]]:
    """{method: {question_id: tokens/s over the baseline's tokens/s}} (the bench's speedup per question)."""
    base = answers[baseline]
    return {m: {q: (n / w) / (base[q][0] / base[q][1]) for q, (n, w) in qs.items() if q in base and w > 0}
            for m, qs in answers.items() if m != baseline}


def bounds(sp: dict[str, dict[str, float]], category: dict[str, str]) -> dict:
    """Best single method, per-domain oracle and per-question oracle, as mean speedups over the
    questions every candidate answered."""
    qs = sorted(set.intersection(*(set(v) for v in sp.values())))
    single = {m: statistics.fmean(v[q] for q in qs) for m, v in sp.items()}
    best = max(single, key=single.get)
    cats = sorted({category[q] for q in qs})
    per_cat = {}
    for c in cats:
        cq = [q for q in qs if category[q] == c]
        means = {m: statistics.fmean(v[q] for q in cq) for m, v in sp.items()}
        m = max(means, key=means.get)
        per_cat[c] = (m, means[m], len(cq))
    domain_oracle = statistics.fmean(per_cat[category[q]][1] for q in qs)
    question_oracle = statistics.fmean(max(v[q] for v in sp.values()) for q in qs)
    return {"questions": len(qs), "single": single, "best_single": (best, single[best]),
            "per_domain": per_cat, "domain_oracle": domain_oracle, "question_oracle": question_oracle}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a `specdraft bench --out` directory")
    p.add_argument("--questions", default=None, help="the question file of the run (default: the built suite)")
    p.add_argument("--exclude", default="knn-ssd", help="comma-separated method prefixes that are not candidates")
    a = p.parse_args()
    from specdraft.bench.questions import read_questions
    from specdraft.data.build import default_questions

    category = {q.question_id: q.category for q in read_questions(a.questions or default_questions())}
    sp = speedups(read_answers(a.run))
    routers = {m: v for m, v in sp.items() if any(m.startswith(x) for x in a.exclude.split(",") if x)}
    cands = {m: v for m, v in sp.items() if m not in routers}
    b = bounds(cands, category)
    print(f"{a.run}: {b['questions']} questions, {len(cands)} candidate drafters")
    for m, v in sorted(b["single"].items(), key=lambda kv: -kv[1]):
        print(f"  {v:.2f}x  {m}")
    for m, v in routers.items():
        print(f"  {statistics.fmean(v.values()):.2f}x  {m}  (router, not a candidate)")
    print("per-domain best:")
    for c, (m, v, n) in b["per_domain"].items():
        print(f"  {c:14s} {v:.2f}x ({n} q)  {m}")
    bm, bv = b["best_single"]
    print(f"best single drafter      {bv:.2f}x")
    print(f"per-domain oracle router {b['domain_oracle']:.2f}x ({b['domain_oracle'] - bv:+.2f}x)")
    print(f"per-question oracle      {b['question_oracle']:.2f}x ({b['question_oracle'] - bv:+.2f}x)")


if __name__ == "__main__":
    main()
