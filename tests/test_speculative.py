"""The engine with drafters on tiny random models: lossless for greedy (every drafter, every
kind of draft) and for sampling (distribution of short sequences vs exact enumeration)."""

import itertools
import random

import pytest
import torch
from conftest import perturbed, tiny_decoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from specdraft.drafters.base import Drafter, StepContext
from specdraft.drafters.draft_model import DraftModelDrafter
from specdraft.drafters.hybrid import HybridDrafter
from specdraft.drafters.lookup import LookupDrafter
from specdraft.engine import generate_ids
from specdraft.runtime.sampling import SamplingParams, target_probs
from specdraft.verify import Draft


class ScriptedDrafter(Drafter):
    """Knows the plain greedy continuation and proposes drafts of a chosen kind around it."""

    name = "scripted"

    def __init__(self, full: list[int], mode: str, seed: int, vocab: int):
        self.full, self.mode, self.rng, self.vocab = full, mode, random.Random(seed), vocab

    def propose(self, ctx: StepContext) -> Draft:
        truth = self.full[len(ctx.ids):len(ctx.ids) + 8]
        wrong = [(t + 1 + self.rng.randrange(self.vocab - 1)) % self.vocab for t in truth]
        if self.mode == "right":
            return Draft.chain(truth)
        if self.mode == "wrong":
            return Draft.chain(wrong)
        if self.mode == "empty":
            return Draft.empty()
        if self.mode == "huge":  # far more than the cache holds: the engine must clamp
            return Draft.chain([self.rng.randrange(self.vocab) for _ in range(1000)])
        # "tree": candidates sharing prefixes of the truth, then diverging at random
        seqs = []
        for _ in range(self.rng.randint(1, 5)):
            k = self.rng.randint(0, len(truth))
            seqs.append(truth[:k] + [self.rng.randrange(self.vocab) for _ in range(self.rng.randint(0, 3))])
        self.rng.shuffle(seqs)
        return Draft.from_sequences(seqs)


@pytest.fixture(scope="module", params=["qwen2", "gemma3_text"])
def target(request):
    return tiny_decoder(vocab=97, seed=0, family=request.param)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["right", "wrong", "empty", "tree", "huge"]),
       n_prompt=st.integers(1, 12), max_new=st.integers(1, 24))
def test_greedy_is_lossless_for_any_draft(target, seed, mode, n_prompt, max_new):
    prompt = random.Random(seed).choices(range(97), k=n_prompt)
    ref, _ = generate_ids(target, prompt, max_new_tokens=max_new)
    d = ScriptedDrafter(prompt + ref, mode, seed, 97)
    out, stats = generate_ids(target, prompt, max_new_tokens=max_new, drafter=d)
    assert out == ref
    assert stats.new_tokens == len(ref) and stats.target_forwards <= len(ref)
    if mode == "right" and max_new > 2:
        assert stats.target_forwards < len(ref)  # correct drafts are accepted
    if mode in ("wrong", "empty"):
        assert stats.accepted == 0 and stats.target_forwards == len(ref)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_eos_inside_an_accepted_draft_stops_there(target, seed):
    prompt = [seed + 1, 7, 9]
    ref, _ = generate_ids(target, prompt, max_new_tokens=20)
    eos = ref[5]
    ref_eos, _ = generate_ids(target, prompt, max_new_tokens=20, eos_ids=frozenset({eos}))
    d = ScriptedDrafter(prompt + ref, "right", seed, 97)
    out, stats = generate_ids(target, prompt, max_new_tokens=20, eos_ids=frozenset({eos}), drafter=d)
    assert out == ref_eos and stats.stop_reason == "eos"


@pytest.mark.parametrize("tree_width", [1, 3])
@pytest.mark.parametrize("seed", range(6))
def test_draft_model_greedy_lossless(target, seed, tree_width):
    draft = perturbed(target, 0.05, seed)
    prompt = random.Random(seed).choices(range(97), k=6)
    ref, _ = generate_ids(target, prompt, max_new_tokens=30)
    d = DraftModelDrafter(draft, "tiny", tree_width=tree_width)
    out, stats = generate_ids(target, prompt, max_new_tokens=30, drafter=d)
    assert out == ref
    assert stats.accepted > 0  # a close draft model does get tokens accepted
    # and it can be reused for the next generation
    out2, _ = generate_ids(target, prompt[:3], max_new_tokens=10, drafter=d)
    assert out2 == generate_ids(target, prompt[:3], max_new_tokens=10)[0]


