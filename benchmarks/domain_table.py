"""One row per method, one column per domain, from a `specdraft bench` summary.json.

    .venv/bin/python benchmarks/domain_table.py runs/bench-qwen-mix1/summary.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(summary: dict, prefix_strip: str = "") -> str:
    methods = summary["methods"]
    cats = sorted({c for m in methods.values() for c in m["categories"]})
    out = ["| method | " + " | ".join(cats) + " | overall tau | overall speedup (mean / median) | routing accuracy |",
           "|" + "---|" * (len(cats) + 4)]
    for name, m in methods.items():
        cells = []
        for c in cats:
            x = m["categories"].get(c)
            cells.append(f"tau {x['tau']:.2f}, {x['speedup']:.2f}x" if x else "-")
        o = m["overall"]
        ra = o.get("routing_accuracy")
        short = name.replace(prefix_strip, "") if prefix_strip else name
        out.append(f"| {short} | " + " | ".join(cells) + f" | {o['tau']:.2f} | {o['speedup']:.2f}x / {o['speedup_median']:.2f}x | "
                   + (f"{ra:.2f}" if ra is not None else "-") + " |")
    return "\n".join(out)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        s = json.loads(Path(p).read_text())
        print(f"{p}: mix {s.get('mix')}, {s.get('date')}")
        print(table(s, "src/specdraft/artifacts/"))
