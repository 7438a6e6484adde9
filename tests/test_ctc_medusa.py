"""CTC decoding (pure), CTC / Medusa drafters on tiny models (lossless), checkpoints, training resume."""

import copy
import json
import math

import pytest
import torch
from conftest import tiny_decoder
from safetensors.torch import save_file

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from specdraft.drafters.ctc import CTCDrafter, candidates_to_draft, ctc_candidates, ctc_tree
from specdraft.drafters.heads import HeadConfig, head_product, load_module, make_module, save_module
from specdraft.drafters.medusa import MedusaDrafter, medusa_candidates, medusa_tree
from specdraft.engine import generate_ids
from specdraft.errors import SpecdraftError
from specdraft.runtime import packed
from specdraft.runtime.sampling import SamplingParams

PROMPT = [5, 17, 3, 60, 2, 9, 41]
BLANK = 9


def frames(*rows):
    """Frames whose top symbol is given per frame (prob 0.9), the rest spread evenly."""
    lp = torch.full((len(rows), 10), math.log(0.1 / 9))
    for f, s in enumerate(rows):
        lp[f, s] = math.log(0.9)
    return lp


def test_ctc_collapse_blanks_and_repeats():
    best, score = ctc_candidates(frames(4, 4, BLANK, 4, 7, BLANK), BLANK)[0]
    assert best == [4, 4, 7]  # a blank separates the two 4s; the adjacent pair merges
    assert score < 0
    assert ctc_candidates(frames(3, 3, 3), BLANK)[0][0] == [3]


def test_ctc_all_blank_gives_no_candidate_and_an_empty_draft():
    lp = torch.full((4, 10), -30.0)
    lp[:, BLANK] = 0.0
    assert ctc_candidates(lp, BLANK, min_logp=-5) == []
    assert len(candidates_to_draft([], 10)) == 0


def test_ctc_candidates_are_distinct_and_tree_dedups_prefixes():
    lp = torch.log_softmax(torch.randn(6, 10, generator=torch.Generator().manual_seed(1)), -1)
    cands = ctc_candidates(lp, BLANK, topk=3, beams=10)
    seqs = [tuple(c) for c, _ in cands]
    assert len(seqs) == len(set(seqs)) and all(seqs)
    assert all(BLANK not in s for s in seqs)
    scores = [s for _, s in cands]
    assert scores == sorted(scores, reverse=True)
    d = candidates_to_draft(cands, 100)
    assert len(d) <= sum(len(s) for s in seqs)  # shared prefixes are one node
    paths = set()
    for i in range(len(d)):  # every candidate is a root-to-node path of the tree
        path, n = [], i
        while n >= 0:
            path.append(d.tokens[n])
            n = d.parents[n]
        paths.add(tuple(reversed(path)))
    assert set(seqs) <= paths


def test_medusa_candidates_beam():
    lp = torch.log_softmax(torch.randn(3, 10, generator=torch.Generator().manual_seed(2)), -1)
    cands = medusa_candidates(lp, topk=2, beams=4)
    assert len(cands) == 4 and all(len(c) == 3 for c, _ in cands)
    assert cands[0][0] == lp.argmax(-1).tolist()


def node_paths(d):
    out = []
    for i in range(len(d)):
        path, n = [], i
        while n >= 0:
            path.append(d.tokens[n])
            n = d.parents[n]
        out.append(tuple(reversed(path)))
    return out


def brute_prefix_probs(logp, blank):
    """P(collapsed output starts with p) for every prefix p, by enumerating all alignments."""
    y = logp.double().exp()
    F_, C = y.shape
    probs = {}
    for path in itertools.product(range(C), repeat=F_):
        pr = 1.0
        for f, c in enumerate(path):
            pr *= float(y[f, c])
        out, last = [], None
        for c in path:
            if c != blank and c != last:
                out.append(c)
            last = c
        for n in range(1, len(out) + 1):
            probs[tuple(out[:n])] = probs.get(tuple(out[:n]), 0.0) + pr
    return probs


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), frames_=st.integers(1, 4), sharp=st.floats(0.5, 4.0), nodes=st.integers(1, 12))
def test_ctc_tree_is_the_best_prefix_tree(seed, frames_, sharp, nodes):
    """Node probabilities are exact CTC prefix probabilities (repeats, blanks, all alignments), and
    with no pruning the tree holds the `nodes` most probable prefixes."""
    C, blank = 4, 3
    lp = torch.log_softmax(sharp * torch.randn(frames_, C, generator=torch.Generator().manual_seed(seed)).double(), -1)
    d, probs = ctc_tree(lp, blank, nodes, branch=C, symbols=C, min_prob=0.0)
    truth = brute_prefix_probs(lp, blank)
    got = dict(zip(node_paths(d), probs))
    assert len(got) == len(d) == min(nodes, len(truth))
    for path, pr in got.items():
        assert pr == pytest.approx(truth[path], rel=1e-9, abs=1e-12)
    kth = sorted(truth.values(), reverse=True)[len(d) - 1]
    assert min(probs) >= kth - 1e-12  # nothing left out beats a node taken
    assert all(blank not in p for p in got)
    assert sum(p for path, p in got.items() if len(path) == 1) <= 1 + 1e-9


