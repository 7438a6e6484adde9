"""The GGUF backend: the target (or a draft model) decoded by llama.cpp from its low-bit weights.

A zoo model ships as a GGUF file quantized to about 4.5 bits a weight; llama.cpp's kernels read
those weights as they are, where the float backend (model.py) reads a float32 or bf16 copy 4-8x
the size. This module drives llama.cpp through llama-cpp-python's low-level binding and gives the
engine the same two objects the float backend does:

- `LlamaCppDecoder`: `forward(tokens, positions, cache, start=, tree_mask=, logits_at=,
  final_hidden=)` and `prefill(...)`, returning the same `ForwardOutput`;
- `LlamaCppCache`: one sequence of llama.cpp's KV cache, with the float cache's explicit length
  (`commit`, `truncate`, `compact`, `grown`). A forward writes its tokens at positions
  [start, start + N) of the sequence after removing whatever the sequence held from `start` on, so
  an uncommitted draft is scratch here too.

Token trees. llama.cpp has no per-token attention mask; a token attends to the cells of its
sequence at positions up to its own. A tree is therefore verified as one sequence per leaf: every
path from the root to a leaf is a sequence that first gets the committed prefix (`seq_cp`, which in
a unified KV cache only tags the cells), and a node belongs to the sequences of every leaf below it.
Each node's ancestors are exactly the nodes of any path through it, so each node sees what the
float backend's tree mask lets it see. After verification `compact` tags the accepted path's cells
with the cache's own sequence and drops the leaf sequences, which frees the rejected nodes' cells.

What it does not serve: sublayer skipping and intermediate layers' hidden states (llama.cpp's
graph does not expose them) and row-invariant decoding (`--exact`); a drafter that needs them is
refused by the caller with the list of what can run here. Final hidden states (after the final
norm) come from llama.cpp's embeddings output, switched on only for the forwards that ask.

Long because it is one backend: the binding's batch, the cache's sequences and streams, the
exact-row probe and the batched forward share llama.cpp's state and cannot be read apart.
"""

from __future__ import annotations

import ctypes
import random
import threading
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import SpecdraftError
from .cache import CacheLength
from .config import ModelConfig
from .model import PREFILL_CHUNK, ForwardOutput, run_segment


def check_available() -> None:
    """Raise a clear error where llama-cpp-python does not import."""
    _lib()


def _lib():
    try:
        import llama_cpp
    except (ImportError, OSError) as e:
        raise SpecdraftError(f"the gguf backend needs llama-cpp-python ({type(e).__name__}: {e}); "
                             "`make install` builds it, or use --backend torch") from None
    return llama_cpp


def amx_repack_broken() -> bool:
    """Whether llama.cpp's weight repacking would use its AMX kernels here (which crash, above)."""
    from .cpu import amx_tiles

    return amx_tiles()  # the hardware's: llama.cpp does not follow ONEDNN_MAX_CPU_ISA


_INIT = threading.Lock()
_STATE: dict = {}


def _init_backend() -> None:
    """llama.cpp's one-time initialisation, with its log silenced (errors are raised here)."""
    with _INIT:
        if _STATE:
            return
        ll = _lib()

        @ll.llama_log_callback
        def quiet(level, text, user_data):  # noqa: ARG001
            pass

        _STATE["log"] = quiet  # kept alive: llama.cpp holds the pointer
        ll.llama_log_set(quiet, ctypes.c_void_p())
        ll.llama_backend_init()


# Batch sizes the probe checks: drafts longer than this do not pay on llama.cpp's kernels, whose
# cost grows with the rows (docs/BENCHMARKS.md: 8 rows cost 2.7-2.9x one).
PROBE_ROWS = 16


# Sequences of one context: the first CACHE_SEQS are caches (the generations of a batch, and those
# a PrefixStore keeps), the rest are the leaves of a verified tree (a tree has at most that many
# leaves). llama.cpp allows 256 sequences a context.
CACHE_SEQS = 8
TREE_SEQS = 120
# Cells of each cache in a context with a KV stream per sequence (`streams`), unless told.
STREAM_CTX = 4096


