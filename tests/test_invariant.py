"""Row-invariant decoding (`LLM(exact=True)`, runtime/attention.py): a verification row computes
the bits of the one-row step at its position, so every drafter's greedy output equals plain
decoding's in bfloat16 too. The claims are about oneDNN's bf16 kernels on a CPU with bf16 units."""

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_decoder
from specdraft.engine import generate_ids
from specdraft.runtime import attention
from specdraft.runtime.cpu import native_bf16
from specdraft.runtime.packed import PackedWeight, pack_decoder
from specdraft.runtime.sampling import SamplingParams
from test_speculative import ScriptedDrafter

bf16_units = pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no bf16 units")
BF16 = torch.bfloat16
# The dtype `--exact` is checked in where a test is about its plumbing, not bf16's kernels: bf16
# needs packed weights, which a CPU without bf16 units does not get; float32 takes the same path.
EXACT_DTYPE = "bfloat16" if native_bf16("cpu") else "float32"


def _tree(rng: random.Random, n: int, chain: bool) -> list[int]:
    return [-1] + [i - 1 if chain else rng.randrange(i) for i in range(1, n)]


def _ancestors(parents: list[int], i: int) -> list[int]:
    out = []
    while i >= 0:
        out.append(i)
        i = parents[i]
    return out[::-1]


def _verify_mask(parents: list[int], start: int) -> torch.Tensor:
    n = len(parents)
    mask = torch.zeros(n, start + n, dtype=torch.bool)
    mask[:, :start] = True
    for i in range(n):
        mask[i, [start + j for j in _ancestors(parents, i)]] = True
    return mask


@bf16_units
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), heads=st.sampled_from([(3, 3, 64), (2, 6, 128), (4, 1, 32)]),
       start=st.integers(1, 700), n=st.integers(1, 9), chain=st.booleans(),
       window=st.one_of(st.none(), st.integers(3, 300)))
def test_each_verification_row_is_its_one_row_step(seed, heads, start, n, chain, window):
    """Rows of a chain or a tree, computed in one forward, against each row computed alone with its
    ancestors at their positions, with or without a sliding window: bit for bit. (torch's fused
    attention fails this: docs/BENCHMARKS.md, "Exact bf16 output".)"""
    Hkv, G, D = heads
    rng = random.Random(seed)
    torch.manual_seed(seed)
    parents = _tree(rng, n, chain)
    depth = [len(_ancestors(parents, i)) - 1 for i in range(n)]
    slots = attention.slots_for(start + n)
    k = torch.randn(Hkv, slots, D).to(BF16)
    v = torch.randn_like(k)
    q = torch.randn(Hkv, G, n, D).to(BF16)
    k_new, v_new = k[:, start:start + n].clone(), v[:, start:start + n].clone()
    plan = attention.plan(start, [start + d for d in depth], _verify_mask(parents, start), G, BF16, "cpu", slots,
                          window=window)
    assert plan is not None
    out = attention.decode_attention(q, k_new, v_new, k, v, start, plan, D ** -0.5)
    assert torch.equal(k[:, start:start + n], k_new) and torch.equal(v[:, start:start + n], v_new)  # tree restored
    for i in range(n):
        k1, v1 = k.clone(), v.clone()
        for d, j in enumerate(_ancestors(parents, i)):
            k1[:, start + d], v1[:, start + d] = k_new[:, j], v_new[:, j]
        p = start + depth[i]
        one = attention.plan(p, [p], None, G, BF16, "cpu", slots, window=window)
        alone = attention.decode_attention(q[:, :, i:i + 1], k1[:, p:p + 1], v1[:, p:p + 1], k1, v1, p, one, D ** -0.5)
        assert torch.equal(alone[:, :, 0], out[:, :, i]), f"row {i} at depth {depth[i]} differs"


