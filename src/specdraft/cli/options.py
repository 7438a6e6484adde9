"""What the commands share: the parser class (a usage mistake is one line, exit 2), argument
types, the sampling / dtype / backend options, and the LLM load that checks the cheap arguments
first."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (exit 2) rather than the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def layer_list(s: str) -> tuple[int, ...]:
    """'2,15' -> (2, 15): layer indices (0-based), each at most once."""
    try:
        v = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {s!r}") from None
    if any(i < 0 for i in v) or len(set(v)) != len(v):
        raise argparse.ArgumentTypeError(f"layer numbers must be distinct and >= 0, got {s!r}")
    return v


def int_at_least(lo: int, what: str):
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


positive_int = int_at_least(1, "a positive integer")
nonnegative_int = int_at_least(0, "a whole number >= 0")


def nonnegative_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def min_gain_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-gain", type=nonnegative_float, default=None,
                   help="a domain leaves the fallback route (the best drafter over all domains) only for a drafter "
                        "that beats it there by more than this, in x of plain (default: knn_build.MIN_GAIN, 0.1; "
                        "timings on a few prompts differ by about 0.1x between runs)")


def sampling_options(p: argparse.ArgumentParser, seed_help: str, seed: int | None = None) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    p.add_argument("--seed", type=int, default=seed, help=seed_help)


def dtype_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto",
                   help="auto (default: bfloat16 on a GPU and on a CPU with bf16 units, where its weights "
                        "are packed for oneDNN and decode 1.4-1.8x faster than float32; else float32), "
                        "bfloat16 or float32 (float32: the output is exactly plain decoding's)")
    p.add_argument("--exact", action="store_true",
                   help="in bfloat16 on a CPU, compute a draft's verification exactly as plain decoding computes "
                        "each token, so the output is plain bfloat16 decoding's token for token (as float32's is "
                        "without it). Measured: qwen2.5-coder-1.5b's drafters at the same speed, plain decoding 0.83x; "
                        "SmolLM2-135M 0.63-0.89x (tree drafters the most)")


def backend_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "gguf"),
                   help="torch: float weights in the project's decoder; gguf: the model's GGUF file run by "
                        "llama.cpp from its low-bit weights (a CPU; drafters: lookup, draft-model:NAME and hybrids "
                        "of them); auto (default): gguf on a CPU where it can run the model and the drafter, else torch")


def load_llm(a, sampling: bool, **kw):
    """The LLM of `generate`, `chat` or `serve`, after checking the cheap arguments (dtype,
    device, drafter spec and, with `sampling`, the sampling options) before the slow load."""
    from ..api import LLM, resolve_device, resolve_dtype
    from ..drafters import check_spec
    from ..runtime.sampling import SamplingParams

    resolve_dtype(a.dtype)
    resolve_device(a.device)
    check_spec(a.drafter)
    if sampling:
        SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed)
    return LLM(a.model, drafter=a.drafter, dtype=a.dtype, device=a.device, exact=a.exact, backend=a.backend, **kw)
