"""The gguf backend against the torch backend, side by side in one process, on the bench questions.

    python benchmarks/gguf_backend.py --model qwen2.5-coder-1.5b \
        --torch plain,auto --gguf "plain,lookup?min_ngram=2,draft-model:qwen2.5-coder-0.5b"

Each method answers the first turn of one question per category (greedy, --max-new-tokens, EOS
ends a turn), methods interleaved per question so machine drift hits all alike. Prints a markdown
table: median wall tokens/s over the questions (prefill included), the median of per-question
ratios to the gguf backend's plain decoding, tau, and whether each gguf method's tokens equal gguf
plain decoding's on every question (the lossless check on that backend). Also the load time of each
backend's LLM (warm cache).
"""

from __future__ import annotations

import argparse
import statistics
import time

from specdraft import LLM
from specdraft.bench.questions import per_category, read_questions
from specdraft.data.build import default_questions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--torch", default="plain,auto", help="comma list of drafters on the torch backend ('' for none)")
    ap.add_argument("--gguf", default="plain,lookup?min_ngram=2", help="comma list of drafters on the gguf backend")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--per-category", type=int, default=1)
    a = ap.parse_args()

    questions = per_category(read_questions(default_questions()), a.per_category)
    prompts = [[{"role": "user", "content": q.turns[0]}] for q in questions]
    runs = []
    for backend, specs in (("gguf", a.gguf), ("torch", a.torch)):
        specs = [s for s in specs.split(",") if s]
        if not specs:
            continue
        t = time.perf_counter()
        llm = LLM(a.model, backend=backend, progress=False)
        print(f"{backend}: loaded in {time.perf_counter() - t:.1f} s ({llm.dtype_name})", flush=True)
        for s in specs:
            llm.drafter(s)
        llm.generate(prompts[0], max_new_tokens=8)  # warm-up
        runs += [(backend, s, llm) for s in specs]
    rows = {(b, s): [] for b, s, _ in runs}
    for i, p in enumerate(prompts):
        for b, s, llm in runs:
            r = llm.generate(p, max_new_tokens=a.max_new_tokens, drafter=s)
            rows[(b, s)].append(r)
        print(f"question {i + 1}/{len(prompts)} done", flush=True)
    base = rows[("gguf", "plain")] if ("gguf", "plain") in rows else None
    print(f"\n| backend | drafter | tokens/s (median) | vs gguf plain (median of ratios) | tau (mean) | same tokens as gguf plain |")
    print("|---|---|---|---|---|---|")
    for (b, s), rs in rows.items():
        tps = statistics.median(r.tokens_per_s for r in rs)
        ratio = statistics.median(r.tokens_per_s / p.tokens_per_s for r, p in zip(rs, base)) if base else float("nan")
        tau = statistics.mean(r.stats.tau for r in rs)
        same = "-" if b != "gguf" or base is None else f"{sum(r.token_ids == p.token_ids for r, p in zip(rs, base))}/{len(rs)}"
        print(f"| {b} | `{s}` ({rs[0].drafter}) | {tps:.1f} | {ratio:.2f}x | {tau:.2f} | {same} |")


if __name__ == "__main__":
    main()