def test_medusa_tree_takes_the_most_probable_paths():
    lp = torch.log_softmax(torch.randn(3, 6, generator=torch.Generator().manual_seed(4)), -1)
    d, probs = medusa_tree(lp, 10, branch=6, min_prob=0.0)
    y = lp.double().exp()
    allp = {}
    for n in range(1, 4):
        for path in itertools.product(range(6), repeat=n):
            allp[path] = math.prod(float(y[k, t]) for k, t in enumerate(path))
    got = dict(zip(node_paths(d), probs))
    for path, pr in got.items():
        assert pr == pytest.approx(allp[path])
    assert sorted(got.values(), reverse=True) == pytest.approx(sorted(allp.values(), reverse=True)[:10])


def tiny_heads(kind, model, seed=0, frames=5, feature_layers=(), layers=1):
    cfg = HeadConfig(kind=kind, base_model="tiny", hidden_size=model.cfg.hidden_size, vocab_size=model.cfg.vocab_size,
                     frames=frames, window=4, num_heads=4, intermediate_size=48, draft_vocab=60,
                     feature_layers=feature_layers, layers=layers)
    torch.manual_seed(seed)
    m = make_module(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
        m.vocab.copy_(torch.randperm(model.cfg.vocab_size)[:60].sort().values)
    return m.eval().requires_grad_(False)


@pytest.mark.parametrize("kind", ["ctc", "ctc+layers", "ctc+deep", "medusa"])
@pytest.mark.parametrize("tree,pack", [("prefix", False), ("beam", False), ("prefix", True)])
@pytest.mark.parametrize("seed", range(3))
def test_trained_head_drafters_are_lossless(kind, tree, pack, seed):
    """Random heads draft garbage, duplicates and empty drafts; output must equal plain."""
    model = tiny_decoder(layers=2, scale=0.2)
    heads = tiny_heads(kind.split("+")[0], model, seed, feature_layers=(1, 0) if "+layers" in kind else (),
                       layers=3 if "+deep" in kind else 1)
    d = head_drafter(kind, heads, model, topk=3, beams=6, max_nodes=12, tree=tree, pack=pack)
    plain, _ = generate_ids(model, PROMPT, max_new_tokens=40)
    out, stats = generate_ids(model, PROMPT, max_new_tokens=40, drafter=d)
    assert out == plain
    assert stats.drafted > 0
    p = SamplingParams(temperature=0.9, seed=seed)
    a, _ = generate_ids(model, PROMPT, max_new_tokens=20, params=p, drafter=d)
    b, _ = generate_ids(model, PROMPT, max_new_tokens=20, params=p, drafter=d)
    assert a == b


def head_drafter(kind, heads, model, **options):
    if kind.startswith("ctc"):
        return CTCDrafter(heads, model.embed.weight, model.head_weight(), "t", **options)
    return MedusaDrafter(heads, model.head_weight(), "t", **options)


@pytest.mark.skipif(not packed.packable(torch.zeros(1, 1)), reason="torch built without oneDNN")
@pytest.mark.parametrize("kind", ["ctc", "ctc+layers", "medusa"])
def test_packed_head_drafters_draft_what_dense_ones_draft(kind, monkeypatch):
    """On a CPU, `pack` puts the drafter's products and head rows in oneDNN's layout (as LLM packs
    the target): in float32 the same frames to rounding, so the same drafts; bf16 modules on a bf16
    model are packed where the CPU has bf16 units; a module not of the head's dtype, or a torch
    without oneDNN, is left dense."""
    model = tiny_decoder(layers=2, scale=0.2)
    heads = tiny_heads(kind.split("+")[0], model, 1, feature_layers=(1, 0) if "+" in kind else ())
    dense = head_drafter(kind, copy.deepcopy(heads), model, max_nodes=8)
    fast = head_drafter(kind, heads, model, max_nodes=8, pack=True)
    assert not isinstance(fast.head, torch.Tensor) and isinstance(dense.head, torch.Tensor)
    assert not any(isinstance(m, torch.nn.Linear) for m in fast.module.modules())
    assert fast.describe()["drafter_options"]["pack"] and not dense.describe()["drafter_options"]["pack"]
    drafts = {}
    for name, d in (("dense", dense), ("fast", fast)):
        seen = []

        class Spy(type(d)):
            def propose(self, ctx):
                draft = super().propose(ctx)
                seen.append((draft.tokens, draft.parents))
                return draft

        d.__class__ = Spy
        out, _ = generate_ids(model, PROMPT, max_new_tokens=24, drafter=d)
        drafts[name] = (out, seen)
    assert drafts["fast"] == drafts["dense"]
    assert sum(len(t) for t, _ in drafts["fast"][1]) > 0
    x = torch.randn(3, model.cfg.hidden_size)
    assert torch.allclose(head_product(x, fast.head), head_product(x, dense.head), atol=1e-5)
    half = tiny_heads(kind.split("+")[0], model, 1).to(torch.bfloat16)
    d = head_drafter(kind, half, model, pack=True)  # a bf16 module for a float32 head: left dense
    assert isinstance(d.head, torch.Tensor) and any(isinstance(m, torch.nn.Linear) for m in d.module.modules())
    if torch.bfloat16 in packed.dtypes():  # a bf16 module on a bf16 model: packed too (a CPU with bf16 units)
        model16 = copy.deepcopy(model).to(torch.bfloat16)
        d16 = head_drafter(kind, copy.deepcopy(half), model16, pack=True)
        dense16 = head_drafter(kind, half, model16)
        assert not isinstance(d16.head, torch.Tensor) and isinstance(dense16.head, torch.Tensor)
        x16 = x.bfloat16()
        assert torch.allclose(head_product(x16, d16.head).float(), head_product(x16, dense16.head).float(), atol=3e-2)
    monkeypatch.setattr(packed, "dtypes", lambda: ())  # a torch without oneDNN: nothing to pack
    d = head_drafter(kind, tiny_heads(kind.split("+")[0], model, 1), model, pack=True)
    assert isinstance(d.head, torch.Tensor) and any(isinstance(m, torch.nn.Linear) for m in d.module.modules())


def test_ctc_drafter_window_matches_committed_rows():
    """The drafter's hidden window must be the target's final states of the latest positions (and,
    with feature layers, their states after those layers)."""
    model = tiny_decoder(layers=2, scale=0.2)
    heads = tiny_heads("ctc", model, feature_layers=(1, 0))
    seen = []

    class Spy(CTCDrafter):
        def propose(self, ctx):
            draft = super().propose(ctx)
            seen.append((list(ctx.ids), self.hist.clone(), self.hist_layers.clone()))
            return draft

    d = Spy(heads, model.embed.weight, model.head_weight(), "t", topk=2, beams=4, max_nodes=6)
    assert d.needs.hidden_layers == (1, 0)
    _, stats = generate_ids(model, PROMPT, max_new_tokens=12, drafter=d)
    assert stats.accepted > 0  # the window grew by accepted nodes too, not only by roots
    for ids, hist, hist_layers in (seen[2], seen[-1]):
        cache = model.new_cache(len(ids))
        fwd = model(torch.tensor(ids), torch.arange(len(ids)), cache, final_hidden=True, hidden_layers=(0, 1))
        rows = slice(len(ids) - 1 - hist.shape[0], len(ids) - 1)
        assert torch.allclose(hist, fwd.final_hidden[rows], atol=1e-4)
        assert torch.allclose(hist_layers, torch.stack((fwd.layer_hidden[1][rows], fwd.layer_hidden[0][rows]), 1), atol=1e-4)


def test_checkpoint_roundtrip_and_refusals(tmp_path):
    model = tiny_decoder(layers=2, scale=0.2)
    heads = tiny_heads("ctc", model)
    save_module(heads, tmp_path / "c", dtype=torch.float32)
    back, raw = load_module(tmp_path / "c", model.cfg.hidden_size, model.cfg.vocab_size)
    assert torch.equal(back.vocab, heads.vocab)
    for k, v in heads.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    deep = tiny_heads("ctc", model, layers=3)  # layers after the first: their own weights, saved and read back
    assert set(deep.state_dict()) - set(heads.state_dict()) == {
        f"more.{i}.{n}" for i in range(2) for n in ("attn_norm", "qkv.weight", "o.weight", "mlp_norm",
                                                     "gate_up.weight", "down.weight")}
    save_module(deep, tmp_path / "deep", dtype=torch.float32)
    back, _ = load_module(tmp_path / "deep", model.cfg.hidden_size, model.cfg.vocab_size)
    args = (torch.randn(2, 4, model.cfg.hidden_size), torch.randint(0, model.cfg.vocab_size, (2, 4)), torch.ones(2, 4, dtype=torch.bool),
            model.embed.weight)
    assert back.cfg.layers == 3 and torch.equal(back.features(*args), deep.features(*args))
    assert not torch.allclose(deep.features(*args), tiny_heads("ctc", model).features(*args))
    with pytest.raises(SpecdraftError, match="at least one layer"):
        tiny_heads("ctc", model, layers=0)
    with pytest.raises(SpecdraftError, match="trained for tiny"):
        load_module(tmp_path / "c", 64, model.cfg.vocab_size)
    with pytest.raises(SpecdraftError, match="no config.json"):
        load_module(tmp_path / "nothing", 32, 97)
    (tmp_path / "c" / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(SpecdraftError, match="cannot read"):
        load_module(tmp_path / "c", model.cfg.hidden_size, model.cfg.vocab_size)
    save_module(heads, tmp_path / "d", dtype=torch.float32)
    state = {k: v.clone() for k, v in heads.state_dict().items()}
    state["vocab"][0] = 10_000
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "d" / "model.safetensors"))
    with pytest.raises(SpecdraftError, match="outside the model's vocabulary"):
        load_module(tmp_path / "d", model.cfg.hidden_size, model.cfg.vocab_size)
    (tmp_path / "d" / "config.json").write_text("{}")
    with pytest.raises(SpecdraftError, match="not a specdraft drafter config"):
        load_module(tmp_path / "d", model.cfg.hidden_size, model.cfg.vocab_size)


