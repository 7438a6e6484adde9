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
    from ..train import skipsearch
    from ..train.knn_build import measure, pool_prompts
    from ..drafters.layerskip import LayerSkipDrafter, skipset_to_json

    if (a.domain is None) == (a.prompts is None):
        raise SpecdraftError("give exactly one of --domain or --prompts")
    texts = pool_prompts(a.domain) if a.domain else [q.turns[0] for q in read_questions(a.prompts)]
    if len(texts) < a.num_prompts + a.heldout:
        raise SpecdraftError(f"{len(texts)} prompts; need {a.num_prompts} for the search + {a.heldout} held apart")
    llm = LLM(a.model, dtype=a.dtype, device=a.device, exact=a.exact, backend="torch")  # skipping sublayers
    ids = [llm.tokenizer.encode_prompt(t) for t in texts[: a.num_prompts + a.heldout]]
    data = skipsearch.prepare(llm.model, ids[: a.num_prompts], a.tokens)
    L = llm.model.cfg.num_layers
    obj = skipsearch.Objective(llm.model, data, protect=(0, L - 1))
    r = skipsearch.search(obj, max_evals=a.budget, patience=a.patience, max_seconds=a.max_seconds, seed=a.seed)
    skip = skipsearch.bits_to_skip(list(r["bits"]), L)
    facts = dict(domain=a.domain or a.prompts, matchness=r["matchness"], cost=r["cost"],
                 modelled_speedup=r["modelled_speedup"], evals=r["total_evals"], seconds=round(r["total_seconds"], 1),
                 trace=r["trace"])
    if a.heldout:
        d = LayerSkipDrafter(skip, "search")
        taus: dict = {}
        facts["heldout_speedup"] = measure(llm, ["layerskip"], ids[a.num_prompts:], 64, {"layerskip": d}, taus)["layerskip"]
        facts["heldout_tau"] = taus["layerskip"]
    out = skipset_to_json(skip, llm.name, **facts)
    with atomic_file(Path(a.out), "w") as f:
        json.dump(out, f, indent=2)
    print(f"skipped {skip.count()} of {2 * L} sublayers (attn {out['attn']}, mlp {out['mlp']}); matchness "
          f"{r['matchness']:.3f}, cost {r['cost']:.3f}, modelled speedup {r['modelled_speedup']:.3f}, "
          f"{r['total_evals']} evaluations in {r['total_seconds']:.0f} s"
          + (f"; held-apart tau {facts['heldout_tau']:.2f}, speedup {facts['heldout_speedup']:.2f}x" if a.heldout else ""))
    print(a.out)
    return 0
