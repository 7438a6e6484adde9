"""llama.cpp's server as a bench peer (bench/llama_server.py).

The unit tier drives a stand-in llama-server (a small Python HTTP server that answers /health and
/completion and records its command line): the command line per spec, the request, the answer's
tokens, a server that dies at start, a peer that is not built and is skipped. The integration
tier runs the real llama-server that `make peers` builds, when it is there."""

import json
import os
import stat
import sys
import textwrap

import pytest

from specdraft.bench import llama_server as ls
from specdraft.errors import SpecdraftError
from specdraft.runtime.sampling import SamplingParams


def test_server_args_per_spec(tmp_path):
    g, d = tmp_path / "t.gguf", tmp_path / "d.gguf"
    plain = ls.server_args(g, "llamacpp-plain", threads=3, n_ctx=4096)
    assert plain[:2] == ["-m", str(g)] and "-md" not in plain and "--spec-type" not in plain
    assert plain[plain.index("-t") + 1] == "3" and plain[plain.index("-c") + 1] == "4096"
    assert plain[plain.index("-np") + 1] == "1"
    # the KV cache our gguf backend keeps, so greedy tokens compare like with like
    assert plain[plain.index("-ctk") + 1] == "q8_0" and plain[plain.index("-fa") + 1] == "on"
    assert "--swa-full" in plain and "--kv-unified" in plain
    assert "--no-repack" not in plain and "--no-repack" in ls.server_args(g, "llamacpp-plain", threads=2, n_ctx=64,
                                                                          no_repack=True)
    draft = ls.server_args(g, "llamacpp-draft:small", threads=2, n_ctx=64, draft_gguf=d)
    assert draft[draft.index("-md") + 1] == str(d) and draft[draft.index("--spec-type") + 1] == "draft-simple"
    eagle = ls.server_args(g, "llamacpp-eagle3:head", threads=2, n_ctx=64, draft_gguf=d)
    assert eagle[eagle.index("-md") + 1] == str(d) and eagle[eagle.index("--spec-type") + 1] == "draft-eagle3"
    ngram = ls.server_args(g, "llamacpp-ngram", threads=2, n_ctx=64)
    assert ngram[ngram.index("--spec-type") + 1] == "ngram-mod"
    simple = ls.server_args(g, "llamacpp-ngram:ngram-simple", threads=2, n_ctx=64)
    assert simple[simple.index("--spec-type") + 1] == "ngram-simple"
    with pytest.raises(SpecdraftError, match="n-gram mode is one of"):
        ls.server_args(g, "llamacpp-ngram:bigram", threads=2, n_ctx=64)
    with pytest.raises(SpecdraftError, match="needs a model"):
        ls.server_args(g, "llamacpp-draft", threads=2, n_ctx=64)
    with pytest.raises(SpecdraftError, match="needs a head"):
        ls.server_args(g, "llamacpp-eagle3", threads=2, n_ctx=64)
    with pytest.raises(SpecdraftError, match="unknown llama-server peer"):
        ls.server_args(g, "llamacpp-plain:7", threads=2, n_ctx=64)


def test_completion_body_greedy_and_sampled():
    greedy = ls.completion_body([5, 6], 9, SamplingParams())
    assert greedy["prompt"] == [5, 6] and greedy["n_predict"] == 9 and greedy["temperature"] == 0.0
    assert greedy["cache_prompt"] is False and greedy["return_tokens"] is True and "seed" not in greedy
    hot = ls.completion_body([5], 4, SamplingParams(temperature=0.7, top_p=0.9, top_k=20, seed=11))
    assert (hot["temperature"], hot["top_p"], hot["top_k"], hot["seed"]) == (0.7, 0.9, 20, 11)
    assert hot["min_p"] == 0.0 and hot["repeat_penalty"] == 1.0  # llama.cpp's own warpers off


def test_read_completion_ends_at_our_end_of_sequence():
    toks, drafted, accepted = ls.read_completion(
        {"tokens": [4, 9, 2, 7], "timings": {"draft_n": 6, "draft_n_accepted": 3}}, {2})
    assert toks == [4, 9, 2] and (drafted, accepted) == (6, 3)
    assert ls.read_completion({"tokens": [4, 9], "timings": {}}, {2}) == ([4, 9], 0, 0)
    with pytest.raises(SpecdraftError, match="no tokens"):
        ls.read_completion({"content": "hi"}, {2})


