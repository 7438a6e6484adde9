"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official `openai` client."""

import json
import resource
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn

from specdraft import LLM
from specdraft.server.app import ServerConfig, create_app

KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    def __init__(self, llm, cfg):
        self.app = create_app(llm, cfg)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
                   or line.startswith(name + "{"))


@pytest.fixture(scope="module")
def smol_llm(smollm2_dir):
    return LLM(str(smollm2_dir), dtype="float32", drafter="lookup", progress=False)


@pytest.fixture(scope="module")
def live(smol_llm, smollm2_dir):
    cfg = ServerConfig(model_name="smollm2-135m", drafter="lookup", api_key=KEY, max_prompt_tokens=2048,
                       max_tokens_limit=1024, max_queue=64)
    with Live(smol_llm, cfg) as s:
        yield s


pytestmark = pytest.mark.integration
PROMPT = "Write a Python function that reverses a string."


def test_models_health_and_metrics(live):
    ids = [m.id for m in live.client().models.list()]
    assert ids == ["smollm2-135m"]
    assert httpx.get(live.url + "/health").json()["status"] == "ok"
    assert "specdraft_queue_depth" in httpx.get(live.url + "/metrics").text


def test_chat_streamed_equals_not_streamed_and_equals_generate(live, smol_llm, smollm2_dir):
    c = live.client()
    msgs = [{"role": "user", "content": PROMPT}]
    full = c.chat.completions.create(model="smollm2-135m", messages=msgs, max_tokens=40, temperature=0)
    text = full.choices[0].message.content
    assert full.usage.completion_tokens > 0 and full.choices[0].finish_reason in ("stop", "length")
    extra = full.model_extra["specdraft"]
    assert extra["drafter"] == "lookup" and extra["tau"] >= 1.0
    health = httpx.get(live.url + "/health").json()  # the drafter the responses name, also for `auto`
    assert health["drafts_with"] == extra["drafter"] == health["drafts_with_at_temperature_1"] and health["drafter"] == "lookup"
    chunks = list(c.chat.completions.create(model="smollm2-135m", messages=msgs, max_tokens=40, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    # the same as `specdraft generate` with the same drafter
    r = subprocess.run([sys.executable, "-m", "specdraft", "generate", PROMPT, "--model", str(smollm2_dir),
                        "--drafter", "lookup", "--dtype", "float32", "--max-new-tokens", "40", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["text"] == text


def test_a_conversations_next_turn_reuses_the_cache(live, smol_llm):
    c = live.client()
    first = [{"role": "user", "content": "Name three fruits."}]
    a = c.chat.completions.create(model="smollm2-135m", messages=first, max_tokens=24, temperature=0)
    turn = first + [{"role": "assistant", "content": a.choices[0].message.content},
                    {"role": "user", "content": "And three vegetables?"}]
    b = c.chat.completions.create(model="smollm2-135m", messages=turn, max_tokens=24, temperature=0)
    cached = b.usage.prompt_tokens_details.cached_tokens
    assert a.usage.prompt_tokens <= cached < b.usage.prompt_tokens  # the first turn is not prefilled again
    fresh = smol_llm.generate(turn, max_new_tokens=24, drafter="lookup")  # a full prefill, no store
    assert fresh.stats.cached_tokens == 0 and b.choices[0].message.content == fresh.text


def test_the_server_on_the_gguf_backend_serves_auto_and_reuses_a_conversation(smollm2_dir):
    pytest.importorskip("llama_cpp")
    llm = LLM(str(smollm2_dir), drafter="auto", progress=False)  # backend auto: the GGUF file on a CPU
    assert llm.backend == "gguf"
    cfg = ServerConfig(model_name="smollm2-135m", drafter="auto", api_key=KEY, max_prompt_tokens=2048,
                       max_tokens_limit=256, max_queue=8)
    with Live(llm, cfg) as live:
        c = live.client()
        first = [{"role": "user", "content": "Name three fruits, then repeat the list."}]
        a = c.chat.completions.create(model="smollm2-135m", messages=first, max_tokens=32, temperature=0)
        assert a.model_extra["specdraft"]["drafter"] == llm.drafter("auto").name
        turn = first + [{"role": "assistant", "content": a.choices[0].message.content},
                        {"role": "user", "content": "And three vegetables?"}]
        b = c.chat.completions.create(model="smollm2-135m", messages=turn, max_tokens=32, temperature=0)
        assert a.usage.prompt_tokens <= b.usage.prompt_tokens_details.cached_tokens < b.usage.prompt_tokens
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="smollm2-135m", messages=first, max_tokens=32, temperature=0, stream=True) if ch.choices)
    assert a.choices[0].message.content == streamed == llm.generate(first, max_new_tokens=32, drafter="plain").text
    assert b.choices[0].message.content == llm.generate(turn, max_new_tokens=32, drafter="plain").text


def test_completion_streamed_and_not_and_stop(live, smol_llm):
    c = live.client()
    full = c.completions.create(model="smollm2-135m", prompt="The three primary colors are", max_tokens=24, temperature=0)
    text = full.choices[0].text
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="smollm2-135m", prompt="The three primary colors are", max_tokens=24, temperature=0, stream=True))
    assert streamed == text and text
    assert text == smol_llm.generate("The three primary colors are", chat=False, max_new_tokens=24, drafter="lookup").text
    word = text.split()[1]
    cut = c.completions.create(model="smollm2-135m", prompt="The three primary colors are", max_tokens=24,
                               temperature=0, stop=[word])
    assert cut.choices[0].finish_reason == "stop" and word not in cut.choices[0].text
    assert text.startswith(cut.choices[0].text)


