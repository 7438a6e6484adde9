"""Batched greedy generation (data building) equals batch-1 greedy decoding, row by row."""

import random

import pytest
import torch
from conftest import tiny_decoder

from specdraft.engine import generate_ids
from specdraft.runtime.batched import greedy_batch
from specdraft.runtime.packed import pack_decoder


@pytest.mark.parametrize("family,packed", [("qwen2", False), ("llama", False), ("llama", True), ("gemma3_text", True)])
@pytest.mark.parametrize("seed", range(3))
def test_greedy_batch_equals_plain_decoding_per_row(family, packed, seed):
    model = tiny_decoder(vocab=97, seed=seed, family=family)
    if packed:  # products and LM head in oneDNN's layout (runtime/packed.py)
        assert pack_decoder(model)
    rng = random.Random(seed)
    prompts = [[rng.randrange(97) for _ in range(rng.randint(1, 12))] for _ in range(5)]
    eos = frozenset({rng.randrange(97), rng.randrange(97)})
    got = greedy_batch(model, prompts, max_new_tokens=20, eos_ids=eos, pad_id=3, keep=4, layers=(1, 0))
    for r, (p, g) in enumerate(zip(prompts, got.answers)):
        want, _ = generate_ids(model, p, max_new_tokens=20, eos_ids=eos)
        assert g == want
        # the states a training row needs: those of a plain teacher-forced pass over prompt + answer
        seq = p + g
        fwd = model(torch.tensor(seq), torch.arange(len(seq)), model.new_cache(len(seq)), final_hidden=True,
                    hidden_layers=(0, 1))
        k = min(4, len(p))
        assert torch.allclose(got.hidden[r], fwd.final_hidden[len(p) - k:len(seq) - 1], atol=1e-4)
        for j, layer in enumerate((1, 0)):  # the residual states after those layers, in the order asked
            assert torch.allclose(got.layers[r][:, j], fwd.layer_hidden[layer][len(p) - k:len(seq) - 1], atol=1e-4)
        assert got.prompt_argmax[r] == fwd.logits[len(p) - k:len(p)].argmax(-1).tolist()


