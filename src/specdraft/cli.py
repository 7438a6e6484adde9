"""The `specdraft` command: a thin layer over the library.

Every user mistake (`SpecdraftError`, bad arguments) prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import zoo
from .errors import SpecdraftError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (exit 2) rather than the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="specdraft", description="Lossless speculative decoding for LLM inference.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate a completion (streams text, then a one-line summary)")
    g.add_argument("prompt", nargs="?", help="the prompt (read from stdin when absent)")
    g.add_argument("--model", default=zoo.DEFAULT_MODEL, help="zoo name or local HF-format directory (default: %(default)s)")
    g.add_argument("--drafter", default="plain", help="plain (default), lookup[:N] or draft-model:NAME")
    g.add_argument("--max-new-tokens", type=_positive_int, default=256, help="default: %(default)s")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--dtype", default="bfloat16", help="bfloat16 (default; about 2x faster on CPU) or float32")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    g.add_argument("--no-chat", action="store_true", help="continue raw text instead of applying the chat template")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")

    m = sub.add_parser("models", help="the offline model zoo")
    msub = m.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    msub.add_parser("list", help="list zoo models, installed or not")
    mp = msub.add_parser("pull", help="fetch, check (sha256) and convert a zoo model; instant if installed")
    mp.add_argument("name")
    mpa = msub.add_parser("path", help="print an installed model's directory")
    mpa.add_argument("name")
    return p


def cmd_models(a) -> int:
    if a.models_command == "list":
        rows = zoo.listing()
        print(f"{'name':<20} {'family':<12} {'layers':>6} {'params':>7}  {'status':<14} path")
        for r in rows:
            status = "installed" if r["installed"] else ("not installed" if r["supported"] else "unsupported")
            print(f"{r['name']:<20} {r['family']:<12} {r['layers']:>6} {r['params']:>7}  {status:<14} {r['path']}")
        return 0
    if a.models_command == "pull":
        print(zoo.pull(a.name))
        return 0
    entry = zoo.get_entry(a.name)
    if not zoo.is_installed(entry.name):
        raise SpecdraftError(f"model {entry.name} is not installed: run `specdraft models pull {entry.name}`")
    print(zoo.model_dir(entry.name))
    return 0


def cmd_generate(a) -> int:
    from .api import LLM, resolve_device, resolve_dtype
    from .drafters import check_spec

    prompt = a.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise SpecdraftError("no prompt: pass it as an argument or pipe it on stdin")
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise SpecdraftError("the prompt is empty: give some text to continue")
    # Validate cheap arguments before the (slow) model load.
    resolve_dtype(a.dtype)
    resolve_device(a.device)
    check_spec(a.drafter)
    from .runtime.sampling import SamplingParams

    SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed)

    llm = LLM(a.model, drafter=a.drafter, dtype=a.dtype, device=a.device)
    kwargs = dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                  top_k=a.top_k, seed=a.seed, chat=not a.no_chat)
    if a.json:
        r = llm.generate(prompt, **kwargs)
        print(json.dumps(r.to_json(), ensure_ascii=False))
        return 0
    r = llm.generate(prompt, on_text=lambda s: print(s, end="", flush=True), **kwargs)
    s = r.stats
    tau = f", tau {s.tau:.2f}, acceptance {s.acceptance_rate:.2f}" if s.acceptance_rate is not None else ""
    print(f"\n[{s.new_tokens} new tokens in {s.wall_s:.2f} s, {s.tokens_per_s or 0:.1f} tokens/s{tau}, "
          f"{r.drafter}, {r.dtype}, stop: {s.stop_reason}]", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.command == "models":
            return cmd_models(a)
        return cmd_generate(a)
    except SpecdraftError as e:
        print(f"specdraft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nspecdraft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
