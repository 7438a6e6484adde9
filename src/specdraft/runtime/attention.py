"""Decode-step attention whose result for a row does not depend on the other rows of the call.

Why: speculative decoding promises the tokens of plain decoding. Plain decoding computes each new
token's row in a one-row forward; verification computes the same row inside a forward of a few
rows (a chain or a tree of drafted tokens), over a cache laid out differently (a tree's nodes sit
after their siblings, not at their positions). In float32 the two differ in the last bits and
greedy tokens practically never change. In bfloat16 each product's result is rounded to 8
mantissa bits, and torch's fused attention gives a row slightly different sums with the number of
rows and of keys in the call: the rounding then flips a logit and, within a few dozen tokens, a
greedy token (docs/archive/benchmarks-history.md). The linear layers' share of it, oneDNN's one-row
kernel, is handled in runtime/packed.py.

Here a row's attention is a function of its query and of its visible keys and values in position
order only:
- the row reads its keys in position order from slot 0, padded to whole blocks of BLOCK slots
  (hidden by the mask): a chain's rows (and a one-row step) read the cache in place, a position
  being its slot; a tree is verified path by path, each root-to-leaf path's keys and values
  written in place of the tree for the call that computes its rows (`DecodePlan`);
- the attention is transformers' eager one: scores = q k^T (one bf16 product, scaled, plus the
  additive mask), a float32 softmax, probabilities (cast to bf16) times v, computed for each row
  in a call of its own whose shapes are the one-row step's (the query heads of a kv head, two at
  least): oneDNN chooses its bf16 kernel by shape, and on a CPU with AMX several rows in one call
  rounded unlike the one-row step. The softmax's sums over whole blocks do not change with
  trailing hidden keys (tested: tests/test_invariant.py).
So a one-row step and a verification row at the same position compute the same bits, and the
greedy tokens of every drafter equal plain decoding's in bfloat16 too. It costs about what
torch's fused kernel does on a decode step (faster past ~1000 keys; benchmarks/invariant_cost.py).

Used for bfloat16 decode steps on a CPU (`applies`), sliding-window layers included (a row reads
the blocks from its window's first key's); a prompt's prefill (the same for plain and speculative
decoding) and float32 (where verification already keeps greedy tokens: tested) keep torch's fused
attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Keys are read in whole blocks of this many slots (a cache allocates whole blocks: `slots_for`).
BLOCK = 64


def applies(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a decode step uses the row-invariant attention: bf16 on a CPU."""
    return dtype == torch.bfloat16 and device.type == "cpu"


