"""Continuous batching (batch.py): each request's tokens in a batch are those it gets alone, for
every kind of drafter, with sequences of different lengths joining and leaving mid-way; a request
that fails or is cancelled ends alone; the draft-length rule follows the measured costs."""

import itertools
import random
import time

import pytest
import torch
from conftest import tiny_decoder

from specdraft.batch import REPROBE_STEPS, BatchEngine, DraftCost, RowCost, expected_tokens, plan_drafts
from specdraft.drafters.base import Drafter
from specdraft.drafters.draft_model import DraftModelDrafter
from specdraft.drafters.hybrid import HybridDrafter
from specdraft.drafters.layerskip import LayerSkipDrafter
from specdraft.drafters.lookup import LookupDrafter
from specdraft.engine import Generation, generate_ids
from specdraft.runtime.model import SkipSet
from specdraft.runtime.sampling import SamplingParams
from specdraft.verify import Draft


@pytest.fixture(scope="module")
def target():
    return tiny_decoder(layers=3, seed=2)


def requests(n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """Prompts of 2-40 tokens (some repetitive: lookup drafts there) and 5-40 new tokens each."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 0:
            unit = [rng.randrange(4, 97) for _ in range(rng.randrange(2, 5))]
            prompt = (unit * 10)[:rng.randrange(8, 40)]
        else:
            prompt = [rng.randrange(4, 97) for _ in range(rng.randrange(2, 40))]
        out.append((prompt, rng.randrange(5, 40)))
    return out


def drafters(kind: str):
    if kind == "plain":
        return None
    if kind == "lookup":
        return LookupDrafter(max_ngram=3, num_tokens=4)
    if kind == "draft-model":
        return DraftModelDrafter(tiny_decoder(layers=1, seed=5), "d", length=3)
    if kind == "draft-model tree":
        return DraftModelDrafter(tiny_decoder(layers=1, seed=5), "d", length=3, tree_width=2)
    if kind == "hybrid":
        return HybridDrafter([LookupDrafter(num_tokens=4), DraftModelDrafter(tiny_decoder(layers=1, seed=5), "d")])
    if kind == "layerskip":
        return LayerSkipDrafter(SkipSet((False, True, False), (False, False, True)), "s", max_length=4)
    raise ValueError(kind)


KINDS = ["plain", "lookup", "draft-model", "draft-model tree", "hybrid", "layerskip"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_batch", [2, 5])
def test_each_request_in_a_batch_gets_its_tokens_alone(target, kind, max_batch):
    reqs = requests(9, seed=max_batch)
    alone = [generate_ids(target, p, max_new_tokens=m, drafter=drafters(kind))[0] for p, m in reqs]
    d = drafters(kind)
    eng = BatchEngine(target, max_batch)
    gens = [Generation(target, p, max_new_tokens=m, drafter=None if d is None else d.fork()) for p, m in reqs]
    for g in gens:
        eng.add(g)
    seen = 0
    while eng.busy:
        eng.step()
        seen = max(seen, len(eng.running))
    assert [g.out for g in gens] == alone
    assert seen == max_batch  # they did run together
    assert eng.rows > eng.steps  # and shared forwards


def test_a_batch_drafts_and_commits_several_tokens_a_step(target):
    """With costs that make rows free, every sequence drafts: tau above 1 in the batch too."""
    reqs = [(p, 30) for p, _ in requests(6, seed=3) if len(p) >= 8 and len(set(p)) < 6][:3] or [([5, 6, 7] * 8, 30)]
    flat = RowCost((1, 64), (1.0, 1.0))
    eng = BatchEngine(target, 4, cost=flat)
    d = LookupDrafter(max_ngram=3, num_tokens=4)
    gens = [Generation(target, p, max_new_tokens=m, drafter=d.fork()) for p, m in reqs * 2]
    for g in gens:
        eng.add(g)
    eng.run()
    alone = [generate_ids(target, p, max_new_tokens=m, drafter=LookupDrafter(max_ngram=3, num_tokens=4))[0]
             for p, m in reqs * 2]
    assert [g.out for g in gens] == alone
    assert sum(g.stats.accepted for g in gens) > 0


def test_seeded_sampling_is_reproducible_per_request(target):
    reqs = requests(6, seed=7)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=11)
    alone = [generate_ids(target, p, max_new_tokens=m, params=params, drafter=LookupDrafter())[0] for p, m in reqs]
    for max_batch, order in ((3, reqs), (6, reqs[::-1])):
        eng = BatchEngine(target, max_batch)
        gens = [Generation(target, p, max_new_tokens=m, params=params, drafter=LookupDrafter()) for p, m in order]
        for g in gens:
            eng.add(g)
        eng.run()
        got = [g.out for g in gens]
        assert (got if order is reqs else got[::-1]) == alone


class Failing(Drafter):
    name = "failing"

    def start(self, prompt_ids, ctx):
        raise RuntimeError("this drafter fails")


def test_a_failing_request_ends_alone_and_the_others_finish(target):
    reqs = requests(5, seed=9)
    alone = [generate_ids(target, p, max_new_tokens=m)[0] for p, m in reqs]
    eng = BatchEngine(target, 5)
    gens = [Generation(target, p, max_new_tokens=m, drafter=Failing() if i == 2 else None)
            for i, (p, m) in enumerate(reqs)]
    for g in gens:
        eng.add(g)
    eng.run()
    assert isinstance(gens[2].error, RuntimeError) and gens[2].stats.stop_reason == "error"
    assert [g.out for i, g in enumerate(gens) if i != 2] == [a for i, a in enumerate(alone) if i != 2]


def test_a_cancelled_request_leaves_and_a_waiting_one_takes_its_slot(target):
    reqs = [([5 + i, 6, 7, 8], 30) for i in range(4)]
    alone = [generate_ids(target, p, max_new_tokens=m)[0] for p, m in reqs]
    stop = {"now": False}
    eng = BatchEngine(target, 2)
    gens = [Generation(target, p, max_new_tokens=m, should_stop=(lambda: stop["now"]) if i == 0 else None)
            for i, (p, m) in enumerate(reqs)]
    for g in gens:
        eng.add(g)
    for _ in range(4):
        eng.step()
    assert gens[2] in eng.waiting
    stop["now"] = True
    done = eng.step()
    assert gens[0] in done and gens[0].stats.stop_reason == "cancelled" and gens[0].cache is None
    eng.step()
    assert gens[2] in eng.running
    eng.run()
    assert [g.out for g in gens[1:]] == alone[1:]
    assert gens[0].out == alone[0][:len(gens[0].out)]


def test_plan_drafts_follows_the_costs():
    # rows that cost nothing: every sequence drafts its most
    assert plan_drafts([0.5, 0.9], [4, 6], RowCost((1, 100), (1.0, 1.0))) == [4, 6]
    # every row costs as much as a step: no drafted token (worth < 1 token) pays
    assert plan_drafts([0.5, 0.9], [4, 6], RowCost((1, 100), (1.0, 100.0))) == [0, 0]
    # in between: the sequence that accepts more drafts more
    ks = plan_drafts([0.3, 0.9], [8, 8], RowCost((1, 100), (1.0, 1.0 + 99 * 0.08)))
    assert ks[1] > ks[0] >= 0 and ks[1] <= 8
    # the chosen lengths beat their neighbours on expected tokens per second
    cost = RowCost((1, 100), (1.0, 1.0 + 99 * 0.08))

    def rate(k):
        return sum(expected_tokens(a, x) for a, x in zip([0.3, 0.9], k)) / cost(2 + sum(k))

    for i in range(2):
        for dk in (-1, 1):
            other = list(ks)
            other[i] += dk
            if 0 <= other[i] <= 8:
                assert rate(ks) >= rate(other) - 1e-12


def test_draft_cost_fits_the_proposals_times():
    line = DraftCost.fit([(n, 0.004 + 0.002 * n) for n in (1, 2, 4, 4, 8)])
    assert line.per_draft == pytest.approx(0.004) and line.per_node == pytest.approx(0.002)
    assert line(0) == 0.0 and line(3) == pytest.approx(0.010)
    # one size only: the time goes on the nodes; a fixed cost and nothing drafted: on the draft
    assert DraftCost.fit([(3, 0.03), (3, 0.03)]) == DraftCost(0.0, pytest.approx(0.01))
    assert DraftCost.fit([(0, 0.002), (0, 0.004)]) == DraftCost(pytest.approx(0.003), 0.0)
    # never a negative term, whatever the noise
    for pts in ([(1, 0.01), (8, 0.001)], [(1, 0.0), (2, 0.0), (9, 0.05)]):
        c = DraftCost.fit(pts)
        assert c.per_draft >= 0 and c.per_node >= 0
    assert DraftCost.fit([]) == DraftCost()


def test_plan_drafts_counts_the_drafters_time():
    free = RowCost((1, 100), (0.05, 0.05))
    # rows free, drafting free: all draft their most
    assert plan_drafts([0.8, 0.8], [4, 4], free, [DraftCost(), DraftCost()]) == [4, 4]
    # a drafter whose every node costs a forward (a self-drafter on a big target) never pays in a batch
    assert plan_drafts([0.8, 0.8], [4, 4], free, [DraftCost(0.0, 0.05), DraftCost(0.0, 0.05)]) == [0, 0]
    # only the cheap drafter drafts
    ks = plan_drafts([0.8, 0.8], [4, 4], free, [DraftCost(0.0, 0.05), DraftCost(0.0005, 0.0)])
    assert ks[0] == 0 and ks[1] == 4

    # the plan beats every one-sequence change and every plan of 3 sequences of at most 4 nodes
    cost = RowCost((1, 8, 32), (0.05, 0.06, 0.12))
    rng = random.Random(3)
    for _ in range(20):
        alphas = [rng.uniform(0.1, 0.95) for _ in range(3)]
        draft = [DraftCost(rng.choice([0.0, 0.004, 0.02]), rng.choice([0.0, 0.002, 0.01])) for _ in range(3)]

        def rate(k):
            return (sum(expected_tokens(a, x) for a, x in zip(alphas, k))
                    / (cost(3 + sum(k)) + sum(d(x) for d, x in zip(draft, k))))

        ks = plan_drafts(alphas, [4, 4, 4], cost, draft)
        best = max(rate(k) for k in itertools.product(range(5), repeat=3))
        assert rate(ks) >= best * 0.98


class OracleDrafter(Drafter):
    """Drafts the next three tokens of the known answers (every one accepted) in no time but
    `delay` seconds a node; counts its proposals in `calls`."""

    name = "oracle"

    def __init__(self, answers: list[list[int]], delay: float, calls: list):
        self.answers, self.delay, self.calls = answers, delay, calls

    def propose(self, ctx):
        self.calls.append(1)
        n = len(ctx.ids)
        full = next(a for a in self.answers if a[:n] == ctx.ids)
        draft = full[n:n + min(3, ctx.budget)]
        time.sleep(self.delay * len(draft))
        return Draft.chain(draft)


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_a_batch_stops_drafting_where_drafting_costs_more_than_it_gains(target, delay):
    """Four sequences in lockstep with forwards of 50 ms: a drafter at 50 ms a node drafts in the
    first step, then only the one-node probes every REPROBE_STEPS steps (its measured cost says
    no); a free one keeps drafting. Tokens as alone."""
    reqs = [([7 + i, 8, 9, 10, 11, 12], 24) for i in range(4)]
    alone = [generate_ids(target, p, max_new_tokens=m)[0] for p, m in reqs]
    calls: list = []
    d = OracleDrafter([p + a for (p, _), a in zip(reqs, alone)], delay, calls)
    eng = BatchEngine(target, 4, cost=RowCost((1, 64), (0.05, 0.05)))
    gens = [Generation(target, p, max_new_tokens=m, drafter=d.fork()) for p, m in reqs]
    for g in gens:
        eng.add(g)
    eng.run()
    assert [g.out for g in gens] == alone
    drafted = sum(len(g.out) for g in gens) - eng.steps * len(gens)  # tokens beyond one per sequence and step
    probes = 4 * (24 // REPROBE_STEPS)
    if delay:
        assert 4 < len(calls) <= 4 + probes  # the first step and the probes
        assert drafted <= 4 * 3 + probes  # three nodes each in the first step, one a probe
    else:
        assert len(calls) == 4 * (eng.steps - 1)  # every step after the prefill's drafts
        assert drafted > 24


def test_row_cost_interpolates_and_extrapolates():
    c = RowCost((1, 2, 4), (1.0, 1.5, 2.0))
    assert c(1) == 1.0 and c(3) == 1.75 and c(4) == 2.0 and c(6) == 2.5 and c(0) == 1.0


def test_alone_a_request_drafts_as_generate_ids_does(target):
    """A batch of one takes no draft-length rule: the same steps, forwards and drafts."""
    p, m = requests(1, seed=4)[0]
    _, ref = generate_ids(target, p, max_new_tokens=m, drafter=LookupDrafter(num_tokens=6))
    eng = BatchEngine(target, 4, cost=RowCost((1, 100), (1.0, 100.0)))  # a rule would forbid drafting
    g = Generation(target, p, max_new_tokens=m, drafter=LookupDrafter(num_tokens=6))
    eng.add(g)
    eng.run()
    assert (g.stats.target_forwards, g.stats.drafted, g.stats.accepted) == (ref.target_forwards, ref.drafted, ref.accepted)


def test_forward_many_equals_forward_per_segment(target):
    """The batched forward's rows are each segment's own forward's rows (float32, tiny model)."""
    from specdraft.runtime.model import Segment

    gen = torch.Generator().manual_seed(0)
    caches, segs, singles = [], [], []
    for n_ctx, n_new in ((5, 1), (9, 3), (2, 4)):
        c = target.new_cache(32)
        target.prefill(torch.randint(4, 97, (n_ctx,), generator=gen).tolist(), c)
        toks = torch.randint(4, 97, (n_new,), generator=gen)
        segs.append(Segment(toks, torch.arange(n_ctx, n_ctx + n_new), c, final_hidden=True))
        singles.append(target(toks, torch.arange(n_ctx, n_ctx + n_new), c, final_hidden=True))
        caches.append(c)
    for one, many in zip(singles, target.forward_many(segs)):
        assert torch.allclose(one.logits, many.logits, atol=1e-5)
        assert torch.allclose(one.final_hidden, many.final_hidden, atol=1e-5)
        assert one.logits.argmax(-1).tolist() == many.logits.argmax(-1).tolist()


def test_drafter_forks_keep_their_own_state():
    d = DraftModelDrafter(tiny_decoder(layers=1, seed=5), "d", draft_vocab=[4, 5, 6])
    a, b = d.fork(), d.fork()
    assert a.vocab is not b.vocab and a.vocab.spare_rows is not b.vocab.spare_rows
    a.vocab.add([50])
    assert 50 in a.vocab.members and 50 not in b.vocab.members and 50 not in d.vocab.members
    h = HybridDrafter([LookupDrafter(), LookupDrafter(num_tokens=3)])
    f = h.fork()
    assert all(x is not y for x, y in zip(f.parts, h.parts))
    assert Draft.empty() is not None


def test_stream_runs_on_the_callers_thread_and_stops_where_the_caller_stops(tiny_llm_dir):
    import threading

    from specdraft import LLM

    llm = LLM(str(tiny_llm_dir), dtype="float32", drafter="lookup", progress=False)
    full = llm.generate("The quick brown fox", max_new_tokens=24)
    threads = []
    seen = llm.model.forward

    def spy(*a, **k):
        threads.append(threading.current_thread())
        return seen(*a, **k)

    llm.model.forward = spy
    assert "".join(llm.stream("The quick brown fox", max_new_tokens=24)) == full.text
    assert set(threads) == {threading.current_thread()}
    it = llm.stream("The quick brown fox", max_new_tokens=24)
    next(it)
    calls = len(threads)
    it.close()  # the caller stops: no more forwards
    assert len(threads) == calls
