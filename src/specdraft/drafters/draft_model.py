"""A smaller model with the same tokenizer drafts for the target (classic speculative decoding).

The draft model keeps its own KV cache in step with the committed text: each step it first reads
the committed tokens it has not seen (usually the last bonus token), then drafts autoregressively
into uncommitted slots. After verification the slots of accepted drafted tokens are committed,
the rest are simply overwritten next time. Optionally (`tree_width` > 1) the top alternatives of a
step are added as leaf siblings, a tree the target checks in the same forward: at every step, or
with `branch=P` only at the uncertain steps, those where the draft's own top-1 probability is below
P (where the draft most often disagrees with the target; the leaves cost a verification row each).

With `draft_vocab` (token ids) the draft model's LM head keeps only those rows (`DraftVocab`):
each drafted token costs less, and tokens outside the set are never drafted (their draft
probability is 0, which verification handles like any other proposal), so the output is
unchanged. The rare tokens a text needs are mostly copied from its context (names, identifiers),
so every token of the prompt and of the committed text joins the set for that request.

With `shared=True` the draft model is a copy of the target itself (`draft-model:self?quant=int8`,
runtime/quant.py): same layers, same cache layout. It then keeps no cache of its own: like the
layer-skip drafter it reads the target's committed KV (exact, from the full model) and writes its
drafted tokens into the target cache's uncommitted slots, which verification overwrites. Nothing
needs catching up after another drafter's step in a hybrid.
"""

from __future__ import annotations

import copy

import torch

from ..errors import SpecdraftError
from ..runtime.model import PREFILL_CHUNK, Decoder, linear
from ..runtime.quant import Int8Weight, is_int8
from ..runtime.sampling import target_probs
from ..verify.tree import Draft
from ..verify.verify import Verdict
from .base import Drafter, Needs, StepContext
from .context import DraftContext


class DraftVocab:
    """The head rows of a drafting vocabulary: the `base` tokens, plus the tokens of the current
    request's context as they appear (up to `spare` of them; later ones are simply not drafted).

    With `int8` (the draft model is an int8 copy) the base rows are quantized as the copy's own
    head is, per row, so their logits are the full int8 head's at those ids; the few context rows
    stay float. A dense float32 subset would cost as much to read as the whole int8 head once it
    holds a quarter of the vocabulary."""

    def __init__(self, head: torch.Tensor, base: list[int], spare: int = 4096, int8: bool = False):
        self.base = sorted({int(t) for t in base if 0 <= int(t) < head.shape[0]})
        self.head = head
        nb = len(self.base)
        self.ids = torch.zeros(nb + spare, dtype=torch.long, device=head.device)
        self.ids[:nb] = torch.tensor(self.base, dtype=torch.long, device=head.device)
        self.base_rows = head[self.ids[:nb]]
        if int8:
            self.base_rows = Int8Weight(self.base_rows)
        self.spare_rows = torch.zeros(spare, head.shape[1], dtype=head.dtype, device=head.device)
        self.members = set(self.base)
        self.n = nb

    def reset(self) -> None:
        """Back to the base tokens (a new request)."""
        self.members = set(self.base)
        self.n = len(self.base)

    def fork(self) -> "DraftVocab":
        """The same base rows, with spare rows of its own (another request's context)."""
        out = copy.copy(self)
        out.ids, out.spare_rows, out.members = self.ids.clone(), torch.zeros_like(self.spare_rows), set(self.members)
        return out

    def add(self, tokens: list[int]) -> None:
        nb = len(self.base)
        for t in tokens:
            if t not in self.members and 0 <= t < self.head.shape[0] and self.n < self.ids.shape[0]:
                self.members.add(t)
                self.ids[self.n] = t
                self.spare_rows[self.n - nb] = self.head[t]
                self.n += 1

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """[rows, n] logits of the vocabulary's tokens (in `ids` order) from final hidden states."""
        base = linear(h, self.base_rows)
        extra = self.n - len(self.base)
        if not extra:
            return base.float()
        return torch.cat((base, linear(h, self.spare_rows[:extra])), dim=-1).float()