def slots_for(capacity: int) -> int:
    """Slots a cache of this capacity allocates: whole blocks."""
    return -(-capacity // BLOCK) * BLOCK


@dataclass(frozen=True)
class Call:
    """One attention call of a forward: the rows of one root-to-leaf path of the draft.

    path:   the path's rows (root first) to write at slots start, start + 1, ... before the call;
            None when they are there already (a chain, the tree's first path, a path's later rows);
    rows:   the row this call computes (None = all: a one-row step);
    lo:     the first slot the scores read (a block boundary; 0 but for sliding windows);
    add:    [heads * len(rows), keys] additive mask (0 or -inf) in the model's dtype, rows ordered
            head-major as the queries are; keys = the slots [lo, lo + keys) the scores read;
    groups: the call's rows (indices into `rows`) by the value slots [a, b) their product reads:
            the whole blocks from their first key's to their own position's, so that a row's
            probabilities-times-values product has the same length in a one-row step (oneDNN's
            bf16 product sums a longer one, zeros included, in another order now and then).
    """

    path: torch.Tensor | None
    rows: torch.Tensor | None
    lo: int
    add: torch.Tensor
    groups: tuple[tuple[torch.Tensor, int, int], ...]


@dataclass(frozen=True)
class DecodePlan:
    calls: tuple[Call, ...]

    @property
    def restore(self) -> bool:
        """Whether paths are written over the tree: its rows go back in order after the calls."""
        return any(c.path is not None for c in self.calls)


def _floor(slot: int) -> int:
    return slot // BLOCK * BLOCK


def _call(path: torch.Tensor | None, rows: list[int] | None, visible_to: list[int], window: int | None, heads: int,
          dtype: torch.dtype, device) -> Call:
    """The call for rows where row r sees slots [0, visible_to[r]), or with a sliding `window`
    only the last `window` of them. The keys read start at the block of the earliest first key."""
    first = [0 if window is None else max(0, end - window) for end in visible_to]
    lo = _floor(min(first))
    keys = torch.arange(lo, slots_for(max(visible_to)))[None, :]
    hide = (keys >= torch.tensor(visible_to)[:, None]) | (keys < torch.tensor(first)[:, None])
    add = torch.zeros(hide.shape, dtype=dtype).masked_fill_(hide, float("-inf")).repeat(heads, 1).to(device)
    by_range: dict[tuple[int, int], list[int]] = {}
    for r, (a, end) in enumerate(zip(first, visible_to)):
        by_range.setdefault((_floor(a), slots_for(end)), []).append(r)
    groups = tuple((torch.tensor(g, device=device), a, b) for (a, b), g in sorted(by_range.items()))
    return Call(path, None if rows is None else torch.tensor(rows, device=device), lo, add, groups)


def plan(start: int, positions: list[int], mask: torch.Tensor | None, heads: int, dtype: torch.dtype,
         device, slots: int, window: int | None = None) -> DecodePlan | None:
    """The calls for n new rows written at slots [start, start + n), at `positions`, under `mask`
    ([n, start + n] bool, True = may attend; None = causal); `heads` query heads share a kv head;
    the cache has `slots` slots; `window`: a sliding window's length (its layers take their own
    plan). Slot j < start holds position j. None when a row's visible keys are not positions 0..
    its own (a custom mask) or the cache is not whole blocks: the caller then keeps the fused
    attention."""
    heads = max(heads, 2)  # oneDNN's one-row product differs (packed.py): never one row
    n = len(positions)
    if slots_for(start + n) > slots:
        return None
    if mask is None:
        seen = [list(range(r + 1)) for r in range(n)]
    else:
        mask = mask.cpu()
        if not bool(mask[:, :start].all()):
            return None
        seen = [torch.nonzero(row).flatten().tolist() for row in mask[:, start:]]
    for r, p in enumerate(positions):  # the new rows a row sees: positions start, ..., p in order
        if [positions[i] for i in seen[r]] != list(range(start, p + 1)):
            return None
    if n == 1:  # a one-row step: one call, in place
        return DecodePlan((_call(None, None, [positions[0] + 1], window, heads, dtype, device),))
    # Every row in a call of its own, shaped as its one-row step's: oneDNN picks its bf16 kernel by
    # the product's shape, and on a CPU with AMX a call of several rows (queries heads x rows) took
    # another kernel than the one-row step's and rounded a row differently (a 6-row chain, 6 query
    # heads per kv head: tests/test_invariant.py). A chain reads the cache in place; a tree writes
    # each root-to-leaf path over it once, before its first row's call.
    leaves = [r for r in range(n) if not any(r in seen[c] for c in range(n) if c != r)]
    done: set[int] = set()
    calls = []
    for leaf in leaves:
        path = seen[leaf]
        rows = [i for i in path if i not in done]
        done.update(rows)
        write = None if path == list(range(len(path))) else torch.tensor(path, device=device)
        for j, i in enumerate(rows):
            calls.append(_call(write if j == 0 else None, [i], [start + path.index(i) + 1], window, heads, dtype,
                               device))
    return DecodePlan(tuple(calls))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: Call, scale: float) -> torch.Tensor:
    """q [Hkv, G, R, D] (the call's rows), k and v [Hkv, slots, D] -> [Hkv, G, R, D]: transformers'
    eager attention (bf16 scores, float32 softmax, bf16 probabilities times values)."""
    Hkv, G, R, D = q.shape
    lo, keys = call.lo, call.add.shape[1]
    s = torch.baddbmm(call.add.expand(Hkv, -1, -1), q.reshape(Hkv, G * R, D), k[:, lo:lo + keys].transpose(1, 2),
                      alpha=scale)
    p = torch.softmax(s, -1, dtype=torch.float32).to(q.dtype).view(Hkv, G, R, keys)
    if len(call.groups) == 1:
        _, a, b = call.groups[0]
        return torch.bmm(p[..., a - lo:b - lo].reshape(Hkv, G * R, b - a), v[:, a:b]).view(Hkv, G, R, D)
    out = q.new_empty(Hkv, G, R, D)
    for rows, a, b in call.groups:
        out[:, :, rows] = torch.bmm(p[:, :, rows, a - lo:b - lo].reshape(Hkv, -1, b - a), v[:, a:b]).view(Hkv, G, -1, D)
    return out


def decode_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     start: int, plan: DecodePlan, scale: float) -> torch.Tensor:
    """Row-invariant attention of a decode step (see the module doc).

    q [Hkv, G, n, D] (G query heads share a kv head); k_new, v_new [Hkv, n, D] the new rows' keys
    and values, already written at slots [start, start + n) of the layer's cache k, v
    [Hkv, slots, D]. Returns [Hkv, G, n, D].
    """
    if q.shape[1] == 1:  # two query rows at least (see `plan`)
        return decode_attention(q.expand(-1, 2, -1, -1), k_new, v_new, k, v, start, plan, scale)[:, :1]
    if len(plan.calls) == 1 and plan.calls[0].rows is None:
        return _attend(q, k, v, plan.calls[0], scale)
    out = torch.empty_like(q)
    for call in plan.calls:
        if call.path is not None:
            k[:, start:start + len(call.path)] = k_new[:, call.path]
            v[:, start:start + len(call.path)] = v_new[:, call.path]
        out[:, :, call.rows] = _attend(q[:, :, call.rows], k, v, call, scale)
    if plan.restore:
        k[:, start:start + k_new.shape[1]] = k_new
        v[:, start:start + v_new.shape[1]] = v_new
    return out
