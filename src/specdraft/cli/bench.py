"""`specdraft bench`: methods side by side on a Spec-Bench-format suite."""

from __future__ import annotations

import sys

from .. import zoo
from ..errors import require
from .options import backend_option, dtype_option, positive_int, sampling_options


def add(sub) -> None:
    b = sub.add_parser("bench", help="run methods side by side on a question suite; write tables, answers, plot")
    b.set_defaults(run=run)
    b.add_argument("--model", default=zoo.DEFAULT_MODEL)
    b.add_argument("--methods", default="plain,lookup",
                   help="comma list of drafter specs and peers (hf-plain, hf-assisted:NAME, hf-lookup[:N], "
                        "hf-early-exit[:L]; llama-server, built by `make peers`: llamacpp-plain, llamacpp-draft:NAME, "
                        "llamacpp-ngram[:TYPE], llamacpp-eagle3:DIR; llama-cpp-python: llamacpp-py-plain, llamacpp-py-lookup[:N]); "
                        "plain is always included")
    b.add_argument("--questions", default=None, help="Spec-Bench-format file (default: the built suite)")
    b.add_argument("--per-category", type=positive_int, default=None, help="first K questions of each category")
    b.add_argument("--max-new-tokens", type=positive_int, default=256)
    sampling_options(b, seed=0, seed_help="with --temperature: each turn samples with a seed made from this one (default 0) "
                      "and the turn, the same for every method")
    dtype_option(b)
    backend_option(b)
    b.add_argument("--device", default=None)
    b.add_argument("--repeats", type=positive_int, default=1)
    b.add_argument("--mix", type=float, default=None,
                   help="order the questions as a mixed-domain stream: chance of switching category after each prompt")
    b.add_argument("--concurrency", type=positive_int, default=None, metavar="N",
                   help="also answer every question's first turn N at a time (LLM.generate_batch) and one at a "
                        "time, per drafter: aggregate tokens/s, ratio, unchanged answers (summary.json 'concurrency')")
    b.add_argument("--out", default="runs/bench", help="output directory (default: %(default)s)")


def run(a) -> int:
    require("bench", "specdraft bench (its speedup plot)")
    import shlex
    from pathlib import Path

    from ..bench.suite import run_suite, write
    from ..runtime.sampling import SamplingParams

    sampling = SamplingParams(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, seed=a.seed)
    summary, records = run_suite(a.model, a.methods, questions=a.questions, per_category=a.per_category,
                                 max_new_tokens=a.max_new_tokens, sampling=sampling, dtype=a.dtype, exact=a.exact,
                                 backend=a.backend, device=a.device, repeats=a.repeats, mix=a.mix,
                                 concurrency=a.concurrency)
    write(summary, records, Path(a.out), "specdraft " + " ".join(shlex.quote(x) for x in sys.argv[1:]))
    return 0
