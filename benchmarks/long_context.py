"""Cost of a decoding step and of a draft's verification forward after a long context.

    python benchmarks/long_context.py [--model gemma3-270m] [--contexts 300,4000] [--rows 1,9]

The context is filled in chunks of 500 tokens (random ids), then `--repeats` forwards of `rows` new
tokens are timed after it; prints the median per (context, rows). The model loads as `LLM` loads it
(float32 on a CPU, packed for oneDNN). On a model with sliding-window layers (Gemma 3) the window
bounds what those layers read, whatever the context (docs/archive/benchmarks-history.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specdraft import fetch
from specdraft.runtime.loader import load_decoder
from specdraft.runtime.packed import pack_decoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--contexts", default="300,4000")
    ap.add_argument("--rows", default="1,9")
    ap.add_argument("--repeats", type=int, default=25)
    a = ap.parse_args()
    dec = load_decoder(fetch.resolve(a.model))
    pack_decoder(dec)
    g = torch.Generator().manual_seed(0)
    vocab = dec.cfg.vocab_size
    print(f"{a.model}: sliding window {dec.cfg.sliding_window or 'none'}, {torch.get_num_threads()} threads")
    for ctx in map(int, a.contexts.split(",")):
        cache = dec.new_cache(ctx + max(map(int, a.rows.split(","))))
        with torch.inference_mode():
            dec.prefill(torch.randint(0, vocab, (ctx,), generator=g).tolist(), cache, chunk=500)
            for rows in map(int, a.rows.split(",")):
                times = []
                for _ in range(a.repeats):
                    t = time.perf_counter()
                    dec(torch.randint(0, vocab, (rows,), generator=g), torch.arange(ctx, ctx + rows), cache, start=ctx)
                    times.append(time.perf_counter() - t)
                print(f"context {ctx:6d}, {rows:2d} rows: {statistics.median(times) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