def test_every_row_is_a_call_of_its_own_and_a_tree_writes_each_path_once():
    step = attention.plan(10, [10], None, 2, BF16, "cpu", 64)
    assert len(step.calls) == 1 and step.calls[0].path is None and step.calls[0].rows is None
    chain = attention.plan(10, [10, 11, 12], None, 2, BF16, "cpu", 64)
    assert [c.rows.tolist() for c in chain.calls] == [[0], [1], [2]] and not chain.restore
    assert all(c.path is None and c.add.shape == (2, 64) for c in chain.calls)  # a one-row step's shapes
    assert [c.add.isinf().sum().item() for c in chain.calls] == [2 * 53, 2 * 52, 2 * 51]  # row r sees 0..10 + r
    # root 0 -> 1 -> 3 and 0 -> 2, at slots 62-65: each path written in place once, every row computed once
    parents = [-1, 0, 0, 1]
    tree = attention.plan(62, [62, 63, 63, 64], _verify_mask(parents, 62), 3, BF16, "cpu", 128)
    assert [None if c.path is None else c.path.tolist() for c in tree.calls] == [[0, 2], None, [0, 1, 3], None]
    assert [c.rows.tolist() for c in tree.calls] == [[0], [2], [1], [3]]
    assert tree.restore
    # node 3 sits at position 64: its products read two blocks, node 1's one
    by_row = {c.rows.item(): c for c in tree.calls}
    assert [(a, b) for _, a, b in by_row[3].groups] == [(0, 128)] and [(a, b) for _, a, b in by_row[1].groups] == [(0, 64)]
    # a chain first, a sibling after: the chain's calls need no copy
    first = attention.plan(62, [62, 63, 64, 63], _verify_mask([-1, 0, 1, 0], 62), 3, BF16, "cpu", 128)
    assert [c.path is None for c in first.calls] == [True, True, True, False]


def test_masks_that_are_not_positions_in_order_keep_the_fused_attention():
    window = torch.ones(2, 12, dtype=torch.bool)
    window[:, :3] = False  # a caller's own mask hiding the oldest slots (windows are the plan's `window`)
    assert attention.plan(10, [10, 11], window, 2, BF16, "cpu", 64) is None
    skipped = torch.ones(2, 12, dtype=torch.bool).tril(10)
    skipped[1, 10] = False  # row 1 does not see row 0, yet sits one position after it
    assert attention.plan(10, [10, 11], skipped, 2, BF16, "cpu", 64) is None
    assert attention.plan(60, [60, 61, 62, 63, 64], None, 2, BF16, "cpu", 64) is None  # not whole blocks
    assert attention.applies(BF16, torch.device("cpu"))
    assert not attention.applies(torch.float32, torch.device("cpu"))


@bf16_units
def test_a_one_row_product_runs_as_two_rows_when_asked():
    torch.manual_seed(0)
    w = PackedWeight((torch.randn(576, 1536) * 0.03).to(BF16))  # a long sum: oneDNN's one-row kernel differs
    x = torch.randn(64, 1536).to(BF16)
    w.min_rows = 2
    two = torch.cat([w.mm(x[j:j + 2])[:1] for j in range(0, 64)])
    assert torch.equal(torch.cat([w.mm(x[j:j + 1]) for j in range(64)]), two)
    assert torch.equal(w.mm(x[:5]), torch.cat([w.mm(x[j:j + 2])[:1] for j in range(5)]))