def fake_distill(path, model, n_seq=12, length=40, seed=0, layers=()):
    """A distillation directory whose answers are the tiny model's own greedy continuations."""
    g = torch.Generator().manual_seed(seed)
    cols = {k: [] for k in ("hidden", "next", "greedy", "seq", "target") + (("layers",) if layers else ())}
    for s in range(n_seq):
        prompt = torch.randint(0, model.cfg.vocab_size, (5,), generator=g).tolist()
        cont, _ = generate_ids(model, prompt, max_new_tokens=length)
        ids = prompt + cont
        cache = model.new_cache(len(ids))
        fwd = model(torch.tensor(ids), torch.arange(len(ids)), cache, final_hidden=True, hidden_layers=layers)
        n = len(ids) - 1
        cols["hidden"].append(fwd.final_hidden[:n].to(torch.bfloat16))
        if layers:
            cols["layers"].append(torch.stack([fwd.layer_hidden[i][:n] for i in layers], 1).to(torch.bfloat16))
        cols["next"].append(torch.tensor(ids[1:]))
        cols["greedy"].append(fwd.logits[:n].argmax(-1))
        cols["seq"].append(torch.full((n,), s, dtype=torch.int32))
        cols["target"].append(torch.arange(n) >= len(prompt) - 1)
    path.mkdir(parents=True)
    save_file({k: torch.cat(v).contiguous() for k, v in cols.items()}, str(path / "shard-00000.safetensors"))
    (path / "data.json").write_text(json.dumps({"model": None, **({"layers": list(layers)} if layers else {})}))


