"""The gguf backend (runtime/llamacpp.py): llama.cpp decodes the target from its GGUF file.

Pure functions first (how a tree maps onto llama.cpp's sequences, and the batch order); then, on
the real SmolLM2-135M GGUF file, the same lossless contract as the float backend: any draft gives
plain greedy decoding's tokens on this backend."""

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specdraft.verify.tree import Draft, accepted_slots, depths, verify_mask

llamacpp = pytest.importorskip("specdraft.runtime.llamacpp")
try:
    import llama_cpp  # noqa: F401
except (ImportError, OSError):
    pytest.skip("llama-cpp-python is not installed (the gguf extra)", allow_module_level=True)

trees = st.integers(1, 24).flatmap(lambda n: st.tuples(*[st.integers(-1, i - 1) for i in range(n)]))


def _ancestors_or_self(parents: list[int], row: int) -> set[int]:
    """Rows of [root] + nodes on the way from row to the root (row 0 is the root)."""
    out = {0, row}
    i = row - 1
    while i >= 0:
        out.add(i + 1)
        i = parents[i]
    return out


@settings(max_examples=200, deadline=None)
@given(parents=trees)
def test_tree_sequences_are_the_paths_to_the_leaves(parents):
    parents = list(parents)
    seqs = llamacpp._tree_seqs(verify_mask(parents))
    n = len(parents) + 1
    leaves = [r for r in range(1, n) if (r - 1) not in parents]
    assert sorted({k for s in seqs for k in s}) == list(range(len(leaves)))
    for k, leaf in enumerate(leaves):  # sequence k holds exactly the path from the root to leaf k
        assert {r for r in range(n) if k in seqs[r]} == _ancestors_or_self(parents, leaf)


@settings(max_examples=200, deadline=None)
@given(parents=trees)
def test_batch_order_puts_the_main_path_first_and_parents_before_children(parents):
    parents = list(parents)
    order = llamacpp.main_path_order(verify_mask(parents))
    assert sorted(order) == list(range(len(parents) + 1)) and order[0] == 0
    seen = set()
    for r in order:
        assert r == 0 or (parents[r - 1] + 1) in seen  # a row's parent is in the batch before it
        seen.add(r)
    # the main path: each node's first child, in row order
    main, node = [0], -1
    while (child := next((i for i, p in enumerate(parents) if p == node), None)) is not None:
        main.append(child + 1)
        node = child
    assert order[:len(main)] == main


# -- the real SmolLM2-135M GGUF file ---------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_gguf(smollm2_dir):
    from specdraft import zoo
    from specdraft.runtime.config import ModelConfig

    return llamacpp.LlamaCppDecoder(zoo.gguf_file(smollm2_dir), ModelConfig.from_dir(smollm2_dir))


@pytest.mark.integration
@pytest.mark.parametrize("context", [30, 600])  # past 512 KV cells an f16 cache's one-row step took another path
def test_batch_rows_are_one_row_steps_bit_for_bit(smol_gguf, context):
    """What the lossless claim rests on: a verification row's logits are the one-row step's, for
    batches up to the probed `max_rows`."""
    m, rng = smol_gguf, random.Random(0)
    assert m.max_rows >= 2
    prompt, toks = rng.choices(range(1000, 20000), k=context), rng.choices(range(1000, 20000), k=m.max_rows)
    c = m.new_cache(context + len(toks))
    m.prefill(prompt, c)
    L = c.length
    one = []
    for i, t in enumerate(toks):
        one.append(m(torch.tensor([t]), torch.tensor([L + i]), c).logits[0])
        c.commit(1)
    c.truncate(L)
    batch = m(torch.tensor(toks), torch.arange(L, L + len(toks)), c).logits
    assert torch.equal(batch, torch.stack(one))


