"""The `specdraft` command: a thin layer over the library.

Every user mistake (`SpecdraftError`, bad arguments) prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import zoo
from .errors import SpecdraftError, require


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (exit 2) rather than the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _layer_list(s: str) -> tuple[int, ...]:
    """'2,15' -> (2, 15): layer indices (0-based), each at most once."""
    try:
        v = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {s!r}") from None
    if any(i < 0 for i in v) or len(set(v)) != len(v):
        raise argparse.ArgumentTypeError(f"layer numbers must be distinct and >= 0, got {s!r}")
    return v


def _int_at_least(lo: int, what: str):
    """An argparse type: an integer >= lo, else "expected / must be `what`"."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be {what}, got {v}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "a whole number >= 0")


def _nonnegative_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _min_gain_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-gain", type=_nonnegative_float, default=None,
                   help="a domain leaves the fallback route (the best drafter over all domains) only for a drafter "
                        "that beats it there by more than this, in x of plain (default: knn_build.MIN_GAIN, 0.1; "
                        "timings on a few prompts differ by about 0.1x between runs)")


def _sampling_options(p: argparse.ArgumentParser, seed_help: str, seed: int | None = None) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    p.add_argument("--seed", type=int, default=seed, help=seed_help)


def _dtype_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto",
                   help="auto (default: bfloat16 on a GPU and on a CPU with bf16 units, where its weights "
                        "are packed for oneDNN and decode 1.4-1.8x faster than float32; else float32), "
                        "bfloat16 or float32 (float32: the output is exactly plain decoding's)")
    p.add_argument("--exact", action="store_true",
                   help="in bfloat16 on a CPU, compute a draft's verification exactly as plain decoding computes "
                        "each token, so the output is plain bfloat16 decoding's token for token (as float32's is "
                        "without it). Measured: qwen2.5-coder-1.5b's drafters at the same speed, plain decoding 0.83x; "
                        "SmolLM2-135M 0.63-0.89x (tree drafters the most)")