class DraftModelDrafter(Drafter):
    def __init__(self, model: Decoder, name: str, *, length: int = 4, max_length: int = 12,
                 tree_width: int = 1, branch: float = 1.0, confidence: float = 0.3, target_vocab: int | None = None,
                 draft_vocab: list[int] | None = None, shared: bool = False):
        self.model = model
        self.shared = shared
        if shared:
            self.needs = Needs(target=True)
        self.name = f"draft-model:{name}"
        self.initial_length = length
        self.max_length = max_length
        self.tree_width = max(1, tree_width)
        if not 0 < branch <= 1:
            raise SpecdraftError(f"draft-model branch= is a probability in (0, 1] (branch=0.8), got {branch!r}")
        self.branch = branch  # runner-ups only where the draft's top-1 probability is below this
        self.confidence = confidence  # stop drafting once the draft's own top-1 probability is below this
        self.target_vocab = target_vocab or model.cfg.vocab_size
        self.vocab = None
        if draft_vocab is not None:
            self.vocab = DraftVocab(model.head_weight()[: min(self.target_vocab, model.cfg.vocab_size)], draft_vocab,
                                    int8=is_int8(model))
        self.cache = None
        self.length = length
        self.main: list[int] = []  # node indices of the drafted main chain, in order
        self.fed = 0  # main-chain tokens whose KV sits uncommitted in our cache
        self.seen = 0

    def start(self, prompt_ids: list[int], ctx: StepContext) -> None:
        self.cache = None if self.shared else self.model.new_cache(ctx.capacity)
        self.seen = 0  # tokens of ctx.ids the drafting vocabulary has taken in
        self.length = self.initial_length
        if self.vocab is not None:
            self.vocab.reset()

    def _fit_vocab(self, x: torch.Tensor) -> torch.Tensor:
        # Same tokenizer, but embedding tables may be padded to different sizes.
        V = self.target_vocab
        if x.shape[-1] == V:
            return x
        if x.shape[-1] > V:
            return x[..., :V]
        return torch.nn.functional.pad(x, (0, V - x.shape[-1]), value=float("-inf"))

    def _forward(self, tokens: list[int], cache, start: int) -> torch.Tensor:
        dev = self.model.device
        t = torch.tensor(tokens, dtype=torch.long, device=dev)
        pos = torch.arange(start, start + len(tokens), device=dev)
        if self.vocab is None:
            return self._fit_vocab(self.model(t, pos, cache, start=start, logits_at=slice(-1, None)).logits)
        h = self.model(t, pos, cache, start=start, logits_at=slice(0, 0), final_hidden=True).final_hidden[-1:]
        full = torch.full((1, self.target_vocab), float("-inf"), device=h.device)
        return full.index_copy_(1, self.vocab.ids[:self.vocab.n], self.vocab.logits(h))

    @torch.inference_mode()
    def propose(self, ctx: StepContext) -> Draft:
        if self.vocab is not None:
            self.vocab.add(ctx.ids[self.seen:])  # the prompt on the first step, then the newly committed tokens
        self.seen = len(ctx.ids)
        if self.shared:  # the target's cache holds everything but the root
            cache, feed = ctx.cache, ctx.ids[-1:]
        else:
            cache = self.cache
            feed = ctx.ids[cache.length:]  # committed tokens we have not read yet (at least the root)
            if len(feed) > PREFILL_CHUNK:  # the prompt, on the first step: in chunks, as the target's
                self.model.prefill(feed[:-1], cache)
                feed = feed[-1:]
        logits = self._forward(feed, cache, cache.length)
        base = cache.length + len(feed)  # the slot of the first drafted token
        if not self.shared:
            cache.commit(len(feed))
        budget = ctx.budget
        tokens: list[int] = []
        parents: list[int] = []
        qrows: list[torch.Tensor] = []
        self.main, self.fed = [], 0
        parent = -1
        for step in range(min(self.length, budget)):
            # The width depends on the draft distribution only (never on what is sampled from it).
            probs = logits.float().softmax(-1)[0] if ctx.params.greedy else target_probs(logits.float(), ctx.params)[0]
            conf = probs.max().item()
            uncertain = self.branch >= 1 or conf < self.branch  # branch=1: every step, even a certain one
            width = min(self.tree_width if uncertain else 1, budget - len(tokens))
            if ctx.params.greedy:
                picks = torch.topk(probs, width).indices.tolist()
            else:
                width = min(width, int((probs > 0).sum()))
                picks = torch.multinomial(probs, width, replacement=False, generator=ctx.generator).tolist()
            main = len(tokens)
            for tok in picks:  # main pick first, so the verifier tries it first
                tokens.append(tok)
                parents.append(parent)
                if not ctx.params.greedy:
                    qrows.append(probs)
            self.main.append(main)
            parent = main
            if conf < self.confidence or len(tokens) >= budget or step + 1 >= self.length:
                break
            logits = self._forward([picks[0]], cache, base + self.fed)
            self.fed += 1
        q = torch.stack(qrows) if qrows else None
        return Draft(tokens, parents, q)

    def observe(self, draft: Draft, verdict: Verdict) -> None:
        if not self.shared:  # accepted main-chain tokens already have their KV in our cache: keep them
            keep = 0
            for node, main in zip(verdict.path, self.main):
                if node != main:
                    break
                keep += 1
            self.cache.commit(min(keep, self.fed))
        # Adapt the draft length (the heuristic transformers' assisted generation uses).
        if len(verdict.path) >= len(self.main):
            self.length = min(self.length + 2, self.max_length)
        else:
            self.length = max(1, self.length - 1)

    def fork(self) -> "DraftModelDrafter":
        out = super().fork()
        out.cache = None
        if self.vocab is not None:
            out.vocab = self.vocab.fork()
        return out

    def describe(self) -> dict:
        return {"draft_length": self.length, "tree_width": self.tree_width, "branch": self.branch,
                "draft_vocab": None if self.vocab is None else self.vocab.n}


