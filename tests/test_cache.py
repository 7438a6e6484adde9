import pytest
import torch

from specdraft.errors import SpecdraftError
from specdraft.runtime.cache import KVCache
from specdraft.runtime.config import ModelConfig

CFG = ModelConfig(family="llama", vocab_size=10, hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2,
                  num_kv_heads=1, head_dim=4, rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=64,
                  tie_word_embeddings=True, attention_bias=False)


def _cache_with_slots(capacity=10):
    c = KVCache(CFG, capacity, torch.float32)
    # slot s holds value s in every layer / head / dim, so moves are visible
    c.k[:] = torch.arange(c.k.shape[2], dtype=torch.float32)[None, None, :, None]  # whole blocks: >= capacity
    c.v[:] = -c.k
    return c


def test_commit_and_truncate_change_length_only_explicitly():
    c = _cache_with_slots()
    c.commit(4)
    assert c.length == 4 and c.room() == 6
    c.truncate(2)
    assert c.length == 2
    with pytest.raises(ValueError):
        c.truncate(3)
    with pytest.raises(ValueError):
        c.commit(9)


def test_compact_moves_accepted_tree_nodes_to_contiguous_slots():
    c = _cache_with_slots()
    c.commit(3)
    c.compact([0, 2, 5])  # accepted nodes were written at slots 3, 5, 8
    assert c.length == 6
    assert c.k[0, 0, :6, 0].tolist() == [0, 1, 2, 3, 5, 8]
    assert c.v[1, 0, :6, 0].tolist() == [0, -1, -2, -3, -5, -8]


def test_compact_of_a_chain_is_a_commit():
    c = _cache_with_slots()
    c.commit(2)
    c.compact([0, 1, 2])
    assert c.length == 5 and c.k[0, 0, :5, 0].tolist() == [0, 1, 2, 3, 4]


def test_writes_outside_capacity_are_refused():
    c = _cache_with_slots(capacity=5)
    c.commit(3)
    with pytest.raises(SpecdraftError, match="overflow"):
        c.check_fits(3, 3)
    with pytest.raises(SpecdraftError):
        c.check_fits(2, 1)  # would overwrite the committed prefix
    c.check_fits(3, 2)
