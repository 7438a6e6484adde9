"""Does tuning the draft-model drafter cut its overhead? Confidence stop and draft-length caps,
interleaved with plain decoding on the code and math prompts of benchmarks/prompts/mini.jsonl.

    python benchmarks/draft_model_tuning.py [--target qwen2.5-coder-1.5b] [--draft qwen2.5-coder-0.5b]

Prints mean tau, mean per-prompt speedup, overhead = tau / speedup - 1, and the share of wall
time spent drafting, per setting.
"""

from __future__ import annotations

import argparse
import statistics

from specdraft import LLM
from specdraft.drafters import build_drafter

from interleaved import mini_prompts, versus_plain

SETTINGS = {
    "default (length 4, max 12, confidence 0.3)": {},
    "confidence 0.6": {"confidence": 0.6},
    "max length 6, confidence 0.5": {"max_length": 6, "confidence": 0.5},
    "confidence 0.15": {"confidence": 0.15},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    a = ap.parse_args()
    llm = LLM(a.target, backend="torch")
    prompts = mini_prompts(("code", "math"))[::2]
    drafters = {k: build_drafter(f"draft-model:{a.draft}", llm.draft_context, **v) for k, v in SETTINGS.items()}
    res = versus_plain(llm, prompts, drafters, a.max_new_tokens)
    print(f"| setting | tau | speedup | overhead | drafting share of wall time |\n|---|---|---|---|---|")
    for k, v in res.items():
        tau, sp = statistics.fmean(x[0] for x in v), statistics.fmean(x[1] for x in v)
        print(f"| {k} | {tau:.2f} | {sp:.2f}x | {tau / sp - 1:.2f} | {statistics.fmean(x[2] for x in v):.2f} |")


if __name__ == "__main__":
    main()
