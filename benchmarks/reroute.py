"""KNN routing once per prompt against re-routing as the text drifts (`knn-ssd?reroute=N`), on a
stream whose answers change domain mid-way: "summarize this text, then write code for it".

Every prompt runs plain decoding, then each method, in turn (greedy); per method: tau, tokens/s,
the speedup (mean over prompts of the per-prompt tokens/s ratio to plain), whether the tokens are
plain decoding's, the routes taken first and the switches made. Printed as a Markdown table.

    python benchmarks/reroute.py --model smollm2-135m --dtype float32 --methods knn-ssd,knn-ssd?reroute=32
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

from specdraft import LLM

HERE = Path(__file__).parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--methods", default="knn-ssd,knn-ssd?reroute=32")
    p.add_argument("--questions", default=str(HERE / "prompts" / "drift.jsonl"))
    p.add_argument("--max-new-tokens", type=int, default=256)
    a = p.parse_args()

    prompts = [json.loads(line)["turns"][0] for line in Path(a.questions).read_text().splitlines() if line.strip()]
    methods = a.methods.split(",")
    llm = LLM(a.model, dtype=a.dtype, backend="torch")
    for m in ["plain", *methods]:  # warm-up: every drafter a route may take is built before timing
        for q in prompts[:2]:
            llm.generate(q, drafter=m, max_new_tokens=16)
    rows: dict[str, list[dict]] = {m: [] for m in ["plain", *methods]}
    for i, q in enumerate(prompts):
        plain = llm.generate(q, drafter="plain", max_new_tokens=a.max_new_tokens)
        rows["plain"].append({"tps": plain.stats.tokens_per_s, "tau": 1.0, "same": True})
        for m in methods:
            r = llm.generate(q, drafter=m, max_new_tokens=a.max_new_tokens)
            route = r.stats.extra.get("route", {})
            rows[m].append({"tps": r.stats.tokens_per_s, "tau": r.stats.tau, "same": r.token_ids == plain.token_ids,
                            "speedup": r.stats.tokens_per_s / plain.stats.tokens_per_s,
                            "first": route.get("domain"), "switches": route.get("switches", [])})
        print(f"prompt {i + 1}/{len(prompts)}: " + ", ".join(
            f"{m} {rows[m][-1]['speedup']:.2f}x" for m in methods), flush=True)

    print(f"\nmodel {a.model}, torch {llm.dtype_name}, {len(prompts)} prompts, max {a.max_new_tokens} new tokens\n")
    print("| method | tau | tokens/s | speedup | same tokens as plain | first routes | switches |")
    print("|---|---|---|---|---|---|---|")
    for m, rs in rows.items():
        tps = statistics.mean(r["tps"] for r in rs)
        if m == "plain":
            print(f"| plain | 1.00 | {tps:.1f} | 1.00x | - | - | - |")
            continue
        firsts = Counter(r["first"] for r in rs)
        moves = Counter(f"to {s['domain'] or 'fallback'}" for r in rs for s in r["switches"])
        print(f"| {m} | {statistics.mean(r['tau'] for r in rs):.2f} | {tps:.1f} | "
              f"{statistics.mean(r['speedup'] for r in rs):.2f}x | {sum(r['same'] for r in rs)}/{len(rs)} | "
              f"{', '.join(f'{k} {v}' for k, v in firsts.most_common())} | "
              f"{sum(len(r['switches']) for r in rs)} ({', '.join(f'{k} {v}' for k, v in moves.most_common()) or 'none'}) |")


if __name__ == "__main__":
    main()
