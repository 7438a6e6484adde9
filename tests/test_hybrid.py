"""Hybrid drafters (`lookup+ctc`): tree merging, per-part verdicts, lossless decoding, specs."""

import random

import pytest
import torch
from conftest import perturbed, tiny_decoder
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ctc_medusa import tiny_heads

from specdraft import LLM
from specdraft.drafters import build_drafter, check_spec
from specdraft.drafters.ctc import CTCDrafter
from specdraft.drafters.draft_model import DraftModelDrafter
from specdraft.drafters.hybrid import HybridDrafter, leaf_paths, merge_drafts, sub_verdict
from specdraft.drafters.lookup import LookupDrafter
from specdraft.engine import generate_ids
from specdraft.errors import SpecdraftError
from specdraft.runtime.sampling import SamplingParams
from specdraft.verify import Draft

PROMPT = [5, 17, 3, 60, 2, 9, 41, 5, 17, 3]


def random_tree(rng: random.Random, vocab: int = 4) -> Draft:
    seqs = [[rng.randrange(vocab) for _ in range(rng.randint(0, 4))] for _ in range(rng.randint(0, 4))]
    return Draft.from_sequences(seqs)


def all_paths(d: Draft) -> set[tuple[int, ...]]:
    """Every root-to-node token sequence of a tree."""
    out, seq = set(), {-1: ()}
    for i, (t, p) in enumerate(zip(d.tokens, d.parents)):
        seq[i] = seq[p] + (t,)
        out.add(seq[i])
    return out


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), cap=st.integers(0, 30))
def test_merge_keeps_every_path_and_only_those(seed, cap):
    rng = random.Random(seed)
    drafts = [random_tree(rng) for _ in range(rng.randint(1, 3))]
    union = set().union(*(all_paths(d) for d in drafts))
    merged = merge_drafts(drafts, max_nodes=100)
    assert all_paths(merged) == union
    assert len(merged) == len(union)  # shared prefixes are one node
    paths0 = all_paths(drafts[0])  # leaves: the paths no other path extends
    assert sorted(map(tuple, leaf_paths(drafts[0]))) == sorted(p for p in paths0 if not any(q[:len(p)] == p and q != p for q in paths0))
    cut = merge_drafts(drafts, max_nodes=cap)
    assert len(cut) == min(cap, len(union)) and all_paths(cut) <= union
    # the first draft's nodes come first: with its size as the cap, all of it survives
    assert all_paths(merge_drafts(drafts, len(drafts[0]))) == all_paths(drafts[0])


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_sub_verdict_walks_the_accepted_tokens_down_a_parts_tree(seed):
    rng = random.Random(seed)
    d = random_tree(rng)
    paths = sorted(all_paths(d) | {()})
    want = list(rng.choice(paths))
    extra = [rng.randrange(4) for _ in range(rng.randint(0, 3))]  # accepted beyond this part's tree
    accepted = want + extra + [rng.randrange(4)]
    v = sub_verdict(d, accepted)
    got = [d.tokens[i] for i in v.path]
    assert got == accepted[:len(got)] and len(got) >= len(want)
    assert v.tokens == got + [accepted[len(got)]]
    # maximal: no child of the last node matches the next accepted token
    last = v.path[-1] if v.path else -1
    assert not any(p == last and t == accepted[len(got)] for t, p in zip(d.tokens, d.parents)) or len(got) == len(accepted) - 1


@pytest.fixture(scope="module")
def target():
    return tiny_decoder(vocab=97, seed=0, scale=0.2)


@pytest.mark.parametrize("mode", ["first", "union"])
@pytest.mark.parametrize("seed", range(3))
def test_hybrids_are_lossless_and_keep_every_part_in_sync(target, mode, seed):
    heads = tiny_heads("ctc", target, seed)
    seen = []

    class Spy(CTCDrafter):  # records its window whenever it is asked or told to catch up
        def propose(self, ctx):
            d = super().propose(ctx)
            seen.append((list(ctx.ids), self.hist.clone()))
            return d

        def catch_up(self, ctx):
            super().catch_up(ctx)
            seen.append((list(ctx.ids), self.hist.clone()))

    ctc = Spy(heads, target.embed.weight, target.head_weight(), "t", max_nodes=4)
    draft_model = DraftModelDrafter(perturbed(target, 0.05, seed), "tiny", tree_width=2)
    plain, _ = generate_ids(target, PROMPT, max_new_tokens=48)
    for parts in ([LookupDrafter(num_tokens=4), ctc], [LookupDrafter(num_tokens=4), draft_model],
                  [LookupDrafter(min_ngram=2), ctc, draft_model]):
        h = HybridDrafter(parts, mode=mode, max_nodes=8)
        out, stats = generate_ids(target, PROMPT, max_new_tokens=48, drafter=h)
        assert out == plain
        assert stats.drafted > 0 and len(stats.extra["hybrid"]["steps_by_part"]) == len(parts)
        if ctc in parts:  # the CTC part's window matched the target's states of the latest positions
            ids, hist = seen[-1]
            fwd = target(torch.tensor(ids), torch.arange(len(ids)), target.new_cache(len(ids)), final_hidden=True)
            assert torch.allclose(hist, fwd.final_hidden[len(ids) - 1 - hist.shape[0]:len(ids) - 1], atol=1e-4)
        p = SamplingParams(temperature=0.8, seed=seed)
        a, _ = generate_ids(target, PROMPT, max_new_tokens=24, params=p, drafter=h)
        b, _ = generate_ids(target, PROMPT, max_new_tokens=24, params=p, drafter=h)
        assert a == b


