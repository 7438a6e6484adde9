"""A ranking of a tokenizer's tokens by how often they occur in answer-like text.

A draft model spends a large share of each step on its vocabulary head (151,936 rows for the
Qwen2.5 family: 28 % of qwen2.5-coder-0.5b's weights). Drafting over the most frequent tokens only,
as EAGLE-3's drafters do, makes each drafted token cheaper; a token outside that set is simply
never drafted, and verification by the target is unchanged, so decoding stays lossless.

The ranking counts the tokens of text like the answers a model writes: ShareGPT assistant turns,
German UI messages (translation), Python standard-library functions (code), and man-page and
README passages (technical prose). Tokens never seen follow in id order (byte-pair merges are
numbered roughly by frequency). The ranking depends only on the tokenizer. The one for the
Qwen2.5 tokenizer (both Qwen zoo models) ships in `artifacts/vocab/`, written by
`python -m specdraft.data.vocab qwen2.5-coder-0.5b`; for any other tokenizer it is counted once
(about 20 s; the data packages are fetched like the benchmark pools') and cached under
`$SPECDRAFT_HOME/vocab/`.
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

    answers = [t for c in sources.sharegpt(CORPUS["sharegpt_answers"], progress, role="gpt") for t in c]
    german = [de for de, _ in sources.gettext_pairs()][: CORPUS["german"]]
    code = [src for _, src in sources.stdlib_functions()][: CORPUS["code"]]
    docs = [text for _, text in sources.documents()][: CORPUS["docs"]]
    return answers + german + code + docs


def count_tokens(tokenizer, texts: list[str]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for i in range(0, len(texts), 256):
        for enc in tokenizer.encode_batch(texts[i:i + 256], add_special_tokens=False):
            counts.update(enc.ids)
    return counts


def by_count(counts: collections.Counter) -> list[int]:
    """The counted ids, most frequent first (ties by id)."""
    return sorted(counts, key=lambda t: (-counts[t], t))


def complete(ranked: list[int], vocab_size: int) -> list[int]:
    """Every id below vocab_size: those of `ranked` in its order, then the rest by id."""
    seen = [t for t in ranked if 0 <= t < vocab_size]
    have = set(seen)
    return seen + [t for t in range(vocab_size) if t not in have]


def rank(counts: collections.Counter, vocab_size: int) -> list[int]:
    """Every id below vocab_size: the counted ones by count (ties by id), then the rest by id."""
    return complete(by_count(counts), vocab_size)


SHIPPED = Path(__file__).resolve().parent.parent / "artifacts" / "vocab"  # rankings shipped with the package


def _key(tokenizer_json: Path) -> str:
    digest = hashlib.sha256(Path(tokenizer_json).read_bytes()).hexdigest()[:16]
    corpus_key = hashlib.sha256(json.dumps(CORPUS, sort_keys=True).encode()).hexdigest()[:8]
    return f"{digest}-{corpus_key}"


def counted(tokenizer_json: Path, progress: bool = True) -> list[int]:
    """The token ids seen in the corpus, most frequent first (ties by id)."""
    from tokenizers import Tokenizer

    if progress:
        print(f"ranking the tokens of {Path(tokenizer_json).parent.name} by frequency (once per tokenizer) ...", flush=True)
    return by_count(count_tokens(Tokenizer.from_file(str(tokenizer_json)), corpus(progress)))


def _read(path: Path) -> list[int] | None:
    try:
        ids = json.loads(path.read_text())["ranked"]
        return ids if isinstance(ids, list) and all(isinstance(t, int) for t in ids) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: computed again


def write_ranking(tokenizer_json: Path, out_dir: Path, progress: bool = True) -> Path:
    """Count the corpus for this tokenizer and write `<tokenizer sha>-<corpus key>.json` to out_dir."""
    tokenizer_json = Path(tokenizer_json)
    path = Path(out_dir) / f"{_key(tokenizer_json)}.json"
    data = {"tokenizer": tokenizer_json.parent.name, "corpus": CORPUS, "ranked": counted(tokenizer_json, progress)}
    with atomic_file(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    return path


def token_ranking(tokenizer_json: Path, vocab_size: int, progress: bool = True) -> list[int]:
    """Every token id below vocab_size, most frequent first; the ids never seen follow by id.
    The counts come from the ranking shipped for this tokenizer (artifacts/vocab/), else from the
    cache in $SPECDRAFT_HOME/vocab/, else from counting the corpus once (then cached)."""
    tokenizer_json = Path(tokenizer_json)
    if not tokenizer_json.is_file():
        raise SpecdraftError(f"{tokenizer_json} not found: a reduced drafting vocabulary needs the model's tokenizer.json")
    name = f"{_key(tokenizer_json)}.json"
    ids = _read(SHIPPED / name)
    if ids is None:
        ids = _read(home() / "vocab" / name)
    if ids is None:
        ids = _read(write_ranking(tokenizer_json, home() / "vocab", progress))
    return complete(ids, vocab_size)


def main(argv: list[str] | None = None) -> int:
    """Ship a ranking: `python -m specdraft.data.vocab MODEL` writes src/specdraft/artifacts/vocab/."""
    import argparse

    from .. import fetch

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("model", help="a zoo name or a model directory (its tokenizer.json is ranked)")
    ap.add_argument("--out", default=str(SHIPPED))
    a = ap.parse_args(argv)
    print(write_ranking(fetch.resolve(a.model) / "tokenizer.json", Path(a.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
