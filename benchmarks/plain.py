"""Plain greedy decoding: specdraft's runtime vs transformers' `generate`, side by side in one process.

    python benchmarks/plain.py [--model smollm2-135m] [--dtype auto] [--max-new-tokens 128] [--repeats 3]

Both decode the same chat prompts greedily for exactly --max-new-tokens tokens (EOS ignored on
both sides, so the work is equal); runs are interleaved so machine drift hits both alike. Prints a
markdown table: median tokens/s of each, their ratio, whether the tokens agree, and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

from specdraft import LLM
from specdraft.engine import generate_ids
from specdraft.runtime.sampling import SamplingParams

PROMPTS = [
    "Explain why the sky is blue to a ten-year-old.",
    "Write a Python function that checks whether a number is prime.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    llm = LLM(a.model, dtype=a.dtype, backend="torch")
    rss_ours = peak_rss_mb()
    hf = AutoModelForCausalLM.from_pretrained(str(llm.path), dtype=llm.dtype).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    encoded = [llm.tokenizer.encode_prompt(p) for p in PROMPTS]

    def run_ours(ids):
        out, st = generate_ids(llm.model, ids, max_new_tokens=a.max_new_tokens, params=SamplingParams())
        return out, st.new_tokens / st.wall_s

    @torch.inference_mode()
    def run_hf(ids):
        t = time.perf_counter()
        x = torch.tensor([ids])
        y = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=a.max_new_tokens,
                        min_new_tokens=a.max_new_tokens, do_sample=False)
        dt = time.perf_counter() - t
        new = y[0, len(ids):].tolist()
        return new, len(new) / dt

    run_ours(encoded[0][:8]), run_hf(encoded[0][:8])  # warm-up
    ours, theirs, ratios, agree = [], [], [], 0
    for r in range(a.repeats):
        for ids in encoded:
            o_ids, o = run_ours(ids)
            h_ids, h = run_hf(ids)
            ours.append(o), theirs.append(h), ratios.append(o / h)
            agree += o_ids == h_ids
    n = len(ratios)
    print(f"| model | dtype | new tokens | specdraft tok/s | transformers tok/s | ratio (median, min-max) | same tokens | peak RSS |")
    print(f"|---|---|---|---|---|---|---|---|")
    print(f"| {a.model} | {llm.dtype_name} | {a.max_new_tokens} | {statistics.median(ours):.1f} | {statistics.median(theirs):.1f} | "
          f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | {agree}/{n} | "
          f"{rss_ours:.0f} MB after our load, {peak_rss_mb():.0f} MB with both |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
