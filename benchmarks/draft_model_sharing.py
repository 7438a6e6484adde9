"""Time to build several drafter specs that use the same draft model in one `LLM` (after its load).

The drafters of one LLM share one draft model per (model, quant), so the specs below
build one int8 copy of the target instead of one each. Run it with `PYTHONPATH=OTHER/src` to time
another checkout.

    python benchmarks/draft_model_sharing.py --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import time

from specdraft import LLM

SPECS = ["draft-model:self?quant=int8", "lookup?min_ngram=2+draft-model:self?quant=int8",
         "lookup?min_ngram=2+draft-model:self?quant=int8&vocab=32768"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--spec", action="append", default=[], help=f"drafter spec (repeatable; default: {SPECS})")
    args = p.parse_args()
    llm = LLM(args.model, backend="torch")
    specs = args.spec or SPECS
    t = time.perf_counter()
    for s in specs:
        llm.drafter(s)
    print(f"{args.model}: {len(specs)} specs built in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
