"""The token ranking behind a draft model's reduced drafting vocabulary (data/vocab.py)."""

import collections
import json

from specdraft.data import vocab


def test_rank_orders_by_count_then_id_and_covers_every_id():
    counts = collections.Counter({7: 5, 2: 5, 9: 1, 40: 3, -1: 9})  # 40 is outside a vocabulary of 12
    ids = vocab.rank(counts, 12)
    assert ids[:3] == [2, 7, 9]  # ties by id; 40 and -1 dropped
    assert sorted(ids) == list(range(12))
    assert ids[3:] == [t for t in range(12) if t not in (2, 7, 9)]


def test_token_ranking_counts_the_corpus_and_caches(tmp_path, monkeypatch, tiny_llm_dir):
    monkeypatch.setenv("SPECDRAFT_HOME", str(tmp_path))
    monkeypatch.setattr(vocab, "SHIPPED", tmp_path / "shipped")  # none shipped for this tokenizer
    calls = []

    def fake_corpus(progress=True):
        calls.append(1)
        return ["b b b a", "a a a a a b", "c"]

    monkeypatch.setattr(vocab, "corpus", fake_corpus)
    tok = tiny_llm_dir / "tokenizer.json"
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(tok))
    size = t.get_vocab_size()
    ids = vocab.token_ranking(tok, size, progress=False)
    counts = vocab.count_tokens(t, fake_corpus())
    assert ids == vocab.rank(counts, size) and len(calls) == 2
    top = max(counts, key=lambda k: (counts[k], -k))
    assert ids[0] == top
    again = vocab.token_ranking(tok, size, progress=False)
    assert again == ids and len(calls) == 2  # from the cache
    cache = next((tmp_path / "vocab").glob("*.json"))
    cache.write_text("[1, 2")  # damaged: rebuilt
    assert vocab.token_ranking(tok, size, progress=False) == ids and len(calls) == 3
    assert vocab.rank(collections.Counter({t: -i for i, t in enumerate(json.loads(cache.read_text())["ranked"])}), size) == ids


def test_a_shipped_ranking_is_used_without_counting(tmp_path, monkeypatch, tiny_llm_dir):
    monkeypatch.setenv("SPECDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(vocab, "SHIPPED", tmp_path / "shipped")
    monkeypatch.setattr(vocab, "corpus", lambda progress=True: ["z y x", "y y"])
    tok = tiny_llm_dir / "tokenizer.json"
    shipped = vocab.write_ranking(tok, tmp_path / "shipped", progress=False)
    first = json.loads(shipped.read_text())["ranked"]

    def no_counting(progress=True):
        raise AssertionError("counted although a ranking is shipped")

    monkeypatch.setattr(vocab, "corpus", no_counting)
    from tokenizers import Tokenizer

    size = Tokenizer.from_file(str(tok)).get_vocab_size()
    ids = vocab.token_ranking(tok, size, progress=False)
    assert first and ids[: len(first)] == first and sorted(ids) == list(range(size))
    assert not (tmp_path / "home" / "vocab").exists()  # nothing computed, nothing cached


def test_the_shipped_qwen_ranking_matches_its_corpus_key():
    """The file shipped for the Qwen2.5 tokenizer is named by the current corpus settings."""
    files = sorted(vocab.SHIPPED.glob("*.json"))
    assert files, "no shipped ranking"
    import hashlib

    expect = hashlib.sha256(json.dumps(vocab.CORPUS, sort_keys=True).encode()).hexdigest()[:8]
    for f in files:
        data = json.loads(f.read_text())
        assert f.stem.endswith(expect) and data["corpus"] == vocab.CORPUS and len(set(data["ranked"])) == len(data["ranked"])