@pytest.mark.parametrize("seed", range(4))
def test_draft_model_with_a_reduced_vocabulary_is_lossless(target, seed):
    """A third of the vocabulary drafted (plus the context's tokens): the output is unchanged, and
    only tokens of the set or of the text so far are ever proposed."""
    draft = perturbed(target, 0.05, seed)
    prompt = random.Random(seed).choices(range(97), k=6)
    ref, _ = generate_ids(target, prompt, max_new_tokens=30)
    keep = set(random.Random(seed).sample(range(97), 32))
    d = DraftModelDrafter(draft, "tiny", tree_width=2, draft_vocab=sorted(keep))
    seen = []
    orig = d.propose

    def propose(ctx):
        dr = orig(ctx)
        allowed = keep | set(ctx.ids)
        seen.append(all(t in allowed for t in dr.tokens))
        return dr

    d.propose = propose
    out, stats = generate_ids(target, prompt, max_new_tokens=30, drafter=d)
    assert out == ref and stats.accepted > 0 and all(seen) and seen
    # the prompt's tokens joined the set, and at most the text's tokens did
    assert len(keep | set(prompt)) <= d.vocab.n <= len(keep | set(prompt) | set(out))
    out2, _ = generate_ids(target, prompt[:3], max_new_tokens=10, drafter=d)  # reused: the set starts over
    assert out2 == generate_ids(target, prompt[:3], max_new_tokens=10)[0]
    assert d.vocab.n <= len(keep | set(prompt[:3]) | set(out2))


def test_draft_vocab_rows_follow_the_head_and_the_context():
    from specdraft.drafters.draft_model import DraftVocab

    head = torch.randn(20, 4)
    h = torch.randn(1, 4)
    v = DraftVocab(head, [5, 2, 2, 7, 99], spare=3)
    assert v.base == [2, 5, 7] and v.n == 3
    v.add([5, 11, 11, 0, 13, 14])  # 11, 0, 13 fill the 3 spare rows; 14 no longer fits
    assert v.n == 6 and v.ids[: v.n].tolist() == [2, 5, 7, 11, 0, 13]
    assert torch.allclose(v.logits(h), h @ head[v.ids[: v.n]].T, atol=1e-6)
    v.reset()
    assert v.n == 3 and 11 not in v.members
    v.add([14])
    assert v.ids[3] == 14 and torch.allclose(v.logits(h), h @ head[[2, 5, 7, 14]].T, atol=1e-6)


def test_an_int8_draft_vocab_gives_the_int8_heads_logits():
    """For an int8 copy the base rows are quantized per row as its full head is: the same logits
    at those ids, far cheaper to read than float rows; the context's rows stay float."""
    from specdraft.drafters.draft_model import DraftVocab
    from specdraft.runtime.quant import Int8Weight

    head = torch.randn(50, 16)
    h = torch.randn(1, 16)
    v = DraftVocab(head, list(range(0, 50, 2)), spare=4, int8=True)
    full = Int8Weight(head).mm(h)
    assert torch.allclose(v.logits(h), full[:, 0:50:2], atol=1e-5)
    v.add([3, 4])  # 4 is a base token already; 3 joins as a float row
    got = v.logits(h)
    assert got.shape == (1, 26) and torch.allclose(got[:, -1], h @ head[3], atol=1e-5)
    assert not torch.allclose(got[:, :25], h @ head[0:50:2].T, atol=1e-4)  # the base rows really are int8


def test_lookup_greedy_lossless_on_repetitive_text(target):
    prompt = [5, 6, 7, 8, 9] * 4
    ref, _ = generate_ids(target, prompt, max_new_tokens=40)
    out, stats = generate_ids(target, prompt, max_new_tokens=40, drafter=LookupDrafter())
    assert out == ref and stats.drafted > 0


def test_seeded_speculative_sampling_is_reproducible(target):
    p = SamplingParams(temperature=0.9, top_p=0.95, seed=3)
    d = DraftModelDrafter(perturbed(target, 0.05, 0), "tiny", tree_width=2)
    a, _ = generate_ids(target, [1, 2, 3], max_new_tokens=25, params=p, drafter=d)
    b, _ = generate_ids(target, [1, 2, 3], max_new_tokens=25, params=p, drafter=d)
    assert a == b


