"""The EAGLE-3 head: its cached drafting path computes what its batch (training) path computes,
its drafter is lossless on tiny models, its checkpoint is EAGLE-3's layout and round-trips, and
it trains (learns, resumes) in the shared trainer."""

import json

import pytest
import torch
from conftest import tiny_decoder
from safetensors.torch import load_file
from test_ctc_medusa import PROMPT, fake_distill

from specdraft.drafters.base import StepContext
from specdraft.drafters.eagle3 import (ARCH, Eagle3Config, Eagle3Drafter, Eagle3Head, best_first_tree,
                                       default_layer_ids, load_head, save_head)
from specdraft.engine import generate_ids
from specdraft.errors import SpecdraftError
from specdraft.runtime.sampling import SamplingParams

LAYERS = 5  # a tiny target; the head reads the states entering its layers 1, 2 and 4
IDS = (1, 2, 4)


def tiny_head(model, seed=0, draft_vocab=60, scale=0.3):
    cfg = Eagle3Config.for_target("tiny", model.cfg, draft_vocab, IDS)
    torch.manual_seed(seed)
    m = Eagle3Head(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, scale) if p.dim() == 2 else p.normal_(1, 0.1)
        m.vocab.copy_(torch.randperm(model.cfg.vocab_size)[:draft_vocab].sort().values)
    return m.eval().requires_grad_(False)


def states(model, ids, layers):
    cache = model.new_cache(len(ids))
    fw = model(torch.tensor(ids), torch.arange(len(ids)), cache, final_hidden=True, hidden_layers=layers)
    return fw


def test_the_cached_drafting_path_is_the_batch_path():
    """After the prompt, the drafter's distribution of the first drafted token and of a drafted
    chain's next steps equal `unroll` over the same text (one window of it all)."""
    model = tiny_decoder(layers=LAYERS)
    head = tiny_head(model)
    d = Eagle3Drafter(head, model.embed.weight, "t", max_nodes=3, branch=1, min_prob=0.0)
    ids = PROMPT + [11]  # the last one is the root
    fw = states(model, ids[:-1], head.cfg.feature_layers)
    ctx = StepContext(ids=ids, budget=8, capacity=64, params=SamplingParams(), generator=None,
                      hidden=fw.final_hidden[-1], rows=fw.final_hidden,
                      layer_rows={i: fw.layer_hidden[i] for i in head.cfg.feature_layers})
    d.start(ids, ctx)
    draft = d.propose(ctx)
    W = len(ids) - 1
    feats = torch.stack([fw.layer_hidden[i] for i in head.cfg.feature_layers], 1)[None]
    logits = head.unroll(feats, torch.tensor(ids[1:])[None], torch.ones(1, W, dtype=torch.bool),
                         model.embed.weight, 3)
    chain = [head.vocab[c].item() for c in logits[0].argmax(-1)]
    assert draft.tokens == chain and draft.parents == [-1, 0, 1]
    root = torch.log_softmax(head.logits(d.last[0]).float(), -1)
    assert torch.allclose(root, torch.log_softmax(logits[0, 0].float(), -1), atol=1e-4)


def test_best_first_tree_takes_the_most_probable_paths():
    """A node's children are offered once it is taken; nodes come out best first by path
    probability, so the tree is the n-node tree of the largest such sum."""
    dists = {-1: [0.6, 0.25, 0.15], 0: [0.5, 0.4, 0.1], 1: [0.7, 0.2, 0.1], 2: [1.0, 0.0, 0.0]}
    seen = []

    def expand(i, tokens, parents):
        seen.append(i)
        return torch.tensor(dists[min(i, 2)]).log()

    draft, probs = best_first_tree(expand, torch.tensor(dists[-1]).log(), 4, branch=2, min_prob=0.0)
    assert draft.tokens == [0, 0, 1, 0] and draft.parents == [-1, 0, -1, 2]
    assert probs == pytest.approx([0.6, 0.3, 0.25, 0.25])
    assert seen == [0, 1, 2]  # the last node is not expanded: nothing more can be taken


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("nodes,branch", [(1, 1), (4, 2), (8, 3)])
def test_the_drafter_is_lossless(seed, nodes, branch):
    model = tiny_decoder(layers=LAYERS, scale=0.2, seed=seed)
    d = Eagle3Drafter(tiny_head(model, seed), model.embed.weight, "t", max_nodes=nodes, branch=branch, min_prob=0.0)
    plain, _ = generate_ids(model, PROMPT, max_new_tokens=40)
    out, stats = generate_ids(model, PROMPT, max_new_tokens=40, drafter=d)
    assert out == plain and stats.drafted > 0
    p = SamplingParams(temperature=0.9, seed=seed)
    a, _ = generate_ids(model, PROMPT, max_new_tokens=20, params=p, drafter=d)
    b, _ = generate_ids(model, PROMPT, max_new_tokens=20, params=p, drafter=d)
    assert a == b


