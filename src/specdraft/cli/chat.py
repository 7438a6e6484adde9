"""`specdraft chat`: a conversation in the terminal."""

from __future__ import annotations

import sys

from .. import zoo
from ..errors import SpecdraftError
from .generate import PrefillBar
from .options import backend_option, dtype_option, load_llm, positive_int, sampling_options


def add(sub) -> None:
    c = sub.add_parser("chat", help="an interactive conversation in the terminal (streams each answer; /reset, /exit)")
    c.set_defaults(run=run)
    c.add_argument("--model", default=zoo.DEFAULT_MODEL, help="zoo name, local HF-format directory or local .gguf file (default: %(default)s)")
    c.add_argument("--drafter", default="auto", help="as for generate (default: auto)")
    c.add_argument("--system", default=None, help="a system message that opens the conversation")
    c.add_argument("--max-new-tokens", type=positive_int, default=512, help="per answer (default: %(default)s)")
    sampling_options(c, seed_help="default: a fresh random seed; with a seed, answer N samples with seed + N")
    dtype_option(c)
    backend_option(c)
    c.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")


CHAT_HELP = ('/reset starts a new conversation, /exit (or Ctrl-D) ends; Ctrl-C stops an answer; """ opens and '
             'closes a turn of several lines')


def run(a) -> int:
    """A conversation: each line read is a user turn; the answer streams to stdout, a summary
    line (tokens, speed, tau) to stderr. The whole conversation is the prompt of each answer; the
    part the last answer left in the KV cache is not prefilled again."""
    import signal
    import threading

    stdin = sys.stdin
    llm = load_llm(a, sampling=True)
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
                             on_prefill=PrefillBar() if sys.stderr.isatty() else None)
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