def _backend_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "gguf"),
                   help="torch: float weights in the project's decoder; gguf: the model's GGUF file run by "
                        "llama.cpp from its low-bit weights (a CPU; drafters: lookup, draft-model:NAME and hybrids "
                        "of them); auto (default): gguf on a CPU where it can run the model and the drafter, else torch")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="specdraft", description="Lossless speculative decoding for LLM inference.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate a completion (streams text, then a one-line summary)")
    g.add_argument("prompt", nargs="?", help="the prompt (read from stdin when absent)")
    g.add_argument("--model", default=zoo.DEFAULT_MODEL, help="zoo name, local HF-format directory or local .gguf file (default: %(default)s)")
    g.add_argument("--drafter", default="auto", help="auto (default: the drafter measured fastest for the model, at the temperature asked), plain (no drafter), lookup[:N], draft-model:NAME, "
                   "layerskip[:FILE], knn-ssd[:DIR], ctc[:DIR], medusa[:DIR]")
    g.add_argument("--max-new-tokens", type=_positive_int, default=256, help="default: %(default)s")
    _sampling_options(g, seed_help="default: a fresh random seed")
    _dtype_option(g)
    _backend_option(g)
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    g.add_argument("--no-chat", action="store_true", help="continue raw text instead of applying the chat template "
                   "(a model without one, a base model, always continues the text)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")

    c = sub.add_parser("chat", help="an interactive conversation in the terminal (streams each answer; /reset, /exit)")
    c.add_argument("--model", default=zoo.DEFAULT_MODEL, help="zoo name, local HF-format directory or local .gguf file (default: %(default)s)")
    c.add_argument("--drafter", default="auto", help="as for generate (default: auto)")
    c.add_argument("--system", default=None, help="a system message that opens the conversation")
    c.add_argument("--max-new-tokens", type=_positive_int, default=512, help="per answer (default: %(default)s)")
    _sampling_options(c, seed_help="default: a fresh random seed; with a seed, answer N samples with seed + N")
    _dtype_option(c)
    _backend_option(c)
    c.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")

    b = sub.add_parser("bench", help="run methods side by side on a question suite; write tables, answers, plot")
    b.add_argument("--model", default=zoo.DEFAULT_MODEL)
    b.add_argument("--methods", default="plain,lookup",
                   help="comma list of drafter specs and peers (hf-plain, hf-assisted:NAME, hf-lookup[:N], "
                        "hf-early-exit[:L]; llama-server, built by `make peers`: llamacpp-plain, llamacpp-draft:NAME, "
                        "llamacpp-ngram[:TYPE]; llama-cpp-python: llamacpp-py-plain, llamacpp-py-lookup[:N]); "
                        "plain is always included")
    b.add_argument("--questions", default=None, help="Spec-Bench-format file (default: the built suite)")
    b.add_argument("--per-category", type=_positive_int, default=None, help="first K questions of each category")
    b.add_argument("--max-new-tokens", type=_positive_int, default=256)
    _sampling_options(b, seed=0, seed_help="with --temperature: each turn samples with a seed made from this one (default 0) "
                      "and the turn, the same for every method")
    _dtype_option(b)
    _backend_option(b)
    b.add_argument("--device", default=None)
    b.add_argument("--repeats", type=_positive_int, default=1)
    b.add_argument("--mix", type=float, default=None,
                   help="order the questions as a mixed-domain stream: chance of switching category after each prompt")
    b.add_argument("--concurrency", type=_positive_int, default=None, metavar="N",
                   help="also answer every question's first turn N at a time (LLM.generate_batch) and one at a "
                        "time, per drafter: aggregate tokens/s, ratio, unchanged answers (summary.json 'concurrency')")
    b.add_argument("--out", default="runs/bench", help="output directory (default: %(default)s)")

    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (loopback by default)")
    sv.add_argument("--model", default=zoo.DEFAULT_MODEL)
    sv.add_argument("--drafter", default="auto", help="auto (default: the drafter measured fastest for the model, at the temperature asked), plain (no drafter), lookup[:N], draft-model:NAME, "
                   "layerskip[:FILE], knn-ssd[:DIR], ctc[:DIR], medusa[:DIR]")
    sv.add_argument("--host", default="127.0.0.1", help="default: %(default)s (loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (also $SPECDRAFT_API_KEY)")
    sv.add_argument("--served-name", default=None, help="model id clients use (default: the --model value)")
    _dtype_option(sv)
    _backend_option(sv)
    sv.add_argument("--device", default=None)
    sv.add_argument("--max-prompt-tokens", type=_positive_int, default=4096)
    sv.add_argument("--max-tokens-limit", type=_positive_int, default=4096, help="largest max_tokens accepted")
    sv.add_argument("--max-queue", type=_positive_int, default=64, help="requests waiting or running before 429")
    sv.add_argument("--max-batch", type=_positive_int, default=None, metavar="N",
                    help="requests decoded together, one forward per step for all (default: 8; 1: one request "
                         "at a time)")
    sv.add_argument("--prefix-cache", type=_nonnegative_int, default=4, metavar="N",
                    help="keep the KV caches of the last N requests: a prompt that begins like one of them (a "
                         "conversation's next turn) prefills only the rest (default: %(default)s; 0: off)")

    d = sub.add_parser("data", help="benchmark questions and per-domain prompt pools")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    db = dsub.add_parser("build", help="build questions.jsonl and pool/DOMAIN.jsonl from the real data sets")
    db.add_argument("--out", default=None, help="default: $SPECDRAFT_HOME/data")
    db.add_argument("--per-domain", type=_positive_int, default=80, help="benchmark questions per domain")
    db.add_argument("--pool-size", type=_positive_int, default=1000, help="pool prompts per domain")
    db.add_argument("--seed", type=int, default=0)

    ss = sub.add_parser("search-skip", help="search a layer-skip set for one domain (self-speculative drafting)")
    ss.add_argument("--model", default=zoo.DEFAULT_MODEL)
    ss.add_argument("--domain", default=None, help="a pool domain (conversation, code, math, qa, translation, summarization)")
    ss.add_argument("--prompts", default=None, help="or a Spec-Bench-format question file")
    ss.add_argument("--num-prompts", type=_positive_int, default=8, help="search prompts (default: %(default)s)")
    ss.add_argument("--tokens", type=_positive_int, default=32, help="full-model tokens per prompt scored (default: %(default)s)")
    ss.add_argument("--budget", type=_positive_int, default=300, help="most evaluations (default: %(default)s)")
    ss.add_argument("--patience", type=_positive_int, default=100, help="stop after this many without improvement")
    ss.add_argument("--max-seconds", type=float, default=900.0)
    ss.add_argument("--heldout", type=int, default=3, help="held-apart prompts for measured tau/speedup (0 = skip)")
    _dtype_option(ss)
    ss.add_argument("--device", default=None)
    ss.add_argument("--seed", type=int, default=0)
    ss.add_argument("--out", required=True, help="skip-set JSON to write")

    kn = sub.add_parser("knn", help="KNN-SSD routing artifacts")
    knsub = kn.add_subparsers(dest="knn_command", required=True, parser_class=_Parser)
    kb = knsub.add_parser("build", help="anchors, per-domain skip sets and measured routes from the domain pools")
    kb.add_argument("--model", default=zoo.DEFAULT_MODEL)
    kb.add_argument("--domains", default="conversation,code,math,qa,translation,summarization")
    kb.add_argument("--candidates", default="lookup",
                    help="drafter specs a domain may route to besides its skip set (default: %(default)s)")
    kb.add_argument("--anchors-per-domain", type=_positive_int, default=10)
    kb.add_argument("--anchor-prompts", type=_positive_int, default=100)
    kb.add_argument("--search-prompts", type=_positive_int, default=6)
    kb.add_argument("--search-evals", type=_positive_int, default=120)
    kb.add_argument("--unseen-prompts", type=_positive_int, default=30)
    kb.add_argument("--measure-prompts", type=_positive_int, default=2)
    kb.add_argument("--measure-tokens", type=_positive_int, default=48)
    _min_gain_option(kb)
    _dtype_option(kb)
    kb.add_argument("--device", default=None)
    kb.add_argument("--out", required=True, help="artifact directory to write")

    kr = knsub.add_parser("routes", help="re-time an artifact's routes with other candidate drafters")
    kr.add_argument("artifact")
    kr.add_argument("--model", default=zoo.DEFAULT_MODEL)
    kr.add_argument("--candidates", default="lookup")
    kr.add_argument("--measure-prompts", type=_positive_int, default=None,
                    help="prompts per domain to time on (default: the build's; more come from unused pool prompts)")
    kr.add_argument("--measure-tokens", type=_positive_int, default=None, help="default: the build's")
    _min_gain_option(kr)
    kr.add_argument("--reuse-timings", action="store_true",
                    help="time nothing: choose the routes of this dtype again from their stored timings, "
                         "with --min-gain")
    _dtype_option(kr)
    kr.add_argument("--device", default=None)

    kw = knsub.add_parser("radius", help="show an artifact's fallback radius; --update widens an older "
                          "artifact's to the current rule")
    kw.add_argument("artifact")
    kw.add_argument("--update", action="store_true",
                    help="write max(stored radius, domain separation) into knn.json (running it again changes nothing)")

    tr = sub.add_parser("train", help="self-distillation data and trained drafters (ctc, medusa)")
    trsub = tr.add_subparsers(dest="train_command", required=True, parser_class=_Parser)
    td = trsub.add_parser("data", help="base-model answers teacher-forced: hidden states + greedy tokens (resumable)")
    td.add_argument("--model", default=zoo.DEFAULT_MODEL)
    td.add_argument("--out", default=None, help="default: $SPECDRAFT_HOME/distill/MODEL")
    td.add_argument("--sharegpt", type=_positive_int, default=6000, help="ShareGPT prompts (default: %(default)s)")
    td.add_argument("--per-pool", type=_positive_int, default=400, help="prompts from each domain pool")
    td.add_argument("--max-new-tokens", type=_positive_int, default=192)
    td.add_argument("--batch-size", type=_positive_int, default=24)
    td.add_argument("--shards", type=_positive_int, default=None, help="stop after the first N shards (batches)")
    td.add_argument("--layers", type=_layer_list, default=(), metavar="I,J",
                    help="also store the residual states after these layers (0-based), for `train ctc --feature-layers`")
    td.add_argument("--written", type=_positive_int, default=None, metavar="N",
                    help="instead of generating answers, teacher-force the written answers of N ShareGPT conversations "
                         "not in the --sharegpt/--per-pool mix (one forward each, much cheaper per token; train "
                         "with --extra-data)")
    from .train.config import TrainConfig as TC  # the option defaults (torch-free)

    for kind in ("ctc", "medusa"):
        tk = trsub.add_parser(kind, help=f"train the {kind} drafter (resumes from OUT/checkpoint)")
        tk.add_argument("--model", default=zoo.DEFAULT_MODEL)
        tk.add_argument("--data", default=None, help="default: $SPECDRAFT_HOME/distill/MODEL")
        tk.add_argument("--out", required=True)
        tk.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                        help="more data to train on, never held out (e.g. from `train data --written`); repeatable")
        tk.add_argument("--epochs", type=float, default=TC.epochs, help="passes over the data (default: %(default)s)")
        tk.add_argument("--steps", type=_positive_int, default=None,
                        help="optimizer steps to train instead of --epochs (same compute on different data)")
        tk.add_argument("--batch-size", type=_positive_int, default=TC.batch_size)
        tk.add_argument("--lr", type=float, default=TC.lr)
        tk.add_argument("--max-labels", type=_positive_int, default=TC.max_labels, help="drafted tokens trained (medusa: heads)")
        if kind == "ctc":
            tk.add_argument("--frames", type=_positive_int, default=TC.frames)
            tk.add_argument("--intermediate-size", type=_positive_int, default=TC.intermediate_size, help="MLP width of the draft layer")
            tk.add_argument("--layers", type=_positive_int, default=TC.layers,
                            help="transformer layers of the draft module (default: %(default)s, the paper's; "
                                 "layers after the first update the frames only)")
            tk.add_argument("--window", type=_positive_int, default=TC.window,
                            help="latest positions of the base model's states the draft layer attends to "
                                 "(default: %(default)s)")
            tk.add_argument("--feature-layers", type=_layer_list, default=TC.feature_layers, metavar="I,J",
                            help="also read the base model's states after these layers (EAGLE-3's fused features; "
                                 "the data must be built with `train data --layers`)")
            tk.add_argument("--align", type=float, default=TC.align,
                            help="weight of an alignment prior added to the CTC loss: frame k emits token k, "
                                 "later frames blank (default: %(default)s)")
        dflt = "1 for ctc, 0 for medusa"  # TrainConfig resolves None per kind
        tk.add_argument("--feat", type=float, default=None,
                        help=f"weight of a feature loss: drafted position k regresses the base model's hidden state "
                             f"(default: {dflt})")
        tk.add_argument("--kd", type=float, default=None,
                        help=f"weight of a soft-label loss: drafted position k matches the base model's distribution "
                             f"(default: {dflt})")
        tk.add_argument("--draft-vocab", type=_positive_int, default=TC.draft_vocab)
        tk.add_argument("--eval-every", type=_positive_int, default=TC.eval_every)

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
        for r in zoo.local_listing():  # local GGUF files given as --model, converted into the cache
            print(f"{r['name']:<20} {r['family']:<12} {r['layers']:>6} {r['params']:>7}  {'local GGUF':<14} {r['path']}")
        return 0
    if a.models_command == "pull":
        print(zoo.pull(a.name))
        return 0
    entry = zoo.get_entry(a.name)
    if not zoo.is_installed(entry.name):
        raise SpecdraftError(f"model {entry.name} is not installed: run `specdraft models pull {entry.name}`")
    print(zoo.model_dir(entry.name))
    return 0


