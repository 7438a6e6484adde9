"""The Python API: load a model once, generate many times.

    from specdraft import LLM
    llm = LLM("smollm2-135m")              # a zoo name, a local HF-format directory or a .gguf file
    r = llm.generate("Write a haiku about the sea.", max_new_tokens=64)
    print(r.text, r.tokens_per_s)
    for piece in llm.stream("Tell me a joke."):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import fetch, zoo
from .drafters import DraftContext, Drafter, build_drafter
from .engine import Generation, GenerationStats, PrefixStore, run_generation, run_segment
from .errors import SpecdraftError
from .runtime import packed
from .runtime.cpu import decode_dtype
from .runtime.loader import count_params, load_decoder
from .runtime.sampling import SamplingParams
from .text import Detokenizer, Messages, Tokenizer

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
BACKENDS = ("auto", "torch", "gguf")
HOT = float("inf")  # a temperature above every recommendation's threshold (`auto` when sampling hot)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "float32": the name artifacts and reports use."""
    return str(dtype).removeprefix("torch.")


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SpecdraftError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise SpecdraftError(f"unsupported device {device!r}: use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecdraftError(f"device {device!r} requested but no CUDA device is available: use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SpecdraftError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str = "cpu",
                  path: Path | None = None) -> torch.dtype:
    """A dtype name or torch dtype; `auto` is the dtype `runtime.cpu.decode_dtype` picks on
    `device` for the model at `path` (its size matters on some CPUs; unknown without a path)."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise SpecdraftError(f"unsupported dtype {dtype}: use {' or '.join(DTYPES)}")
    if dtype == "auto":
        return decode_dtype(device, count_params(path) if path is not None else None)
    try:
        return DTYPES[dtype]
    except KeyError:
        raise SpecdraftError(f"unknown dtype {dtype!r}: use auto, {' or '.join(DTYPES)}") from None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # generated ids only (an EOS that ended generation included)
    prompt_tokens: int
    stats: GenerationStats
    model: str
    drafter: str
    dtype: str
    packed_weights: bool = False  # weights prepacked for oneDNN (runtime/packed.py)
    exact: bool = False  # row-invariant decoding (LLM(exact=True))

    @property
    def new_tokens(self) -> int:
        return self.stats.new_tokens

    @property
    def tokens_per_s(self) -> float | None:
        return self.stats.tokens_per_s

    def to_json(self) -> dict:
        s = self.stats
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "new_tokens": s.new_tokens,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": s.cached_tokens,
            "target_forwards": s.target_forwards,
            "tau": s.tau,
            "acceptance_rate": s.acceptance_rate,
            "tokens_per_s": s.tokens_per_s,
            "wall_s": s.wall_s,
            "time_split_s": {"prefill": s.prefill_s, "draft": s.draft_s, "verify": s.verify_s, "other": s.other_s},
            "stop_reason": s.stop_reason,
            "model": self.model,
            "drafter": self.drafter,
            "drafter_info": s.extra,
            **({"route": s.extra["route"]} if "route" in s.extra else {}),  # knn-ssd: the route taken
            "dtype": self.dtype,
            "packed_weights": self.packed_weights,
            "exact": self.exact,
        }


def _gguf_obstacle(path: Path, device: torch.device, dtype, exact: bool) -> str | None:
    """Why the gguf backend cannot run this load, or None when it can."""
    from .runtime import llamacpp

    if device.type != "cpu":
        return "the gguf backend runs on a CPU: use --backend torch on a GPU"
    if dtype not in (None, "auto"):
        return "the gguf backend decodes the file's own weights: --dtype is a torch-backend option"
    if exact:
        return "--exact is a mode of the torch backend: use --backend torch"
    if zoo.gguf_file(path) is None:
        return f"{path}: no GGUF file to run (the gguf backend takes a zoo model or a local .gguf file)"
    try:
        llamacpp.check_available()
    except SpecdraftError as e:
        return str(e)
    return None


def choose_backend(backend: str, path: Path, device: torch.device, dtype, exact: bool,
                   drafters: tuple[str, ...] = ("plain",)) -> str:
    """The backend `backend` stands for. "gguf" needs a CPU, the model's GGUF file and
    llama-cpp-python, and refuses what it cannot do (a dtype, --exact). "auto" is "gguf" wherever
    it can run the model and every drafter asked for (llama.cpp's low-bit kernels decode faster
    than our float weights on every CPU measured: docs/BENCHMARKS.md), else "torch": on a GPU, with
    a dtype or --exact, for a model without a GGUF file, or for a drafter that needs the float
    weights (knn-ssd, layerskip, ctc, medusa, draft-model:self)."""
    if backend == "torch":
        return backend
    if backend == "auto":
        from .drafters import runs_on_gguf

        if not all(isinstance(d, str) and runs_on_gguf(d) for d in drafters):
            return "torch"
        return "torch" if _gguf_obstacle(path, device, dtype, exact) else "gguf"
    why = _gguf_obstacle(path, device, dtype, exact)
    if why:
        raise SpecdraftError(why)
    return backend


class LLM:
    """A loaded target model with its tokenizer."""

    def __init__(self, model: str = zoo.DEFAULT_MODEL, *, drafter: str = "plain",
                 dtype: str | torch.dtype | None = None, device: str | None = None, progress: bool = True,
                 pack: bool | None = None, exact: bool = False, backend: str = "auto", max_batch: int = 1,
                 prefix_cache: int = 1):
        """pack: reorder the weights for oneDNN's product on a CPU (runtime/packed.py: float32, and
        bfloat16 on a CPU with bf16 units);
        None (default) = yes unless the environment sets SPECDRAFT_PACK=0. Elsewhere it does nothing.
        exact: compute a draft's verification rows bit for bit as one-row steps compute them
        (`Decoder.set_row_invariant`), so that every drafter's greedy output equals plain
        decoding's in bfloat16 on a CPU too, as it does in float32 (qwen2.5-coder-1.5b's drafters
        run at the same speed, its plain decoding at 0.83x; SmolLM2's 0.63-0.89x, tree drafters the
        most: docs/BENCHMARKS.md, "`--exact`").
        backend: "torch" (float weights, the project's decoder), "gguf" (the model's GGUF file run by
        llama.cpp from its low-bit weights, runtime/llamacpp.py; a CPU only) or "auto" (gguf where it
        can run the model and `drafter`, else torch: `choose_backend`).
        max_batch: the most sequences `generate_batch` (and a server) decodes together. On the gguf
        backend it sizes llama.cpp's context: above 1, every sequence gets a KV stream of its own
        (runtime/llamacpp.py: the exact batch), holding chains only.
        prefix_cache: the caches `reuse_prefix` keeps (`self.prefix`)."""
        if not isinstance(max_batch, int) or max_batch < 1:
            raise SpecdraftError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.max_batch = max_batch
        self.device = resolve_device(device)
        if backend not in BACKENDS:
            raise SpecdraftError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
        resolve_dtype(dtype or "auto", self.device)  # a bad dtype fails before a model is pulled
        self.path: Path = fetch.resolve(model, progress=progress)
        self.name = model if model in zoo.ZOO else (zoo.zoo_identity(self.path) or str(self.path))
        self.tokenizer = Tokenizer(self.path)
        self.backend = choose_backend(backend, self.path, self.device, dtype, exact, (drafter,))
        if self.backend == "gguf":
            from .runtime.config import ModelConfig
            from .runtime.llamacpp import LlamaCppDecoder

            self.dtype = torch.float32  # of its logits; the weights are the file's
            self.model = LlamaCppDecoder(zoo.gguf_file(self.path), ModelConfig.from_dir(self.path),
                                         streams=max_batch + prefix_cache + 1 if max_batch > 1 else 0)
            self.packed = False
        else:
            self.dtype = resolve_dtype(dtype or "auto", self.device, self.path)
            self.model = load_decoder(self.path, self.dtype, self.device)
            self.packed = (packed.wanted() if pack is None else pack) and packed.pack_decoder(self.model)
        if exact and self.device.type != "cpu":
            raise SpecdraftError("--exact is implemented for CPUs; on a GPU, --dtype float32 gives plain decoding's output")
        if exact and self.dtype == torch.bfloat16 and not self.packed:
            raise SpecdraftError("--exact in bfloat16 needs the weights packed for oneDNN (a CPU with bf16 units, "
                                 "SPECDRAFT_PACK not 0); --dtype float32 gives plain decoding's output everywhere")
        self.exact = exact
        self.model.set_row_invariant(exact)
        self._drafters: dict[str, Drafter | None] = {}
        # What the drafters are built from (drafters/context.py): this target, and `drafter` to build
        # a hybrid's parts and a router's routes through this LLM's cache of drafters.
        self.draft_context = DraftContext(self.model, self.tokenizer, self.path, self.name, self.dtype, self.device,
                                          backend=self.backend, packed=self.packed, build=self.drafter)
        self.prefix = PrefixStore(prefix_cache)  # the last `reuse_prefix` generations' caches
        self.default_drafter = drafter
        self.drafter(drafter)  # build it now: a bad spec fails at load, not mid-request
        if drafter == "auto":
            self.drafter(drafter, temperature=HOT)  # and the one `auto` samples with, where it differs

    def drafter(self, spec: str | Drafter | None, temperature: float = 0.0) -> Drafter | None:
        """The drafter for a spec (built once and kept), a Drafter as is, or None for plain.
        `auto` is the model's recommendation (`drafters.recommended`) at this sampling temperature."""
        if spec is None or isinstance(spec, Drafter):
            return spec
        if spec == "auto":
            from .drafters import recommended

            spec = recommended(self.draft_context, temperature)
        if spec not in self._drafters:
            self._drafters[spec] = build_drafter(spec, self.draft_context)
        return self._drafters[spec]

    @property
    def dtype_name(self) -> str:
        """The weights' dtype: "float32", "bfloat16", or "gguf" (the file's low-bit weights)."""
        return self.draft_context.dtype_name

    def generate(
        self,
        prompt: str | Messages | list[int],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        chat: bool | None = None,
        drafter: str | Drafter | None = "default",
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_prefill: Callable[[int, int], None] | None = None,
        reuse_prefix: bool = False,
    ) -> GenerationResult:
        """Generate a completion. A list of ints is taken as already-encoded prompt ids.

        drafter: a spec ("plain", "lookup", "draft-model:NAME"), a Drafter, or "default" for the
        one this LLM was loaded with; `auto` takes the model's recommendation for this temperature.
        chat: apply the chat template (True), take the text as it is (False), or the template when
        the model has one (None; a base model continues the text). on_text receives the text as it
        is committed; should_stop ends the generation early; on_prefill(done, total) follows the
        prompt's prefill, chunk by chunk. reuse_prefix: keep this generation's KV cache in
        `self.prefix` (`self.prefix.slots` of them, the most recent), and start from the kept one
        this prompt shares the longest beginning with (a conversation's next turn prefills only
        the new part; `stats.cached_tokens` counts the rest). The keys and values are the same up
        to the order of summation, so the output may differ from a fresh prefill's where two
        tokens nearly tie.
        """
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        g, flush = self.generation(prompt, params, max_new_tokens=max_new_tokens, chat=chat, drafter=drafter,
                                   on_text=on_text, should_stop=should_stop, on_prefill=on_prefill,
                                   reuse_prefix=reuse_prefix)
        run_generation(self.model, g)
        flush()
        return self._result(g)

    def generation(self, prompt, params: SamplingParams = SamplingParams(), *, max_new_tokens: int = 256,
                   chat: bool | None = None, drafter: str | Drafter | None = "default",
                   on_text: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                   on_prefill: Callable[[int, int], None] | None = None, reuse_prefix: bool = False,
                   fork: bool = False) -> tuple[Generation, Callable[[], None]]:
        """`generate`'s generation, not run yet (an engine runs it: `run_generation`, a
        `BatchEngine`), and the call that sends on_text the text held back at the end. fork: a
        drafter of its own (`Drafter.fork`), to run beside others."""
        spec = self.default_drafter if drafter == "default" else drafter
        d = self.drafter(spec, temperature=params.temperature)
        if fork and d is not None:
            d = d.fork()
        if isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int)):
            ids = list(prompt)
        else:
            ids = self.tokenizer.encode_prompt(prompt, chat=chat)
        detok = Detokenizer(self.tokenizer) if on_text is not None else None

        def on_tokens(new: list[int]) -> None:
            piece = detok.push(new)
            if piece:
                on_text(piece)

        def flush() -> None:
            if detok is not None and (rest := detok.flush()):
                on_text(rest)  # the streamed pieces then add up to the text, even if it ends mid-character

        g = Generation(self.model, ids, max_new_tokens=max_new_tokens, params=params, eos_ids=self.tokenizer.eos_ids,
                       drafter=d, on_tokens=on_tokens if detok else None, should_stop=should_stop,
                       on_prefill=on_prefill, prefix=self.prefix if reuse_prefix else None)
        return g, flush

    def _result(self, g: Generation) -> GenerationResult:
        d = g.drafter_name
        return GenerationResult(text=self.tokenizer.decode(g.out), token_ids=g.out, prompt_tokens=len(g.prompt_ids),
                                stats=g.stats, model=self.name, drafter=d, dtype=self.dtype_name,
                                packed_weights=self.packed, exact=self.exact)

    def generate_batch(
        self,
        prompts: list[str | Messages | list[int]],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        chat: bool | None = None,
        drafter: str | Drafter | None = "default",
        max_batch: int | None = None,
        progress: bool = False,
    ) -> list[GenerationResult]:
        """Generate a completion for every prompt, `max_batch` at a time in one forward per step
        (continuous batching: batch.py); results in the prompts' order. Each prompt gets the tokens
        `generate` gives it alone (with `seed`, the same seed each), up to the backend's rounding
        (docs/BENCHMARKS.md, "Serving many users"). max_batch: at most this LLM's (its default).
        progress: a progress bar over the prompts."""
        from .batch import BatchEngine

        max_batch = max_batch or self.max_batch
        if max_batch > self.max_batch and self.backend == "gguf":
            raise SpecdraftError(f"this LLM was loaded for batches of {self.max_batch} on the gguf backend: "
                                 f"load it with LLM(..., max_batch={max_batch})")

        engine = BatchEngine(self.model, max_batch)
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        gens = [self.generation(p, params, max_new_tokens=max_new_tokens, chat=chat, drafter=drafter, fork=True)[0]
                for p in prompts]
        for g in gens:
            engine.add(g)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(gens), desc="generate", unit="prompt")
        engine.run(on_done=None if bar is None else lambda g: bar.update(1))
        if bar is not None:
            bar.close()
        return [self._result(g) for g in gens]

    def stream(self, prompt: str | Messages, **kwargs) -> Iterator[str]:
        """Yield text pieces as they are committed. `generate`'s keyword arguments but on_text;
        the generation advances as the pieces are taken, on the caller's thread (the thread that
        loaded the model: the kernels ran at half speed on another, server/scheduler.py), and
        stops where the caller stops taking them."""
        if "on_text" in kwargs:
            raise TypeError("stream() yields the text: it takes no on_text")
        pieces: list[str] = []
        params = SamplingParams(**{k: kwargs.pop(k) for k in ("temperature", "top_p", "top_k", "seed") if k in kwargs})
        g, flush = self.generation(prompt, params, on_text=pieces.append, **kwargs)
        try:
            while True:
                with torch.inference_mode():
                    seg = g.segment()
                    if seg is None:
                        break
                    g.consume(run_segment(self.model, seg))
                yield from pieces
                pieces.clear()
            flush()
            yield from pieces
        finally:
            g.cancel()  # (nothing if it ended) the caller stopped taking pieces
