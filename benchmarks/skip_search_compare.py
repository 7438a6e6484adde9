"""Does the skip-set search find the best set that exists? Compare, on the same search data and
objective (modelled speedup from one-step matchness and weight cost), the TPE + random-move search
against an exhaustive-neighbourhood hill climb and a long random search; report the best objective,
its set, the evaluations and the wall time each needed.

    .venv/bin/python benchmarks/skip_search_compare.py --model smollm2-135m --domain conversation
"""

from __future__ import annotations

import argparse
import json

from specdraft.api import LLM
from specdraft.train import skipsearch
from specdraft.train.knn_build import pool_prompts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--domain", default="conversation")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--random", type=int, default=600)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    llm = LLM(a.model, backend="torch")
    ids = [llm.tokenizer.encode_prompt(t) for t in pool_prompts(a.domain)[: a.prompts]]
    data = skipsearch.prepare(llm.model, ids, a.tokens)
    L = llm.model.cfg.num_layers
    rows = {}

    def fresh():
        return skipsearch.Objective(llm.model, data, protect=(0, L - 1))

    rows["tpe+moves"] = skipsearch.search(fresh(), max_evals=a.budget, patience=a.budget // 3)
    rows["hill-climb"] = skipsearch.hill_climb(fresh())
    rows["random"] = skipsearch.random_search(fresh(), a.random)
    rows["skip-nothing"] = fresh()([0] * (2 * L))
    out = {}
    print("| search | best modelled speedup | matchness | cost | skipped sublayers | evaluations | seconds |")
    print("|---|---|---|---|---|---|---|")
    for k, r in rows.items():
        out[k] = {x: r.get(x) for x in ("modelled_speedup", "matchness", "cost", "total_evals", "total_seconds")}
        out[k]["skipped"] = sum(r["bits"])
        print(f"| {k} | {r['modelled_speedup']:.3f} | {r['matchness']:.3f} | {r['cost']:.3f} | {sum(r['bits'])} | "
              f"{r.get('total_evals', 1)} | {r.get('total_seconds', 0):.0f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