# --- sampling: distribution of the first three tokens vs exact enumeration -----------------------

V, T, N = 5, 3, 3000
PROMPT = [1, 3, 0, 2, 1, 3]


@torch.inference_mode()
def exact_distribution(model, params):
    """P(x1 x2 x3 | PROMPT) under plain sampling, for every one of V^3 sequences."""
    def dist(prefix):
        ids = torch.tensor(PROMPT + list(prefix))
        logits = model(ids, torch.arange(len(ids)), model.new_cache(len(ids)), logits_at=slice(-1, None)).logits
        return target_probs(logits, params)[0]

    probs = {}
    for seq in itertools.product(range(V), repeat=T):
        p = 1.0
        for i in range(T):
            p *= dist(seq[:i])[seq[i]].item()
        probs[seq] = p
    return probs


@pytest.fixture(scope="module")
def small():
    return tiny_decoder(vocab=V, seed=3, scale=0.5)


def _drafter(kind, small):
    if kind == "chain-q":
        return DraftModelDrafter(perturbed(small, 0.3, 1), "tiny", length=3, confidence=0.0)
    if kind == "tree-q":
        return DraftModelDrafter(perturbed(small, 0.3, 1), "tiny", length=3, tree_width=2, confidence=0.0)
    if kind == "tree-int8":  # the int8 copy of the target itself (runtime/quant.py)
        from specdraft.runtime.quant import quantize_int8

        return DraftModelDrafter(quantize_int8(small), "self?quant=int8", length=3, tree_width=2, confidence=0.0,
                                 shared=True)
    if kind == "tree-q-branch":  # runner-ups only at the steps where q's top-1 is below 0.6
        return DraftModelDrafter(perturbed(small, 0.3, 1), "tiny", length=3, tree_width=2, branch=0.6, confidence=0.0)
    if kind == "tree-onehot":
        return ScriptedDrafter([0] * 100, "tree", 0, V)  # random trees with shared prefixes
    if kind == "tree-q-subvocab":  # q is 0 outside a drafting vocabulary of 3 of the 5 tokens
        return DraftModelDrafter(perturbed(small, 0.3, 1), "tiny", length=3, tree_width=2, confidence=0.0,
                                 draft_vocab=[0, 1, 3])
    if kind.startswith("hybrid"):  # union: sampled drafts (with q) merged with lookup, q dropped
        return HybridDrafter([LookupDrafter(num_tokens=2, min_ngram=2),
                              DraftModelDrafter(perturbed(small, 0.3, 1), "tiny", length=3, tree_width=2, confidence=0.0)],
                             mode=kind.split("-")[1])
    return LookupDrafter(num_tokens=3)


@pytest.mark.parametrize("kind", ["chain-q", "tree-q", "tree-q-branch", "tree-int8", "tree-q-subvocab", "tree-onehot", "lookup", "hybrid-union", "hybrid-first"])
def test_sampling_distribution_matches_plain(small, kind):
    params = SamplingParams(temperature=1.0, top_k=4)
    exact = exact_distribution(small, params)
    d = _drafter(kind, small)
    g_seed = SamplingParams(temperature=1.0, top_k=4, seed=1234)
    counts = dict.fromkeys(exact, 0)
    gen = g_seed.generator()
    drafted = 0
    for i in range(N):
        p = SamplingParams(temperature=1.0, top_k=4, seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
        out, stats = generate_ids(small, PROMPT, max_new_tokens=T, params=p, drafter=d)
        counts[tuple(out)] += 1
        drafted += stats.drafted
    assert drafted > 0
    seqs = sorted(exact, key=exact.get, reverse=True)
    big = [s for s in seqs if exact[s] * N >= 5]
    rest = [s for s in seqs if exact[s] * N < 5]
    obs = [counts[s] for s in big] + [sum(counts[s] for s in rest)]
    exp = [exact[s] * N for s in big] + [sum(exact[s] for s in rest) * N]
    total = sum(exp)
    exp = [e * N / total for e in exp]
    assert chisquare(obs, exp).pvalue > 1e-3