@pytest.mark.parametrize("kind", ["ctc", "medusa"])
def test_training_autocasts_to_bf16_only_where_bf16_is_native(kind, tmp_path, tiny_qwen_dir, monkeypatch):
    from specdraft.runtime import cpu, loader
    from specdraft.train.trainer import TrainConfig, Trainer

    fake_distill(tmp_path / "data", loader.load_decoder(tiny_qwen_dir, torch.float32))
    cfg = TrainConfig(kind, steps=3, batch_size=32, max_labels=3, frames=5, window=4, intermediate_size=32, draft_vocab=64)
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        monkeypatch.setattr(cpu, "fast_dtype", lambda device, dtype=dtype: dtype)
        tr = Trainer(str(tiny_qwen_dir), tmp_path / "data", tmp_path / str(dtype), cfg, progress=False)
        assert tr.embed.dtype == dtype and tr.head.dtype == dtype
        batch = tr.samples.batch(tr.train_idx[:64], future=True)
        loss = tr.loss(batch)  # the stored bf16 states enter either way; the module trains in fp32
        loss.backward()
        grads = [p.grad for p in tr.module.parameters() if p.grad is not None]
        assert loss.dtype == torch.float32 and grads and all(g.dtype == torch.float32 for g in grads)
        losses[dtype] = loss.item()
    # the same seed, the same batch: the two settings differ only by bf16 rounding
    assert losses[torch.float32] == pytest.approx(losses[torch.bfloat16], rel=0.05)


