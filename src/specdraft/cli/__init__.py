"""The `specdraft` command: one module per command, each a thin layer over the library.

Each module's `add(sub)` declares its arguments and `run(args)` runs it. Every user mistake
(`SpecdraftError`, bad arguments) prints one line and exits with code 2, with nothing half-written.
"""

from __future__ import annotations

import sys

from ..errors import SpecdraftError
from . import bench, chat, data, generate, knn, models, search_skip, serve, train
from .options import Parser

COMMANDS = (generate, chat, bench, serve, data, search_skip, knn, train, models)


def build_parser() -> Parser:
    p = Parser(prog="specdraft", description="Lossless speculative decoding for LLM inference.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.run(a)
    except SpecdraftError as e:
        print(f"specdraft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nspecdraft: interrupted", file=sys.stderr)
        return 130
