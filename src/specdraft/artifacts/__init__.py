"""Small drafter artifacts shipped with the package, one folder per zoo model:
`artifacts/<model>/skipset.json` (layerskip), `knn-ssd/` (router), `ctc/`, `medusa/` (trained heads),
`drafter.json` (what `--drafter auto` picks: per device type and dtype, the drafter measured fastest);
`artifacts/vocab/` holds token rankings per tokenizer (draft-model `?vocab=N`, data/vocab.py).
Each is produced by a documented command (see README, "Shipped drafters")."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecdraftError

ROOT = Path(__file__).parent

# artifact -> (the drafter that reads it, the command that makes it)
HOW = {
    "skipset.json": ("layerskip", "specdraft search-skip --model {m} --domain conversation --out FILE"),
    "knn-ssd": ("knn-ssd", "specdraft knn build --model {m} --out DIR"),
    "ctc": ("ctc", "specdraft train ctc --model {m} --data DIR --out DIR"),
    "medusa": ("medusa", "specdraft train medusa --model {m} --data DIR --out DIR"),
    "eagle3": ("eagle3", "specdraft train eagle3 --model {m} --data DIR --out DIR"),
}


def _model_dir(model: str) -> Path:
    """The artifact folder of a model (its zoo name, or a directory named so)."""
    return ROOT / Path(model).name


def find(model: str, name: str) -> Path:
    """The shipped artifact `name` for the model (its zoo name), or a clear error naming the recipe."""
    path = _model_dir(model) / name
    if not path.exists():
        kind, how = HOW[name]
        raise SpecdraftError(f"no shipped {name} for model {model}: build one with `{how.format(m=model)}` "
                             f"and pass its path (--drafter {kind}:PATH)")
    return path


def recommendation(model: str, device_type: str, temperature: float = 0.0, dtype: str | None = None) -> str | None:
    """The drafter spec the model's `drafter.json` recommends on `device_type` (e.g. "cpu") in
    `dtype` at a sampling temperature (0 = greedy), or None when nothing was measured there. The
    file: {"cpu": {"drafter": SPEC, "measured": WHERE, "sampled": {"drafter": SPEC,
    "min_temperature": T, "measured": WHERE}}, "cpu/bfloat16": {...}, ...}. An entry keyed
    "DEVICE/DTYPE" was measured in that dtype and wins over the plain "DEVICE" entry there (a CPU
    with bf16 units runs `auto`'s bfloat16, where the drafters' costs differ from float32's); the
    optional "sampled" entry is the drafter measured fastest when sampling at temperature T and
    above, where it differs from greedy's."""
    import json

    path = _model_dir(model) / "drafter.json"
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
        entry = table.get(f"{device_type}/{dtype}") if dtype else None
        if entry is None:
            entry = table.get(device_type)
        if entry is None:
            return None
        hot = entry.get("sampled")
        if hot is not None and temperature > 0 and temperature >= float(hot["min_temperature"]):
            return str(hot["drafter"])
        return str(entry["drafter"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SpecdraftError(f"corrupt drafter recommendation {path}: {e}") from None