def build(name: str, ctx: DraftContext, vocab: int = 0, quant: str = "", **options) -> DraftModelDrafter:
    """`vocab=N` (N > 0): draft over the N most frequent tokens only (data/vocab.py).
    `quant=int8`: draft with an int8 copy of the model (runtime/quant.py). The name `self` is the
    target itself, which only makes sense quantized: `draft-model:self?quant=int8`."""
    from .. import fetch, zoo
    from ..runtime.loader import load_decoder
    from ..text import same_vocab

    if vocab and (not isinstance(vocab, int) or vocab < 1):  # checked before any model loads
        raise SpecdraftError(f"draft-model vocab= takes a number of tokens (vocab=32768), got {vocab!r}")
    if "shared" in options:
        raise SpecdraftError("draft-model: shared is not an option (draft-model:self shares the target's cache)")
    if quant not in ("", "int8"):
        raise SpecdraftError(f"draft-model quant= takes int8 (quant=int8), got {quant!r}")
    if name == "self":
        if not quant:
            raise SpecdraftError("draft-model:self drafts with the target itself, which saves nothing: "
                                 "add quant=int8 (draft-model:self?quant=int8)")
        path = ctx.path
    else:
        path = fetch.resolve(name)
        if not same_vocab(path, ctx.tokenizer):
            raise SpecdraftError(
                f"draft model {name} has a different tokenizer than the target {ctx.name}: "
                "pick a draft model of the same family (e.g. qwen2.5-coder-0.5b for qwen2.5-coder-1.5b)"
            )
    # One model per (name, quant) for all of a target's drafters: `lookup+draft-model:self?quant=int8`
    # and `draft-model:self?quant=int8&vocab=32768` (knn-ssd's routes, a bench's methods) share one
    # int8 copy. A drafter keeps no state in the model (its cache is its own, or the target's).
    model = ctx.draft_models.get((str(path), quant))
    if model is None and ctx.backend == "gguf":
        from ..runtime.config import ModelConfig
        from ..runtime.llamacpp import LlamaCppDecoder

        gguf = zoo.gguf_file(path)
        if gguf is None:
            raise SpecdraftError(f"draft model {name}: no GGUF file for the gguf backend to run")
        model = ctx.draft_models[(str(path), quant)] = LlamaCppDecoder(gguf, ModelConfig.from_dir(path))
    elif model is None:
        if name == "self":
            model = ctx.model
        else:
            model = load_decoder(path, torch.float32 if quant else ctx.dtype, ctx.device)
        if quant:
            from ..runtime.quant import quantize_int8

            model = quantize_int8(model, head=not vocab)  # a reduced vocabulary quantizes its own rows
        elif ctx.packed:  # (draft-model:self without quant was refused above)
            from ..runtime.packed import pack_decoder

            pack_decoder(model)  # a draft model of the target's dtype, packed as the target is
        ctx.draft_models[(str(path), quant)] = model
    if quant and not vocab:
        from ..runtime.quant import add_int8_head

        add_int8_head(model)  # (a copy first made for a reduced vocabulary has none yet)
    ids = None
    if vocab:
        from ..data.vocab import token_ranking

        size = min(model.cfg.vocab_size, ctx.model.cfg.vocab_size)
        ids = token_ranking(path / "tokenizer.json", size)[:vocab]
    # The name reports the options that change the model (generate's summary line).
    extras = "&".join(x for x in (f"vocab={vocab}" if vocab else "", f"quant={quant}" if quant else "") if x)
    label = f"{name}?{extras}" if extras else name
    return DraftModelDrafter(model, label, target_vocab=ctx.model.cfg.vocab_size, draft_vocab=ids,
                             shared=name == "self", **options)
