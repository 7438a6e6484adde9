"""Self-speculative layer skipping and its search, on tiny random models (seconds)."""

import itertools
import json

import pytest
import torch
from conftest import tiny_decoder
from hypothesis import given, settings
from hypothesis import strategies as st

from specdraft.drafters.layerskip import LayerSkipDrafter, Threshold, read_skipset, skipset_to_json
from specdraft.engine import generate_ids
from specdraft.errors import SpecdraftError
from specdraft.runtime.model import SkipSet
from specdraft.runtime.sampling import SamplingParams
from specdraft.train import skipsearch

PROMPT = [5, 17, 3, 60, 2, 9, 41]


def skipset(L, attn=(), mlp=()):
    return SkipSet(tuple(i in attn for i in range(L)), tuple(i in mlp for i in range(L)))


@settings(max_examples=25, deadline=None)
@given(bits=st.lists(st.booleans(), min_size=8, max_size=8), threshold=st.floats(0.0, 0.99),
       width=st.integers(1, 3), adaptive=st.booleans())
def test_layerskip_greedy_equals_plain(bits, threshold, width, adaptive):
    model = tiny_decoder(layers=4, scale=0.15)
    skip = SkipSet(tuple(bits[:4]), tuple(bits[4:]))
    plain, _ = generate_ids(model, PROMPT, max_new_tokens=30)
    d = LayerSkipDrafter(skip, "t", threshold=threshold, adaptive=adaptive, tree_width=width, max_length=6)
    out, st_ = generate_ids(model, PROMPT, max_new_tokens=30, drafter=d)
    assert out == plain
    assert st_.target_forwards <= 30


def test_no_skip_drafts_the_target_itself():
    """With nothing skipped the draft is the target: every drafted token is accepted."""
    model = tiny_decoder(layers=3, scale=0.15)
    d = LayerSkipDrafter(SkipSet.none(3), "none", threshold=0.0, adaptive=False, max_length=5)
    out, stats = generate_ids(model, PROMPT, max_new_tokens=24, drafter=d)
    assert stats.drafted > 0 and stats.accepted == stats.drafted
    assert stats.tau > 4


def test_layerskip_sampling_is_seeded_and_runs():
    model = tiny_decoder(layers=3, scale=0.15)
    d = LayerSkipDrafter(skipset(3, attn=(1,)), "s")
    p = SamplingParams(temperature=0.8, seed=3)
    a, _ = generate_ids(model, PROMPT, max_new_tokens=20, params=p, drafter=d)
    b, _ = generate_ids(model, PROMPT, max_new_tokens=20, params=p, drafter=d)
    assert a == b and len(a) == 20


def test_threshold_adapts_within_bounds():
    t = Threshold(0.8, adaptive=True, target=0.85, step=0.1, low=0.5, high=0.95)
    for _ in range(10):
        t.update(10, 2)  # poor acceptance -> raise
    assert t.value == pytest.approx(0.95)
    for _ in range(10):
        t.update(10, 10)
    assert t.value == pytest.approx(0.5)
    fixed = Threshold(0.7, adaptive=False)
    fixed.update(10, 0)
    assert fixed.value == 0.7


def test_skipset_file_roundtrip_and_errors(tmp_path):
    s = skipset(4, attn=(1, 2), mlp=(3,))
    f = tmp_path / "s.json"
    f.write_text(json.dumps(skipset_to_json(s, "tiny", matchness=0.9)))
    back, meta = read_skipset(f, 4)
    assert back == s and meta["matchness"] == 0.9
    with pytest.raises(SpecdraftError, match="model with 4 layers"):
        read_skipset(f, 30)
    bad = skipset_to_json(s, "tiny")
    bad["mlp"] = [7]
    f.write_text(json.dumps(bad))
    with pytest.raises(SpecdraftError, match="out of range"):
        read_skipset(f, 4)
    f.write_text("{not json")
    with pytest.raises(SpecdraftError, match="not valid JSON"):
        read_skipset(f, 4)
    with pytest.raises(SpecdraftError, match="not found"):
        read_skipset(tmp_path / "missing.json", 4)


def test_matchness_is_one_without_skipping_and_drops_with_it():
    model = tiny_decoder(layers=4, scale=0.3)
    data = skipsearch.prepare(model, [PROMPT, [1, 2, 3, 4]], new_tokens=12, progress=False)
    assert skipsearch.matchness(model, data, SkipSet.none(4)) == 1.0
    heavy = skipset(4, attn=(0, 1, 2, 3), mlp=(0, 1, 2, 3))
    assert skipsearch.matchness(model, data, heavy) < 0.9


@torch.inference_mode()
def test_matchness_row_equals_a_real_first_draft_step():
    """A matchness row must see exactly what the first draft token of a decoding step sees."""
    model = tiny_decoder(layers=4, scale=0.3)
    skip = skipset(4, attn=(1,), mlp=(2,))
    data = skipsearch.prepare(model, [PROMPT], new_tokens=8, progress=False)[0]
    fwd = model(data.tokens, data.positions, data.cache, mask=data.mask, skip=skip)
    seq = PROMPT + data.targets.tolist()
    for i, p in enumerate(data.positions.tolist()):
        cache = model.new_cache(p + 1)
        model(torch.tensor(seq[:p]), torch.arange(p), cache)
        cache.commit(p)
        one = model(torch.tensor([seq[p]]), torch.tensor([p]), cache, skip=skip)
        assert torch.allclose(one.logits[0], fwd.logits[i], atol=1e-4)


def test_modelled_speedup():
    assert skipsearch.modelled_speedup(0.0, 0.5)[0] == 1.0  # nothing accepted: never worth drafting
    assert skipsearch.modelled_speedup(0.9, 1.0)[0] == 1.0  # a draft as costly as the target
    s1, _ = skipsearch.modelled_speedup(0.8, 0.5)
    s2, _ = skipsearch.modelled_speedup(0.9, 0.5)
    s3, _ = skipsearch.modelled_speedup(0.9, 0.3)
    assert 1.0 < s1 < s2 < s3


def test_search_reaches_the_exhaustive_optimum_on_a_small_space():
    model = tiny_decoder(layers=3, scale=0.2)
    data = skipsearch.prepare(model, [PROMPT, [7, 7, 1, 30]], new_tokens=10, progress=False)
    exhaustive = skipsearch.Objective(model, data, protect=())
    best = max((exhaustive(list(b)) for b in itertools.product((0, 1), repeat=6)), key=lambda r: r["modelled_speedup"])
    found = skipsearch.search(skipsearch.Objective(model, data, protect=()), max_evals=40, patience=40, progress=False)
    assert found["modelled_speedup"] == pytest.approx(best["modelled_speedup"])
    climbed = skipsearch.hill_climb(skipsearch.Objective(model, data, protect=()), progress=False)
    assert climbed["modelled_speedup"] <= best["modelled_speedup"] + 1e-12


def test_protected_layers_are_never_skipped():
    model = tiny_decoder(layers=4, scale=0.2)
    data = skipsearch.prepare(model, [PROMPT], new_tokens=6, progress=False)
    obj = skipsearch.Objective(model, data, protect=(0, 3))
    skipsearch.random_search(obj, 30, progress=False)
    for bits in obj.memo:
        assert not any(bits[i] for i in (0, 3, 4, 7))
