"""Trained drafters side by side on their data's held-out conversations: how often the first
drafted token is the model's next token, and the held-out tau of a draft as the trainer estimates
it. Every drafter directory must come from `specdraft train` on the same data (the split is the
trainer's own, so the held-out conversations are the same for each).

    python benchmarks/heldout_compare.py --model smollm2-135m --data runs/distill/smollm2-eagle \\
        runs/train/cmp-eagle3 runs/train/cmp-ctc runs/train/cmp-medusa
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from specdraft.train.config import TrainConfig
from specdraft.train.trainer import Trainer, heldout_scores


def load_trained(trainer: Trainer, path: Path):
    """The trained module of `path`, checked against the module the trainer would train on this data."""
    from types import SimpleNamespace

    from specdraft.drafters.eagle3 import load_head
    from specdraft.drafters.heads import load_module

    cfg = trainer.hcfg
    if trainer.cfg.kind == "eagle3":  # its target's shape, as far as the head's checks read it
        target = SimpleNamespace(hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, num_layers=max(cfg.layer_ids) + 1)
        module = load_head(path, target)
    else:
        module, _ = load_module(path, cfg.hidden_size, cfg.vocab_size, kind=trainer.cfg.kind)
    if module.vocab.tolist() != trainer.module.vocab.tolist():
        raise SystemExit(f"{path} was trained on a different draft vocabulary than this data gives")
    return module.float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", required=True)
    p.add_argument("--samples", type=int, default=3000, help="held-out positions (the first N of the split)")
    p.add_argument("drafters", nargs="+")
    a = p.parse_args()
    print("| drafter | steps | training time | held-out first token right | held-out tau (trainer's estimate) |")
    print("|---|---|---|---|---|")
    for d in map(Path, a.drafters):
        raw = json.loads((d / "config.json").read_text())
        state = raw["training"]
        train = {k: (tuple(v) if isinstance(v, list) else v) for k, v in state["train"].items()}
        with tempfile.TemporaryDirectory() as tmp:
            t = Trainer(a.model, Path(a.data), Path(tmp), TrainConfig(**train), progress=False)
        t.module = load_trained(t, d)
        idx = t.held_idx[: a.samples]
        tau, first = heldout_scores(t.module, t.samples, idx, t.embed, t.head)
        print(f"| {d.name} ({t.cfg.kind}) | {state['step']} | "
              f"{state['seconds'] / 60:.0f} min | {first:.3f} | {tau:.2f} |", flush=True)


if __name__ == "__main__":
    main()