class _PrefillBar:
    """A progress bar on stderr for the prefill of a prompt of several chunks (a long document
    can take a minute before the first token)."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        from .runtime.model import PREFILL_CHUNK

        if total <= PREFILL_CHUNK:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="prompt", unit="tok", leave=False, file=sys.stderr)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


def _load(a, sampling: bool, **kw):
    """The LLM of `generate`, `chat` or `serve`, after checking the cheap arguments (dtype,
    device, drafter spec and, with `sampling`, the sampling options) before the slow load."""
    from .api import LLM, resolve_device, resolve_dtype
    from .drafters import check_spec
    from .runtime.sampling import SamplingParams

    resolve_dtype(a.dtype)
    resolve_device(a.device)
    check_spec(a.drafter)
    if sampling:
        SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed)
    return LLM(a.model, drafter=a.drafter, dtype=a.dtype, device=a.device, exact=a.exact, backend=a.backend, **kw)


def cmd_generate(a) -> int:
    prompt = a.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise SpecdraftError("no prompt: pass it as an argument or pipe it on stdin")
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise SpecdraftError("the prompt is empty: give some text to continue")
    llm = _load(a, sampling=True)
    kwargs = dict(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                  top_k=a.top_k, seed=a.seed, chat=False if a.no_chat else None)
    if a.json:
        r = llm.generate(prompt, **kwargs)
        print(json.dumps(r.to_json(), ensure_ascii=False))
        return 0
    r = llm.generate(prompt, on_text=lambda s: print(s, end="", flush=True),
                     on_prefill=_PrefillBar() if sys.stderr.isatty() else None, **kwargs)
    s = r.stats
    tau = f", tau {s.tau:.2f}, acceptance {s.acceptance_rate:.2f}" if s.acceptance_rate is not None else ""
    print(f"\n[{s.new_tokens} new tokens in {s.wall_s:.2f} s, {s.tokens_per_s or 0:.1f} tokens/s{tau}, "
          f"{r.drafter}, {r.dtype}{', exact' if r.exact else ''}, stop: {s.stop_reason}]", file=sys.stderr)
    return 0


CHAT_HELP = ('/reset starts a new conversation, /exit (or Ctrl-D) ends; Ctrl-C stops an answer; """ opens and '
             'closes a turn of several lines')