def test_the_checkpoint_is_eagle3s_layout_and_round_trips(tmp_path):
    model = tiny_decoder(layers=LAYERS)
    head = tiny_head(model)
    save_head(head, tmp_path / "h", dtype=torch.float32)
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert cfg["architectures"] == [ARCH] and cfg["num_hidden_layers"] == 1
    assert cfg["draft_vocab_size"] == 60 and cfg["vocab_size"] == model.cfg.vocab_size
    assert cfg["eagle_aux_hidden_state_layer_ids"] == list(IDS)
    st = load_file(str(tmp_path / "h" / "model.safetensors"))
    assert st["midlayer.self_attn.q_proj.weight"].shape == (4 * 8, 2 * 32)
    assert st["fc.weight"].shape == (32, 3 * 32) and st["lm_head.weight"].shape == (60, 32)
    assert torch.equal(torch.arange(60) + st["d2t"], head.vocab) and int(st["t2d"].sum()) == 60
    assert bool(st["t2d"][head.vocab].all())
    back = load_head(tmp_path / "h", model.cfg)
    for k, v in head.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k

    other = tiny_decoder(layers=LAYERS, vocab=120)
    with pytest.raises(SpecdraftError, match="trained for tiny"):
        load_head(tmp_path / "h", other.cfg)
    with pytest.raises(SpecdraftError, match="reads layers"):
        load_head(tmp_path / "h", tiny_decoder(layers=3).cfg)
    (tmp_path / "h" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(SpecdraftError, match="cannot read"):
        load_head(tmp_path / "h", model.cfg)


def test_default_layers_are_eagle3s():
    assert default_layer_ids(30) == (2, 15, 27)
    with pytest.raises(SpecdraftError, match="three target layers"):
        Eagle3Config.for_target("t", tiny_decoder(layers=LAYERS).cfg, 10, (0, 2, 4))


def test_training_learns_and_gives_a_lossless_drafter(tmp_path, tiny_qwen_dir):
    from specdraft.drafters import DraftContext, build_drafter
    from specdraft.runtime.loader import load_decoder
    from specdraft.train.trainer import TrainConfig, Trainer, heldout_first_token

    base = load_decoder(tiny_qwen_dir, torch.float32)
    fake_distill(tmp_path / "data", base, layers=(0, 1))
    cfg = TrainConfig("eagle3", epochs=6, batch_size=32, lr=3e-3, max_labels=3, window=6, intermediate_size=48,
                      draft_vocab=64, eval_every=1000, checkpoint_every=4, eval_samples=200, feature_layers=(0, 1, 1))
    tr = Trainer(str(tiny_qwen_dir), tmp_path / "data", tmp_path / "a", cfg, progress=False)
    assert tr.module.cfg.layer_ids == (1, 2, 2)
    batch = tr.samples.batch(tr.train_idx[:64])
    with torch.no_grad():
        loss0 = float(tr.loss(batch))

    def first_token():  # on training positions: the tiny random data's held-out ones are not learnable
        return heldout_first_token(tr.module.eval(), tr.samples, tr.train_idx[:300], tr.embed, tr.head)

    first0 = first_token()
    tr.module.train()
    state = tr.run()
    with torch.no_grad():
        assert float(tr.loss(batch)) < 0.9 * loss0  # it learns
    assert first_token() > first0 + 0.1  # its first drafted token is the data's next token more often
    assert state["history"][-1]["heldout_tau"] >= 1.0
    assert not (tmp_path / "a" / "checkpoint").exists()
    assert json.loads((tmp_path / "a" / "config.json").read_text())["architectures"] == [ARCH]

    ctx = DraftContext(model=base, tokenizer=None, path=tiny_qwen_dir, name="tiny", dtype=torch.float32,
                       device=torch.device("cpu"))
    d = build_drafter(f"eagle3:{tmp_path / 'a'}?max_nodes=4", ctx)
    plain, _ = generate_ids(base, PROMPT, max_new_tokens=30)
    out, stats = generate_ids(base, PROMPT, max_new_tokens=30, drafter=d)
    assert out == plain and stats.drafted > 0


def test_training_refuses_data_without_the_heads_layers(tmp_path, tiny_qwen_dir):
    from specdraft.runtime.loader import load_decoder
    from specdraft.train.trainer import TrainConfig, Trainer

    fake_distill(tmp_path / "data", load_decoder(tiny_qwen_dir, torch.float32), n_seq=2, length=4)
    with pytest.raises(SpecdraftError, match="--layers"):
        Trainer(str(tiny_qwen_dir), tmp_path / "data", tmp_path / "a", TrainConfig("eagle3"), progress=False)


@pytest.mark.integration
def test_llamacpps_converter_reads_the_checkpoint(tmp_path, smollm2_dir):
    """llama.cpp's own convert_hf_to_gguf.py (from the pinned sdist) turns the head into an
    `eagle3` GGUF file with its three target layers; where llama-server is built, it drafts with it."""
    gguf = pytest.importorskip("gguf")
    from specdraft.bench.llama_convert import convert_eagle3
    from specdraft.runtime.loader import load_decoder

    base = load_decoder(smollm2_dir, torch.float32)
    head = Eagle3Head(Eagle3Config.for_target("smollm2-135m", base.cfg, 64))
    head.vocab.copy_(torch.arange(64) * 2)
    head.init_from_base(base)
    save_head(head, tmp_path / "head")
    out = convert_eagle3(tmp_path / "head", smollm2_dir, tmp_path / "head.gguf")
    r = gguf.GGUFReader(str(out))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    assert arch == "eagle3"
    field = r.fields["eagle3.target_layers"]
    assert [int(field.parts[i][0]) for i in field.data] == [2, 15, 27]
    names = {t.name for t in r.tensors}
    assert {"fc.weight", "d2t", "output.weight", "blk.0.attn_q.weight"} <= names
    d2t = next(t for t in r.tensors if t.name == "d2t")
    assert [int(x) for x in d2t.data[:4]] == [0, 2, 4, 6]  # written as target ids


@pytest.mark.integration
def test_llama_server_drafts_with_the_converted_head(tmp_path, smollm2_dir):
    """The bench peer `llamacpp-eagle3:DIR`: the head converted once (cached by its sha256), then
    llama-server drafts with it (`--spec-type draft-eagle3`) and answers with its plain tokens."""
    from specdraft.api import LLM
    from specdraft.bench import llama_server as ls
    from specdraft.bench.llama_convert import converted_eagle3
    from specdraft.bench.peers import make_peer
    from specdraft.runtime.loader import load_decoder

    if ls.find_server() is None:
        pytest.skip(ls.build_hint())
    pytest.importorskip("sentencepiece")
    base = load_decoder(smollm2_dir, torch.float32)
    head = Eagle3Head(Eagle3Config.for_target("smollm2-135m", base.cfg, 256))
    head.init_from_base(base)
    save_head(head, tmp_path / "head")
    first = converted_eagle3(tmp_path / "head", smollm2_dir)
    assert converted_eagle3(tmp_path / "head", smollm2_dir) == first and first.stat().st_size > 0
    llm = LLM(str(smollm2_dir), backend="gguf")
    messages = [{"role": "user", "content": "Write a haiku about the sea."}]
    plain, peer = make_peer(llm, "llamacpp-plain", {}), None
    try:
        want = plain.generate(messages, 32).token_ids
        plain.close()
        peer = make_peer(llm, f"llamacpp-eagle3:{tmp_path / 'head'}", {})
        r = peer.generate(messages, 32)
        assert r.drafted > 0 and r.token_ids == want
    finally:
        plain.close()
        if peer is not None:
            peer.close()
