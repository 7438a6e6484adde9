"""A ranking of a tokenizer's tokens by how often they occur in answer-like text.

A draft model spends a large share of each step on its vocabulary head (151,936 rows for the
Qwen2.5 family: 28 % of qwen2.5-coder-0.5b's weights). Drafting over the most frequent tokens only,
as EAGLE-3's drafters do, makes each drafted token cheaper; a token outside that set is simply
never drafted, and verification by the target is unchanged, so decoding stays lossless.

The ranking counts the tokens of text like the answers a model writes: ShareGPT assistant turns,
German UI messages (translation), Python standard-library functions (code), and man-page and
README passages (technical prose). Tokens never seen follow in id order (byte-pair merges are
numbered roughly by frequency). The ranking depends only on the tokenizer, so it is computed once
per tokenizer and cached under `$SPECDRAFT_HOME/vocab/`.
"""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

from ..errors import SpecdraftError
from ..paths import atomic_file, home

CORPUS = {"sharegpt_answers": 3000, "german": 6000, "code": 1000, "docs": 1000}  # pieces of text per source


def corpus(progress: bool = True) -> list[str]:
    from . import sources

    sizes = CORPUS
    answers = [t for c in sources.sharegpt(sizes["sharegpt_answers"], progress, role="gpt") for t in c]
    german = [de for de, _ in sources.gettext_pairs()][: sizes["german"]]
    code = [src for _, src in sources.stdlib_functions()][: sizes["code"]]
    docs = [text for _, text in sources.documents()][: sizes["docs"]]
    return answers + german + code + docs


def count_tokens(tokenizer, texts: list[str]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for i in range(0, len(texts), 256):
        for enc in tokenizer.encode_batch(texts[i:i + 256], add_special_tokens=False):
            counts.update(enc.ids)
    return counts


def rank(counts: collections.Counter, vocab_size: int) -> list[int]:
    """Every id below vocab_size: the counted ones by count (ties by id), then the rest by id."""
    seen = sorted((t for t in counts if 0 <= t < vocab_size), key=lambda t: (-counts[t], t))
    have = set(seen)
    return seen + [t for t in range(vocab_size) if t not in have]


def token_ranking(tokenizer_json: Path, vocab_size: int, progress: bool = True) -> list[int]:
    """Token ids, most frequent first (cached per tokenizer file and vocabulary size)."""
    from tokenizers import Tokenizer

    tokenizer_json = Path(tokenizer_json)
    if not tokenizer_json.is_file():
        raise SpecdraftError(f"{tokenizer_json} not found: a reduced drafting vocabulary needs the model's tokenizer.json")
    digest = hashlib.sha256(tokenizer_json.read_bytes()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps(CORPUS, sort_keys=True).encode()).hexdigest()[:8]
    cache = home() / "vocab" / f"{digest}-{vocab_size}-{key}.json"
    if cache.is_file():
        try:
            ids = json.loads(cache.read_text())
            if isinstance(ids, list) and len(ids) == vocab_size:
                return ids
        except ValueError:
            pass  # a damaged cache file is rebuilt
    if progress:
        print(f"ranking the tokens of {tokenizer_json.parent.name} by frequency (once per tokenizer) ...", flush=True)
    ids = rank(count_tokens(Tokenizer.from_file(str(tokenizer_json)), corpus(progress)), vocab_size)
    with atomic_file(cache, "w") as f:
        json.dump(ids, f)
    return ids