def cmd_chat(a) -> int:
    """A conversation: each line read is a user turn; the answer streams to stdout, a summary
    line (tokens, speed, tau) to stderr. The whole conversation is the prompt of each answer; the
    part the last answer left in the KV cache is not prefilled again."""
    import signal
    import threading

    stdin = sys.stdin
    llm = _load(a, sampling=True)
    if not llm.tokenizer.has_chat_template:
        raise SpecdraftError(f"{llm.name} has no chat template (a base model): use `specdraft generate --no-chat`")
    tty = stdin.isatty()
    opening = [{"role": "system", "content": a.system}] if a.system else []
    messages = list(opening)
    d = llm.drafter(a.drafter, temperature=a.temperature)
    print(f"chatting with {llm.name} ({llm.dtype_name}, drafter {d.name if d is not None else 'plain'}); {CHAT_HELP}",
          file=sys.stderr)
    turn = 0
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            return 0
        text = line.strip()
        if text.startswith('"""'):  # a turn of several lines, up to a line ending with """
            parts = [text[3:]]
            while not (parts[-1].endswith('"""') and (len(parts) > 1 or len(parts[0]) >= 3)):
                if tty:
                    print("... ", end="", file=sys.stderr, flush=True)
                more = stdin.readline()
                if not more:
                    break
                parts.append(more.rstrip("\n"))
            text = "\n".join(parts).removesuffix('"""').strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            messages = list(opening)
            print("[new conversation]", file=sys.stderr)
            continue
        if text.startswith("/"):
            print(f"[unknown command {text.split()[0]}: {CHAT_HELP}]", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": text})
        stop = threading.Event()
        main_thread = threading.current_thread() is threading.main_thread()  # (signals can only be caught there)
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if main_thread else None
        try:
            r = llm.generate(messages, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                             top_k=a.top_k, seed=None if a.seed is None else a.seed + turn, should_stop=stop.is_set,
                             on_text=lambda piece: print(piece, end="", flush=True), reuse_prefix=True,
                             on_prefill=_PrefillBar() if sys.stderr.isatty() else None)
        except SpecdraftError as e:  # e.g. the conversation no longer fits the context window
            messages.pop()
            print(f"\n[{e}; /reset starts a new conversation]", file=sys.stderr)
            continue
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        turn += 1
        if not r.token_ids:  # stopped during the prompt's prefill: the turn is taken back
            messages.pop()
            print("[stopped before the answer began; the question is dropped]", file=sys.stderr)
            continue
        messages.append({"role": "assistant", "content": r.text})
        print(flush=True)  # the answer's line ends on stdout
        s = r.stats
        tau = f", tau {s.tau:.2f}" if s.acceptance_rate is not None else ""
        print(f"[{s.new_tokens} new tokens, {r.prompt_tokens} prompt tokens ({s.cached_tokens} cached), {s.tokens_per_s or 0:.1f} tokens/s{tau}, "
              f"{r.drafter}{', stopped' if stop.is_set() else ''}]", file=sys.stderr)


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
    require("bench", "specdraft bench (its speedup plot)")
    import dataclasses
    import datetime
    import shlex
    from pathlib import Path

    from .api import LLM, resolve_device, resolve_dtype
    from .bench.metrics import summarize
    from .bench.llama_server import PeerUnavailable
    from .bench.peers import is_peer, make_peer
    from .bench.questions import per_category, read_questions
    from .bench.report import markdown_table, write_all
    from .bench.runner import SpecdraftMethod, run_methods
    from .data.build import default_questions
    from .drafters import backend_for, check_spec
    from .runtime.sampling import SamplingParams

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
        from .bench.runner import mixed_stream

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
        from .bench import concurrency

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


def cmd_serve(a) -> int:
    require("serve", "specdraft serve")
    import os
    import signal
    import threading

    import uvicorn

    from .batch import DEFAULT_MAX_BATCH
    from .server.app import ServerConfig, create_app, drafter_name

    max_batch = a.max_batch or DEFAULT_MAX_BATCH
    llm = _load(a, sampling=False, max_batch=max_batch, prefix_cache=a.prefix_cache)
    cfg = ServerConfig(model_name=a.served_name or a.model, drafter=a.drafter,
                       api_key=a.api_key or os.environ.get("SPECDRAFT_API_KEY"),
                       max_prompt_tokens=a.max_prompt_tokens, max_tokens_limit=a.max_tokens_limit, max_queue=a.max_queue,
                       prefix_cache=a.prefix_cache, max_batch=max_batch)
    name, hot = drafter_name(llm, cfg.drafter), drafter_name(llm, cfg.drafter, temperature=1.0)
    shown = cfg.drafter if name == cfg.drafter else f"{cfg.drafter}: {name}"
    if hot != name:
        shown += f"; {hot} at temperature 1"
    print(f"serving {cfg.model_name} (drafter {shown}; {llm.backend} backend; up to {cfg.max_batch} requests "
          f"at once) on http://{a.host}:{a.port}/v1", file=sys.stderr)
    app = create_app(llm, cfg, engine_thread=False)
    # The engine on this (the main) thread, where the model was loaded: its kernels run at half speed
    # on another (server/scheduler.py); the HTTP server on a thread of its own.
    server = uvicorn.Server(uvicorn.Config(app, host=a.host, port=a.port, log_level="warning"))
    web = threading.Thread(target=server.run, name="specdraft-http", daemon=True)
    signal.signal(signal.SIGTERM, lambda *_: app.state.scheduler.close())
    web.start()
    try:
        app.state.scheduler.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        web.join(10)
    return 0


def cmd_search_skip(a) -> int:
    require("train", "the skip-set search")
    from pathlib import Path

    from .api import LLM
    from .bench.questions import read_questions
    from .paths import atomic_file
    from .train import skipsearch
    from .train.knn_build import measure, pool_prompts
    from .drafters.layerskip import LayerSkipDrafter, skipset_to_json

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


def cmd_knn(a) -> int:
    from pathlib import Path

    from .api import LLM
    from .drafters import check_spec
    from .drafters.knn import route_table
    from .train.knn_build import MIN_GAIN, build_knn

    if a.knn_command == "radius":
        return knn_radius(Path(a.artifact), a.update)
    if a.knn_command == "build":
        require("train", "specdraft knn build (its skip-set searches)")
    min_gain = MIN_GAIN if a.min_gain is None else a.min_gain

    if a.knn_command == "routes" and a.reuse_timings:
        from .api import dtype_name, resolve_device, resolve_dtype
        from .train.knn_build import rechoose

        path = zoo.resolve(a.model, pull_missing=False) if a.dtype == "auto" else None  # auto depends on its size
        dtype = dtype_name(resolve_dtype(a.dtype, resolve_device(a.device), path))
        meta = rechoose(Path(a.artifact), dtype, min_gain)
        a.out = a.artifact
    else:
        cands = tuple(s.strip() for s in a.candidates.split(",") if s.strip())
        for c in cands:
            check_spec(c)
        llm = LLM(a.model, dtype=a.dtype, device=a.device, exact=a.exact, backend="torch")  # hidden-state anchors
        dtype = llm.dtype_name
        if a.knn_command == "routes":
            from .train.knn_build import remeasure

            meta = remeasure(llm, Path(a.artifact), cands, a.measure_prompts, a.measure_tokens, min_gain=min_gain)
            a.out = a.artifact
        else:
            meta = build_knn(llm, Path(a.out), domains=tuple(d.strip() for d in a.domains.split(",") if d.strip()),
                             anchors_per_domain=a.anchors_per_domain, anchor_prompts=a.anchor_prompts,
                             search_prompts=a.search_prompts, search_evals=a.search_evals,
                             unseen_prompts=a.unseen_prompts, measure_prompts=a.measure_prompts,
                             measure_tokens=a.measure_tokens, candidates=cands, min_gain=min_gain)
    routes = route_table(meta, dtype)
    print(f"routes timed in {dtype}" + (f" on {routes['timed_on']}" if "timed_on" in routes else "")
          + (f", min gain {routes['min_gain']}x" if "min_gain" in routes else ""))
    for d, v in routes["domains"].items():
        print(f"{d:<14} route {v['route']:<28} " + " ".join(f"{k}={x:.2f}x" for k, x in v["measured_speedup"].items()))
    acc = meta.get("routing_accuracy")
    print((f"routing accuracy on unseen prompts: {acc:.3f}; " if acc is not None else "")
          + f"fallback route {routes['fallback']['route']}")
    print(a.out)
    return 0


def knn_radius(path, update: bool) -> int:
    """`knn radius`: the stored fallback radius beside the domains' separation (and the change)."""
    import json

    from .train.knn_build import radius_facts, widen_radius

    old, sep = widen_radius(path) if update else radius_facts(path)[1:]
    print(json.dumps({"artifact": str(path), "stored_radius": round(old, 4), "domain_separation": round(sep, 4),
                      "radius": round(max(old, sep), 4), "updated": update and sep > old}))
    if not update and sep > old:
        print(f"the current rule gives {sep:.4f}: `specdraft knn radius {path} --update` writes it")
    return 0


def train_config(a):
    """The TrainConfig of a parsed `train ctc|medusa` command line."""
    from .train.config import TrainConfig

    ctc_only = ({"frames": a.frames, "align": a.align, "intermediate_size": a.intermediate_size, "layers": a.layers,
                 "feature_layers": a.feature_layers, "window": a.window} if a.train_command == "ctc" else {})
    return TrainConfig(a.train_command, epochs=a.epochs, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                       max_labels=a.max_labels, draft_vocab=a.draft_vocab, eval_every=a.eval_every, feat=a.feat,
                       kd=a.kd, **ctc_only)


def cmd_train(a) -> int:
    from pathlib import Path

    from .paths import home

    data = Path(a.out if a.train_command == "data" and a.out else (getattr(a, "data", None) or home() / "distill" / Path(a.model).name))
    if a.train_command == "data":
        from .train.data import build_distill, build_written

        if a.written:
            if not a.out:
                data = home() / "distill" / f"{Path(a.model).name}-written"
            out = build_written(a.model, data, conversations=a.written, exclude_sharegpt=a.sharegpt,
                                exclude_per_pool=a.per_pool, layers=a.layers)
        else:
            out = build_distill(a.model, data, n_sharegpt=a.sharegpt, n_per_pool=a.per_pool,
                                max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, max_shards=a.shards,
                                layers=a.layers)
        meta = json.loads((out / "data.json").read_text())
        print(f"{meta['shards']} shards, {meta['answer_tokens']} answer tokens, {meta['seconds']:.0f} s "
              f"({meta['seconds'] / max(1, meta['tokens']) * 1e6 / 3600:.2f} h per million tokens)")
        print(out)
        return 0
    from .train.trainer import Trainer

    state = Trainer(a.model, data, Path(a.out), train_config(a), extra=tuple(Path(d) for d in a.extra_data)).run()
    last = state["history"][-1] if state["history"] else {}
    print(f"trained {state['step']} steps in {state['seconds']:.0f} s; held-out tau estimate {last.get('heldout_tau', float('nan')):.2f}")
    print(a.out)
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
        if a.command == "search-skip":
            return cmd_search_skip(a)
        if a.command == "knn":
            return cmd_knn(a)
        if a.command == "train":
            return cmd_train(a)
        if a.command == "chat":
            return cmd_chat(a)
        return cmd_generate(a)
    except SpecdraftError as e:
        print(f"specdraft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nspecdraft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
