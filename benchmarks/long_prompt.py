"""A long document in, a short summary out: wall time split into prefill and decoding, by drafter.

    python benchmarks/long_prompt.py --docs /usr/share/common-licenses/GPL-3,/usr/share/common-licenses/Apache-2.0 \\
        --max-chars 12000 --methods plain,lookup?min_ngram=2+ctc

Each document (cut to --max-chars) becomes "Summarize this document:" + its text; every method
answers it with --max-new-tokens, interleaved per document, after one warm-up generation. Prints
per document and method the prompt tokens, the prefill time, the whole wall time, the tokens/s of
the decoding after the prefill, its ratio to plain's, and whether the answer equals plain's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specdraft import LLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--docs", required=True, help="comma-separated text files")
    ap.add_argument("--max-chars", type=int, default=12000)
    ap.add_argument("--methods", default="plain,lookup?min_ngram=2+ctc")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    a = ap.parse_args()
    llm = LLM(a.model, backend="torch")
    methods = ["plain"] + [m for m in a.methods.split(",") if m != "plain"]  # plain first: the reference
    llm.generate("hi", max_new_tokens=8, drafter=None)
    for m in methods:
        llm.generate("hi", max_new_tokens=8, drafter=None if m == "plain" else m)
    print(f"{a.model}, {llm.dtype_name}, {a.max_new_tokens} new tokens at most\n")
    print("| document | method | prompt tokens | prefill | wall | decoding tokens/s | ratio to plain | same answer |")
    print("|---|---|---|---|---|---|---|---|")
    for path in a.docs.split(","):
        prompt = "Summarize this document:\n\n" + Path(path).read_text(errors="replace")[: a.max_chars]
        plain = None
        for m in methods:
            r = llm.generate(prompt, max_new_tokens=a.max_new_tokens, drafter=None if m == "plain" else m)
            s = r.stats
            rate = (s.new_tokens - 1) / max(1e-9, s.wall_s - s.prefill_s)  # the first token comes with the prefill
            if plain is None:
                plain = (rate, r.token_ids)
            print(f"| {Path(path).name} | {m} | {s.prompt_tokens} | {s.prefill_s:.2f} s | {s.wall_s:.2f} s | {rate:.1f} | "
                  f"{rate / plain[0]:.2f}x | {'yes' if r.token_ids == plain[1] else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
