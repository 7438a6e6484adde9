"""Time to a first answer: `specdraft generate` from a cold process, split into its phases.

Each run is a fresh Python process (so imports and loads are paid as a user pays them; the model
files are in the page cache after the first run). Phases: import, the model load (`LLM(...)`),
building the drafter, and the generation (for knn-ssd it includes building the route's drafter,
which happens at the first prompt). `--src` points at another checkout's `src` to compare two versions in one
run, runs interleaved (A, B, A, B, ...), as are several `--drafter`s; the medians are printed as a Markdown table.

    python benchmarks/startup.py --model qwen2.5-coder-1.5b --drafter auto --runs 3 --src /tmp/old/src
    python benchmarks/startup.py --model smollm2-135m --drafter plain --drafter auto --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from specdraft import LLM
t1 = time.perf_counter()
llm = LLM(sys.argv[1])
t2 = time.perf_counter()
d = llm.drafter(sys.argv[2])
prompt = sys.argv[3]
t3 = time.perf_counter()
r = llm.generate(prompt, max_new_tokens=int(sys.argv[4]), drafter=d)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "drafter": t3 - t2, "generate": t4 - t3,
                  "total": t4 - t0, "tokens": r.new_tokens, "drafter_name": r.drafter}))
"""


def run(src: str, drafter: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run([sys.executable, "-c", CHILD, args.model, drafter, args.prompt, str(args.max_new_tokens)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--drafter", action="append", default=[], help="drafter spec (repeatable; default: auto)")
    p.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--src", action="append", default=[], help="another checkout's src (repeatable); "
                   "this checkout's src is always timed, first")
    args = p.parse_args()
    srcs = [str(Path(__file__).resolve().parents[1] / "src"), *args.src]
    configs = [(s, d) for s in srcs for d in args.drafter or ["auto"]]
    runs: dict[tuple[str, str], list[dict]] = {c: [] for c in configs}
    run(*configs[0], args)  # warm the page cache
    for i in range(args.runs):
        for c in configs:
            runs[c].append(run(*c, args))
            print(f"run {i + 1}/{args.runs} {c}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[c][-1].items()
                                                           if isinstance(v, float)), file=sys.stderr)
    phases = ["import", "load", "drafter", "generate", "total"]
    print(f"| {args.model}, {args.max_new_tokens} new tokens at most (median of {args.runs}, s) | "
          + " | ".join(phases) + " | new tokens | drafts with |")
    print("|---|" + "---|" * (len(phases) + 2))
    for c in configs:
        rs = runs[c]
        name = f"`{c[1]}`" + (f" ({c[0]})" if len(srcs) > 1 else "")
        print(f"| {name} | " + " | ".join(f"{statistics.median(r[k] for r in rs):.2f}" for k in phases)
              + f" | {statistics.median(r['tokens'] for r in rs):.0f} | `{rs[0]['drafter_name']}` |")

if __name__ == "__main__":
    main()
