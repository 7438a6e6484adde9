"""Drafters, one file each, built from a spec string: `plain`, `lookup[:N]`, `draft-model:NAME`,
`layerskip[:SKIPSET.json]`, `knn-ssd[:DIR]`, `ctc[:DIR]`, `medusa[:DIR]`, `eagle3[:DIR]` (without an
argument the last five use the artifact shipped for the model, see `specdraft.artifacts`), and `auto`: the
drafter measured fastest for the model on this kind of device (`recommended`). Any spec may end in
`?key=value&key=value`: keyword options of the drafter (e.g. `ctc?max_nodes=8`,
`draft-model:qwen2.5-coder-0.5b?max_length=6&confidence=0.5`, `lookup?max_ngram=4`). Specs joined
with `+` make a hybrid (`lookup+ctc`: lookup when it finds a match, else ctc; see hybrid.py); in
parentheses, a hybrid takes options of its own: `(lookup+ctc)?mode=union&max_nodes=8`."""

from __future__ import annotations

import functools

from ..errors import SpecdraftError
from .base import Drafter, Needs, StepContext
from .context import DraftContext
from .specs import KINDS, SPECS, format_spec, parse_spec, split_hybrid  # noqa: F401 -- the package's API

# `auto` for a model without a shipped recommendation: prompt lookup where the text repeats, else
# (on a CPU) an int8 copy of the target: of the drafters that need no training, the fastest measured
# on both qwen models (docs/archive/benchmarks-history.md; int8 products are CPU-only).
AUTO_CPU = "lookup?min_ngram=2+draft-model:self?quant=int8"
AUTO_OTHER = "lookup?min_ngram=2"


def recommended(ctx: DraftContext, temperature: float = 0.0) -> str:
    """The spec `auto` stands for: the model's shipped `drafter.json` entry for this device type,
    dtype and sampling temperature (the drafter measured fastest there, see specdraft.artifacts),
    else AUTO_CPU / AUTO_OTHER."""
    from .. import artifacts

    kind = ctx.device.type
    if ctx.backend == "gguf":  # only what was measured on the gguf backend
        return artifacts.recommendation(ctx.name, "cpu/gguf", temperature) or AUTO_OTHER
    entry = artifacts.recommendation(ctx.name, kind, temperature, ctx.dtype_name)
    if entry is not None:
        return entry
    return AUTO_CPU if kind == "cpu" else AUTO_OTHER


def check_spec(spec: str) -> None:
    """Cheap syntax check of a drafter spec (before any model is loaded)."""
    hybrid = split_hybrid(spec)
    if hybrid:
        parts, options = hybrid
        from .hybrid import check_options

        try:
            check_options(**options)
        except TypeError as e:
            raise _not_an_option(spec, "a hybrid (mode, max_nodes)", e) from None
        for part in parts:
            if not part or parse_spec(part)[0] in ("plain", "knn-ssd", "auto"):
                raise SpecdraftError(f"a hybrid joins drafters with '+' (lookup+ctc); {part or 'an empty part'!r} "
                                     f"cannot be one of them, in {spec!r}")
            check_spec(part)
        return
    kind, arg, options = parse_spec(spec)
    if kind not in KINDS:
        raise SpecdraftError(f"unknown drafter {spec!r}: choose one of {SPECS}")
    if kind in ("plain", "auto") and (arg or options):
        raise SpecdraftError(f"{kind} takes no argument or option, got {spec!r}")
    if kind == "lookup" and arg and not arg.isdigit():
        raise SpecdraftError(f"lookup takes a number of draft tokens (lookup:10), got {spec!r}")
    if kind == "draft-model" and not arg:
        raise SpecdraftError("draft-model needs a model: draft-model:NAME (a zoo name or a directory)")


