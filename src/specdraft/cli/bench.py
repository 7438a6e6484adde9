"""`specdraft bench`: methods side by side on a Spec-Bench-format suite."""

from __future__ import annotations

import sys

from .. import zoo
from ..errors import SpecdraftError, require
from .options import backend_option, dtype_option, positive_int, sampling_options


def add(sub) -> None:
    b = sub.add_parser("bench", help="run methods side by side on a question suite; write tables, answers, plot")
    b.set_defaults(run=run)
    b.add_argument("--model", default=zoo.DEFAULT_MODEL)
    b.add_argument("--methods", default="plain,lookup",
                   help="comma list of drafter specs and peers (hf-plain, hf-assisted:NAME, hf-lookup[:N], "
                        "hf-early-exit[:L]; llama-server, built by `make peers`: llamacpp-plain, llamacpp-draft:NAME, "
                        "llamacpp-ngram[:TYPE]; llama-cpp-python: llamacpp-py-plain, llamacpp-py-lookup[:N]); "
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
    import dataclasses
    import datetime
    import shlex
    from pathlib import Path

    from ..api import LLM, resolve_device, resolve_dtype
    from ..bench.metrics import summarize
    from ..bench.llama_server import PeerUnavailable
    from ..bench.peers import is_peer, make_peer
    from ..bench.questions import per_category, read_questions
    from ..bench.report import markdown_table, write_all
    from ..bench.runner import SpecdraftMethod, run_methods
    from ..data.build import default_questions
    from ..drafters import backend_for, check_spec
    from ..runtime.sampling import SamplingParams

    resolve_dtype(a.dtype)
    resolve_device(a.device)
    sampling = SamplingParams(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, seed=a.seed)
    specs = list(dict.fromkeys(["plain", *[s.strip() for s in a.methods.split(",") if s.strip()]]))
    for s in specs:
        if not is_peer(s):
            check_spec(s)
    questions = per_category(read_questions(a.questions or default_questions()), a.per_category)
    if a.mix is not None:
        if not 0.0 <= a.mix <= 1.0:
            raise SpecdraftError(f"--mix is a probability in [0, 1], got {a.mix}")
        from ..bench.runner import mixed_stream

        questions = mixed_stream(questions, a.mix)
    backend = backend_for(a.backend, [s for s in specs if not is_peer(s)])
    llm = LLM(a.model, dtype=a.dtype, device=a.device, exact=a.exact, backend=backend, max_batch=a.concurrency or 1)
    print(f"backend: {llm.backend} ({llm.dtype_name})", file=sys.stderr)
    hf_cache: dict = {}
    methods, skipped = [], {}
    for s in specs:
        try:
            methods.append(make_peer(llm, s, hf_cache) if is_peer(s) else SpecdraftMethod(llm, s))
        except PeerUnavailable as e:
            skipped[s] = str(e)
            print(f"skipping {s}: {e}", file=sys.stderr)
    failures: dict[str, str] = {}
    records = run_methods(methods, questions, max_new_tokens=a.max_new_tokens, repeats=a.repeats, sampling=sampling,
                          failures=failures)
    summary = {"model": llm.name, "backend": llm.backend, "dtype": llm.dtype_name, "packed_weights": llm.packed, "exact": llm.exact, "max_new_tokens": a.max_new_tokens, "repeats": a.repeats,
               "sampling": None if sampling.greedy else dataclasses.asdict(sampling),
               "mix": a.mix, "stream": [q.category for q in questions],
               "date": datetime.date.today().isoformat(),
               "methods": summarize(records, compare_outputs=sampling.greedy), "failures": failures,
               "skipped": skipped}
    if a.concurrency:
        from ..bench import concurrency

        rows = concurrency.measure(llm, [s for s in specs if not is_peer(s)], [q.turns[0] for q in questions],
                                   max_new_tokens=a.max_new_tokens, concurrency=a.concurrency, sampling=sampling)
        summary["concurrency"] = rows
    out = Path(a.out)
    write_all(summary, records, out, "specdraft " + " ".join(shlex.quote(x) for x in sys.argv[1:]))
    print(markdown_table(summary))
    if a.concurrency:
        print(f"\n{a.concurrency} at a time (LLM.generate_batch) against one at a time, first turns:\n")
        print(concurrency.table(summary["concurrency"]))
    print(f"\nwritten: {out}/summary.json, report.md, speedup.png, answers/", file=sys.stderr)
    return 0