@pytest.mark.parametrize("kind", ["ctc", "medusa"])
def test_training_learns_resumes_and_refuses_corrupt_checkpoints(kind, tmp_path, tiny_qwen_dir):
    from specdraft.runtime.loader import load_decoder
    from specdraft.train.trainer import TrainConfig, Trainer, heldout_first_token

    base = load_decoder(tiny_qwen_dir, torch.bfloat16)
    fake_distill(tmp_path / "data", base.float())
    cfg = TrainConfig(kind, epochs=6, batch_size=32, lr=3e-3, max_labels=3, frames=5, window=4, intermediate_size=32,
                      draft_vocab=64, eval_every=1000, checkpoint_every=4, eval_samples=200)
    full = Trainer(str(tiny_qwen_dir), tmp_path / "data", tmp_path / "a", cfg, progress=False)
    batch = full.samples.batch(full.train_idx[:64])
    with torch.no_grad():
        loss0 = float(full.loss(batch))

    def first_token():  # on training positions: the tiny random data's held-out ones are not learnable
        return heldout_first_token(full.module.eval(), full.samples, full.train_idx[:300], full.embed, full.head)

    first0 = first_token()
    full.module.train()
    state = full.run()
    with torch.no_grad():
        assert float(full.loss(batch)) < 0.9 * loss0  # it learns
    assert first_token() > first0 + 0.05  # its first drafted token is the data's next token more often
    assert state["history"][-1]["heldout_tau"] >= 1.0
    assert (tmp_path / "a" / "config.json").is_file() and not (tmp_path / "a" / "checkpoint").exists()

    # Interrupted run: killed during step 5 (checkpoint at step 4), resumed by a new Trainer.
    part = Trainer(str(tiny_qwen_dir), tmp_path / "data", tmp_path / "b", cfg, progress=False)
    orig, calls = part.opt.step, {"n": 0}

    def interrupting_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return orig(*a, **k)

    part.opt.step = interrupting_step
    with pytest.raises(KeyboardInterrupt):
        part.run()
    resumed = Trainer(str(tiny_qwen_dir), tmp_path / "data", tmp_path / "b", cfg, progress=False)
    assert resumed.try_resume() and resumed.step == 4
    Trainer(str(tiny_qwen_dir), tmp_path / "data", tmp_path / "b", cfg, progress=False).run()
    a, _ = load_module(tmp_path / "a", base.cfg.hidden_size, base.cfg.vocab_size)
    b, _ = load_module(tmp_path / "b", base.cfg.hidden_size, base.cfg.vocab_size)
    for k, v in a.state_dict().items():
        assert torch.allclose(v.float(), b.state_dict()[k].float(), atol=1e-2), k

    (tmp_path / "c" / "checkpoint").mkdir(parents=True)
    (tmp_path / "c" / "checkpoint" / "trainer_state.json").write_text("{}")
    (tmp_path / "c" / "checkpoint" / "model.safetensors").write_bytes(b"xx")
    with pytest.raises(SpecdraftError, match="corrupt training checkpoint"):
        Trainer(str(tiny_qwen_dir), tmp_path / "data", tmp_path / "c", cfg, progress=False).run()


