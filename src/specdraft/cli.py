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

    b = sub.add_parser("bench", help="run methods side by side on a question suite; write tables, answers, plot")
    b.add_argument("--model", default=zoo.DEFAULT_MODEL)
    b.add_argument("--methods", default="plain,lookup",
                   help="comma list of drafter specs and peers (hf-plain, hf-assisted:NAME, hf-lookup[:N], "
                        "hf-early-exit[:L], llamacpp-plain, llamacpp-lookup[:N]); plain is always included")
    b.add_argument("--questions", default=None, help="Spec-Bench-format file (default: the built suite)")
    b.add_argument("--per-category", type=_positive_int, default=None, help="first K questions of each category")
    b.add_argument("--max-new-tokens", type=_positive_int, default=256)
    b.add_argument("--dtype", default="bfloat16")
    b.add_argument("--device", default=None)
    b.add_argument("--repeats", type=_positive_int, default=1)
    b.add_argument("--out", default="runs/bench", help="output directory (default: %(default)s)")

    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (loopback by default)")
    sv.add_argument("--model", default=zoo.DEFAULT_MODEL)
    sv.add_argument("--drafter", default="plain", help="plain (default), lookup[:N] or draft-model:NAME")
    sv.add_argument("--host", default="127.0.0.1", help="default: %(default)s (loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (also $SPECDRAFT_API_KEY)")
    sv.add_argument("--served-name", default=None, help="model id clients use (default: the --model value)")
    sv.add_argument("--dtype", default="bfloat16")
    sv.add_argument("--device", default=None)
    sv.add_argument("--max-prompt-tokens", type=_positive_int, default=4096)
    sv.add_argument("--max-tokens-limit", type=_positive_int, default=4096, help="largest max_tokens accepted")
    sv.add_argument("--max-queue", type=_positive_int, default=64, help="requests waiting or running before 429")

    d = sub.add_parser("data", help="benchmark questions and per-domain prompt pools")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    db = dsub.add_parser("build", help="build questions.jsonl and pool/DOMAIN.jsonl from the real data sets")
    db.add_argument("--out", default=None, help="default: $SPECDRAFT_HOME/data")
    db.add_argument("--per-domain", type=_positive_int, default=80, help="benchmark questions per domain")
    db.add_argument("--pool-size", type=_positive_int, default=1000, help="pool prompts per domain")
    db.add_argument("--seed", type=int, default=0)

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


def cmd_data(a) -> int:
    from pathlib import Path

    from .data.build import build

    out = build(Path(a.out) if a.out else None, per_domain=a.per_domain, pool_size=a.pool_size, seed=a.seed)
    manifest = json.loads((out / "manifest.json").read_text())
    for dom, n in manifest["domains"].items():
        print(f"{dom:<14} bench {n['bench']:>4}  pool {n['pool']:>5}")
    print(out)
    return 0


def cmd_bench(a) -> int:
    import datetime
    import shlex
    from pathlib import Path

    from .api import LLM, resolve_device, resolve_dtype
    from .bench.metrics import summarize
    from .bench.peers import is_peer, make_peer
    from .bench.questions import per_category, read_questions
    from .bench.report import markdown_table, write_all
    from .bench.runner import SpecdraftMethod, run_methods
    from .data.build import default_questions
    from .drafters import check_spec

    resolve_dtype(a.dtype)
    resolve_device(a.device)
    specs = list(dict.fromkeys(["plain", *[s.strip() for s in a.methods.split(",") if s.strip()]]))
    for s in specs:
        if not is_peer(s):
            check_spec(s)
    questions = per_category(read_questions(a.questions or default_questions()), a.per_category)
    llm = LLM(a.model, dtype=a.dtype, device=a.device)
    hf_cache: dict = {}
    methods = [make_peer(llm, s, hf_cache) if is_peer(s) else SpecdraftMethod(llm, s) for s in specs]
    failures: dict[str, str] = {}
    records = run_methods(methods, questions, max_new_tokens=a.max_new_tokens, repeats=a.repeats, failures=failures)
    summary = {"model": llm.name, "dtype": llm.dtype_name, "max_new_tokens": a.max_new_tokens, "repeats": a.repeats,
               "date": datetime.date.today().isoformat(), "methods": summarize(records), "failures": failures}
    out = Path(a.out)
    write_all(summary, records, out, "specdraft " + " ".join(shlex.quote(x) for x in sys.argv[1:]))
    print(markdown_table(summary))
    print(f"\nwritten: {out}/summary.json, report.md, speedup.png, answers/", file=sys.stderr)
    return 0


def cmd_serve(a) -> int:
    import os

    import uvicorn

    from .api import LLM, resolve_device, resolve_dtype
    from .drafters import check_spec
    from .server.app import ServerConfig, create_app

    resolve_dtype(a.dtype)
    resolve_device(a.device)
    check_spec(a.drafter)
    llm = LLM(a.model, drafter=a.drafter, dtype=a.dtype, device=a.device)
    cfg = ServerConfig(model_name=a.served_name or a.model, drafter=a.drafter,
                       api_key=a.api_key or os.environ.get("SPECDRAFT_API_KEY"),
                       max_prompt_tokens=a.max_prompt_tokens, max_tokens_limit=a.max_tokens_limit, max_queue=a.max_queue)
    print(f"serving {cfg.model_name} (drafter {cfg.drafter}) on http://{a.host}:{a.port}/v1", file=sys.stderr)
    uvicorn.run(create_app(llm, cfg), host=a.host, port=a.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.command == "models":
            return cmd_models(a)
        if a.command == "data":
            return cmd_data(a)
        if a.command == "bench":
            return cmd_bench(a)
        if a.command == "serve":
            return cmd_serve(a)
        return cmd_generate(a)
    except SpecdraftError as e:
        print(f"specdraft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nspecdraft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
