"""Where `knn-ssd` routes the bench questions: per question its nearest domain and cosine
distance, per domain how often the nearest anchor is the question's own domain, and how often the
question is routed there (not to the fallback) at the artifact's radius and at others.

    python benchmarks/route_distances.py [--model qwen2.5-coder-1.5b] [--per-category 10] [--radii 0.1059,0.194]

The bench questions are worded unlike the pool prompts the anchors were built from (MT-bench
against ShareGPT, HumanEval against stdlib functions, man pages against READMEs), so they show
how far prompts of the same domains sit from the anchors in real use.
"""

from __future__ import annotations

import argparse

from specdraft import LLM
from specdraft.bench.questions import per_category, read_questions
from specdraft.data.build import default_questions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--drafter", default="knn-ssd", help="knn-ssd[:DIR]")
    ap.add_argument("--per-category", type=int, default=10)
    ap.add_argument("--radii", default="", help="other fallback radii to count routes at, comma-separated")
    a = ap.parse_args()
    llm = LLM(a.model, backend="torch")
    rows = []
    for q in per_category(read_questions(default_questions(progress=False)), a.per_category):
        route = llm.generate(q.turns[0], max_new_tokens=1, drafter=a.drafter).to_json()["route"]
        rows.append((q.category, route["nearest"], route["distance"]))
        print(f"{q.question_id:<40} {q.category:<14} nearest {route['nearest']:<14} {route['distance']:.4f}", flush=True)
    radius = llm.drafter(a.drafter).max_distance
    radii = [radius] + [float(r) for r in a.radii.split(",") if r.strip()]
    print(f"\n| domain | questions | nearest anchor is the domain's | " + " | ".join(
        f"routed to it, radius {r:.4f}{' (artifact)' if i == 0 else ''}" for i, r in enumerate(radii)) + " |")
    print("|---|---|---|" + "---|" * len(radii))
    for dom in [*dict.fromkeys(c for c, _, _ in rows), "all"]:
        got = [r for r in rows if dom in ("all", r[0])]
        right = [r for r in got if r[1] == r[0]]
        print(f"| {dom} | {len(got)} | {len(right) / len(got):.2f} | " + " | ".join(
            f"{sum(d <= r for _, _, d in right) / len(got):.2f}" for r in radii) + " |")


if __name__ == "__main__":
    main()