def test_aligned_frames_is_a_valid_ctc_alignment():
    from specdraft.train.trainer import aligned_frames

    labels = torch.tensor([[4, 4, 7, 0], [1, 2, 3, 5], [6, 0, 0, 0]])
    length = torch.tensor([3, 4, 1])
    got = aligned_frames(labels, length, 5, BLANK)
    assert got.tolist() == [[4, BLANK, 4, 7, BLANK], [1, 2, 3, 5, BLANK], [6, BLANK, BLANK, BLANK, BLANK]]
    for r in range(3):  # collapsing the alignment gives back the labels
        out, last = [], None
        for c in got[r].tolist():
            if c != BLANK and c != last:
                out.append(c)
            last = c
        assert out == labels[r, : length[r]].tolist()


@pytest.mark.parametrize("kind", ["ctc", "medusa"])
def test_distill_terms_target_the_states_that_predicted_each_label(kind, tmp_path, tiny_qwen_dir):
    from specdraft.runtime.loader import load_decoder
    from specdraft.train.trainer import TrainConfig, Trainer, distill_terms

    base = load_decoder(tiny_qwen_dir, torch.float32)
    fake_distill(tmp_path / "data", base)
    cfg = TrainConfig(kind, epochs=2, batch_size=32, lr=3e-3, max_labels=3, frames=5, window=4, intermediate_size=32,
                      draft_vocab=base.cfg.vocab_size, eval_every=1000, checkpoint_every=1000, feat=1.0, kd=1.0)
    tr = Trainer(str(tiny_qwen_dir), tmp_path / "data", tmp_path / "a", cfg, progress=False)
    b = tr.samples.batch(tr.train_idx[:64])
    head = tr.head.float()
    # The stored state behind label k is the one whose greedy token label k is (full draft vocabulary).
    pred = torch.einsum("bld,vd->blv", b["future"].float(), head).argmax(-1)
    has = torch.arange(3)[None, :] < b["length"][:, None]
    assert has.sum() > 20 and torch.equal(pred[has], b["labels"][has])
    # Features equal to those states: no feature loss, and the soft loss is at its minimum (the entropy).
    fut = b["future"].float()
    feats = torch.cat((fut, fut[:, :1].expand(-1, 2, -1)), 1)[:, : (5 if kind == "ctc" else 3)]
    logits = feats @ head.T
    if kind == "ctc":
        logits = torch.cat((logits, torch.full_like(logits[..., :1], -30.0)), -1)
    logp = torch.log_softmax(logits, -1)
    feat, soft = distill_terms(feats, logp, b, head)
    p = torch.softmax(fut @ head.T, -1)
    entropy = (-(p * p.clamp_min(1e-30).log()).sum(-1) * has).sum() / has.sum()
    assert float(feat) < 1e-6 and abs(float(soft) - float(entropy)) < 1e-3
    worse, soft2 = distill_terms(feats.roll(1, 0), torch.log_softmax(logits.roll(1, 0), -1), b, head)
    assert float(worse) > 0.01 and float(soft2) > float(soft) + 0.01
    with torch.no_grad():
        loss0 = float(tr.loss(b))
    tr.run()
    with torch.no_grad():
        assert float(tr.loss(b)) < loss0  # the combined loss trains


