"""`specdraft models list|pull|path`: the offline model zoo."""

from __future__ import annotations

from .. import fetch, zoo
from ..errors import SpecdraftError
from .options import Parser


def add(sub) -> None:
    m = sub.add_parser("models", help="the offline model zoo")
    m.set_defaults(run=run)
    msub = m.add_subparsers(dest="models_command", required=True, parser_class=Parser)
    msub.add_parser("list", help="list zoo models, installed or not")
    mp = msub.add_parser("pull", help="fetch, check (sha256) and convert a zoo model; instant if installed")
    mp.add_argument("name")
    mpa = msub.add_parser("path", help="print an installed model's directory")
    mpa.add_argument("name")


def run(a) -> int:
    if a.models_command == "list":
        rows = zoo.listing()
        print(f"{'name':<20} {'family':<12} {'layers':>6} {'params':>7}  {'status':<14} path")
        for r in rows:
            status = "installed" if r["installed"] else ("not installed" if r["supported"] else "unsupported")
            print(f"{r['name']:<20} {r['family']:<12} {r['layers']:>6} {r['params']:>7}  {status:<14} {r['path']}")
        for r in zoo.local_listing():  # local GGUF files given as --model, converted into the cache
            print(f"{r['name']:<20} {r['family']:<12} {r['layers']:>6} {r['params']:>7}  {'local GGUF':<14} {r['path']}")
        return 0
    if a.models_command == "pull":
        print(fetch.pull(a.name))
        return 0
    entry = zoo.get_entry(a.name)
    if not zoo.is_installed(entry.name):
        raise SpecdraftError(f"model {entry.name} is not installed: run `specdraft models pull {entry.name}`")
    print(zoo.model_dir(entry.name))
    return 0
