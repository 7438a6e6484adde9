"""`specdraft search-skip`: a layer-skip set for one domain."""

from __future__ import annotations

import json

from .. import zoo
from ..errors import SpecdraftError, require
from .options import dtype_option, positive_int


def add(sub) -> None:
    ss = sub.add_parser("search-skip", help="search a layer-skip set for one domain (self-speculative drafting)")
    ss.set_defaults(run=run)
    ss.add_argument("--model", default=zoo.DEFAULT_MODEL)
    ss.add_argument("--domain", default=None, help="a pool domain (conversation, code, math, qa, translation, summarization)")
    ss.add_argument("--prompts", default=None, help="or a Spec-Bench-format question file")
    ss.add_argument("--num-prompts", type=positive_int, default=8, help="search prompts (default: %(default)s)")
    ss.add_argument("--tokens", type=positive_int, default=32, help="full-model tokens per prompt scored (default: %(default)s)")
    ss.add_argument("--budget", type=positive_int, default=300, help="most evaluations (default: %(default)s)")
    ss.add_argument("--patience", type=positive_int, default=100, help="stop after this many without improvement")
    ss.add_argument("--max-seconds", type=float, default=900.0)
    ss.add_argument("--heldout", type=int, default=3, help="held-apart prompts for measured tau/speedup (0 = skip)")
    dtype_option(ss)
    ss.add_argument("--device", default=None)
    ss.add_argument("--seed", type=int, default=0)
    ss.add_argument("--out", required=True, help="skip-set JSON to write")


def run(a) -> int:
    require("train", "the skip-set search")
    from pathlib import Path

    from ..api import LLM
    from ..bench.questions import read_questions
    from ..paths import atomic_file
    from ..train.knn_build import pool_prompts, search_skipset

    if (a.domain is None) == (a.prompts is None):
        raise SpecdraftError("give exactly one of --domain or --prompts")
    texts = pool_prompts(a.domain) if a.domain else [q.turns[0] for q in read_questions(a.prompts)]
    if len(texts) < a.num_prompts + a.heldout:  # (before the slow load)
        raise SpecdraftError(f"{len(texts)} prompts; need {a.num_prompts} for the search + {a.heldout} held apart")
    llm = LLM(a.model, dtype=a.dtype, device=a.device, exact=a.exact, backend="torch")  # skipping sublayers
    out = search_skipset(llm, texts, a.domain or a.prompts, num_prompts=a.num_prompts, tokens=a.tokens,
                         budget=a.budget, patience=a.patience, max_seconds=a.max_seconds, heldout=a.heldout,
                         seed=a.seed)
    with atomic_file(Path(a.out), "w") as f:
        json.dump(out, f, indent=2)
    n = len(out["attn"]) + len(out["mlp"])
    held = f"; held-apart tau {out['heldout_tau']:.2f}, speedup {out['heldout_speedup']:.2f}x" if a.heldout else ""
    print(f"skipped {n} of {2 * llm.model.cfg.num_layers} sublayers (attn {out['attn']}, mlp {out['mlp']}); "
          f"matchness {out['matchness']:.3f}, cost {out['cost']:.3f}, modelled speedup {out['modelled_speedup']:.3f}, "
          f"{out['evals']} evaluations in {out['seconds']:.0f} s{held}")
    print(a.out)
    return 0