def test_labels_follow_the_models_own_tokens_until_the_text_leaves_them():
    from specdraft.train.trainer import Samples

    # one conversation; prompt rows 0-1, answer rows 2-9; `greedy` is what the model would write,
    # `next` the recorded (written) text: they disagree at rows 5 and 8
    nxt = torch.tensor([10, 11, 12, 13, 14, 99, 16, 17, 98, 19])
    greedy = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    n = nxt.numel()
    data = {"next": nxt, "greedy": greedy, "seq": torch.zeros(n, dtype=torch.long),
            "target": torch.arange(n) >= 1, "hidden": torch.zeros(n, 4)}
    vocab = torch.arange(100)
    s = Samples(data, max_labels=3, window=2, vocab=vocab)
    got = {int(t): s.labels[i, : s.length[i]].tolist() for i, t in enumerate(s.pos)}
    # row 1: root 11 is the model's; labels = greedy at 2, 3, 4 (text agrees all along)
    assert got[1] == [12, 13, 14]
    # row 3: greedy at 4 (text 14 agrees), at 5 (15; the text says 99 instead): cut after 15
    assert got[3] == [14, 15]
    # row 5 is not a sample (the text's root 99 is not the model's); row 6: 17, then 18 where the text says 98
    assert 5 not in got and got[6] == [17, 18]
    assert got[8 - 1] == [18]  # row 7: greedy 18 at row 8, then the text leaves it
    # a token outside the drafting vocabulary ends the labels (index map is over the vocab)
    s2 = Samples(data, max_labels=3, window=2, vocab=torch.tensor([12, 13, 15, 16, 17, 18, 19, 11, 10]))
    got2 = {int(t): s2.labels[i, : s2.length[i]].tolist() for i, t in enumerate(s2.pos)}
    assert got2[1] == [0, 1]  # 12, 13 in draft-vocabulary columns; 14 is outside
    # the model's own token may be larger than any token of the text or the vocabulary
    big = dict(data, greedy=torch.where(torch.arange(n) == 6, 500, greedy))
    got3 = {int(t): s.labels[i, : s.length[i]].tolist() for s in [Samples(big, 3, 2, vocab)] for i, t in enumerate(s.pos)}
    assert got3[3] == [14, 15] and got3[4] == [15] and 6 not in got3  # (looking 500 up used to fail)
    # held-out conversations only below `held_below`
    two = {k: torch.cat([v, v]) for k, v in data.items()}
    two["seq"] = torch.cat([torch.zeros(n, dtype=torch.long), torch.full((n,), 20)])
    s3 = Samples(two, max_labels=3, window=2, vocab=vocab)
    _, held = s3.split(every=20)
    assert set(two["seq"][s3.pos[held]].tolist()) == {0, 20}
    _, held = s3.split(every=20, held_below=1)
    assert set(two["seq"][s3.pos[held]].tolist()) == {0}


def test_extra_data_trains_but_is_never_held_out(tmp_path, tiny_qwen_dir):
    from specdraft.runtime.loader import load_decoder
    from specdraft.train.trainer import TrainConfig, Trainer

    base = load_decoder(tiny_qwen_dir, torch.bfloat16).float()
    fake_distill(tmp_path / "main", base, n_seq=21)
    fake_distill(tmp_path / "extra", base, n_seq=21, seed=1)
    cfg = TrainConfig("ctc", epochs=1, batch_size=32, max_labels=3, frames=5, window=4, intermediate_size=32,
                      draft_vocab=64)
    alone = Trainer(str(tiny_qwen_dir), tmp_path / "main", tmp_path / "a", cfg, progress=False)
    both = Trainer(str(tiny_qwen_dir), tmp_path / "main", tmp_path / "b", cfg, progress=False, extra=(tmp_path / "extra",))
    seq = both.samples.data["seq"][both.samples.pos]
    assert set(seq[both.held_idx].tolist()) == {0, 20}  # the main directory's held-out conversations only
    assert int(seq.max()) == 41  # the extra conversations are numbered after the main ones
    assert both._state()["data"] == [str(tmp_path / "main"), str(tmp_path / "extra")]
    assert both.steps == len(both.train_idx) // 32  # one epoch of everything; --steps overrides it:
    from dataclasses import replace
    assert Trainer(str(tiny_qwen_dir), tmp_path / "main", tmp_path / "c", replace(cfg, steps=3), progress=False).steps == 3
    alone_seq = alone.samples.data["seq"][alone.samples.pos]
    assert set(alone_seq[alone.held_idx].tolist()) == {0, 20} and len(both.train_idx) > len(alone.train_idx)


