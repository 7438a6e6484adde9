"""A whole bench run (what `specdraft bench` does): check the methods, read and order the
questions, load the model on the backend every method runs on, run the methods and the peers on
each question in turn, summarize, and (with `concurrency`) answer the first turns N at a time."""

from __future__ import annotations

import dataclasses
import datetime
import sys
from pathlib import Path

from ..errors import SpecdraftError
from ..runtime.sampling import SamplingParams


def run_suite(model: str, methods: str, *, questions: str | None = None, per_category: int | None = None,
              max_new_tokens: int = 256, sampling: SamplingParams = SamplingParams(), dtype: str = "auto",
              exact: bool = False, backend: str = "auto", device: str | None = None, repeats: int = 1,
              mix: float | None = None, concurrency: int | None = None) -> tuple[dict, list]:
    """(summary, records) of a run; `methods`: comma-separated drafter specs and peers (plain is
    always the baseline). Bad input raises a SpecdraftError before the model loads."""
    from ..api import LLM, resolve_device, resolve_dtype
    from ..data.build import default_questions
    from ..drafters import backend_for, check_spec
    from .llama_server import PeerUnavailable
    from .metrics import summarize
    from .peers import is_peer, make_peer
    from .questions import per_category as first_per_category
    from .questions import read_questions
    from .runner import SpecdraftMethod, mixed_stream, run_methods

    resolve_dtype(dtype)
    resolve_device(device)
    specs = list(dict.fromkeys(["plain", *[s.strip() for s in methods.split(",") if s.strip()]]))
    for s in specs:
        if not is_peer(s):
            check_spec(s)
    qs = first_per_category(read_questions(questions or default_questions()), per_category)
    if mix is not None:
        if not 0.0 <= mix <= 1.0:
            raise SpecdraftError(f"--mix is a probability in [0, 1], got {mix}")
        qs = mixed_stream(qs, mix)
    ours = [s for s in specs if not is_peer(s)]
    llm = LLM(model, dtype=dtype, device=device, exact=exact, backend=backend_for(backend, ours),
              max_batch=concurrency or 1)
    print(f"backend: {llm.backend} ({llm.dtype_name})", file=sys.stderr)
    hf_cache: dict = {}
    runs, skipped = [], {}
    for s in specs:
        try:
            runs.append(make_peer(llm, s, hf_cache) if is_peer(s) else SpecdraftMethod(llm, s))
        except PeerUnavailable as e:
            skipped[s] = str(e)
            print(f"skipping {s}: {e}", file=sys.stderr)
    failures: dict[str, str] = {}
    records = run_methods(runs, qs, max_new_tokens=max_new_tokens, repeats=repeats, sampling=sampling,
                          failures=failures)
    summary = {"model": llm.name, "backend": llm.backend, "dtype": llm.dtype_name, "packed_weights": llm.packed,
               "exact": llm.exact, "max_new_tokens": max_new_tokens, "repeats": repeats,
               "sampling": None if sampling.greedy else dataclasses.asdict(sampling),
               "mix": mix, "stream": [q.category for q in qs],
               "date": datetime.date.today().isoformat(),
               "methods": summarize(records, compare_outputs=sampling.greedy), "failures": failures,
               "skipped": skipped}
    if concurrency:
        from . import concurrency as batch

        summary["concurrency"] = batch.measure(llm, ours, [q.turns[0] for q in qs], max_new_tokens=max_new_tokens,
                                               concurrency=concurrency, sampling=sampling)
    return summary, records


def write(summary: dict, records: list, out: Path, command: str) -> None:
    """summary.json, answers/, report.md and speedup.png in `out`; the tables on stdout."""
    from .report import markdown_table, write_all

    write_all(summary, records, out, command)
    print(markdown_table(summary))
    if summary.get("concurrency"):
        from .concurrency import table

        n = summary["concurrency"][0]["concurrency"]
        print(f"\n{n} at a time (LLM.generate_batch) against one at a time, first turns:\n")
        print(table(summary["concurrency"]))
    print(f"\nwritten: {out}/summary.json, report.md, speedup.png, answers/", file=sys.stderr)
