"""Peers measured in the same run: transformers' own `generate` (plain, assistant model, prompt
lookup, early-exit self-speculation), llama.cpp's server (plain, its draft model, its n-gram
speculation: bench/llama_server.py) and llama.cpp through llama-cpp-python (plain and
prompt-lookup speculation).

Specs: hf-plain, hf-assisted:NAME, hf-lookup[:N], hf-early-exit[:LAYER]; llamacpp-plain,
llamacpp-draft:NAME, llamacpp-ngram[:TYPE], llamacpp-eagle3:DIR; llamacpp-py-plain, llamacpp-py-lookup[:N]. The hf-*
peers count target forwards by a hook on the target's last decoder layer, which draft passes (an
assistant model, or early exit) never reach.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from ..api import LLM
from ..errors import SpecdraftError
from ..runtime.sampling import SamplingParams
from .llama_server import SERVER_KINDS, LlamaServerMethod, PeerUnavailable, build_hint, find_server
from .runner import GREEDY, TurnResult

PEER_KINDS = ("hf-plain", "hf-assisted", "hf-lookup", "hf-early-exit", *SERVER_KINDS, "llamacpp-py-plain",
              "llamacpp-py-lookup")


def is_peer(spec: str) -> bool:
    return spec.partition(":")[0] in PEER_KINDS


class _ForwardCounter:
    """A forward pre-hook counting calls of the layer it is registered on."""

    def __init__(self):
        self.n = 0

    def __call__(self, module, args) -> None:
        self.n += 1


class HFMethod:
    def __init__(self, llm: LLM, spec: str, hf_cache: dict):
        from transformers import AutoModelForCausalLM

        from .. import fetch

        self.name, self.llm = spec, llm
        kind, _, arg = spec.partition(":")
        if "target" not in hf_cache:
            target = AutoModelForCausalLM.from_pretrained(str(llm.path), dtype=llm.dtype).eval()
            hf_cache["forwards"] = _ForwardCounter()  # one hook for the target all hf-* methods share
            target.model.layers[-1].register_forward_pre_hook(hf_cache["forwards"])
            hf_cache["target"] = target
        self.model = hf_cache["target"]
        self.forwards = hf_cache["forwards"]
        self.kwargs: dict = {}
        if kind == "hf-assisted":
            if not arg:
                raise SpecdraftError("hf-assisted needs a model: hf-assisted:NAME")
            key = f"assistant:{arg}"
            if key not in hf_cache:
                hf_cache[key] = AutoModelForCausalLM.from_pretrained(str(fetch.resolve(arg)), dtype=llm.dtype).eval()
            self.kwargs["assistant_model"] = hf_cache[key]
        elif kind == "hf-lookup":
            self.kwargs["prompt_lookup_num_tokens"] = int(arg or 10)
        elif kind == "hf-early-exit":
            self.kwargs["assistant_early_exit"] = int(arg or max(1, llm.model.cfg.num_layers // 4))

    @torch.inference_mode()
    def generate(self, messages: list[dict], max_new_tokens: int, sampling: SamplingParams = GREEDY) -> TurnResult:
        ids = self.llm.tokenizer.encode_prompt(messages)
        x = torch.tensor([ids], device=self.model.device)
        eos = sorted(self.llm.tokenizer.eos_ids)
        if sampling.greedy:
            how: dict = {"do_sample": False}
        else:  # every warper given explicitly: a model's generation_config.json must not add its own
            how = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
                   "top_k": sampling.top_k, "min_p": None, "typical_p": 1.0, "repetition_penalty": 1.0}
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        self.forwards.n = 0  # methods run one at a time, so the shared count is this call's
        t = time.perf_counter()
        y = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                eos_token_id=eos, pad_token_id=eos[0], **how, **self.kwargs)
        dt = time.perf_counter() - t
        new = y[0, len(ids):].tolist()
        return TurnResult(tuple(new), self.llm.tokenizer.decode(new), dt, self.forwards.n)


def _gguf_of(model_dir: Path, what: str) -> Path:
    from .. import zoo

    gguf = zoo.gguf_file(model_dir)
    if gguf is None:
        raise SpecdraftError(f"llama.cpp peers need {what} converted from a GGUF file that is still there "
                             "(a zoo model or a local .gguf)")
    return gguf


class LlamaCppMethod:
    """llama-cpp-python on the model's original GGUF file (its own quantized kernels)."""

    def __init__(self, llm: LLM, spec: str):
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
        except ImportError:
            raise SpecdraftError("llama-cpp-python peers need llama-cpp-python: pip install -e '.[gguf]'") from None

        self.name, self.llm = spec, llm
        gguf = _gguf_of(llm.path, "a model")
        kind, _, arg = spec.partition(":")
        draft = LlamaPromptLookupDecoding(num_pred_tokens=int(arg or 10)) if kind == "llamacpp-py-lookup" else None
        # logits_all must be passed explicitly with a draft model: llama-cpp-python 0.3.16 turns it
        # on internally but sizes its score buffer from the argument (n_batch rows), and so fails
        # with "could not broadcast ... into shape (0,)" once the context passes 512 tokens.
        with _no_amx_repack():
            self.model = Llama(model_path=str(gguf), n_ctx=min(8192, llm.model.cfg.max_position_embeddings),
                               n_threads=torch.get_num_threads(), draft_model=draft, logits_all=draft is not None,
                               verbose=False)

    def generate(self, messages: list[dict], max_new_tokens: int, sampling: SamplingParams = GREEDY) -> TurnResult:
        ids = self.llm.tokenizer.encode_prompt(messages)
        eos = self.llm.tokenizer.eos_ids
        out: list[int] = []
        self.model.reset()
        if sampling.greedy:
            how: dict = {"temp": 0.0, "top_k": 1}
        else:  # llama-cpp-python's own defaults (min_p 0.05, top_k 40, ...) replaced by the request's
            how = {"temp": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k, "min_p": 0.0,
                   "typical_p": 1.0, "repeat_penalty": 1.0}
            if sampling.seed is not None:
                self.model.set_seed(sampling.seed)
        t = time.perf_counter()
        for tok in self.model.generate(ids, reset=True, **how):
            out.append(int(tok))
            if tok in eos or len(out) >= max_new_tokens:
                break
        dt = time.perf_counter() - t
        # llama-cpp-python does not expose its forward count: 0 makes tau "unknown" in the summary.
        return TurnResult(tuple(out), self.llm.tokenizer.decode(out), dt, 0)


