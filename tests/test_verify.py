"""Verification as pure functions: hand-built logits, trees, and the statistics of sampling."""

import pytest
import torch
from scipy.stats import chisquare

from specdraft.runtime.sampling import SamplingParams, target_probs
from specdraft.verify import Draft, accepted_slots, children, depths, verify_greedy, verify_mask, verify_sampling

V = 8


def onehot_logits(best: list[int]) -> torch.Tensor:
    """[len(best), V] logits whose argmax in row r is best[r]."""
    x = torch.zeros(len(best), V)
    x[torch.arange(len(best)), torch.tensor(best)] = 5.0
    return x


def test_tree_helpers():
    parents = [-1, 0, 0, 1, -1]
    assert depths(parents) == [1, 2, 2, 3, 1]
    assert children(parents) == [[0, 4], [1, 2], [3], [], [], []]
    m = verify_mask(parents)
    expect = torch.tensor([
        # root n0 n1 n2 n3 n4
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 1, 1, 0, 1, 0],
        [1, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(m, expect)
    assert accepted_slots([0, 1, 3]) == [0, 1, 2, 4]
    with pytest.raises(ValueError):
        Draft([1, 2], [-1, 1])  # a node cannot be its own parent
    assert Draft.chain([4, 5, 6]).is_chain and not Draft([1, 2], [-1, -1]).is_chain
    d = Draft([1, 2, 3], [-1, 0, 0]).truncated(2)
    assert d.tokens == [1, 2] and d.parents == [-1, 0]


def test_greedy_all_right_accepts_everything_plus_bonus():
    d = Draft.chain([3, 1, 4])
    v = verify_greedy(d, onehot_logits([3, 1, 4, 7]))
    assert v.path == [0, 1, 2] and v.tokens == [3, 1, 4, 7]


def test_greedy_all_wrong_commits_the_targets_token():
    d = Draft.chain([3, 1, 4])
    v = verify_greedy(d, onehot_logits([2, 1, 4, 7]))
    assert v.path == [] and v.tokens == [2]


def test_greedy_empty_draft_is_a_plain_step():
    v = verify_greedy(Draft.empty(), onehot_logits([6]))
    assert v.path == [] and v.tokens == [6]


def test_greedy_tree_with_shared_prefix_takes_the_matching_branch():
    #   root -> 3 -> 1 -> 4        nodes n0=3, n1=1, n2=5, n3=4, n4=2; rows: root, n0 .. n4
    #             \-> 5 -> 2       the target wants 3, then 5, then 2, then 6
    d = Draft([3, 1, 5, 4, 2], [-1, 0, 0, 1, 2])
    v = verify_greedy(d, onehot_logits([3, 5, 0, 2, 0, 6]))
    assert v.path == [0, 2, 4] and v.tokens == [3, 5, 2, 6]


def test_greedy_stops_at_first_mismatch_in_the_middle():
    d = Draft.chain([3, 1, 4, 1])
    v = verify_greedy(d, onehot_logits([3, 1, 0, 0, 0]))
    assert v.path == [0, 1] and v.tokens == [3, 1, 0]


# --- sampling: the first committed token must follow the target distribution exactly ----------

N = 20000


def first_token_histogram(make_draft, logits, params, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(V)
    for _ in range(N):
        v = verify_sampling(make_draft(g), logits, params, g)
        counts[v.tokens[0]] += 1
    return counts


def assert_follows(counts, probs):
    keep = probs * N >= 5  # chi-square needs expected counts >= 5; lump the rest together
    obs = torch.cat([counts[keep], counts[~keep].sum(0, keepdim=True)])
    exp = torch.cat([probs[keep], probs[~keep].sum(0, keepdim=True)]) * N
    if exp[-1] == 0:
        assert obs[-1] == 0
        obs, exp = obs[:-1], exp[:-1]
    p_value = chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue
    assert p_value > 1e-3, (counts / N, probs)


@pytest.fixture
def dists():
    g = torch.Generator().manual_seed(42)
    target = torch.randn(6, V, generator=g) * 1.5  # rows: root + up to 5 nodes
    q = torch.randn(V, generator=g).mul(2.5).softmax(-1)  # peaked: without-replacement draws matter
    return target, q


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=5, top_p=0.9)])
def test_tree_siblings_drawn_without_replacement_with_q(dists, params):
    target, q = dists

    def make(g):
        kids = torch.multinomial(q, 3, replacement=False, generator=g).tolist()
        return Draft(kids, [-1, -1, -1], q.expand(3, V))

    counts = first_token_histogram(make, target, params)
    assert_follows(counts, target_probs(target[:1], params)[0])


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=1.3, top_p=0.8)])
def test_deterministic_tree_without_q(dists, params):
    target, q = dists
    top3 = torch.topk(q, 3).indices.tolist()
    counts = first_token_histogram(lambda g: Draft(top3 + [top3[0]], [-1, -1, -1, 0]), target, params)
    assert_follows(counts, target_probs(target[:1], params)[0])


def test_chain_with_q(dists):
    target, q = dists
    params = SamplingParams(temperature=1.0)

    def make(g):
        a = int(torch.multinomial(q, 1, generator=g))
        b = int(torch.multinomial(q, 1, generator=g))
        return Draft.chain([a, b], torch.stack([q, q]))

    counts = first_token_histogram(make, target, params)
    assert_follows(counts, target_probs(target[:1], params)[0])


def test_the_test_can_fail(dists):
    """The same check catches a draft whose q is not the law its tokens were drawn from."""
    target, q = dists
    params = SamplingParams(temperature=1.0)

    def make(g):
        kids = torch.multinomial(q, 3, replacement=False, generator=g).tolist()
        return Draft(kids, [-1, -1, -1], torch.full((3, V), 1 / V))  # claims uniform, drew from q

    counts = first_token_histogram(make, target, params)
    with pytest.raises(AssertionError):
        assert_follows(counts, target_probs(target[:1], params)[0])


def test_seeded_sampling_verification_is_deterministic(dists):
    target, q = dists
    params = SamplingParams(temperature=1.0)
    d = Draft.chain([1, 2, 3], q.expand(3, V))
    runs = [[verify_sampling(d, target, params, torch.Generator().manual_seed(5)).tokens for _ in range(1)]
            for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