class LlamaCppCache(CacheLength):
    """One llama.cpp sequence as a KV cache that changes length only through explicit calls
    (cache.py's contract). Positions are slots: the committed prefix is positions [0, length)."""

    def __init__(self, model: "LlamaCppDecoder", capacity: int):
        super().__init__(capacity)
        self.model = model
        self.seq = model._take_seq()
        self.pending: list[list[int]] | None = None  # the last tree forward's sequences, by node
        self.order: list[int] = []  # the last tree forward's rows in batch (= cell) order
        self.tokens: list[int] = []  # and its tokens, by row
        # Committed tokens whose keys and values are not in the cache yet: a tree path that left the
        # main path (see `compact`); the next forward on this cache decodes them first.
        self.redo: list[int] = []
        weakref.finalize(self, model._free_seq, self.seq)

    def truncate(self, length: int) -> None:
        kept = self.length - len(self.redo)  # tokens whose cells are in the cache
        super().truncate(length)
        self.redo = self.redo[:max(0, length - kept)]
        self.model._rm(self.seq, length)

    def compact(self, offsets: torch.Tensor | list[int]) -> None:
        """Commit the accepted nodes of the last forward: offsets [n] relative to `length` (the
        root 0, then node i at i + 1, in path order)."""
        offsets = [int(o) for o in offsets]
        n = len(offsets)
        if n == 0:
            return
        if offsets != list(range(n)) and self.pending is None:
            raise ValueError("compact: a tree path without a tree forward")
        if self.pending is not None:
            # The accepted rows that sit in the batch's first cells keep theirs: tag them with our
            # sequence. A row after them would be committed out of cell order, and llama.cpp's
            # attention sums in cell order: later steps would round unlike plain decoding. Those
            # rows are decoded again, in order, at the start of the next forward.
            inorder = 0
            while inorder < n and self.order[inorder] == offsets[inorder]:
                inorder += 1
            if inorder > 1:
                leaf = self.pending[offsets[inorder - 1]][0]
                self.model._cp(leaf, self.seq, self.length + 1, self.length + inorder)
            self.model._drop_trees()
            self.pending = None
            self.redo = [self.tokens[o] for o in offsets[inorder:]]
        self.commit(n)

    def grown(self, capacity: int) -> "LlamaCppCache":
        self.model._check_ctx(capacity)
        self.capacity = max(self.capacity, capacity)
        return self


def main_path_order(mask: torch.Tensor) -> list[int]:
    """The rows of a tree mask [N, N] in the order they are given to llama.cpp: the main path
    first (from the root, each node's first child in row order), then the other rows as they
    come. llama.cpp sums attention over its KV cells in cell order, and a batch takes cells in
    row order: an accepted path that is a prefix of the main path then sits in contiguous cells
    after the prefix, as plain decoding's tokens do, and later steps add up bit for bit as plain
    decoding's (a path that leaves it is committed from scattered cells, whose later sums may round
    differently: docs/BENCHMARKS.md measures how often)."""
    m = mask.bool().cpu().numpy()
    n = m.shape[0]
    depth = m.sum(1)
    main, node = [0], 0
    while True:
        child = next((j for j in range(node + 1, n) if m[j, node] and depth[j] == depth[node] + 1), None)
        if child is None:
            break
        main.append(child)
        node = child
    on_main = set(main)
    return main + [i for i in range(n) if i not in on_main]


def _tree_seqs(mask: torch.Tensor) -> list[list[int]]:
    """The sequences (leaf numbers) of each row of a tree mask [N, N] (row i may attend to the
    rows set in it: its ancestors and itself; row 0 is the root): leaf k's sequence holds the
    nodes on the path from the root to the k-th leaf, so row i belongs to every leaf below it."""
    m = mask.bool().cpu().numpy()
    n = m.shape[0]
    has_child = m.sum(0) > 1  # a column is set by the row itself and by every descendant
    leaves = [i for i in range(n) if not has_child[i]]
    seqs: list[list[int]] = [[] for _ in range(n)]
    for k, leaf in enumerate(leaves):
        for i in np.flatnonzero(m[leaf]):
            seqs[i].append(k)
    return seqs


