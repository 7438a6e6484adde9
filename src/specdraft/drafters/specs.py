"""The syntax of drafter specs (no drafter built here): `kind[:arg][?key=value&...]`, hybrids
`A+B` and `(A+B)?key=value`. drafters/__init__.py checks and builds them."""

from __future__ import annotations

from ..errors import SpecdraftError

SPECS = ("plain, auto, lookup[:N], draft-model:NAME (or draft-model:self?quant=int8), layerskip[:SKIPSET.json], knn-ssd[:DIR], "
         "ctc[:DIR], medusa[:DIR], eagle3[:DIR], each optionally followed by ?key=value&... drafter options")

KINDS = ("plain", "auto", "lookup", "draft-model", "layerskip", "knn-ssd", "ctc", "medusa", "eagle3")


def _option_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """`kind[:arg][?key=value&...]` -> (kind, arg, options); values become int, float or bool
    where they parse as one."""
    base, sep, query = spec.partition("?")
    kind, _, arg = base.partition(":")
    options: dict = {}
    if sep:
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            if not eq or not key.isidentifier() or not value:
                raise SpecdraftError(f"drafter options are key=value pairs joined by '&' (ctc?max_nodes=8), got {spec!r}")
            options[key] = _option_value(value)
    return kind, arg, options


def format_spec(kind: str, arg: str | int = "", options: dict | None = None) -> str:
    """The inverse of `parse_spec`: `kind[:arg][?key=value&...]` (booleans as true / false)."""
    query = "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in (options or {}).items())
    return kind + (f":{arg}" if arg != "" else "") + (f"?{query}" if query else "")


def split_hybrid(spec: str) -> tuple[list[str], dict] | None:
    """The parts and the hybrid's own options of `A+B` or `(A+B)?key=value&...`; None for a
    single drafter."""
    if spec.startswith("("):
        close = spec.rfind(")")
        inner, rest = spec[1:close], spec[close + 1:]
        if close < 0 or "+" not in inner or (rest and not rest.startswith("?")):
            raise SpecdraftError(f"parentheses group the parts of a hybrid, then its options: "
                                 f"(lookup+ctc)?mode=union, got {spec!r}")
        return inner.split("+"), parse_spec("hybrid" + rest)[2]
    return (spec.split("+"), {}) if "+" in spec else None
