"""What a drafter is built from: the target it drafts for and how that target was loaded.

`build_drafter(spec, ctx)` (drafters/__init__.py) and each drafter's `load(arg, ctx)` read only
this value, never the `LLM` facade: a drafter can be built for any decoder, in a test or a tool,
from a `DraftContext` made by hand. `build` builds (and may cache) another spec for the same
target: the parts of a hybrid, the routes of a KNN router. `draft_models` is the cache of draft
models every drafter of one target shares (one int8 copy of the target, one loaded 0.5b model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class DraftContext:
    model: Any  # the target: runtime.model.Decoder, or runtime.llamacpp.LlamaCppDecoder
    tokenizer: Any  # text.Tokenizer of the target
    path: Path  # the target's model directory (config.json, tokenizer.json, weights)
    name: str  # its zoo name or path: names the shipped artifacts (specdraft.artifacts)
    dtype: torch.dtype
    device: torch.device
    backend: str = "torch"  # "torch" | "gguf"
    packed: bool = False  # the target's weights are packed for oneDNN (drafters pack theirs alike)
    build: Callable[[str], Any] | None = None  # spec -> Drafter | None, for hybrids' parts and routes
    draft_models: dict = field(default_factory=dict)  # (path, quant) -> draft decoder, shared

    @property
    def dtype_name(self) -> str:
        """"float32", "bfloat16", or "gguf" (the file's low-bit weights)."""
        if self.backend == "gguf":
            return "gguf"
        return str(self.dtype).removeprefix("torch.")

    def drafter(self, spec: str):
        """Another spec's drafter for the same target (`build_drafter` sets `build` where it is None)."""
        return self.build(spec)