@pytest.mark.integration
def test_tree_rows_see_their_paths_and_a_main_path_commit_stays_exact(smol_gguf):
    m, rng = smol_gguf, random.Random(1)
    for _ in range(6):
        prompt = rng.choices(range(1000, 20000), k=rng.randint(1, 20))
        base = rng.choices(range(1000, 20000), k=3)
        d = Draft.from_sequences([base[:rng.randint(0, 3)] + rng.choices(range(1000, 20000), k=rng.randint(1, 3))
                                  for _ in range(rng.randint(2, 4))]).truncated(m.max_rows - 1)  # as the engine keeps it
        toks = [rng.randrange(1000, 20000)] + d.tokens
        c = m.new_cache(64)
        m.prefill(prompt, c)
        L = c.length
        tree = m(torch.tensor(toks), torch.tensor([0] + depths(d.parents)) + L, c, tree_mask=verify_mask(d.parents)).logits
        path = []  # a beginning of the main path (each node's first child), as node indices
        for r in llamacpp.main_path_order(verify_mask(d.parents))[1:]:
            if d.parents[r - 1] != (path[-1] if path else -1):
                break
            path.append(r - 1)
        path = path[:rng.randint(0, len(path))]
        c.compact(accepted_slots(path))
        after = m(torch.tensor([7]), torch.tensor([c.length]), c).logits[0]
        for r in range(len(toks)):  # every row against its own path decoded as a chain
            rows = sorted(_ancestors_or_self(d.parents, r))
            ref = m.new_cache(64)
            m.prefill(prompt, ref)
            chain = m(torch.tensor([toks[i] for i in rows]), torch.arange(L, L + len(rows)), ref).logits[-1]
            assert torch.equal(chain, tree[r])
            del ref
        ref = m.new_cache(64)  # plain decoding's cells: the prompt and the committed path, contiguous
        m.prefill(prompt + [toks[0]] + [d.tokens[i] for i in path], ref)
        assert torch.equal(m(torch.tensor([7]), torch.tensor([ref.length]), ref).logits[0], after)
        del c, ref


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["right", "wrong", "empty", "tree", "huge"])
def test_any_draft_gives_plain_greedy_tokens(smol_gguf, mode):
    from test_speculative import ScriptedDrafter

    from specdraft.engine import generate_ids

    for seed in range(4):
        rng = random.Random(seed)
        prompt = rng.choices(range(1000, 20000), k=rng.randint(1, 30))
        max_new = rng.randint(1, 30)
        ref, _ = generate_ids(smol_gguf, prompt, max_new_tokens=max_new)
        drafter = ScriptedDrafter(prompt + ref, mode, seed, smol_gguf.cfg.vocab_size)
        out, stats = generate_ids(smol_gguf, prompt, max_new_tokens=max_new, drafter=drafter)
        assert out == ref
        if mode == "right" and max_new > 2:
            assert stats.target_forwards < len(ref)


@pytest.fixture(scope="module")
def smol_llm(smollm2_dir):
    from specdraft import LLM

    return LLM(str(smollm2_dir), backend="gguf", progress=False)


@pytest.mark.integration
def test_llm_on_the_gguf_backend_lookup_is_plain(smol_llm):
    p = "Repeat after me exactly: the cat sat on the mat, the cat sat on the mat, the cat sat on the mat."
    plain = smol_llm.generate(p, max_new_tokens=40, drafter="plain")
    spec = smol_llm.generate(p, max_new_tokens=40, drafter="lookup?min_ngram=2")
    assert spec.token_ids == plain.token_ids and spec.dtype == "gguf"
    assert smol_llm.drafter("auto").name.startswith("lookup")  # what drafter.json's cpu/gguf names


@pytest.mark.integration
@pytest.mark.parametrize("spec, why", [("ctc", "float weights"), ("draft-model:self?quant=int8", "draft-model:self"),
                                        ("knn-ssd", "float weights"), ("lookup+medusa", "float weights")])
def test_drafters_the_gguf_backend_cannot_run_are_refused_by_name(smol_llm, spec, why):
    from specdraft import SpecdraftError

    with pytest.raises(SpecdraftError, match=f"cannot run this drafter.*{why}.*It runs lookup"):
        smol_llm.drafter(spec)


def test_gguf_backend_refusals(tiny_llm_dir):
    from specdraft import LLM, SpecdraftError

    with pytest.raises(SpecdraftError, match="no GGUF file"):
        LLM(str(tiny_llm_dir), backend="gguf", progress=False)
    with pytest.raises(SpecdraftError, match="--dtype"):
        LLM(str(tiny_llm_dir), backend="gguf", dtype="float32", progress=False)
    with pytest.raises(SpecdraftError, match="--exact"):
        LLM(str(tiny_llm_dir), backend="gguf", exact=True, progress=False)
    with pytest.raises(SpecdraftError, match="unknown backend"):
        LLM(str(tiny_llm_dir), backend="onnx", progress=False)


def test_a_corrupt_gguf_file_is_a_clear_error(tmp_path):
    from specdraft import SpecdraftError
    from specdraft.runtime.config import ModelConfig
    from conftest import TINY

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + np.random.default_rng(0).bytes(4096))
    cfg = ModelConfig.from_hf({"model_type": "qwen2", **TINY})
    with pytest.raises(SpecdraftError, match="cannot load this GGUF"):
        llamacpp.LlamaCppDecoder(bad, cfg)



@pytest.mark.integration
def test_a_batch_with_sequences_coming_and_going_gives_each_its_tokens_alone(smollm2_dir):
    """A KV stream per sequence (LLM(max_batch=...)): 10 requests 4 at a time, each leaving when it
    ends and the next taking its place, get the tokens each gets alone. (In one shared cache the
    holes they leave reorder the others' cells, and answers changed: runtime/llamacpp.py.)"""
    from specdraft import LLM
    from specdraft.errors import SpecdraftError

    llm = LLM(str(smollm2_dir), backend="gguf", drafter="lookup:4?min_ngram=3", max_batch=4, progress=False)
    assert llm.model.streams
    prompts = [f"Write {n} short sentences about the number {n}." for n in range(10)]
    lengths = [20 + 7 * i for i in range(10)]
    alone = [llm.generate(p, max_new_tokens=n).token_ids for p, n in zip(prompts, lengths)]
    batch = llm.generate_batch(prompts, max_new_tokens=max(lengths))
    assert [b.token_ids[:len(a)] for a, b in zip(alone, batch)] == alone
    with pytest.raises(SpecdraftError, match="max_batch=8"):
        llm.generate_batch(prompts, max_batch=8)