class LlamaCppDecoder:
    """A GGUF model run by llama.cpp, behind the float `Decoder`'s forward / prefill / cache API.

    cfg: the model's ModelConfig (its context window is clamped to the llama.cpp context's).
    n_ctx: KV cells of the context, shared by every cache of this model (a prefix store's too);
      with `streams`, the cells of each cache.
    streams: 0 for one KV cache shared by every sequence (unified: token trees are verified as
      leaf sequences that tag the prefix's cells); else that many caches, each with cells of its
      own (llama.cpp's non-unified cache). A batch needs streams: in the shared cache, sequences
      that come and go leave holes that the others' next tokens fill, a sequence's cells stop
      being in position order, and llama.cpp's attention, which sums in cell order, rounds unlike
      the sequence decoded alone (24 requests 8 at a time: 16 of 24 answers changed). Streams
      hold chains only (no trees).
    """

    def __init__(self, gguf: Path, cfg: ModelConfig, *, n_ctx: int | None = None, threads: int | None = None,
                 streams: int = 0):
        _init_backend()
        ll = self.ll = _lib()
        self.path = Path(gguf)
        if not self.path.is_file():
            raise SpecdraftError(f"{gguf}: no such GGUF file")
        mp = ll.llama_model_default_params()
        mp.use_mmap = True
        # llama.cpp's AMX buffer type (a repacking "extra buffer") segfaults in ggml_backend_amx_mul_mat
        # on batches of two rows or more (llama.cpp issue 20824; seen here with Q4_1 and Q4_K_M), so on
        # a CPU with AMX the weights stay in the file's layout (llama-server: --no-repack).
        mp.use_extra_bufts = not amx_repack_broken()
        model = ll.llama_model_load_from_file(str(self.path).encode(), mp)
        if not model:
            raise SpecdraftError(f"{gguf}: llama.cpp cannot load this GGUF file (truncated, corrupt, or an "
                                 "architecture or tensor type it does not run)")
        self._model = model
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
        self.hidden = ll.llama_model_n_embd(model)
        train_ctx = ll.llama_model_n_ctx_train(model)
        self.n_ctx = min(n_ctx or min(train_ctx, STREAM_CTX if streams else 16384), train_ctx)
        self.streams = streams
        threads = threads or torch.get_num_threads()
        cp = ll.llama_context_default_params()
        cp.n_ctx = self.n_ctx * (streams or 1)
        cp.n_batch = cp.n_ubatch = PREFILL_CHUNK
        cp.n_seq_max = streams or CACHE_SEQS + TREE_SEQS
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = not streams  # sequences share cells: a tree's leaves tag the prefix, nothing is copied
        cp.swa_full = True  # sliding-window layers keep every cell, so any position can be rolled back
        cp.embeddings = False
        cp.pooling_type = ll.LLAMA_POOLING_TYPE_NONE
        cp.no_perf = True
        # Keys and values in Q8_0, through flash attention (which a quantized V cache needs). With an
        # f16 or f32 cache, llama.cpp's CPU attention takes other paths by batch shape: one row over
        # 512 cells or more splits the cells among the threads, 2+ rows do not (and larger batches
        # take a tiled kernel), so a verification row rounds unlike plain decoding's one-row step
        # once the context passes 256 tokens (measured: logits off by 0.4-0.8; one bench answer in
        # six changed). With a quantized cache every row takes the same per-row path, bit for bit
        # the one-row step's at any context and batch size (tests/test_gguf.py); measured no slower.
        cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cp.type_k = cp.type_v = ll.GGML_TYPE_Q8_0
        ctx = ll.llama_init_from_model(model, cp)
        if not ctx:
            ll.llama_model_free(model)
            raise SpecdraftError(f"{gguf}: llama.cpp could not create a context of {self.n_ctx} tokens")
        self._ctx = ctx
        self._mem = ll.llama_get_memory(ctx)
        self._embeddings = False
        self._free = list(range(self.max_caches - 1, -1, -1))
        self._leaves = 0  # leaf sequences of the last tree forward still in the KV cache
        self._batch_cap = 0
        self._batch = None
        self.cfg = replace(cfg, max_position_embeddings=self.n_ctx)
        self.dtype = torch.float32  # of the logits and hidden states handed out
        self.device = torch.device("cpu")
        weakref.finalize(self, _free_all, ll, ctx, model)
        if self.n_vocab < cfg.vocab_size - 1024 or self.n_vocab > cfg.vocab_size:
            raise SpecdraftError(f"{gguf}: {self.n_vocab} tokens in the GGUF vocabulary, {cfg.vocab_size} in the config")
        self.max_rows = exact_rows(self)

    @property
    def max_caches(self) -> int:
        """Caches (sequences) this context holds at once: a batch's, a prefix store's, a probe's."""
        return self.streams or CACHE_SEQS

    def probe_exact_rows(self, most: int = PROBE_ROWS) -> int:
        """The largest k <= `most` such that a forward of every 2..k rows gives each row's logits bit
        for bit as one-row steps do (1 if even 2 rows differ). llama.cpp picks its matrix kernels
        by the number of rows: on qwen2.5-coder's Q4_K / Q6_K weights a batch of 8 rows or more
        rounds unlike the one-row step, on SmolLM2's Q4_1 none up to 70 does (docs/BENCHMARKS.md)."""
        rng = random.Random(0)
        hi = max(2, min(self.n_vocab, 20000))
        prompt = [rng.randrange(1, hi) for _ in range(24)]
        toks = [rng.randrange(1, hi) for _ in range(most)]
        cache = self.new_cache(len(prompt) + most)
        self.prefill(prompt, cache)
        start = cache.length
        one = []
        for i, t in enumerate(toks):
            one.append(self.forward(torch.tensor([t]), torch.tensor([start + i]), cache).logits[0])
            cache.commit(1)
        cache.truncate(start)
        best = 1
        for k in range(2, most + 1):
            rows = self.forward(torch.tensor(toks[:k]), torch.arange(start, start + k), cache).logits
            if not torch.equal(rows, torch.stack(one[:k])):
                break
            best = k
        return best

    # -- sequences --------------------------------------------------------------------------------

    def _take_seq(self) -> int:
        if not self._free:
            raise SpecdraftError(f"the llama.cpp context holds at most {self.max_caches} caches at once")
        # The lowest free one: with a stream per sequence, llama.cpp decodes consecutive sequence
        # ids in one graph (a gap splits the batch), so a batch's sequences are kept together.
        seq = min(self._free)
        self._free.remove(seq)
        self._rm(seq, 0)
        return seq

    def _free_seq(self, seq: int) -> None:
        self._rm(seq, 0)
        self._free.append(seq)

    def _rm(self, seq: int, p0: int) -> None:
        self.ll.llama_memory_seq_rm(self._mem, seq, p0, -1)

    def _cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        self.ll.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    def _drop_trees(self) -> None:
        """Remove the leaf sequences of the last tree forward (whichever cache it was for)."""
        for k in range(self._leaves):
            self.ll.llama_memory_seq_rm(self._mem, CACHE_SEQS + k, -1, -1)
        self._leaves = 0

    def _check_ctx(self, capacity: int) -> None:
        if capacity > self.n_ctx:
            raise SpecdraftError(f"{capacity} tokens do not fit the llama.cpp context of {self.n_ctx}")

    def new_cache(self, capacity: int) -> LlamaCppCache:
        self._check_ctx(capacity)
        return LlamaCppCache(self, capacity)

    # -- forwards ---------------------------------------------------------------------------------

    def set_row_invariant(self, on: bool) -> None:
        if on:
            raise SpecdraftError("--exact is a mode of the torch backend: use --backend torch")

    def _batch_for(self, n: int):
        if n > self._batch_cap:
            self._batch_cap = max(n, 64)
            batch = self.ll.llama_batch_init(self._batch_cap, 0, TREE_SEQS + 1)
            if self._batch is not None:
                self._batch_free.detach()
                self.ll.llama_batch_free(self._batch)
            self._batch = batch
            self._batch_free = weakref.finalize(self, self.ll.llama_batch_free, batch)
        return self._batch

    def _decode(self, tokens: list[int], positions: list[int], seqs: list[list[int]], outputs: list[bool],
                hidden: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        ll = self.ll
        n = len(tokens)
        if hidden != self._embeddings:
            ll.llama_set_embeddings(self._ctx, hidden)
            self._embeddings = hidden
        b = self._batch_for(n)
        b.n_tokens = n
        for i in range(n):
            b.token[i] = tokens[i]
            b.pos[i] = positions[i]
            s = seqs[i]
            b.n_seq_id[i] = len(s)
            for j, q in enumerate(s):
                b.seq_id[i][j] = q
            b.logits[i] = outputs[i]
        rc = ll.llama_decode(self._ctx, b)
        if rc != 0:
            raise SpecdraftError(f"llama.cpp decode failed (code {rc}"
                                 + (": the context's KV cells are full)" if rc == 1 else ")"))
        m = sum(outputs)
        logits = hid = None
        if m:
            ptr = ll.llama_get_logits(self._ctx)
            logits = torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(m, self.n_vocab)).copy())
            if hidden:
                ptr = ll.llama_get_embeddings(self._ctx)
                hid = torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(m, self.hidden)).copy())
        return logits, hid

    def forward(
        self,
        tokens: torch.Tensor,  # [N] long
        positions: torch.Tensor,  # [N] long
        cache: LlamaCppCache,
        *,
        start: int | None = None,
        tree_mask: torch.Tensor | None = None,  # [N, N] bool among new tokens; default causal
        logits_at: slice | None = None,  # rows to compute logits for; None = all
        final_hidden: bool = False,
        hidden_layers: tuple[int, ...] = (),
        prefill: bool = False,  # (the float backend's fused-attention switch; nothing to do here)
    ) -> ForwardOutput:
        if hidden_layers:
            raise SpecdraftError("the gguf backend gives no intermediate layers' hidden states: use --backend torch")
        n = int(tokens.shape[0])
        start = cache.length if start is None else start
        cache.check_fits(start, n)
        toks = tokens.tolist()
        pos = positions.tolist()
        redo = cache.redo if start == cache.length else []
        if len(redo) != len(cache.redo):
            raise SpecdraftError("the gguf backend writes after a tree's re-decoded path only from the committed length")
        self._rm(cache.seq, start - len(redo))
        self._drop_trees()
        cache.pending = None
        if tree_mask is None:
            if pos != list(range(start, start + n)):
                raise SpecdraftError("the gguf backend writes a chain at consecutive positions from its start slot")
            seqs = [[cache.seq]] * n
        elif self.streams:
            raise SpecdraftError("a token tree on a llama.cpp context with a KV stream per sequence (batched): "
                                 "use a chain drafter (lookup) or --max-batch 1")
        else:
            leaves = _tree_seqs(tree_mask)
            if max((max(s) for s in leaves if s), default=0) >= TREE_SEQS:
                raise SpecdraftError(f"a draft tree with more than {TREE_SEQS} leaves")
            self._leaves = 1 + max(max(s) for s in leaves)
            for k in range(self._leaves):  # every leaf's sequence starts with the committed prefix
                self._cp(cache.seq, CACHE_SEQS + k, 0, start)
            seqs = [[CACHE_SEQS + k for k in s] for s in leaves]
            seqs[0] = [cache.seq] + seqs[0]
            cache.pending = seqs
        rows = list(range(n)) if logits_at is None else list(range(n))[logits_at]
        # final hidden states come with every row; logits only for the rows asked
        outputs = [True] * n if final_hidden else [False] * n
        for r in rows:
            outputs[r] = True
        order = list(range(n)) if tree_mask is None else main_path_order(tree_mask)
        if tree_mask is not None:
            cache.order, cache.tokens = order, toks
        k = len(redo)  # re-decoded committed tokens first, at the positions before `start`
        logits, hid = self._decode(redo + [toks[i] for i in order], list(range(start - k, start)) + [pos[i] for i in order],
                                   [seqs[0]] * k + [seqs[i] for i in order],  # (in every leaf's sequence too)
                                   [final_hidden] * k + [outputs[i] for i in order], final_hidden)
        cache.redo = []
        if final_hidden and k:  # their rows are not this forward's
            logits, hid = logits[k:], hid[k:]
        if tree_mask is not None:  # back to the caller's row order (outputs come in batch order)
            out_rows = [i for i in order if outputs[i]]
            back = torch.tensor([out_rows.index(i) for i in range(n) if outputs[i]])
            logits = None if logits is None else logits[back]
            hid = None if hid is None else hid[back]
        if logits is not None and final_hidden and len(rows) != n:
            logits = logits[rows] if rows else None
        return ForwardOutput(logits=logits if rows else None, final_hidden=hid)

    __call__ = forward

    def forward_many(self, segments: list) -> list[ForwardOutput]:
        """`Decoder.forward_many`: several caches' segments (runtime.model.Segment) in one
        llama_decode, each on its cache's sequence. Chains are batched together up to `max_rows`
        rows a decode (the most whose rows round as one-row steps do); a tree, a segment after a
        re-decoded path, or one longer than that runs by itself."""
        out: list[ForwardOutput | None] = [None] * len(segments)
        cap = self.max_rows or PROBE_ROWS
        group: list[int] = []
        rows = 0

        def flush():
            nonlocal rows
            if len(group) == 1:
                out[group[0]] = run_segment(self, segments[group[0]])
            elif group:
                for i, fwd in zip(group, self._chains([segments[i] for i in group])):
                    out[i] = fwd
            group.clear()
            rows = 0

        # by sequence id: with a stream per sequence, llama.cpp splits a batch wherever the ids of
        # its sequences are not consecutive
        for i, seg in sorted(enumerate(segments), key=lambda s: s[1].cache.seq):
            n = int(seg.tokens.shape[0])
            if seg.tree_mask is not None or seg.cache.redo or n > cap or seg.hidden_layers:
                out[i] = run_segment(self, seg)
                continue
            if rows + n > cap:
                flush()
            group.append(i)
            rows += n
        flush()
        return out

    def _chains(self, segs: list) -> list[ForwardOutput]:
        """Chain segments of distinct caches, none with a re-decoded path, in one decode."""
        toks, pos, seqs, outputs, wanted = [], [], [], [], []
        self._drop_trees()
        hidden = any(s.final_hidden for s in segs)
        for s in segs:
            cache = s.cache
            n = int(s.tokens.shape[0])
            start = cache.length if s.start is None else s.start
            cache.check_fits(start, n)
            p = s.positions.tolist()
            if p != list(range(start, start + n)):
                raise SpecdraftError("the gguf backend writes a chain at consecutive positions from its start slot")
            self._rm(cache.seq, start)
            cache.pending = None
            rows = list(range(n)) if s.logits_at is None else list(range(n))[s.logits_at]
            outs = [hidden] * n  # with hidden states on, every row comes out (each segment keeps its own)
            for r in rows:
                outs[r] = True
            toks += s.tokens.tolist()
            pos += p
            seqs += [[cache.seq]] * n
            outputs += outs
            wanted.append((rows, outs))
        logits, hid = self._decode(toks, pos, seqs, outputs, hidden)
        result, at = [], 0
        for s, (rows, outs) in zip(segs, wanted):
            m = sum(outs)
            lg = None if logits is None else logits[at:at + m]
            hd = None if hid is None else hid[at:at + m]
            if lg is not None and m != len(rows):  # every row came out: keep the asked ones
                lg = lg[rows] if rows else None
            result.append(ForwardOutput(logits=lg if rows else None, final_hidden=hd if s.final_hidden else None))
            at += m
        return result

    def prefill(self, tokens: list[int], cache: LlamaCppCache, *, chunk: int = PREFILL_CHUNK,
                final_hidden: bool = False, hidden_layers: tuple[int, ...] = (),
                should_stop: Callable[[], bool] | None = None,
                on_progress: Callable[[int], None] | None = None) -> ForwardOutput | None:
        """As `Decoder.prefill`: `tokens` into `cache` from its length in chunks, committed."""
        if hidden_layers:
            raise SpecdraftError("the gguf backend gives no intermediate layers' hidden states: use --backend torch")
        n = len(tokens)
        if n == 0:
            raise ValueError("prefill needs at least one token")
        chunk = min(chunk, PREFILL_CHUNK)
        finals, fwd = [], None
        for lo in range(0, n, chunk):
            if lo and should_stop is not None and should_stop():
                return None
            hi = min(n, lo + chunk)
            s = cache.length
            fwd = self.forward(torch.tensor(tokens[lo:hi]), torch.arange(s, s + hi - lo), cache,
                               logits_at=slice(-1, None) if hi == n else slice(0, 0), final_hidden=final_hidden)
            cache.commit(hi - lo)
            if on_progress is not None:
                on_progress(hi)
            if final_hidden:
                finals.append(fwd.final_hidden)
        if n <= chunk:
            return fwd
        return ForwardOutput(logits=fwd.logits, final_hidden=torch.cat(finals) if final_hidden else None)


def exact_rows(model: LlamaCppDecoder) -> int:
    """`model.probe_exact_rows()`, measured once per GGUF file, CPU and llama.cpp build, and kept in
    $SPECDRAFT_HOME/gguf/exact-rows.json (a probe takes 16 one-row steps and up to 15 batches)."""
    import json

    from ..paths import atomic_file, home

    st = model.path.stat()
    key = "|".join((str(model.path.resolve()), str(st.st_size), str(st.st_mtime_ns), _cpu_identity(),
                    getattr(model.ll, "__version__", "?")))
    path = home() / "gguf" / "exact-rows.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if not isinstance(table, dict) or not isinstance(table.get(key), int):
        table = table if isinstance(table, dict) else {}
        table[key] = model.probe_exact_rows()
        with atomic_file(path, "w") as f:
            json.dump(table, f, indent=1)
    return table[key]


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (kernels are chosen by them)."""
    import hashlib

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))][:2]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _free_all(ll, ctx, model) -> None:
    ll.llama_free(ctx)
    ll.llama_model_free(model)