def test_train_cli_passes_the_layer_shape(tmp_path, tiny_qwen_dir):
    from specdraft.cli import main
    from specdraft.runtime.loader import load_decoder

    fake_distill(tmp_path / "main", load_decoder(tiny_qwen_dir, torch.bfloat16).float(), n_seq=21)
    out = tmp_path / "ctc"
    assert main(["train", "ctc", "--model", str(tiny_qwen_dir), "--data", str(tmp_path / "main"), "--out", str(out),
                 "--steps", "2", "--batch-size", "8", "--frames", "3", "--max-labels", "2",
                 "--intermediate-size", "40", "--window", "5", "--layers", "2"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["specdraft_head"]["intermediate_size"] == 40 and cfg["specdraft_head"]["frames"] == 3
    assert cfg["specdraft_head"]["window"] == 5 and cfg["specdraft_head"]["layers"] == 2
    assert cfg["training"]["train"]["intermediate_size"] == 40


def test_train_cli_defaults_are_the_library_defaults():
    """`train ctc|medusa` with no options trains with TrainConfig's defaults; given options reach it."""
    from dataclasses import replace

    from specdraft.cli import build_parser
    from specdraft.cli.train import train_config
    from specdraft.train.config import TrainConfig

    for kind in ("ctc", "medusa"):
        assert train_config(build_parser().parse_args(["train", kind, "--out", "x"])) == TrainConfig(kind)
    a = build_parser().parse_args(["train", "ctc", "--out", "x", "--epochs", "3", "--window", "7", "--kd", "0.5",
                                   "--eval-every", "9", "--feature-layers", "2,5", "--layers", "2"])
    assert train_config(a) == replace(TrainConfig("ctc"), epochs=3.0, window=7, kd=0.5, eval_every=9,
                                      feature_layers=(2, 5), layers=2)


def test_feature_layers_train_from_the_stored_states_and_need_them(tmp_path, tiny_qwen_dir):
    from dataclasses import replace

    from specdraft.runtime.loader import load_decoder
    from specdraft.train.trainer import TrainConfig, Trainer

    base = load_decoder(tiny_qwen_dir, torch.bfloat16).float()
    fake_distill(tmp_path / "main", base, n_seq=21, layers=(0, 1))
    fake_distill(tmp_path / "plain", base, n_seq=21, seed=1)
    cfg = TrainConfig("ctc", steps=12, batch_size=32, lr=3e-3, max_labels=3, frames=5, window=4, intermediate_size=32,
                      draft_vocab=64, feature_layers=(1,), eval_every=1000)
    t = Trainer(str(tiny_qwen_dir), tmp_path / "main", tmp_path / "a", cfg, progress=False)
    b = t.samples.batch(t.train_idx[:8])
    data = t.samples.data  # only the layer asked for is kept, and each window row reads its own position
    assert data["layers"].shape[1] == 1
    assert torch.equal(b["ctx_layers"][:, -1, 0], data["layers"][t.samples.pos[t.train_idx[:8]], 0])
    assert torch.equal(b["ctx_hidden"][:, -1], data["hidden"][t.samples.pos[t.train_idx[:8]]])
    t.run()
    assert t.module.w_layers.weight.abs().sum() > 0  # zero at the start: the states reached the loss
    back, _ = load_module(tmp_path / "a", base.cfg.hidden_size, base.cfg.vocab_size)
    assert back.cfg.feature_layers == (1,)
    assert Trainer(str(tiny_qwen_dir), tmp_path / "main", tmp_path / "b", replace(cfg, feature_layers=()),
                   progress=False).samples.data.get("layers") is None  # not asked for: not loaded
    with pytest.raises(SpecdraftError, match="no hidden states after layers"):
        Trainer(str(tiny_qwen_dir), tmp_path / "main", tmp_path / "c", cfg, progress=False, extra=(tmp_path / "plain",))


def test_ctc_checkpoint_reading_layers_the_target_lacks_is_refused(tmp_path, tiny_llm_dir):
    from specdraft.api import LLM
    from specdraft.drafters import build_drafter

    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    cfg = llm.model.cfg
    for layers, ok in (((cfg.num_layers - 1,), True), ((cfg.num_layers,), False)):
        head = HeadConfig(kind="ctc", base_model="tiny", hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
                          frames=3, window=4, num_heads=4, intermediate_size=32, feature_layers=layers)
        save_module(make_module(head), tmp_path / str(layers[0]), dtype=torch.float32)
        if ok:
            d = build_drafter(f"ctc:{tmp_path / str(layers[0])}", llm.draft_context)
            assert d.needs.hidden_layers == layers
            assert llm.generate("hello there", max_new_tokens=8, drafter=d).token_ids == \
                llm.generate("hello there", max_new_tokens=8).token_ids
        else:
            with pytest.raises(SpecdraftError, match=f"reads layers \\[{cfg.num_layers}\\]"):
                build_drafter(f"ctc:{tmp_path / str(layers[0])}", llm.draft_context)