def test_seeded_sampling_reproduces(live):
    c = live.client()
    kw = dict(model="smollm2-135m", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=20,
              temperature=0.9, top_p=0.9, seed=7)
    assert c.chat.completions.create(**kw).choices[0].message.content == \
        c.chat.completions.create(**kw).choices[0].message.content


@pytest.mark.parametrize("kwargs, error", [
    (dict(messages=[]), openai.BadRequestError),
    (dict(max_tokens=0), openai.BadRequestError),
    (dict(max_tokens=10**6), openai.BadRequestError),
    (dict(temperature=-1), openai.BadRequestError),
    (dict(top_p=1.5), openai.BadRequestError),
    (dict(n=2), openai.BadRequestError),
    (dict(model="gpt-17"), openai.NotFoundError),
    (dict(messages=[{"role": "user", "content": "word " * 3000}]), openai.APIStatusError),
])
def test_bad_input_gets_the_right_4xx(live, kwargs, error):
    args = dict(model="smollm2-135m", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    args.update(kwargs)
    with pytest.raises(error) as e:
        live.client().chat.completions.create(**args)
    assert 400 <= e.value.status_code < 500 and e.value.body and "message" in e.value.body
    if "messages" in kwargs and kwargs["messages"]:
        assert e.value.status_code == 413


def test_wrong_key_malformed_json_and_wrong_types(live):
    with pytest.raises(openai.AuthenticationError):
        live.client(key="nope").models.list()
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(live.url + "/v1/chat/completions", content=b'{"model": "smollm2-135m", "messages": [', headers=h)
    assert r.status_code == 400 and r.json()["error"]["message"]
    for body in ({"model": "smollm2-135m", "messages": "hi"},
                 {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"},
                 {"model": "smollm2-135m", "messages": [{"role": "robot", "content": "hi"}]},
                 {"model": "smollm2-135m", "prompt": ""}):
        url = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        r = httpx.post(live.url + url, json=body, headers=h)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", body
    assert httpx.get(live.url + "/v1/nothing-here").status_code == 404
    # hostile bodies: 4xx, and the server still answers
    deep = b'{"model": "smollm2-135m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(live.url + "/v1/chat/completions", content=deep, headers=h)
    assert r.status_code == 400 and r.json()["error"]["message"]
    r = httpx.post(live.url + "/v1/chat/completions", content=b"x" * (5 * 1024 * 1024), headers=h)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.post(live.url + "/v1/chat/completions", headers=h, json={
        "model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 100_000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    r = httpx.post(live.url + "/v1/chat/completions", headers=h, json={
        "model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "n": 10 ** 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert httpx.get(live.url + "/health").status_code == 200


def test_disconnect_cancels_generation(live):
    before = live.metric("specdraft_cancelled_total")
    with httpx.stream("POST", live.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "smollm2-135m", "stream": True, "max_tokens": 1000, "temperature": 0.8,
                            "messages": [{"role": "user", "content": "Write a very long essay about rivers."}]}) as r:
        lines = 0
        for line in r.iter_lines():
            lines += bool(line.strip())
            if lines >= 3:
                break  # leave mid-stream
    deadline = time.time() + 20
    while live.metric("specdraft_cancelled_total") <= before:
        assert time.time() < deadline, "generation was not cancelled"
        time.sleep(0.1)
    assert httpx.get(live.url + "/health").json()["queue_depth"] == 0
    t = time.time()
    live.client().chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert time.time() - t < 10  # the engine is free again, not still writing the essay


def test_load_8_concurrent_streaming_clients(live):
    def client_loop(i):
        c = live.client()
        errors, texts = 0, 0
        for j in range(25):
            try:
                stream = c.chat.completions.create(model="smollm2-135m", max_tokens=8, temperature=0, stream=True,
                                                   messages=[{"role": "user", "content": f"Count to {i + j}."}])
                texts += bool("".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices))
            except Exception:  # noqa: BLE001 -- counted
                errors += 1
        return errors, texts

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client_loop, range(8)))
    assert sum(e for e, _ in results) == 0
    assert sum(t for _, t in results) == 200
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert growth_mb < 500, f"peak memory grew by {growth_mb:.0f} MB under load"
    assert httpx.get(live.url + "/health").json()["queue_depth"] == 0


