"""Verification as pure functions of the draft, the target's logits and the sampling parameters.

Vocabulary (after vLLM's rejection sampler):
- *accepted* tokens: drafted nodes on the path the target agrees with;
- *recovered* token: drawn from the residual distribution where a node's children were all
  rejected (sampling), or the target's argmax there (greedy);
- *bonus* token: the target's own next token after a fully accepted leaf.
Every verification commits the accepted tokens plus exactly one recovered-or-bonus token, so a
step always makes progress. Rows of `logits` follow tree.py: row 0 = root, row 1 + i = node i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime.sampling import SamplingParams, target_probs
from .tree import Draft, children


@dataclass(frozen=True)
class Verdict:
    path: list[int]  # accepted node indices, root to leaf
    tokens: list[int]  # the accepted tokens, then the recovered or bonus token: len(path) + 1


def verify_greedy(draft: Draft, logits: torch.Tensor) -> Verdict:
    """Longest path whose every token is the target's argmax at its parent, plus the bonus token.

    logits: [n+1, V]
    """
    best = logits.argmax(-1).tolist()  # one host sync for the whole tree
    kids = children(draft.parents)
    path: list[int] = []
    row = 0
    while True:
        want = best[row]
        nxt = next((c for c in kids[row] if draft.tokens[c] == want), None)
        if nxt is None:
            return Verdict(path, [draft.tokens[i] for i in path] + [want])
        path.append(nxt)
        row = nxt + 1


def _normalize(x: torch.Tensor) -> torch.Tensor | None:
    s = x.sum()
    return x / s if s > 0 else None


def verify_sampling(draft: Draft, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> Verdict:
    """Lossless speculative sampling over a chain or a tree.

    At a node, children are tried in order. A child x drawn from q is accepted with probability
    min(1, p(x) / q(x)); on rejection p <- normalize(max(0, p - q)) and, since siblings were drawn
    without replacement, q <- q with x removed, renormalized (the multi-candidate correction).
    Without q (deterministic drafts) q is one-hot at x: accept with p(x), then p <- p without x.
    If every child is rejected (or there is none) the recovered / bonus token is drawn from p.

    logits: [n+1, V] raw target logits; probabilities use the same temperature / top-k / top-p
    processing as plain sampling, so the committed tokens follow exactly plain sampling's law.
    """
    logits = logits.float()
    q_all = None if draft.q is None else draft.q.float().cpu()
    kids = children(draft.parents)
    u = torch.rand(len(draft) + 1, generator=generator, device=generator.device).cpu().tolist()
    path: list[int] = []
    row = 0
    while True:
        p_row = target_probs(logits[row:row + 1], params)[0].cpu()  # only rows on the path are processed
        p = p_row
        # Siblings share the row they were drawn from; it loses each rejected token in turn.
        q = None if q_all is None or not kids[row] else q_all[kids[row][0]].clone()
        accepted = None
        for c in kids[row]:
            x = draft.tokens[c]
            if q is None:  # deterministic draft: one-hot q at x
                if u[c] < p[x].item():
                    accepted = c
                    break
                residual = p.clone()
                residual[x] = 0
            else:
                qx = q[x].item()
                if qx > 0 and u[c] * qx < p[x].item():
                    accepted = c
                    break
                residual = torch.clamp(p - q, min=0)
                q[x] = 0
                q = _normalize(q)
                if q is None:  # q's whole mass is used up: no further sibling can be accepted
                    q = torch.zeros_like(p)
            # A rejection of zero probability can only come from rounding: keep p then.
            p = _normalize(residual)
            if p is None:
                p = p_row
        if accepted is None:
            tok = int(torch.multinomial(p, 1, generator=_cpu_gen(generator, u[-1])))
            return Verdict(path, [draft.tokens[i] for i in path] + [tok])
        path.append(accepted)
        row = accepted + 1


def _cpu_gen(generator: torch.Generator, u: float) -> torch.Generator:
    """The final draw is made on the host; seed a host generator from the request's stream."""
    if generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(int(u * 2**62))


def verify(draft: Draft, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> Verdict:
    if params.greedy:
        return verify_greedy(draft, logits)
    return verify_sampling(draft, logits, params, generator)