def _tiny_bf16(family: str, seed: int = 4):
    """A tiny random decoder with real-sized heads (64 dimensions, two query heads per kv head);
    gemma3_text slides a 20-position window on two layers of three (tests run past it)."""
    from specdraft.runtime.config import ModelConfig
    from specdraft.runtime.model import Decoder

    gemma = family == "gemma3_text"
    extra = dict(activation="gelu_tanh", embed_scale=128 ** 0.5, attn_scale=48 ** -0.5, qk_norm=True,
                 sandwich_norms=True, sliding_window=20, sliding_layers=(True, True, False),
                 rope_local_theta=1e3) if gemma else {}
    cfg = ModelConfig(family=family, vocab_size=97, hidden_size=128, intermediate_size=192, num_layers=3,
                      num_heads=2, num_kv_heads=1, head_dim=64, rms_norm_eps=1e-6, rope_theta=1e4,
                      max_position_embeddings=256, tie_word_embeddings=family != "qwen2",
                      attention_bias=family == "qwen2", **extra)
    torch.manual_seed(seed)
    model = Decoder(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
            elif "bias" in name:
                p.normal_(0, 0.1)
            elif gemma:  # norm weights around 1
                p.normal_(1, 0.2)
    return model.eval().requires_grad_(False).to(BF16)


@pytest.fixture(scope="module", params=["qwen2", "llama", "gemma3_text"])
def bf16_target(request):
    if not native_bf16("cpu"):
        pytest.skip("this CPU has no bf16 units")
    model = _tiny_bf16(request.param)
    pack_decoder(model)
    model.set_row_invariant(True)
    return model


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["right", "wrong", "tree", "huge"]),
       n_prompt=st.integers(1, 70), max_new=st.integers(1, 90))
def test_bf16_greedy_with_any_draft_is_plain_bf16_decoding(bf16_target, seed, mode, n_prompt, max_new):
    """Tiny random bf16 models, packed: any draft (chains, trees, all wrong, more than fits) gives
    plain bf16 decoding's tokens; prompts and answers cross block boundaries."""
    prompt = random.Random(seed).choices(range(97), k=n_prompt)
    greedy = SamplingParams(temperature=0.0)
    plain, _ = generate_ids(bf16_target, prompt, max_new_tokens=max_new, params=greedy, eos_ids=frozenset())
    drafter = ScriptedDrafter(prompt + plain, mode, seed, 97)
    out, _ = generate_ids(bf16_target, prompt, max_new_tokens=max_new, params=greedy, eos_ids=frozenset(), drafter=drafter)
    assert out == plain


PROMPTS = [
    "Write a short poem about the sea.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
]


@pytest.fixture(scope="module")
def smol_bf16_exact(smollm2_dir):
    if not native_bf16("cpu"):
        pytest.skip("this CPU has no bf16 units")
    from specdraft import LLM

    return LLM(str(smollm2_dir), dtype="bfloat16", exact=True, progress=False)


@pytest.mark.integration
@pytest.mark.parametrize("drafter", ["ctc", "medusa", "lookup?min_ngram=2+ctc", "draft-model:self?quant=int8", "knn-ssd"])
def test_every_drafter_gives_plain_bf16_tokens_on_smollm2(smol_bf16_exact, drafter):
    for prompt in PROMPTS:
        plain = smol_bf16_exact.generate(prompt, max_new_tokens=80, drafter="plain")
        spec = smol_bf16_exact.generate(prompt, max_new_tokens=80, drafter=drafter)
        assert spec.token_ids == plain.token_ids, prompt
        assert spec.exact and spec.dtype == "bfloat16"
        assert spec.stats.target_forwards < plain.stats.target_forwards


