"""`specdraft train data|ctc|medusa|eagle3`: self-distillation data and trained drafters."""

from __future__ import annotations

import json

from .. import zoo
from .options import Parser, layer_list, positive_int


def add(sub) -> None:
    tr = sub.add_parser("train", help="self-distillation data and trained drafters (ctc, medusa, eagle3)")
    tr.set_defaults(run=run)
    trsub = tr.add_subparsers(dest="train_command", required=True, parser_class=Parser)
    td = trsub.add_parser("data", help="base-model answers teacher-forced: hidden states + greedy tokens (resumable)")
    td.add_argument("--model", default=zoo.DEFAULT_MODEL)
    td.add_argument("--out", default=None, help="default: $SPECDRAFT_HOME/distill/MODEL")
    td.add_argument("--sharegpt", type=positive_int, default=6000, help="ShareGPT prompts (default: %(default)s)")
    td.add_argument("--per-pool", type=positive_int, default=400, help="prompts from each domain pool")
    td.add_argument("--max-new-tokens", type=positive_int, default=192)
    td.add_argument("--batch-size", type=positive_int, default=24)
    td.add_argument("--shards", type=positive_int, default=None, help="stop after the first N shards (batches)")
    td.add_argument("--layers", type=layer_list, default=(), metavar="I,J",
                    help="also store the residual states after these layers (0-based), for `train ctc --feature-layers`")
    td.add_argument("--prompts", default=None, metavar="FILE",
                    help="your own prompts instead of the built-in mix: JSONL ({\"prompt\": ...} or OpenAI "
                         "{\"messages\": [...]}), ShareGPT JSON, or plain text with one prompt per line; the model "
                         "answers them (default out: $SPECDRAFT_HOME/distill/MODEL-FILESTEM)")
    td.add_argument("--teacher-forced", action="store_true",
                    help="with --prompts: teacher-force the file's own written answers instead of generating")
    td.add_argument("--written", type=positive_int, default=None, metavar="N",
                    help="instead of generating answers, teacher-force the written answers of N ShareGPT conversations "
                         "not in the --sharegpt/--per-pool mix (one forward each, much cheaper per token; train "
                         "with --extra-data)")
    from ..train.config import TrainConfig as TC  # the option defaults (torch-free)

    helps = {"ctc": "the CTC drafter", "medusa": "Medusa heads",
             "eagle3": "an EAGLE-3 head (llama.cpp's and vLLM's checkpoint layout)"}
    for kind in ("ctc", "medusa", "eagle3"):
        tk = trsub.add_parser(kind, help=f"train {helps[kind]} (resumes from OUT/checkpoint)")
        tk.add_argument("--model", default=zoo.DEFAULT_MODEL)
        tk.add_argument("--data", default=None, help="default: $SPECDRAFT_HOME/distill/MODEL")
        tk.add_argument("--out", required=True)
        tk.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                        help="more data to train on, never held out (e.g. from `train data --written`); repeatable")
        tk.add_argument("--epochs", type=float, default=TC.epochs, help="passes over the data (default: %(default)s)")
        tk.add_argument("--steps", type=positive_int, default=None,
                        help="optimizer steps to train instead of --epochs (same compute on different data)")
        tk.add_argument("--batch-size", type=positive_int, default=TC.batch_size)
        tk.add_argument("--lr", type=float, default=TC.lr)
        tk.add_argument("--max-labels", type=positive_int, default=TC.max_labels, help="drafted tokens trained (medusa: heads)")
        if kind == "ctc":
            tk.add_argument("--frames", type=positive_int, default=TC.frames)
            tk.add_argument("--intermediate-size", type=positive_int, default=TC.intermediate_size, help="MLP width of the draft layer")
            tk.add_argument("--layers", type=positive_int, default=TC.layers,
                            help="transformer layers of the draft module (default: %(default)s, the paper's; "
                                 "layers after the first update the frames only)")
            tk.add_argument("--window", type=positive_int, default=TC.window,
                            help="latest positions of the base model's states the draft layer attends to "
                                 "(default: %(default)s)")
            tk.add_argument("--feature-layers", type=layer_list, default=TC.feature_layers, metavar="I,J",
                            help="also read the base model's states after these layers (EAGLE-3's fused features; "
                                 "the data must be built with `train data --layers`)")
            tk.add_argument("--align", type=float, default=TC.align,
                            help="weight of an alignment prior added to the CTC loss: frame k emits token k, "
                                 "later frames blank (default: %(default)s)")
        if kind == "eagle3":
            tk.add_argument("--layer-ids", type=layer_list, default=(), metavar="I,J,K",
                            help="the target layers whose incoming states the head reads, EAGLE-3's numbering "
                                 "(default 2,L/2,L-3); the data must hold the states after layers I-1,J-1,K-1 "
                                 "(`train data --layers`)")
            tk.add_argument("--intermediate-size", type=positive_int, default=None,
                            help="MLP width of the head (default: the target's)")
            tk.add_argument("--window", type=positive_int, default=TC.window,
                            help="positions of context each training sample sees (default: %(default)s)")
        dflt = "1 for ctc, 0 for medusa and eagle3"  # TrainConfig resolves None per kind
        tk.add_argument("--feat", type=float, default=None,
                        help=f"weight of a feature loss: drafted position k regresses the base model's hidden state "
                             f"(default: {dflt})")
        tk.add_argument("--kd", type=float, default=None,
                        help=f"weight of a soft-label loss: drafted position k matches the base model's distribution "
                             f"(default: {dflt})")
        tk.add_argument("--draft-vocab", type=positive_int, default=TC.draft_vocab)
        tk.add_argument("--eval-every", type=positive_int, default=TC.eval_every)


