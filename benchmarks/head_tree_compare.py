"""Held-out tau of trained CTC / Medusa drafters under both tree constructions.

Decodes the held-out positions of a self-distillation data set (whole conversations, the
trainer's split) with each checkpoint, building the draft tree either from the beam search's best
candidates ("beam") or best-first by prefix probability ("prefix"), at several node budgets, and
counts how deep greedy verification would follow the base model's own tokens.

    .venv/bin/python benchmarks/head_tree_compare.py --model smollm2-135m \
        --drafters src/specdraft/artifacts/smollm2-135m/ctc,src/specdraft/artifacts/smollm2-135m/medusa
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from specdraft import fetch
from specdraft.drafters.heads import load_module, sub_head
from specdraft.paths import home
from specdraft.runtime.cpu import fast_dtype
from specdraft.runtime.loader import load_decoder
from specdraft.train.data import keep_layers, load_shards
from specdraft.train.trainer import Samples, heldout_tau


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=None, help="default: $SPECDRAFT_HOME/distill/MODEL")
    ap.add_argument("--drafters", required=True, help="comma-separated checkpoint directories")
    ap.add_argument("--nodes", default="12,24")
    ap.add_argument("--samples", type=int, default=1500)
    ap.add_argument("--max-labels", type=int, default=4)
    ap.add_argument("--trees", default="beam,prefix", help="tree constructions to compare (beam, prefix)")
    a = ap.parse_args()
    base = load_decoder(fetch.resolve(a.model), fast_dtype("cpu"))
    data_dir = Path(a.data) if a.data else home() / "distill" / a.model
    data = load_shards(data_dir)
    stored = json.loads((data_dir / "data.json").read_text()).get("layers", [])
    rows = []
    for path in a.drafters.split(","):
        module, _ = load_module(Path(path), base.cfg.hidden_size, base.cfg.vocab_size, torch.float32)
        view = keep_layers(data, stored, module.cfg.feature_layers)  # the checkpoint's feature layers, if any
        samples = Samples(view, a.max_labels, module.cfg.window, module.vocab)
        _, held = samples.split()
        held = held[: a.samples]
        head = sub_head(module, base.head_weight())
        for tree in a.trees.split(","):
            for n in (int(x) for x in a.nodes.split(",")):
                t0 = time.perf_counter()
                tau = heldout_tau(module, samples, held, base.embed.weight, head, n, tree)
                rows.append({"drafter": path, "kind": module.cfg.kind, "tree": tree, "max_nodes": n,
                             "heldout_tau": round(tau, 3), "positions": int(held.numel()),
                             "seconds": round(time.perf_counter() - t0, 1)})
                print(json.dumps(rows[-1]), flush=True)
    print("| drafter | tree | max nodes | held-out tau |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} ({Path(r['drafter']).name}) | {r['tree']} | {r['max_nodes']} | {r['heldout_tau']:.3f} |")


if __name__ == "__main__":
    main()