def test_distill_build_stores_the_models_own_answers_and_resumes(tiny_llm_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from specdraft.errors import SpecdraftError
    from specdraft.runtime import cpu, loader
    from specdraft.runtime.cpu import fast_dtype
    from specdraft.runtime.loader import load_decoder
    from specdraft.text import Tokenizer
    from specdraft.train import data

    prompts = [{"domain": "x", "prompt": f"question number {i}: " + "why " * i} for i in range(7)]
    monkeypatch.setattr(data, "training_prompts", lambda *a, **k: prompts)
    out = tmp_path / "d"
    kw = dict(max_new_tokens=12, batch_size=3, context=4, layers=(1,), progress=False)
    data.build_distill(str(tiny_llm_dir), out, **kw)
    shards = sorted(out.glob("shard-*.safetensors"))
    assert len(shards) == 3  # 7 prompts in batches of 3
    meta = __import__("json").loads((out / "data.json").read_text())
    assert meta["shards"] == 3 and meta["answer_tokens"] > 0
    # shard 0, conversation 0: `next` holds the answer greedy decoding gives (batch 1), in the dtype
    # that runs fastest here (bf16 with native bf16 units, else fp32), which data.json records
    assert meta["dtype"] == str(fast_dtype("cpu")).removeprefix("torch.")
    tok = Tokenizer(tiny_llm_dir)
    dec = load_decoder(tiny_llm_dir, fast_dtype("cpu"), "cpu")
    s0 = load_file(str(shards[0]))
    enc = tok.encode_prompt(prompts[0]["prompt"])
    want, _ = generate_ids(dec, enc, max_new_tokens=12, eos_ids=frozenset(tok.eos_ids))
    rows = s0["seq"] == 0
    answer = s0["next"][rows & s0["target"]].tolist()
    agree = sum(a == b for a, b in zip(answer, want[:len(answer)])) / len(answer)
    assert agree >= 0.9 and abs(len(answer) - len(want)) <= 1
    assert rows.sum() == len(answer) + min(4, len(enc)) - 1  # the context's prompt rows, then the answer
    assert torch.equal(s0["greedy"][s0["target"]], s0["next"][s0["target"]])  # answers are the model's own
    seq = torch.tensor(enc + answer)
    fwd = dec(seq, torch.arange(len(seq)), dec.new_cache(len(seq)), final_hidden=True, hidden_layers=(1,))
    want_h = fwd.final_hidden[len(enc) - min(4, len(enc)):len(seq) - 1]
    assert torch.allclose(s0["hidden"][rows].float(), want_h.float(), atol=0.1, rtol=0.05)
    want_l = fwd.layer_hidden[1][len(enc) - min(4, len(enc)):len(seq) - 1]
    assert meta["layers"] == [1]  # residual states are unnormalised (large): compare directions, bf16
    assert torch.cosine_similarity(s0["layers"][rows][:, 0].float(), want_l.float(), dim=-1).min() > 0.995
    # the base is packed for oneDNN as LLM packs it (float32 on a CPU), unless SPECDRAFT_PACK=0;
    # the stored tokens are the same either way
    from specdraft.runtime import packed

    assert meta["packed_weights"] == packed.available(dec)
    monkeypatch.setenv("SPECDRAFT_PACK", "0")
    data.build_distill(str(tiny_llm_dir), tmp_path / "dense", **kw)
    monkeypatch.delenv("SPECDRAFT_PACK")
    assert __import__("json").loads((tmp_path / "dense" / "data.json").read_text())["packed_weights"] is False
    d0 = load_file(str(tmp_path / "dense" / shards[0].name))
    assert torch.equal(d0["next"], s0["next"]) and torch.equal(d0["greedy"], s0["greedy"])
    assert torch.allclose(d0["hidden"].float(), s0["hidden"].float(), atol=0.1, rtol=0.05)
    # resume: a lost shard is rebuilt exactly, the others are kept
    before = load_file(str(shards[1]))
    shards[1].unlink()
    data.build_distill(str(tiny_llm_dir), out, **kw)
    after = load_file(str(shards[1]))
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(SpecdraftError, match="other settings"):
        data.build_distill(str(tiny_llm_dir), out, **{**kw, "max_new_tokens": 5})
    # a directory written before the dtype was recorded was built in bf16: it resumes in bf16 only
    meta.pop("dtype")
    (out / "data.json").write_text(__import__("json").dumps(meta))
    for dtype in (torch.bfloat16, torch.float32):
        monkeypatch.setattr(cpu, "fast_dtype", lambda device, dtype=dtype: dtype)
        shards[2].unlink(missing_ok=True)
        if dtype == torch.bfloat16:
            data.build_distill(str(tiny_llm_dir), out, **kw)
            assert shards[2].exists()
        else:
            with pytest.raises(SpecdraftError, match="other settings"):
                data.build_distill(str(tiny_llm_dir), out, **kw)


def test_written_answers_are_teacher_forced_and_new_prompts_only(tiny_llm_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from specdraft.data import sources
    from specdraft.runtime.cpu import fast_dtype
    from specdraft.runtime.loader import load_decoder
    from specdraft.text import Tokenizer
    from specdraft.train import data

    pairs = [(f"user question number {i}, " + "why " * i, f"a written answer {i} " + "because " * (i + 1)) for i in range(9)]
    monkeypatch.setattr(sources, "sharegpt_exchanges", lambda progress=True: pairs)
    monkeypatch.setattr(data, "taken_prompts", lambda *a, **k: {pairs[2][0], pairs[5][0]})
    out = tmp_path / "w"
    kw = dict(conversations=6, per_shard=3, context=4, layers=(0,), progress=False)
    data.build_written(str(tiny_llm_dir), out, **kw)
    meta = __import__("json").loads((out / "data.json").read_text())
    assert meta["available"] == 7 and meta["shards"] == 2  # 9 pairs, 2 excluded; 6 used, 3 per shard
    tok = Tokenizer(tiny_llm_dir)
    dec = load_decoder(tiny_llm_dir, fast_dtype("cpu"), "cpu")
    eos = tok.hf.eos_token_id if tok.hf.eos_token_id in tok.eos_ids else sorted(tok.eos_ids)[0]
    seen = set()
    for shard in sorted(out.glob("shard-*.safetensors")):
        s = load_file(str(shard))
        for r in s["seq"].unique().tolist():
            rows = s["seq"] == r
            answer = s["next"][rows & s["target"]].tolist()
            match = [(u, a) for u, a in pairs if tok.hf.encode(a, add_special_tokens=False) + [eos] == answer]
            assert len(match) == 1  # the stored answer is a written one, verbatim
            seen.add(match[0][0])
            enc = tok.encode_prompt(match[0][0])
            x = torch.tensor(enc + answer)
            fwd = dec(x, torch.arange(len(x)), dec.new_cache(len(x)), final_hidden=True, hidden_layers=(0,))
            k = min(4, len(enc))
            assert rows.sum() == k + len(answer) - 1
            assert s["greedy"][rows].tolist() == fwd.logits[len(enc) - k:len(x) - 1].argmax(-1).tolist()
            assert torch.allclose(s["hidden"][rows].float(), fwd.final_hidden[len(enc) - k:len(x) - 1].float(), atol=0.1, rtol=0.05)
            want_l = fwd.layer_hidden[0][len(enc) - k:len(x) - 1].float()
            assert torch.cosine_similarity(s["layers"][rows][:, 0].float(), want_l, dim=-1).min() > 0.995
    assert len(seen) == 6 and not seen & {pairs[2][0], pairs[5][0]}
    from specdraft.errors import SpecdraftError
    with pytest.raises(SpecdraftError, match=r"layers \[9\] do not exist"):
        data.build_written(str(tiny_llm_dir), tmp_path / "w9", **{**kw, "layers": (0, 9)})
