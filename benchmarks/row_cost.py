"""Cost of one target forward by number of new rows (what verifying a draft of that size costs), per dtype.

    python benchmarks/row_cost.py [--model smollm2-135m] [--rows 1,2,3,5,9,17,25] [--context 300] [--dtypes bfloat16,float32,packed,packed-bfloat16,int8]

Each forward appends `rows` tokens to a KV cache already holding `context` tokens, with a causal mask
over the new rows, as the engine's verification forward does; logits for every row. Prints the
median over `--repeats` forwards and the cost relative to one row of the same configuration; in
float32 also with every product through F.linear (`runtime.model.linear` off), for comparison. Also prints
whether this CPU has native bf16 units (what `--dtype auto` decides by). `int8` is the drafting
copy of `draft-model:self?quant=int8` (runtime/quant.py), made from the float32 weights; `packed` the
float32 weights prepacked for oneDNN (runtime/packed.py), as `LLM` loads a float32 model on a CPU;
`packed-bfloat16` the bf16 weights prepacked (only on a CPU with bf16 units), as `LLM` loads a
bf16 model there. `bfloat16` is the dense bf16 model, as it decoded before bf16 weights were packed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specdraft import fetch
from specdraft.runtime import model
from specdraft.runtime.cpu import native_bf16
from specdraft.runtime.loader import load_decoder
from specdraft.runtime.packed import pack_decoder
from specdraft.runtime.quant import quantize_int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", default="1,2,3,5,9,17,25")
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--dtypes", default="bfloat16,float32,packed")
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    rows = [int(r) for r in a.rows.split(",")]
    print(f"{a.model}, context {a.context}, native bf16: {native_bf16('cpu')}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads\n")
    path = fetch.resolve(a.model)
    g = torch.Generator().manual_seed(0)
    configs = []  # (label, decoder, cache, weight-major row limit)
    for name in a.dtypes.split(","):
        if name == "int8":
            dec = quantize_int8(load_decoder(path))
        elif name in ("packed", "packed-bfloat16"):
            dec = load_decoder(path, torch.bfloat16 if name == "packed-bfloat16" else torch.float32)
            if not pack_decoder(dec):
                raise SystemExit(f"this torch or CPU cannot pack {dec.dtype} weights for oneDNN")
        else:
            dec = load_decoder(path, getattr(torch, name))
        ctx = torch.randint(0, dec.cfg.vocab_size, (a.context,), generator=g)
        cache = dec.new_cache(a.context + max(rows))
        with torch.inference_mode():
            dec(ctx, torch.arange(a.context), cache, logits_at=slice(0, 0))
        cache.length = a.context
        configs.append((name, dec, cache, model.WEIGHT_MAJOR_ROWS))
        if name == "float32":  # the same dtype with every product through F.linear, as before weight-major products
            configs.append(("float32, F.linear", dec, cache, 1))
    default = model.WEIGHT_MAJOR_ROWS
    ms: dict[str, list[float]] = {c[0]: [] for c in configs}
    with torch.inference_mode():
        for n in rows:
            toks = torch.randint(0, configs[0][1].cfg.vocab_size, (n,), generator=g)
            pos = torch.arange(a.context, a.context + n)
            times: dict[str, list[float]] = {c[0]: [] for c in configs}
            for _ in range(a.repeats + 2):  # configurations interleaved: a load change hits all alike
                for label, dec, cache, limit in configs:
                    model.WEIGHT_MAJOR_ROWS = limit
                    t = time.perf_counter()
                    dec(toks, pos, cache, start=a.context)
                    times[label].append(time.perf_counter() - t)
            model.WEIGHT_MAJOR_ROWS = default
            for label in times:
                ms[label].append(statistics.median(times[label][2:]) * 1e3)
    print("| configuration | " + " | ".join(f"{r} rows" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for label, v in ms.items():
        print(f"| {label} | " + " | ".join(f"{x:.1f} ms ({x / v[0]:.2f}x)" for x in v) + " |")


if __name__ == "__main__":
    main()
