"""Where specdraft keeps its cache, and the write-to-temp-then-rename discipline."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def home() -> Path:
    """The cache root: `$SPECDRAFT_HOME`, default `~/.cache/specdraft`."""
    env = os.environ.get("SPECDRAFT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "specdraft"


def portable(path: str | Path) -> str:
    """`path` as it should be recorded in a shipped file: under the cache root it is written
    `$SPECDRAFT_HOME/...` (the same data on another machine), anything else as given."""
    p = Path(path).expanduser()
    try:
        return str(Path("$SPECDRAFT_HOME") / p.resolve().relative_to(home().resolve()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; rename it to `final` only if the block succeeds.

    On any exception the temporary directory is removed, so an interrupted write never leaves a
    half-written `final` behind.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "wb") -> Iterator:
    """Open a temporary file beside `final`; rename it to `final` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.chmod(name, 0o644)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(name, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def read_json(path: Path, missing: str):
    """Parse a JSON file; a missing file raises SpecdraftError(missing), a malformed one a clear error."""
    from .errors import SpecdraftError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SpecdraftError(missing) from None
    except json.JSONDecodeError as e:
        raise SpecdraftError(f"{path} is corrupt: not valid JSON ({e.msg})") from None