def test_queue_limit_answers_429(tiny_llm_dir):
    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    with Live(llm, ServerConfig(model_name="tiny", max_queue=1)) as s:
        def one(_):
            try:
                s.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=100, temperature=0)
                return 200
            except openai.RateLimitError as e:
                assert e.body["code"] == "queue_full"
                assert int(e.response.headers["retry-after"]) >= 1
                return e.status_code

        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(one, range(6)))
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}


def test_a_base_model_serves_completions_and_refuses_chat(tiny_llm_dir, tmp_path):
    """A model without a chat template (a base model): /v1/completions continues the text, a chat
    request is a 400 that says where to go instead."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_llm_dir, base)
    for f in base.glob("*"):  # the template may sit in tokenizer_config.json or its own file
        if f.name == "chat_template.jinja":
            f.unlink()
        elif f.name == "tokenizer_config.json":
            cfg = json.loads(f.read_text())
            cfg.pop("chat_template", None)
            f.write_text(json.dumps(cfg))
    llm = LLM(str(base), dtype="float32", progress=False)
    assert not llm.tokenizer.has_chat_template
    with Live(llm, ServerConfig(model_name="tiny")) as s:
        out = s.client().completions.create(model="tiny", prompt="def add(a, b):", max_tokens=8, temperature=0)
        want = llm.generate("def add(a, b):", chat=False, max_new_tokens=8)
        # the same text, even where the random model stops inside a UTF-8 sequence ("...\ufffd")
        assert out.usage.completion_tokens == want.new_tokens and out.choices[0].text == want.text
        with pytest.raises(openai.BadRequestError) as e:
            s.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert "no chat template" in e.value.body["message"] and "/v1/completions" in e.value.body["message"]


@pytest.mark.parametrize("slots", [0, 2])
def test_prefix_cache_slots_keep_alternating_conversations(tiny_llm_dir, slots):
    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    with Live(llm, ServerConfig(model_name="tiny", prefix_cache=slots)) as s:
        c = s.client()
        talks = {"a": "The quick brown fox", "b": "Natalia sold 48 clips"}
        cached = []
        for _ in range(2):
            for who in "ab":
                r = c.completions.create(model="tiny", prompt=talks[who], max_tokens=6, temperature=0)
                cached.append(r.usage.prompt_tokens_details.cached_tokens)
                talks[who] += r.choices[0].text + " and then"
        assert cached[:2] == [0, 0] and all((n > 0) == (slots > 0) for n in cached[2:])


def test_a_batched_server_answers_each_request_as_alone_and_survives_leavers(tiny_llm_dir):
    """--max-batch 4: 12 concurrent streaming requests of different lengths; the odd ones leave
    after a few chunks. Each that stays gets the text `generate` gives it alone; /metrics and
    /health show the batch."""
    llm = LLM(str(tiny_llm_dir), dtype="float32", drafter="lookup", progress=False)
    prompts = [f"def add(a, b): return a + b  # {i}" if i % 2 else f"The quick brown fox {i}" for i in range(12)]
    lengths = [8 + 3 * i for i in range(12)]
    alone = [llm.generate([{"role": "user", "content": p}], max_new_tokens=n).text for p, n in zip(prompts, lengths)]
    with Live(llm, ServerConfig(model_name="tiny", drafter="lookup", max_batch=4, prefix_cache=0)) as s:
        def one(i):
            stream = s.client().chat.completions.create(model="tiny", max_tokens=lengths[i], temperature=0, stream=True,
                                                        messages=[{"role": "user", "content": prompts[i]}])
            text = []
            for ch in stream:
                if ch.choices and ch.choices[0].delta.content:
                    text.append(ch.choices[0].delta.content)
                if i % 2 and len(text) >= 2:
                    stream.close()
                    return None
            return "".join(text)

        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(one, range(12)))
        assert [g for i, g in enumerate(got) if i % 2 == 0] == [a for i, a in enumerate(alone) if i % 2 == 0]
        health = httpx.get(s.url + "/health").json()
        assert health["max_batch"] == 4
        deadline = time.time() + 20
        while httpx.get(s.url + "/health").json()["queue_depth"]:
            assert time.time() < deadline, "the leavers' slots were not freed"
            time.sleep(0.1)
        assert s.metric("specdraft_queue_wait_seconds_count") >= 12
        assert s.metric("specdraft_request_tau_count") >= 6
        text = httpx.get(s.url + "/metrics").text
        assert "specdraft_batch_size" in text
