"""Skip-set search for self-speculative decoding (one domain at a time).

Objective, per candidate skip set S (cheap: one forward per prompt, no decode loop):
- matchness m(S): the full model first decodes each search prompt greedily and its KV for prompt +
  continuation is cached once. For every continuation position p, a draft-mode row (skip set S)
  reads the *full model's* KV of the exact prefix [0, p) -- what the first draft token of a real
  decoding step sees -- and must reproduce the full model's token at p + 1. All positions of a
  prompt run in one forward (a custom mask); m is the fraction that match.
- cost c(S): the fraction of the weights a draft token still reads (kept sublayers + LM head).
- modelled speedup: max over draft length g of (1 - m^(g+1)) / ((1 - m)(g c + 1)), i.e. expected
  tokens per step over the step's cost in full-forward units (verification ~ one forward).
The search maximises the modelled speedup: optuna's TPE sampler over the 2L skip bits, with
SWIFT-style random moves (a few bits of the best set flipped) enqueued between TPE suggestions;
it stops after `patience` evaluations without improvement, `max_evals`, or `max_seconds`.
`hill_climb` and `random_search` are the baselines the search is compared against.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..runtime.cache import KVCache
from ..runtime.model import Decoder, SkipSet


@dataclass
class MatchPrompt:
    cache: KVCache  # full-model KV of prompt + continuation, plus room for the draft rows
    tokens: torch.Tensor  # draft-row tokens x_p
    positions: torch.Tensor  # p
    targets: torch.Tensor  # full model's x_{p+1}
    mask: torch.Tensor  # [n, T + n]


@torch.inference_mode()
def prepare(model: Decoder, prompts: list[list[int]], new_tokens: int = 32, progress: bool = True) -> list[MatchPrompt]:
    from ..engine import generate_ids

    out = []
    for ids in tqdm(prompts, desc="full-model continuations", unit="prompt", disable=not progress):
        cont, _ = generate_ids(model, ids, max_new_tokens=new_tokens)
        seq = ids + cont
        T, P = len(seq), len(ids)
        rows = torch.arange(P - 1, T - 1)  # positions whose next token is a continuation token
        n = rows.numel()
        cache = model.new_cache(T + n)
        model(torch.tensor(seq), torch.arange(T), cache, logits_at=slice(0, 0))
        cache.commit(T)
        mask = torch.zeros(n, T + n, dtype=torch.bool)
        mask[:, :T] = torch.arange(T)[None, :] < rows[:, None]  # the exact prefix, full-model KV
        mask[torch.arange(n), T + torch.arange(n)] = True  # and itself
        out.append(MatchPrompt(cache, torch.tensor(seq)[rows], rows, torch.tensor(seq)[rows + 1], mask))
    return out


@torch.inference_mode()
def matchness(model: Decoder, data: list[MatchPrompt], skip: SkipSet) -> float:
    hit = total = 0
    for d in data:
        fwd = model(d.tokens, d.positions, d.cache, mask=d.mask, skip=skip)
        hit += int((fwd.logits.argmax(-1).cpu() == d.targets).sum())
        total += d.targets.numel()
    return hit / max(1, total)


def sublayer_sizes(model: Decoder) -> tuple[list[int], list[int], int]:
    attn = [l.qkv.weight.numel() + l.o.weight.numel() for l in model.layers]
    mlp = [l.gate_up.weight.numel() + l.down.weight.numel() for l in model.layers]
    return attn, mlp, model.head_weight().numel()


def cost(sizes: tuple[list[int], list[int], int], skip: SkipSet) -> float:
    attn, mlp, head = sizes
    total = head + sum(attn) + sum(mlp)
    kept = head + sum(a for a, s in zip(attn, skip.attn) if not s) + sum(m for m, s in zip(mlp, skip.mlp) if not s)
    return kept / total


def modelled_speedup(m: float, c: float, max_len: int = 12) -> tuple[float, int]:
    """(best expected speedup, its draft length) for per-token acceptance m and draft cost c."""
    m = min(m, 0.999)
    best, best_g = 1.0, 0
    for g in range(1, max_len + 1):
        s = (1 - m ** (g + 1)) / ((1 - m) * (g * c + 1))
        if s > best:
            best, best_g = s, g
    return best, best_g


def bits_to_skip(bits: list[int], L: int) -> SkipSet:
    return SkipSet(tuple(bool(b) for b in bits[:L]), tuple(bool(b) for b in bits[L:]))


def skip_to_bits(skip: SkipSet) -> list[int]:
    return [int(b) for b in skip.attn + skip.mlp]


class Objective:
    """Memoised evaluation of bit vectors; records every evaluation."""

    def __init__(self, model: Decoder, data: list[MatchPrompt], protect: tuple[int, ...]):
        self.model, self.data = model, data
        self.L = model.cfg.num_layers
        self.sizes = sublayer_sizes(model)
        self.protect = set(protect)
        self.memo: dict[tuple[int, ...], dict] = {}
        self.evals = 0
        self.best: dict | None = None
        self.t0 = time.perf_counter()

    def free(self) -> list[int]:
        """Bit indices the search may set (protected layers' sublayers are never skipped)."""
        return [i for i in range(2 * self.L) if i % self.L not in self.protect]

    def __call__(self, bits: list[int]) -> dict:
        key = tuple(int(b) for b in bits)
        if key in self.memo:
            return self.memo[key]
        skip = bits_to_skip(list(key), self.L)
        m = matchness(self.model, self.data, skip)
        c = cost(self.sizes, skip)
        s, g = modelled_speedup(m, c)
        self.evals += 1
        r = {"bits": key, "matchness": m, "cost": c, "modelled_speedup": s, "draft_length": g,
             "evals": self.evals, "seconds": time.perf_counter() - self.t0}
        self.memo[key] = r
        if self.best is None or s > self.best["modelled_speedup"]:
            self.best = r
        return r


def search(obj: Objective, *, max_evals: int = 300, patience: int = 80, max_seconds: float = 600.0,
           seed: int = 0, progress: bool = True) -> dict:
    """TPE + random moves around the best set; returns the best record plus a trace."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(seed)
    free = obj.free()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=20))
    study.enqueue_trial({f"b{i}": 0 for i in free})  # skip nothing: the floor (1.0x)
    trace, since = [], 0
    bar = tqdm(total=max_evals, desc="skip-set search", unit="eval", disable=not progress)
    best_s = -math.inf
    while obj.evals < max_evals and since < patience and time.perf_counter() - obj.t0 < max_seconds:
        if obj.best is not None and len(study.trials) % 2 == 1:  # SWIFT-style random move
            bits = list(obj.best["bits"])
            for i in rng.sample(free, k=min(len(free), rng.choice((1, 1, 2, 3)))):
                bits[i] ^= 1
            study.enqueue_trial({f"b{i}": bits[i] for i in free})
        trial = study.ask()
        bits = [0] * (2 * obj.L)
        for i in free:
            bits[i] = trial.suggest_int(f"b{i}", 0, 1)
        before = obj.evals
        r = obj(bits)
        study.tell(trial, r["modelled_speedup"])
        if obj.evals > before:
            bar.update(1)
        if r["modelled_speedup"] > best_s + 1e-9:
            best_s, since = r["modelled_speedup"], 0
            trace.append({k: r[k] for k in ("evals", "seconds", "modelled_speedup", "matchness", "cost")})
            bar.set_postfix(best=f"{best_s:.3f}", match=f"{r['matchness']:.2f}", cost=f"{r['cost']:.2f}")
        else:
            since += 1
    bar.close()
    return {**obj.best, "trace": trace, "total_evals": obj.evals, "total_seconds": time.perf_counter() - obj.t0}


def hill_climb(obj: Objective, start: list[int] | None = None, progress: bool = True) -> dict:
    """Exhaustive-neighbourhood search: from `start`, evaluate every single-bit flip, move to the
    best improving one, repeat until no flip improves (a local optimum)."""
    free = obj.free()
    cur = obj(start or [0] * (2 * obj.L))
    bar = tqdm(desc="hill climb", unit="eval", disable=not progress)
    while True:
        best = cur
        for i in free:
            bits = list(cur["bits"])
            bits[i] ^= 1
            r = obj(bits)
            bar.update(1)
            if r["modelled_speedup"] > best["modelled_speedup"] + 1e-9:
                best = r
        if best is cur:
            break
        cur = best
    bar.close()
    return {**cur, "total_evals": obj.evals, "total_seconds": time.perf_counter() - obj.t0}


def random_search(obj: Objective, n: int, seed: int = 0, progress: bool = True) -> dict:
    """n random sets, each skipping a uniformly drawn number of free sublayers."""
    rng = random.Random(seed)
    free = obj.free()
    for _ in tqdm(range(n), desc="random search", unit="eval", disable=not progress):
        bits = [0] * (2 * obj.L)
        for i in rng.sample(free, k=rng.randint(0, len(free) // 2)):
            bits[i] = 1
        obj(bits)
    return {**obj.best, "total_evals": obj.evals, "total_seconds": time.perf_counter() - obj.t0}
