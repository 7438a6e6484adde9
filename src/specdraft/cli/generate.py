"""`specdraft generate`: one answer, streamed (or one JSON object)."""

from __future__ import annotations

import json
import sys

from .. import zoo
from ..errors import SpecdraftError
from .options import backend_option, dtype_option, load_llm, positive_int, sampling_options


def add(sub) -> None:
    g = sub.add_parser("generate", help="generate a completion (streams text, then a one-line summary)")
    g.set_defaults(run=run)
    g.add_argument("prompt", nargs="?", help="the prompt (read from stdin when absent)")
    g.add_argument("--model", default=zoo.DEFAULT_MODEL, help="zoo name, local HF-format directory or local .gguf file (default: %(default)s)")
    g.add_argument("--drafter", default="auto", help="auto (default: the drafter measured fastest for the model, at the temperature asked), plain (no drafter), lookup[:N], draft-model:NAME, "
                   "layerskip[:FILE], knn-ssd[:DIR], ctc[:DIR], medusa[:DIR]")
    g.add_argument("--max-new-tokens", type=positive_int, default=256, help="default: %(default)s")
    sampling_options(g, seed_help="default: a fresh random seed")
    dtype_option(g)
    backend_option(g)
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    g.add_argument("--no-chat", action="store_true", help="continue raw text instead of applying the chat template "
                   "(a model without one, a base model, always continues the text)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")


class PrefillBar:
    """A progress bar on stderr for the prefill of a prompt of several chunks (a long document
    can take a minute before the first token)."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        from ..runtime.model import PREFILL_CHUNK

        if total <= PREFILL_CHUNK:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="prompt", unit="tok", leave=False, file=sys.stderr)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


def run(a) -> int:
    prompt = a.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise SpecdraftError("no prompt: pass it as an argument or pipe it on stdin")
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise SpecdraftError("the prompt is empty: give some text to continue")
    llm = load_llm(a, sampling=True)
    kwargs = dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                  top_k=a.top_k, seed=a.seed, chat=False if a.no_chat else None)
    if a.json:
        r = llm.generate(prompt, **kwargs)
        print(json.dumps(r.to_json(), ensure_ascii=False))
        return 0
    r = llm.generate(prompt, on_text=lambda s: print(s, end="", flush=True),
                     on_prefill=PrefillBar() if sys.stderr.isatty() else None, **kwargs)
    s = r.stats
    tau = f", tau {s.tau:.2f}, acceptance {s.acceptance_rate:.2f}" if s.acceptance_rate is not None else ""
    print(f"\n[{s.new_tokens} new tokens in {s.wall_s:.2f} s, {s.tokens_per_s or 0:.1f} tokens/s{tau}, "
          f"{r.drafter}, {r.dtype}{', exact' if r.exact else ''}, stop: {s.stop_reason}]", file=sys.stderr)
    return 0
