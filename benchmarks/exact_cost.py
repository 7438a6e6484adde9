"""What `exact` (row-invariant decoding, `LLM(exact=True)`) costs, and what it buys: decode speed of
plain decoding and of each drafter with and without it, and whether each drafter's greedy output
equals plain decoding's in the same mode.

One model load; the two modes alternate round by round (the machine is shared and noisy: medians
over rounds and prompts, ratios within a round). Decode speed excludes the prompt's prefill.

    python benchmarks/exact_cost.py --model smollm2-135m --drafters 'ctc,lookup?min_ngram=2+ctc,lookup'
"""

from __future__ import annotations

import argparse
import json
import statistics

from specdraft import LLM

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain how a hash table works, with an example in Python.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Translate into French: the weather is nice today and I would like to go for a walk.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "Write a Python function that checks whether a string is a palindrome, with tests.",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--drafters", default="lookup?min_ngram=2+ctc,ctc,lookup")
    p.add_argument("--prompts", type=int, default=len(PROMPTS))
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None, help="also write every measurement to this JSON file")
    a = p.parse_args()

    llm = LLM(a.model, dtype=a.dtype, progress=False)
    methods = ["plain"] + [s.strip() for s in a.drafters.split(",") if s.strip()]
    prompts = PROMPTS[: a.prompts]
    speed: dict[tuple[str, bool], list[float]] = {}
    tau: dict[tuple[str, bool], list[float]] = {}
    tokens: dict[tuple[str, bool, int], list[int]] = {}
    for m in methods:  # build every drafter before timing
        llm.drafter(m)
    for rnd in range(a.rounds):
        for exact in (False, True) if rnd % 2 == 0 else (True, False):
            llm.model.set_row_invariant(exact)
            for m in methods:
                for i, prompt in enumerate(prompts):
                    r = llm.generate(prompt, max_new_tokens=a.max_new_tokens, drafter=m)
                    speed.setdefault((m, exact), []).append(r.new_tokens / (r.stats.wall_s - r.stats.prefill_s))
                    tau.setdefault((m, exact), []).append(r.stats.tau)
                    tokens[(m, exact, i)] = r.token_ids
    llm.model.set_row_invariant(False)

    print(f"{llm.name}, {llm.dtype_name}, packed {llm.packed}; {len(prompts)} prompts x {a.max_new_tokens} tokens, "
          f"{a.rounds} rounds")
    print("| method | tokens/s, fused | tokens/s, exact | exact / fused | speedup over plain, fused | "
          "speedup over plain, exact | tau | same output as plain, fused | same output as plain, exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for m in methods:
        f, e = statistics.median(speed[(m, False)]), statistics.median(speed[(m, True)])
        pf, pe = statistics.median(speed[("plain", False)]), statistics.median(speed[("plain", True)])
        same = {x: sum(tokens[(m, x, i)] == tokens[("plain", x, i)] for i in range(len(prompts))) for x in (False, True)}
        row = {"method": m, "fused": f, "exact": e, "ratio": e / f, "speedup_fused": f / pf, "speedup_exact": e / pe,
               "tau": statistics.median(tau[(m, True)]), "same_fused": same[False], "same_exact": same[True]}
        rows.append(row)
        print(f"| {m} | {f:.1f} | {e:.1f} | {e / f:.2f} | {f / pf:.2f}x | {e / pe:.2f}x | {row['tau']:.2f} | "
              f"{same[False]}/{len(prompts)} | {same[True]}/{len(prompts)} |")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"model": llm.name, "dtype": llm.dtype_name, "rows": rows,
                       "speed": {f"{m}|{x}": v for (m, x), v in speed.items()}}, fh, indent=1)


if __name__ == "__main__":
    main()
