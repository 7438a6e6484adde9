"""Token trees: what a drafter proposes, and the masks and positions a verification forward needs.

A draft of n nodes hangs under the *root*: the last committed token, whose KV is not yet in the
target's cache. Node i has token `tokens[i]` and parent `parents[i]` (-1 = the root), with
parents[i] < i, so nodes are in topological order and any prefix of them is still a tree. A chain
is parents = [-1, 0, 1, ...]. The verification forward runs over [root] + nodes: row 0 holds the
root, row 1 + i holds node i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Draft:
    tokens: list[int]  # [n]
    parents: list[int]  # [n], -1 = child of the root
    # [n, V] the distribution each node was *sampled* from (siblings were drawn from the same row,
    # without replacement). None for deterministic drafts (argmax, top-k, n-gram lookup): the
    # verifier then treats each node as one-hot, which stays lossless.
    q: torch.Tensor | None = None

    def __post_init__(self):
        if len(self.tokens) != len(self.parents):
            raise ValueError("a draft needs one parent per token")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i} has parent {p}: parents must come before their children")
        if self.q is not None and self.q.shape[0] != len(self.tokens):
            raise ValueError("q needs one row per node")

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def empty(cls) -> "Draft":
        return cls([], [])

    @classmethod
    def chain(cls, tokens: list[int], q: torch.Tensor | None = None) -> "Draft":
        return cls(list(tokens), list(range(-1, len(tokens) - 1)), q)

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    @classmethod
    def from_sequences(cls, seqs: list[list[int]]) -> "Draft":
        """Deduplicate candidate continuations into a prefix tree (nodes in first-seen order, so
        earlier candidates' branches are tried first)."""
        tokens: list[int] = []
        parents: list[int] = []
        index: dict[tuple[int, int], int] = {}  # (parent, token) -> node
        for seq in seqs:
            parent = -1
            for t in seq:
                node = index.get((parent, t))
                if node is None:
                    node = index[(parent, t)] = len(tokens)
                    tokens.append(t)
                    parents.append(parent)
                parent = node
        return cls(tokens, parents)

    def truncated(self, n: int) -> "Draft":
        """The first n nodes (still a tree, by topological order)."""
        if n >= len(self):
            return self
        return Draft(self.tokens[:n], self.parents[:n], None if self.q is None else self.q[:n])


def depths(parents: list[int]) -> list[int]:
    """Depth of each node below the root (a child of the root has depth 1)."""
    d: list[int] = []
    for p in parents:
        d.append(1 if p < 0 else d[p] + 1)
    return d


def children(parents: list[int]) -> list[list[int]]:
    """kids[0] = children of the root, kids[1 + i] = children of node i, in node order."""
    kids: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, p in enumerate(parents):
        kids[p + 1].append(i)
    return kids


def follow(draft: "Draft", tokens: list[int]) -> list[int]:
    """The longest path of nodes (root down) whose tokens are a prefix of `tokens`."""
    kids = children(draft.parents)
    path: list[int] = []
    for tok in tokens:
        nxt = next((c for c in kids[path[-1] + 1 if path else 0] if draft.tokens[c] == tok), None)
        if nxt is None:
            break
        path.append(nxt)
    return path


def verify_mask(parents: list[int]) -> torch.Tensor:
    """[n+1, n+1] bool: row r may attend to column c (root + nodes; each sees itself, its ancestors)."""
    n = len(parents)
    anc = [1]  # bitmask of rows visible to the root row
    for i, p in enumerate(parents):
        anc.append(anc[p + 1] | (1 << (i + 1)))
    bits = torch.tensor([[(a >> c) & 1 for c in range(n + 1)] for a in anc], dtype=torch.bool)
    return bits


def accepted_slots(path: list[int]) -> list[int]:
    """Slot offsets (relative to the committed length) to keep: the root, then the accepted nodes."""
    return [0] + [1 + i for i in path]