def train_config(a):
    """The TrainConfig of a parsed `train ctc|medusa` command line."""
    from ..train.config import TrainConfig

    ctc_only = ({"frames": a.frames, "align": a.align, "intermediate_size": a.intermediate_size, "layers": a.layers,
                 "feature_layers": a.feature_layers, "window": a.window} if a.train_command == "ctc" else {})
    if a.train_command == "eagle3":  # 0: the target's MLP width
        ctc_only = {"intermediate_size": a.intermediate_size or 0, "window": a.window,
                    "feature_layers": tuple(i - 1 for i in a.layer_ids)}
    return TrainConfig(a.train_command, epochs=a.epochs, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                       max_labels=a.max_labels, draft_vocab=a.draft_vocab, eval_every=a.eval_every, feat=a.feat,
                       kd=a.kd, **ctc_only)


def run(a) -> int:
    from pathlib import Path

    from ..paths import home

    data = Path(a.out if a.train_command == "data" and a.out else (getattr(a, "data", None) or home() / "distill" / Path(a.model).name))
    if a.train_command == "data":
        from ..errors import SpecdraftError
        from ..train.data import build_distill, build_written

        if a.teacher_forced and not a.prompts:
            raise SpecdraftError("--teacher-forced needs --prompts FILE (the built-in written answers: --written N)")
        if a.prompts and a.written:
            raise SpecdraftError("--prompts and --written are two sources: pick one")
        if a.prompts:
            if not a.out:
                data = home() / "distill" / f"{Path(a.model).name}-{Path(a.prompts).stem}"
            if a.teacher_forced:
                out = build_written(a.model, data, prompts_file=Path(a.prompts), layers=a.layers)
            else:
                out = build_distill(a.model, data, prompts_file=Path(a.prompts), max_new_tokens=a.max_new_tokens,
                                    batch_size=a.batch_size, max_shards=a.shards, layers=a.layers)
        elif a.written:
            if not a.out:
                data = home() / "distill" / f"{Path(a.model).name}-written"
            out = build_written(a.model, data, conversations=a.written, exclude_sharegpt=a.sharegpt,
                                exclude_per_pool=a.per_pool, layers=a.layers)
        else:
            out = build_distill(a.model, data, n_sharegpt=a.sharegpt, n_per_pool=a.per_pool,
                                max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, max_shards=a.shards,
                                layers=a.layers)
        meta = json.loads((out / "data.json").read_text())
        print(f"{meta['shards']} shards, {meta['answer_tokens']} answer tokens, {meta['seconds']:.0f} s "
              f"({meta['seconds'] / max(1, meta['tokens']) * 1e6 / 3600:.2f} h per million tokens)")
        print(out)
        return 0
    from ..train.trainer import Trainer

    state = Trainer(a.model, data, Path(a.out), train_config(a), extra=tuple(Path(d) for d in a.extra_data)).run()
    last = state["history"][-1] if state["history"] else {}
    print(f"trained {state['step']} steps in {state['seconds']:.0f} s; held-out tau estimate {last.get('heldout_tau', float('nan')):.2f}")
    print(a.out)
    return 0
