"""`specdraft data build`: the benchmark questions and domain pools."""

from __future__ import annotations

import json

from .options import Parser, positive_int


def add(sub) -> None:
    d = sub.add_parser("data", help="benchmark questions and per-domain prompt pools")
    d.set_defaults(run=run)
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    db = dsub.add_parser("build", help="build questions.jsonl and pool/DOMAIN.jsonl from the real data sets")
    db.add_argument("--out", default=None, help="default: $SPECDRAFT_HOME/data")
    db.add_argument("--per-domain", type=positive_int, default=80, help="benchmark questions per domain")
    db.add_argument("--pool-size", type=positive_int, default=1000, help="pool prompts per domain")
    db.add_argument("--seed", type=int, default=0)


def run(a) -> int:
    from pathlib import Path

    from ..data.build import build

    out = build(Path(a.out) if a.out else None, per_domain=a.per_domain, pool_size=a.pool_size, seed=a.seed)
    manifest = json.loads((out / "manifest.json").read_text())
    for dom, n in manifest["domains"].items():
        print(f"{dom:<14} bench {n['bench']:>4}  pool {n['pool']:>5}")
    print(out)
    return 0