FAKE = textwrap.dedent("""\
    #!{python}
    # a stand-in llama-server: records argv, is unready twice, then answers /completion with the
    # prompt's last token, then EOS; ARGV_FILE and EXIT_AT_START come from the environment
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    open(os.environ["ARGV_FILE"], "w").write(json.dumps(sys.argv[1:]))
    if os.environ.get("EXIT_AT_START"):
        print("error: failed to load model 'broken.gguf'")
        sys.exit(1)
    port = int(sys.argv[sys.argv.index("--port") + 1])
    health = [503, 503]
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass
        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def do_GET(self):
            self._send(health.pop(0) if health else 200, {{}})
        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if req.get("n_predict", 0) > 100:
                return self._send(400, {{"error": {{"message": "n_predict too large"}}}})
            toks = [req["prompt"][-1]] * (req["n_predict"] - 1) + [int(os.environ["EOS"])]
            self._send(200, {{"tokens": toks, "stop_type": "eos",
                             "timings": {{"draft_n": 4, "draft_n_accepted": 1}}}})
    HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


@pytest.fixture
def fake_server(tmp_path, monkeypatch):
    exe = tmp_path / "llama-server"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    argv = tmp_path / "argv.json"
    monkeypatch.setenv("SPECDRAFT_LLAMA_SERVER", str(exe))
    monkeypatch.setenv("ARGV_FILE", str(argv))
    return exe, argv


def test_a_peer_drives_the_server_over_http_and_stops_it(fake_server, tiny_llm_dir, tmp_path, monkeypatch):
    from specdraft.api import LLM

    exe, argv = fake_server
    llm = LLM(str(tiny_llm_dir), dtype="float32")
    eos = min(llm.tokenizer.eos_ids)
    monkeypatch.setenv("EOS", str(eos))
    m = ls.LlamaServerMethod(llm, "llamacpp-ngram", binary=exe, gguf=tmp_path / "t.gguf")
    try:
        args = json.loads(argv.read_text())
        assert args[args.index("-m") + 1] == str(tmp_path / "t.gguf") and "ngram-mod" in args
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        r = m.generate(messages, 5)
        last = llm.tokenizer.encode_prompt(messages)[-1]
        assert r.token_ids == (last, last, last, last, eos) and r.wall_s > 0
        assert (r.drafted, r.accepted, r.target_forwards) == (4, 1, 4)
        with pytest.raises(SpecdraftError, match="answered 400.*n_predict too large"):
            m.generate(messages, 500)
    finally:
        m.close()
    assert m.server.proc.poll() is not None  # stopped


def test_a_server_that_dies_at_start_is_a_clear_error(fake_server, monkeypatch, tmp_path):
    exe, _ = fake_server
    monkeypatch.setenv("EXIT_AT_START", "1")
    with pytest.raises(SpecdraftError, match="exited with 1 while starting(.|\n)*failed to load model"):
        ls.LlamaServer(exe, ["-m", str(tmp_path / "broken.gguf")], timeout_s=30)


def test_an_unbuilt_server_is_found_nowhere_and_a_bad_override_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDRAFT_HOME", str(tmp_path))
    monkeypatch.delenv("SPECDRAFT_LLAMA_SERVER", raising=False)
    assert ls.find_server() is None and "make peers" in ls.build_hint()
    built = ls.install_dir() / "bin" / "llama-server"
    built.parent.mkdir(parents=True)
    built.write_text("")
    assert ls.find_server() == built
    monkeypatch.setenv("SPECDRAFT_LLAMA_SERVER", str(tmp_path / "nowhere"))
    with pytest.raises(SpecdraftError, match="not an executable"):
        ls.find_server()


def test_bench_skips_a_peer_that_is_not_built(tiny_llm_dir, tmp_path, monkeypatch, capsys):
    from specdraft.cli import main

    monkeypatch.setenv("SPECDRAFT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPECDRAFT_LLAMA_SERVER", raising=False)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"question_id": "a", "category": "chat", "turns": ["Tell me about the fox."]}) + "\n")
    out = tmp_path / "run"
    rc = main(["bench", "--model", str(tiny_llm_dir), "--methods", "llamacpp-plain,llamacpp-draft:x",
               "--questions", str(qfile), "--max-new-tokens", "4", "--dtype", "float32", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["methods"]) == {"plain"} and set(s["skipped"]) == {"llamacpp-plain", "llamacpp-draft:x"}
    assert "make peers" in s["skipped"]["llamacpp-plain"]
    assert "skipping llamacpp-plain" in capsys.readouterr().err


# -- the real llama-server, where `make peers` built it ----------------------------------------------


@pytest.mark.integration
def test_llama_server_plain_gives_our_gguf_plain_tokens(smollm2_dir):
    if ls.find_server() is None:
        pytest.skip(ls.build_hint())
    from specdraft.api import LLM
    from specdraft.bench.peers import make_peer

    llm = LLM(str(smollm2_dir), backend="gguf")
    peer = make_peer(llm, "llamacpp-plain", {})
    try:
        for q in ["Say hi.", "Write a haiku about the sea.", "List three prime numbers and explain why."]:
            messages = [{"role": "user", "content": q}]
            ours = llm.generate(messages, max_new_tokens=48).token_ids
            assert list(peer.generate(messages, 48).token_ids) == list(ours), q
    finally:
        peer.close()


@pytest.mark.integration
def test_llama_server_draft_model_peer_drafts(smollm2_dir):
    if ls.find_server() is None:
        pytest.skip(ls.build_hint())
    from specdraft.api import LLM
    from specdraft.bench.peers import make_peer

    llm = LLM(str(smollm2_dir), backend="gguf")
    peer = make_peer(llm, f"llamacpp-draft:{smollm2_dir}", {})  # the model as its own draft: all accepted
    try:
        r = peer.generate([{"role": "user", "content": "Write a haiku about the sea."}], 32)
        assert r.drafted > 0 and r.accepted > 0 and r.target_forwards < len(r.token_ids)
    finally:
        peer.close()