def build_drafter(spec: str, ctx: DraftContext, **options) -> Drafter | None:
    """The drafter a spec names, for the target `ctx` describes (`LLM.draft_context` for a loaded
    model); None for plain decoding. Options given here override those of the spec. `auto` is
    greedy decoding's recommendation (LLM.drafter picks the sampling one for sampled requests)."""
    check_spec(spec)
    if ctx.build is None:  # a context made by hand: a hybrid's parts and a router's routes are built afresh
        ctx.build = functools.partial(build_drafter, ctx=ctx)
    if spec == "auto":
        spec = recommended(ctx)
    hybrid = split_hybrid(spec)
    if hybrid:
        kind, build = "a hybrid", lambda: _hybrid(hybrid[0], ctx, {**hybrid[1], **options})
    else:
        kind, arg, spec_options = parse_spec(spec)
        build = lambda: _build(kind, arg, ctx, {**spec_options, **options})  # noqa: E731
    try:
        return build()
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise _not_an_option(spec, kind, e) from None


def _not_an_option(spec: str, kind: str, e: TypeError) -> SpecdraftError:
    """The error for a keyword a drafter (or a hybrid) does not take, from Python's TypeError."""
    return SpecdraftError(f"drafter {spec!r}: {str(e).split('argument ')[-1]} is not an option of {kind}")


# What each backend's target can serve (runtime/llamacpp.py: llama.cpp gives no sublayer skipping
# and no intermediate layers, and its weights are not torch tensors a drafter could share).
GGUF_KINDS = ("plain", "lookup", "draft-model")
GGUF_SERVES = "lookup, draft-model:NAME (another GGUF model with the same tokenizer) and hybrids of them"


def _gguf_refusal(kind: str, arg: str, options: dict) -> str | None:
    """Why the gguf backend cannot run a (non-hybrid) drafter, or None when it can."""
    if kind not in GGUF_KINDS:
        return f"{kind} needs the target's float weights or layers"
    if kind == "draft-model" and arg == "self":
        return "draft-model:self copies the target's float weights"
    if kind == "draft-model" and (options.get("quant") or options.get("vocab")):
        return "quant= and vocab= change a float draft model (the gguf backend runs the draft model's own file)"
    return None


def runs_on_gguf(spec: str) -> bool:
    """Whether the gguf backend can run a drafter spec (`auto` always: there it stands for a drafter
    measured on that backend); hybrids when every part can."""
    if spec in ("auto", "plain"):
        return True
    hybrid = split_hybrid(spec)
    if hybrid:
        return all(runs_on_gguf(p) for p in hybrid[0])
    kind, arg, options = parse_spec(spec)
    return _gguf_refusal(kind, arg, options) is None


def backend_for(backend: str, specs) -> str:
    """`backend` for a load that will run every drafter spec in `specs`: "auto" becomes "torch"
    when one of them needs the float weights (LLM then settles "auto" for the rest)."""
    return "torch" if backend == "auto" and not all(runs_on_gguf(s) for s in specs) else backend


def _check_backend(kind: str, arg: str, ctx: DraftContext, options: dict) -> None:
    if ctx.backend != "gguf":
        return
    why = _gguf_refusal(kind, arg, options)
    if why:
        raise SpecdraftError(f"the gguf backend cannot run this drafter: {why}. It runs {GGUF_SERVES}; "
                             "or load the model with --backend torch")


def _build(kind: str, arg: str, ctx: DraftContext, options: dict) -> Drafter | None:
    _check_backend(kind, arg, ctx, options)
    if kind == "plain":
        return None
    if kind == "lookup":
        from .lookup import LookupDrafter

        return LookupDrafter(**({"num_tokens": int(arg)} if arg else {}), **options)
    if kind == "draft-model":
        from .draft_model import build

        return build(arg, ctx, **options)
    if kind == "layerskip":
        from .layerskip import load
    elif kind == "knn-ssd":
        from .knn import load
    elif kind == "ctc":
        from .ctc import load
    elif kind == "eagle3":
        from .eagle3 import load
    else:
        from .medusa import load
    return load(arg, ctx, **options)


def _hybrid(parts: list[str], ctx: DraftContext, options: dict) -> Drafter:
    from .hybrid import HybridDrafter

    return HybridDrafter([ctx.drafter(part) for part in parts], **options)


__all__ = ["DraftContext", "Drafter", "Needs", "StepContext", "build_drafter", "check_spec", "recommended", "SPECS"]
