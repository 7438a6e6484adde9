"""Speculative decoding vs plain decoding, side by side in one process (greedy).

    python benchmarks/speculative.py --model smollm2-135m --methods plain,lookup
    python benchmarks/speculative.py --model qwen2.5-coder-1.5b --methods plain,draft-model:qwen2.5-coder-0.5b

Prints a markdown table per category: tau, acceptance, tokens/s, speedup (mean over questions of
the per-question tokens/s ratio to plain), overhead = tau / speedup - 1, and how many outputs are
identical to plain decoding's (in bf16 rare flips are expected; in fp32 all must match).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specdraft import LLM
from specdraft.bench.metrics import summarize
from specdraft.bench.questions import per_category, read_questions
from specdraft.bench.report import fmt
from specdraft.bench.runner import SpecdraftMethod, run_methods
from specdraft.drafters import backend_for

HERE = Path(__file__).parent


def table(summary: dict) -> str:
    lines = ["| method | category | tau | acceptance | tokens/s | speedup (mean / median) | overhead | same output as plain |",
             "|---|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        for cat, st in [*s["categories"].items(), ("**overall**", s["overall"])]:
            over = st["tau"] / st["speedup"] - 1 if st["speedup"] and st["tau"] else None
            match = "-" if st["greedy_match"] is None else f"{round(st['greedy_match'] * st['questions'])}/{st['questions']}"
            lines.append(f"| {m} | {cat} | {fmt(st['tau'])} | {fmt(st['acceptance_rate'])} | {fmt(st['tokens_per_s'], '.1f')} | "
                         f"{fmt(st['speedup'])}x / {fmt(st['speedup_median'])}x | {fmt(over)} | {match} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="plain,lookup")
    ap.add_argument("--questions", default=str(HERE / "prompts" / "mini.jsonl"))
    ap.add_argument("--per-category", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "gguf"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write summary.json and records.jsonl here")
    a = ap.parse_args()

    specs = list(dict.fromkeys(["plain", *a.methods.split(",")]))
    llm = LLM(a.model, dtype=a.dtype, backend=backend_for(a.backend, specs))
    methods = [SpecdraftMethod(llm, s) for s in specs]
    questions = per_category(read_questions(a.questions), a.per_category)
    records = run_methods(methods, questions, max_new_tokens=a.max_new_tokens, repeats=a.repeats)
    summary = summarize(records)
    print(f"\nmodel {a.model}, {llm.backend} {llm.dtype_name}, {len(questions)} questions, max {a.max_new_tokens} new tokens, "
          f"{a.repeats} repeat(s)\n")
    print(table(summary))
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        with open(out / "records.jsonl", "w") as f:
            for r in records:
                f.write(json.dumps(r.to_dict()) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
