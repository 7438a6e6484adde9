"""Is the CTC drafter's draft tree built on calibrated probabilities? Its frames' logits divided by
a temperature T before the best-first tree (`drafters.ctc.ctc_tree`) picks its nodes, timed
against plain decoding on the prompts of benchmarks/prompts/mini.jsonl.

    python benchmarks/ctc_calibration.py [--model smollm2-135m] [--temperatures 0.5,0.75,1,1.5,2]

T < 1 trusts the drafter's first choices more (longer chains), T > 1 less (wider trees). If the
drafter is calibrated, T = 1 builds the tree of the largest expected acceptance and measures best.
"""

from __future__ import annotations

import argparse
import copy

from specdraft import LLM
from specdraft.drafters import build_drafter

from interleaved import mini_prompts, table, versus_plain


def tempered(llm, T: float):
    """The shipped CTC drafter with its frame logits divided by T (a shallow copy of its module,
    so the drafters of other temperatures are unaffected)."""
    d = build_drafter("ctc", llm.draft_context)
    module, logits = copy.copy(d.module), d.module.logits
    object.__setattr__(module, "logits", lambda feats, head: logits(feats, head) / T)
    d.module = module
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--temperatures", default="0.5,0.75,1,1.5,2")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    a = ap.parse_args()
    llm = LLM(a.model, backend="torch")
    drafters = {f"ctc, frame logits / {t}": tempered(llm, float(t)) for t in a.temperatures.split(",")}
    res = versus_plain(llm, mini_prompts(), drafters, a.max_new_tokens)
    print(f"{len(mini_prompts())} prompts, {a.max_new_tokens} new tokens, {llm.dtype_name}")
    print(table(res))


if __name__ == "__main__":
    main()