@contextlib.contextmanager
def _no_amx_repack():
    """Load with llama.cpp's weight repacking off where it would take its AMX kernels, which crash
    on batches (runtime/llamacpp.py): llama-cpp-python's `Llama` has no argument for it, so its
    default model parameters are switched for the call."""
    from llama_cpp import llama_cpp  # the low-level module `Llama` reads its defaults from

    from ..runtime.llamacpp import amx_repack_broken

    if not amx_repack_broken():
        yield
        return
    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_cpp.llama_model_default_params = default


def make_peer(llm: LLM, spec: str, hf_cache: dict):
    """A peer method; hf_cache shares loaded transformers models between the hf-* methods. Raises
    `PeerUnavailable` for a peer this machine has not built (the caller skips it)."""
    kind, _, arg = spec.partition(":")
    if kind in SERVER_KINDS:
        from .. import fetch

        binary = find_server()
        if binary is None:
            raise PeerUnavailable(build_hint())
        draft = _gguf_of(fetch.resolve(arg), f"the draft model {arg!r}") if kind == "llamacpp-draft" and arg else None
        if kind == "llamacpp-eagle3" and arg:
            from .llama_convert import converted_eagle3

            draft = converted_eagle3(Path(arg).expanduser(), llm.path)
        return LlamaServerMethod(llm, spec, binary=binary, gguf=_gguf_of(llm.path, "a model"), draft_gguf=draft)
    if kind.startswith("llamacpp-py-"):
        return LlamaCppMethod(llm, spec)
    return HFMethod(llm, spec, hf_cache)
