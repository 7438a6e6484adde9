"""Hybrid drafting: several drafters behind one spec, `lookup+ctc`, `lookup+draft-model:NAME`;
the hybrid's own options follow its parts in parentheses: `(lookup+ctc)?mode=union&max_nodes=8`.

Prompt lookup is nearly free and very accurate when the text repeats itself, and useless when it
does not; a model drafter (ctc, medusa, a draft model) costs a little every step and is right at
a steady, lower rate. A hybrid takes the best of both per step, not per prompt:
- mode "first" (default): the parts are asked in order and the first non-empty proposal is
  drafted; a later part is not run at all on that step (a draft model saves its forwards);
- mode "union": every part proposes and the proposals are merged into one prefix tree (shared
  prefixes deduplicated, the earlier part's branches first), cut to `max_nodes`.

Merged or not, the result is an ordinary token tree the target verifies, so decoding stays
lossless. A merged tree drops the parts' draft probabilities (q = None): the verifier then treats
each node as a fixed token, which is lossless for any token chosen independently of the
verifier's draws ("first" passes the chosen part's draft, q included, through unchanged).
Each part observes the verdict in terms of its own draft (the accepted tokens walked down its own
tree), and a part that was not asked on a step is told to `catch_up` on that step's forward.
"""

from __future__ import annotations

from ..verify.tree import Draft, children, follow
from ..verify.verify import Verdict
from .specs import format_spec
from .base import Drafter, Needs, StepContext

MODES = ("first", "union")


def leaf_paths(draft: Draft) -> list[list[int]]:
    """Every root-to-leaf token sequence of a tree, leaves in node order."""
    kids = children(draft.parents)
    paths: dict[int, list[int]] = {-1: []}
    out = []
    for i, (t, p) in enumerate(zip(draft.tokens, draft.parents)):
        paths[i] = paths[p] + [t]
        if not kids[i + 1]:
            out.append(paths[i])
    return out


def merge_drafts(drafts: list[Draft], max_nodes: int) -> Draft:
    """One prefix tree holding every draft's paths (the earlier drafts' nodes first), cut to
    `max_nodes` nodes (a topological prefix, so still a tree)."""
    seqs = [s for d in drafts for s in leaf_paths(d)]
    return Draft.from_sequences(seqs).truncated(max_nodes)


def sub_verdict(draft: Draft, accepted: list[int]) -> Verdict:
    """What verification did to `draft` when the committed tokens were `accepted` (the accepted
    path's tokens, then the bonus token): the longest path of `draft` along those tokens."""
    path = follow(draft, accepted[:-1])
    return Verdict(path, [draft.tokens[i] for i in path] + [accepted[len(path)]])


def check_options(mode: str = "first", max_nodes: int = 16) -> None:
    """A hybrid's own options, checked before any part is built (an unknown one is a TypeError)."""
    from ..errors import SpecdraftError

    if mode not in MODES:
        raise SpecdraftError(f"hybrid mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(max_nodes, int) or max_nodes < 1:
        raise SpecdraftError(f"hybrid max_nodes takes a positive number of nodes, got {max_nodes!r}")


class HybridDrafter(Drafter):
    def __init__(self, parts: list[Drafter], *, mode: str = "first", max_nodes: int = 16):
        from ..errors import SpecdraftError

        check_options(mode, max_nodes)
        if len(parts) < 2:
            raise SpecdraftError("a hybrid needs at least two drafters (lookup+ctc)")
        self.parts = parts
        self.mode = mode
        self.max_nodes = max_nodes
        self.name = "+".join(p.name for p in parts)
        if mode != "first":  # the spec that builds this hybrid again (the default mode needs no parentheses)
            self.name = format_spec(f"({self.name})", options={"mode": mode, "max_nodes": max_nodes})
        self._drafts: list[Draft | None] = [None] * len(parts)
        self.used = [0] * len(parts)  # steps whose draft came (first) from each part

    @property
    def needs(self) -> Needs:
        ns = [p.needs for p in self.parts]
        return Needs(final_hidden=any(n.final_hidden for n in ns),
                     hidden_layers=tuple(sorted({i for n in ns for i in n.hidden_layers})),
                     target=any(n.target for n in ns))

    def start(self, prompt_ids: list[int], ctx: StepContext) -> None:
        self.used = [0] * len(self.parts)
        for p in self.parts:
            p.start(prompt_ids, ctx)

    def propose(self, ctx: StepContext) -> Draft:
        self._drafts = [None] * len(self.parts)
        if self.mode == "first":
            for i, p in enumerate(self.parts):
                d = p.propose(ctx)
                self._drafts[i] = d
                if len(d):
                    self.used[i] += 1
                    for later in self.parts[i + 1:]:
                        later.catch_up(ctx)
                    return d  # one part's own draft: its q (if sampled) stays valid
            return Draft.empty()
        drafts = [p.propose(ctx) for p in self.parts]
        self._drafts = drafts
        for i, d in enumerate(drafts):
            if len(d):
                self.used[i] += 1
                break
        return merge_drafts(drafts, min(self.max_nodes, ctx.budget))  # q dropped (see module doc)

    def observe(self, draft: Draft, verdict: Verdict) -> None:
        accepted = verdict.tokens
        for p, d in zip(self.parts, self._drafts):
            if d is not None:
                p.observe(d, sub_verdict(d, accepted))

    def catch_up(self, ctx: StepContext) -> None:
        for p in self.parts:
            p.catch_up(ctx)

    def prepare(self) -> None:
        for p in self.parts:
            p.prepare()

    def fork(self) -> "HybridDrafter":
        out = super().fork()
        out.parts = [p.fork() for p in self.parts]
        return out

    def describe(self) -> dict:
        out: dict = {"hybrid": {"mode": self.mode, "steps_by_part": dict(zip((p.name for p in self.parts), self.used))}}
        for p in self.parts:
            for k, v in p.describe().items():
                out.setdefault(k, v)
        return out
