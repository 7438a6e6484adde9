"""A conversation's turns with and without the prefix store (`LLM.generate(reuse_prefix=True)`, what
`specdraft chat` and `serve` do): time to the first token and to the whole answer, per turn.

The conversation is scripted (the user turns below); the run with the store goes first and its
answers become the assistant turns of both runs, so that each turn's prompt is the same ids in
both. An untimed pass over the conversation first builds every drafter its prompts route to. Printed as a Markdown table; `--out FILE.json` keeps every turn's numbers.

    python benchmarks/conversation.py --model qwen2.5-coder-1.5b --drafter auto --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from specdraft import LLM

TURNS = [
    "Write a Python function that checks whether a number is prime.",
    "Now make it faster for large numbers.",
    "Add type hints and a docstring.",
    "Write three unit tests for it with pytest.",
    "Explain the time complexity of the final version.",
    "Summarize our conversation in two sentences.",
]


def turn(llm: LLM, messages: list[dict], args, reuse: bool) -> dict:
    first: list[float] = []
    t0 = time.perf_counter()
    r = llm.generate(messages, max_new_tokens=args.max_new_tokens, drafter=args.drafter, reuse_prefix=reuse,
                     on_text=lambda _: first or first.append(time.perf_counter() - t0))
    return {"prompt_tokens": r.prompt_tokens, "cached_tokens": r.stats.cached_tokens, "ttft_s": first[0] if first else None,
            "prefill_s": r.stats.prefill_s, "wall_s": time.perf_counter() - t0, "new_tokens": r.new_tokens, "text": r.text}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--drafter", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    llm = LLM(args.model, dtype=args.dtype, drafter=args.drafter)
    # Warm-up: the whole conversation once, untimed, so that every drafter a route may pick (knn-ssd
    # builds a route's drafter when a prompt first takes it) is built before the timed runs.
    messages: list[dict] = []
    for user in TURNS:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": turn(llm, messages, args, reuse=False)["text"]})
    llm.prefix.clear()
    messages = []
    rows = []
    for i, user in enumerate(TURNS):
        messages.append({"role": "user", "content": user})
        with_store = turn(llm, messages, args, reuse=True)
        without = turn(llm, messages, args, reuse=False)
        rows.append({"turn": i + 1, "with": with_store, "without": without})
        messages.append({"role": "assistant", "content": with_store["text"]})
    print(f"| {args.model}, `{args.drafter}`, {llm.dtype_name}, turn | prompt tokens | cached | "
          "first token, full prefill (s) | first token, with the store (s) | answer, full prefill (s) | answer, with the store (s) | same answer |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        w, o = r["with"], r["without"]
        print(f"| {r['turn']} | {w['prompt_tokens']} | {w['cached_tokens']} | {o['ttft_s']:.2f} | {w['ttft_s']:.2f} | "
              f"{o['wall_s']:.2f} | {w['wall_s']:.2f} | {'yes' if w['text'] == o['text'] else 'no'} |")
    ratio = statistics.median(r["without"]["ttft_s"] / r["with"]["ttft_s"] for r in rows[1:])
    print(f"\nmedian first-token speedup over turns 2-{len(rows)}: {ratio:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "turns": rows}, f, indent=1)


if __name__ == "__main__":
    main()
