"""Training settings of the CTC draft layer and of Medusa heads; the defaults of the CLI's
`train ctc|medusa` options are these fields' defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    kind: str  # ctc | medusa | eagle3
    epochs: float = 1.0
    steps: int | None = None  # optimizer steps; overrides epochs (equal compute on different data)
    batch_size: int = 128
    lr: float = 1e-3
    warmup: float = 0.05
    weight_decay: float = 0.0
    clip: float = 0.5
    frames: int = 6  # ctc frames per draft
    max_labels: int = 4  # longest label sequence (ctc) = number of heads (medusa)
    intermediate_size: int = 1024  # ctc layer MLP width
    layers: int = 1  # ctc: transformer layers (the paper's module has one; more update the frames only)
    draft_vocab: int = 8192  # the most frequent answer tokens of the data
    window: int = 48  # ctc: latest positions attended to (48 measured +0.02 held-out tau over 16)
    feature_layers: tuple[int, ...] = ()  # ctc: also read the base's states after these layers (data built with them);
    # eagle3: the three it reads (default EAGLE-3's ids 2, L/2, L-3, i.e. after layers 1, L/2-1, L-4)
    align: float = 0.0  # ctc: weight of the alignment prior (frame k -> label k, later frames -> blank)
    # Dense distillation terms (the CTC reference code's recipe; None = 1.0 for ctc, 0.0 for medusa,
    # whose paper trains with cross-entropy only -- and measured no gain from them, docs/BENCHMARKS.md):
    feat: float | None = None  # weight of the feature loss: frame / head k regresses the base's hidden state of label k
    kd: float | None = None  # weight of the soft-label loss: frame / head k matches the base's distribution over label k
    eval_every: int = 250
    eval_samples: int = 1500
    checkpoint_every: int = 250
    seed: int = 0

    def __post_init__(self):
        default = 1.0 if self.kind == "ctc" else 0.0
        self.feat = default if self.feat is None else self.feat
        self.kd = default if self.kd is None else self.kd
