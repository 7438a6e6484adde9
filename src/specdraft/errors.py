"""User-facing errors.

A `SpecdraftError` is a mistake the user can fix (bad name, bad argument, missing file). The CLI
prints its message on one line and exits with code 2, without a traceback; library callers get
an ordinary exception. Anything else escaping is a bug in specdraft.
"""


class SpecdraftError(Exception):
    """An error caused by input or environment, with a message saying what to do."""


# The optional parts of specdraft and the packages each needs (pyproject.toml's extras).
EXTRAS = {
    "serve": ("fastapi", "uvicorn", "prometheus_client"),
    "train": ("optuna",),
    "bench": ("matplotlib",),
}


def require(extra: str, what: str) -> None:
    """Raise a SpecdraftError naming the extra to install when one of its packages is missing."""
    import importlib.util

    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise SpecdraftError(f"{what} needs the '{extra}' extra ({', '.join(missing)} is not installed): "
                             f"pip install 'specdraft[{extra}]'")