@pytest.fixture(scope="module")
def tiny_llm64_dir(tiny_llm_dir, tmp_path_factory):
    """tiny_llm_dir's tokenizer and chat template with a model whose heads have 64 dimensions."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llm64")
    for f in tiny_llm_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(f, path / f.name)
    src = LlamaConfig.from_pretrained(str(tiny_llm_dir))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=src.vocab_size, hidden_size=128, intermediate_size=192,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=128, tie_word_embeddings=True,
                                         eos_token_id=src.eos_token_id))
    model.save_pretrained(str(path))
    return path


def test_cli_exact_reaches_the_model_and_the_json(tiny_llm64_dir, capsys):
    import json

    from specdraft.cli import main

    for flag, want in (([], False), (["--exact"], True)):
        assert main(["generate", "Say hi", "--model", str(tiny_llm64_dir), "--dtype", EXACT_DTYPE, "--drafter", "lookup",
                     "--max-new-tokens", "8", "--json", *flag]) == 0
        assert json.loads(capsys.readouterr().out)["exact"] is want


def test_llm_exact_sets_the_decoder_and_its_products(tiny_llm64_dir):
    from specdraft import LLM

    llm = LLM(str(tiny_llm64_dir), dtype=EXACT_DTYPE, exact=True, progress=False)
    assert llm.model.row_invariant and llm.exact
    if llm.packed:
        assert all(layer.down.weight.min_rows == 2 for layer in llm.model.layers)
    llm.model.set_row_invariant(False)
    assert not llm.model.row_invariant
    if llm.packed:
        assert llm.model.fast_head.min_rows == 1


def test_exact_refuses_bf16_weights_it_cannot_make_row_invariant(tiny_llm64_dir):
    from specdraft import LLM, SpecdraftError

    with pytest.raises(SpecdraftError, match="packed for oneDNN"):
        LLM(str(tiny_llm64_dir), dtype="bfloat16", exact=True, pack=False, progress=False)
    assert LLM(str(tiny_llm64_dir), dtype="float32", exact=True, pack=False, progress=False).exact  # float32: exact anyway


def test_exact_refuses_narrow_heads_in_bf16():
    from specdraft import SpecdraftError

    tiny_decoder(vocab=97, seed=0).set_row_invariant(True)  # float32: allowed (greedy tokens match without it)
    with pytest.raises(SpecdraftError, match="64 dimensions"):
        tiny_decoder(vocab=97, seed=0).to(BF16).set_row_invariant(True)  # heads of 8
    _tiny_bf16("llama").set_row_invariant(True)


def test_a_sliding_window_reads_from_its_first_keys_block():
    # rows at positions 100..102, window 40: first keys 61..63, in the block from 0 (61 // 64 = 0)
    chain = attention.plan(100, [100, 101, 102], None, 2, BF16, "cpu", 128, window=40)
    assert all(c.lo == 0 and [(a, b) for _, a, b in c.groups] == [(0, 128)] for c in chain.calls)
    # window 30: first keys 98, 99 (block 64), positions 127, 128: reads [64, 128) and [64, 192)
    far = attention.plan(127, [127, 128], None, 2, BF16, "cpu", 192, window=30).calls
    assert [c.lo for c in far] == [64, 64] and [[(a, b) for _, a, b in c.groups] for c in far] == [[(64, 128)], [(64, 192)]]
    hidden = far[1].add[0].isinf()  # row 1, head 0: keys 64.. hidden before the window and after the row
    assert hidden[:99 - 64].all() and not hidden[99 - 64:129 - 64].any() and hidden[129 - 64:].all()


@pytest.mark.integration
@pytest.mark.parametrize("model, drafter, prompt, chat, tokens", [
    # heads of 128 dimensions, six query heads per kv head, a multi-token draft model
    ("qwen2.5-coder-1.5b", "lookup?min_ngram=2+draft-model:self?quant=int8&vocab=32768",
     "Write a Python function that returns the n-th Fibonacci number, with a docstring.", True, 48),
    # heads of 256 dimensions, four per kv head, sliding-window layers; a base model
    ("gemma3-270m", "lookup?min_ngram=2", "The history of the Roman Empire begins", False, 120),
])
def test_other_families_bf16_exact_give_plain_tokens(model, drafter, prompt, chat, tokens):
    if not native_bf16("cpu"):
        pytest.skip("this CPU has no bf16 units")
    from specdraft import LLM

    llm = LLM(model, dtype="bfloat16", exact=True, progress=False)
    plain = llm.generate(prompt, max_new_tokens=tokens, drafter="plain", chat=chat)
    spec = llm.generate(prompt, max_new_tokens=tokens, drafter=drafter, chat=chat)
    assert spec.token_ids == plain.token_ids
    assert spec.stats.target_forwards < plain.stats.target_forwards
