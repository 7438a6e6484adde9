"""`specdraft bench --concurrency N`: the same prompts answered one at a time and N at a time
(`LLM.generate_batch`), per drafter: aggregate tokens/s of each, their ratio, and how many answers
the batch left unchanged."""

from __future__ import annotations

import time

from ..runtime.sampling import SamplingParams


def measure(llm, specs: list[str], prompts: list, *, max_new_tokens: int, concurrency: int,
            sampling: SamplingParams = SamplingParams()) -> list[dict]:
    kw = dict(max_new_tokens=max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
              top_k=sampling.top_k, seed=sampling.seed)
    rows = []
    for spec in specs:
        t = time.perf_counter()
        alone = [llm.generate(p, drafter=spec, **kw) for p in prompts]
        t_alone = time.perf_counter() - t
        t = time.perf_counter()
        batch = llm.generate_batch(prompts, drafter=spec, max_batch=concurrency, **kw)
        t_batch = time.perf_counter() - t
        n_alone = sum(r.new_tokens for r in alone)
        n_batch = sum(r.new_tokens for r in batch)
        forwards = sum(r.stats.target_forwards for r in batch)
        rows.append({"method": spec, "drafter": alone[0].drafter if alone else spec, "prompts": len(prompts),
                     "concurrency": concurrency, "alone_tokens_per_s": n_alone / t_alone,
                     "batch_tokens_per_s": n_batch / t_batch, "ratio": (n_batch / t_batch) / (n_alone / t_alone),
                     "batch_tau": n_batch / forwards if forwards else None,
                     "same_answers": sum(a.token_ids == b.token_ids for a, b in zip(alone, batch))})
    return rows


def table(rows: list[dict]) -> str:
    out = ["| method | prompts | alone tokens/s | batch tokens/s | ratio | tau in the batch | same answers |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        tau = "" if r["batch_tau"] is None else f"{r['batch_tau']:.2f}"
        out.append(f"| {r['method']} | {r['prompts']} | {r['alone_tokens_per_s']:.1f} | "
                   f"{r['batch_tokens_per_s']:.1f} | {r['ratio']:.2f}x | {tau} | {r['same_answers']}/{r['prompts']} |")
    return "\n".join(out)
