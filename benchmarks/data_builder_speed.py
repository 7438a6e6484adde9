"""Throughput of the self-distillation data builder's batched greedy decoder (runtime/batched.py).

    python benchmarks/data_builder_speed.py [--model smollm2-135m] [--prompts 48] [--batch-size 24] [--dense]

Answers the first N prompts of `specdraft train data`'s default mix (max 192 new tokens, prompts cut
to their last 384 tokens, hidden states kept as the builder keeps them) and prints answer tokens/s.
The base is packed for oneDNN as the builder packs it (runtime/packed.py); `--dense` leaves it dense.
"""

from __future__ import annotations

import argparse
import time

import torch

from specdraft import fetch
from specdraft.runtime.batched import greedy_batch
from specdraft.runtime.cpu import fast_dtype
from specdraft.runtime.loader import load_decoder
from specdraft.runtime.packed import pack_decoder
from specdraft.text import Tokenizer
from specdraft.train.data import training_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--dense", action="store_true", help="do not pack the base's weights")
    a = ap.parse_args()
    path = fetch.resolve(a.model)
    tok = Tokenizer(path)
    dec = load_decoder(path, fast_dtype("cpu"))
    packed = not a.dense and pack_decoder(dec)
    enc = [tok.encode_prompt(p["prompt"])[-384:] for p in training_prompts(6000, 400, 0, False)[:a.prompts]]
    t0, n = time.perf_counter(), 0
    for i in range(0, len(enc), a.batch_size):
        out = greedy_batch(dec, enc[i:i + a.batch_size], 192, frozenset(tok.eos_ids), sorted(tok.eos_ids)[0], keep=16)
        n += sum(map(len, out.answers))
    dt = time.perf_counter() - t0
    print(f"{a.prompts} prompts, batch {a.batch_size}, {dec.dtype}{', packed' if packed else ''}: "
          f"{n} answer tokens in {dt:.1f} s = {n / dt:.0f} tokens/s")


if __name__ == "__main__":
    main()