def test_first_mode_uses_the_model_drafter_only_when_lookup_finds_nothing(target):
    calls = []

    class Counting(DraftModelDrafter):
        def propose(self, ctx):
            calls.append(len(ctx.ids))
            return super().propose(ctx)

    lookup = LookupDrafter(num_tokens=4)
    h = HybridDrafter([lookup, Counting(perturbed(target, 0.05, 0), "tiny")], mode="first")
    _, stats = generate_ids(target, PROMPT, max_new_tokens=40, drafter=h)
    used = stats.extra["hybrid"]["steps_by_part"]
    assert len(calls) == stats.target_forwards - 1 - used["lookup:4"]  # asked exactly when lookup was empty
    assert used["lookup:4"] > 0 and used["draft-model:tiny"] > 0


def test_hybrid_specs(tiny_llm_dir):
    check_spec("lookup+ctc")
    check_spec("lookup?min_ngram=2+draft-model:x?max_length=6")
    for bad in ["lookup+", "+ctc", "plain+lookup", "lookup+knn-ssd", "lookup+nonsense"]:
        with pytest.raises(SpecdraftError):
            check_spec(bad)
    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    d = build_drafter("lookup:3+lookup?min_ngram=1", llm.draft_context, mode="union")
    assert isinstance(d, HybridDrafter) and d.mode == "union" and d.parts[0].num_tokens == 3
    with pytest.raises(SpecdraftError, match="mode"):
        build_drafter("lookup+lookup:2", llm.draft_context, mode="nope")
    out = llm.generate("hello there hello", max_new_tokens=8, drafter="lookup:3+lookup:2")
    assert out.token_ids == llm.generate("hello there hello", max_new_tokens=8).token_ids


def test_hybrid_options_in_a_spec(tiny_llm_dir):
    check_spec("(lookup+ctc)?mode=union&max_nodes=8")
    check_spec("(lookup?min_ngram=2+draft-model:x?max_length=6)")
    for bad, why in [("(lookup)?mode=union", "parentheses"), ("(lookup+ctc)mode=union", "parentheses"),
                     ("(lookup+ctc?mode=union", "parentheses"), ("(lookup+ctc)?mode=zip", "mode"),
                     ("(lookup+ctc)?max_nodes=0", "max_nodes"), ("(lookup+ctc)?nodes=3", "'nodes' is not an option"),
                     ("(lookup+plain)?mode=union", "cannot be one of them")]:
        with pytest.raises(SpecdraftError, match=why):
            check_spec(bad)
    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    d = build_drafter("(lookup:3+lookup?min_ngram=1)?mode=union&max_nodes=5", llm.draft_context)
    assert isinstance(d, HybridDrafter) and (d.mode, d.max_nodes) == ("union", 5) and d.parts[0].num_tokens == 3
    again = build_drafter(d.name, llm.draft_context)  # the name is a spec that builds the same hybrid
    assert (again.mode, again.max_nodes, [p.name for p in again.parts]) == ("union", 5, [p.name for p in d.parts])
    assert again.parts[0].num_tokens == 3 and again.parts[1].min_ngram == 1
    assert build_drafter("(lookup:3+lookup:2)", llm.draft_context).name == "lookup:3+lookup:2"  # default mode: the plain name
    for spec in ("lookup", "lookup:4", "lookup?min_ngram=2", "lookup:16?max_ngram=4&adaptive=true"):
        d = build_drafter(spec, llm.draft_context)
        assert d.name == spec and build_drafter(d.name, llm.draft_context).describe() == d.describe()
    assert build_drafter("lookup?min_ngram=2+lookup:4", llm.draft_context).name == "lookup?min_ngram=2+lookup:4"
    out = llm.generate("hello there hello", max_new_tokens=8, drafter="(lookup:3+lookup:2)?mode=union")
    assert out.token_ids == llm.generate("hello there hello", max_new_tokens=8).token_ids
