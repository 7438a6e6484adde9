"""How big should the CTC / Medusa draft tree be on this CPU? Node budget vs measured speed,
interleaved with plain decoding on the prompts of benchmarks/prompts/mini.jsonl.

    python benchmarks/head_nodes_sweep.py [--model smollm2-135m] [--nodes 2,4,8,12,24]

Every node is one more row of the verification forward; on a CPU a wider forward is not free, so
the best budget trades tau against that cost. Prints per drafter and budget: mean tau, mean
per-prompt speedup, and the share of wall time spent drafting.
"""

from __future__ import annotations

import argparse

from specdraft import LLM
from specdraft.drafters import build_drafter

from interleaved import mini_prompts, table, versus_plain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kinds", default="ctc,medusa")
    ap.add_argument("--nodes", default="2,4,8,12,24")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    a = ap.parse_args()
    llm = LLM(a.model, backend="torch")
    prompts = mini_prompts()
    drafters = {f"{k} max_nodes={n}": build_drafter(k, llm.draft_context, max_nodes=int(n))
                for k in a.kinds.split(",") for n in a.nodes.split(",")}
    res = versus_plain(llm, prompts, drafters, a.max_new_tokens)
    print(f"{len(prompts)} prompts, {a.max_new_tokens} new tokens, {llm.dtype_name}")
    print(table(res))


if __name__ == "__main__":
    main()
