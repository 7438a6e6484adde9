"""KNN-SSD routing: the router, artifacts (good and bad), the drafter on a tiny LLM (lossless, route
reported, fallback), and k-means anchors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from specdraft import LLM
from specdraft.drafters.knn import FORMAT, Router, read_artifact, route_table
from specdraft.drafters.layerskip import skipset_to_json
from specdraft.errors import SpecdraftError
from specdraft.runtime.model import SkipSet
from specdraft.train.knn_build import kmeans_anchors, prompt_vectors


def test_router_picks_the_nearest_anchor_by_cosine():
    anchors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r = Router(anchors, [0, 1, 1], ["a", "b"])
    assert r.route(torch.tensor([5.0, 0.1, 0.0]))[0] == "a"  # scale does not matter under cosine
    d, dist = r.route(torch.tensor([0.1, 0.2, 3.0]))
    assert d == "b" and 0 <= dist < 0.1
    got, _ = r.route_many(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.1]]))
    assert got == ["a", "b"]


def test_kmeans_anchors_separate_clusters():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 8, generator=g) * 0.05 + torch.eye(8)[0]
    b = torch.randn(40, 8, generator=g) * 0.05 + torch.eye(8)[1]
    ca, cb = kmeans_anchors(a, 4), kmeans_anchors(b, 4)
    r = Router(torch.cat((ca, cb)), [0] * 4 + [1] * 4, ["a", "b"])
    assert r.route_many(torch.cat((a[:5], b[:5])))[0] == ["a"] * 5 + ["b"] * 5


def write_artifact(path, llm, domains, anchors, max_distance=2.0, routes=None):
    L = llm.model.cfg.num_layers
    skip = SkipSet(tuple(i == 1 for i in range(L)), (False,) * L)
    meta = {"format": FORMAT, "model": llm.name, "num_layers": L, "hidden_size": llm.model.cfg.hidden_size,
            "domains": {d: {"route": (routes or {}).get(d, f"skipset:{d}"), "skipset": skipset_to_json(skip, "tiny")}
                        for d in domains},
            "max_distance": max_distance, "fallback": {"route": "lookup", "skipsets": f"skipset:{domains[0]}"}}
    path.mkdir(parents=True, exist_ok=True)
    (path / "knn.json").write_text(json.dumps(meta))
    save_file({"anchors": anchors.contiguous(), "labels": torch.arange(len(domains))}, str(path / "anchors.safetensors"))
    return path


@pytest.fixture(scope="module")
def tiny_llm(tiny_llm_dir):
    return LLM(str(tiny_llm_dir), dtype="float32", progress=False)


PROMPTS = ["def add(a, b): return a + b", "Translate into English: Guten Morgen", "The quick brown fox"]


def test_knn_drafter_routes_reports_and_stays_lossless(tiny_llm, tmp_path):
    ids = [tiny_llm.tokenizer.encode_prompt(p) for p in PROMPTS]
    vecs = prompt_vectors(tiny_llm.model, ids, progress=False)
    art = write_artifact(tmp_path / "knn", tiny_llm, ["code", "translation", "story"], vecs,
                         routes={"translation": "lookup", "story": "plain"})
    for p, want, drafter in zip(PROMPTS, ["code", "translation", "story"], ["skipset:code", "lookup", "plain"]):
        plain = tiny_llm.generate(p, max_new_tokens=24, drafter="plain")
        r = tiny_llm.generate(p, max_new_tokens=24, drafter=f"knn-ssd:{art}")
        assert r.token_ids == plain.token_ids
        route = r.to_json()["route"]
        assert route["domain"] == want and route["drafter"] == drafter and not route["fallback"]
        assert route["distance"] < 1e-4
        s = tiny_llm.generate(p, max_new_tokens=24, drafter=f"knn-ssd:{art}:skipsets")
        assert s.token_ids == plain.token_ids and s.to_json()["route"]["drafter"] == f"skipset:{want}"


def a_then_b(llm, tmp_path, monkeypatch, route_a: str, route_b: str):
    """A router of two domains whose routes are `route_a` and `route_b`, forced to answer "a" at its
    first call and "b" at every later one. Returns the artifact and the list of vectors routed."""
    H = llm.model.cfg.hidden_size
    art = write_artifact(tmp_path / "knn", llm, ["a", "b"], torch.randn(2, H) * 1e-3, max_distance=10.0,
                         routes={"a": route_a, "b": route_b})
    calls = []

    def route(self, vec):
        calls.append(vec)
        return ("a" if len(calls) == 1 else "b"), 0.0

    monkeypatch.setattr(Router, "route", route)
    return art, calls


@pytest.mark.parametrize("routes", [("skipset:a", "lookup"), ("lookup", "plain"), ("plain", "skipset:b")])
def test_rerouting_switches_drafters_mid_generation_and_stays_lossless(tiny_llm, tmp_path, monkeypatch, routes):
    """With `reroute=N` the route is checked every N committed tokens on the recent text's states;
    when it changes, the new route's drafter takes over between two steps. Forced here by a
    router that answers the first domain once, then the second: the output stays plain decoding's
    and the switch is reported with the token it happened at."""
    H = tiny_llm.model.cfg.hidden_size
    art, calls = a_then_b(tiny_llm, tmp_path, monkeypatch, *routes)
    prompt = PROMPTS[0]
    plain = tiny_llm.generate(prompt, max_new_tokens=40, drafter="plain")
    r = tiny_llm.generate(prompt, max_new_tokens=40, drafter=f"knn-ssd:{art}?reroute=8&recent=16")
    assert r.token_ids == plain.token_ids
    route_facts = r.to_json()["route"]
    (switch,) = route_facts["switches"]  # a to b once; b stays b
    assert switch["domain"] == "b" and switch["drafter"] == routes[1] and route_facts["drafter"] == routes[1]
    assert 8 <= switch["at_token"] - len(tiny_llm.tokenizer.encode_prompt(prompt)) <= 8 + 8
    assert len(calls) >= 3 and calls[1].shape == (H,)
    calls.clear()
    once = tiny_llm.generate(prompt, max_new_tokens=40, drafter=f"knn-ssd:{art}")  # no reroute: one route
    assert once.token_ids == plain.token_ids and len(calls) == 1 and "switches" not in once.to_json()["route"]
    with pytest.raises(SpecdraftError, match="reroute"):
        tiny_llm.generate(prompt, max_new_tokens=4, drafter=f"knn-ssd:{art}?reroute=-1")


@pytest.mark.parametrize("order", ["eagle3-first", "eagle3-second"])
def test_a_route_to_an_eagle3_head_gets_its_layers_even_after_a_switch(tiny_llm, tmp_path, monkeypatch, order):
    """A route's drafter that reads intermediate layers (an EAGLE-3 head) makes the router ask the
    prefill for them, and a switch to it mid-generation hands it the recent text's layer states
    beside the final ones: it drafts, and the output stays plain decoding's."""
    from specdraft.drafters.eagle3 import Eagle3Config, Eagle3Head, save_head

    cfg = Eagle3Config.for_target(tiny_llm.name, tiny_llm.model.cfg, 40, (1, 2, 2))
    torch.manual_seed(0)
    head = Eagle3Head(cfg)
    head.vocab.copy_(torch.arange(40))
    head.init_from_base(tiny_llm.model)
    save_head(head, tmp_path / "head")
    eagle = f"eagle3:{tmp_path / 'head'}"
    first, second = (eagle, "lookup") if order == "eagle3-first" else ("lookup", eagle)
    art, _ = a_then_b(tiny_llm, tmp_path, monkeypatch, first, second)
    prompt = PROMPTS[2]
    plain = tiny_llm.generate(prompt, max_new_tokens=40, drafter="plain")
    r = tiny_llm.generate(prompt, max_new_tokens=40, drafter=f"knn-ssd:{art}?reroute=8&recent=16")
    assert r.token_ids == plain.token_ids and r.stats.drafted > 0
    (switch,) = r.to_json()["route"]["switches"]
    assert switch["drafter"] == second
    assert tiny_llm.drafter(f"knn-ssd:{art}").needs.hidden_layers == (0, 1)  # after layers 0 and 1: entering 1 and 2


def test_a_server_builds_every_route_at_start(tiny_llm, tmp_path):
    from specdraft.server.app import ServerConfig, create_app

    ids = [tiny_llm.tokenizer.encode_prompt(p) for p in PROMPTS]
    art = write_artifact(tmp_path / "knn", tiny_llm, ["code", "translation", "story"],
                         prompt_vectors(tiny_llm.model, ids, progress=False),
                         routes={"translation": "lookup?max_ngram=2", "story": "plain"})
    d = tiny_llm.drafter(f"knn-ssd:{art}")
    assert d.cache == {}  # lazily built, by default
    create_app(tiny_llm, ServerConfig(model_name="tiny", drafter=f"knn-ssd:{art}"))
    assert sorted(d.cache) == ["lookup", "lookup?max_ngram=2", "plain", "skipset:code"]  # with the fallback
    assert d.cache["lookup?max_ngram=2"] is tiny_llm.drafter("lookup?max_ngram=2")


def test_far_prompt_takes_the_fallback_route(tiny_llm, tmp_path):
    ids = [tiny_llm.tokenizer.encode_prompt(p) for p in PROMPTS[:2]]
    vecs = prompt_vectors(tiny_llm.model, ids, progress=False)
    art = write_artifact(tmp_path / "knn", tiny_llm, ["code", "translation"], vecs, max_distance=1e-6)
    plain = tiny_llm.generate("What is the capital of France?", max_new_tokens=16, drafter="plain")
    r = tiny_llm.generate("What is the capital of France?", max_new_tokens=16, drafter=f"knn-ssd:{art}")
    assert r.token_ids == plain.token_ids
    route = r.to_json()["route"]
    assert route["fallback"] and route["domain"] is None and route["drafter"] == "lookup"
    assert route["distance"] > route["radius"] and route["nearest"] in ("code", "translation")


def test_bad_artifacts_are_clear_errors(tiny_llm, tmp_path):
    L, H = tiny_llm.model.cfg.num_layers, tiny_llm.model.cfg.hidden_size
    with pytest.raises(SpecdraftError, match="no knn.json"):
        read_artifact(tmp_path / "missing", L, H)
    art = write_artifact(tmp_path / "k", tiny_llm, ["a", "b"], torch.randn(2, H))
    with pytest.raises(SpecdraftError, match="layers"):
        read_artifact(art, L + 5, H)
    (art / "anchors.safetensors").write_bytes(b"broken")
    with pytest.raises(SpecdraftError, match="missing or corrupt"):
        read_artifact(art, L, H)
    art = write_artifact(tmp_path / "k2", tiny_llm, ["a", "b"], torch.randn(3, H))  # 3 anchors, 2 labels
    with pytest.raises(SpecdraftError, match="do not agree"):
        read_artifact(art, L, H)
    (art / "knn.json").write_text("{")
    with pytest.raises(SpecdraftError, match="corrupt"):
        read_artifact(art, L, H)


def test_domain_separation_is_the_median_distance_to_another_domains_nearest_anchor():
    from specdraft.drafters.knn import domain_separation
    from specdraft.train.knn_build import fallback_radius

    def unit(deg):  # a unit vector at `deg` degrees in the plane: cosine distance 1 - cos(angle)
        r = torch.deg2rad(torch.tensor(float(deg)))
        return torch.stack((torch.cos(r), torch.sin(r)))

    # domain 0 at 0 and 10 degrees, domain 1 at 30 and 90: nearest other-domain anchors are 30, 20, 20, 80 degrees away
    anchors = torch.stack([unit(0), unit(10), unit(30), unit(90)])
    gaps = sorted((1 - torch.cos(torch.deg2rad(torch.tensor([30.0, 20.0, 20.0, 80.0])))).tolist())
    sep = domain_separation(anchors, [0, 0, 1, 1])
    assert sep == pytest.approx((gaps[1] + gaps[2]) / 2, rel=1e-5)
    assert domain_separation(anchors, [0, 0, 0, 0]) == 0.0  # one domain: nothing to be unlike
    assert fallback_radius(0.001, anchors, [0, 0, 1, 1]) == pytest.approx(sep)  # a tight build widens
    assert fallback_radius(0.5, anchors, [0, 0, 1, 1]) == pytest.approx(0.75)  # a loose one stays 1.5x


def test_knn_radius_widens_an_older_artifact_once(tiny_llm, tmp_path):
    """`knn radius` shows; `--update` writes max(stored, separation) and changes nothing the second
    time; a prompt between the two radii routes to its domain afterwards, not to the fallback."""
    from specdraft.drafters.knn import domain_separation

    ids = [tiny_llm.tokenizer.encode_prompt(p) for p in PROMPTS[:2]]
    vecs = prompt_vectors(tiny_llm.model, ids, progress=False)
    art = write_artifact(tmp_path / "knn", tiny_llm, ["code", "translation"], vecs, max_distance=1e-6)
    sep = domain_separation(vecs, [0, 1])
    prompt = "def sub(a, b): return a - b"
    before = tiny_llm.generate(prompt, max_new_tokens=4, drafter=f"knn-ssd:{art}").to_json()["route"]
    assert before["fallback"] and 1e-6 < before["distance"] < sep  # inside the domains' separation
    r = _cli(["knn", "radius", str(art)])
    shown = json.loads(r.stdout.splitlines()[0])
    assert r.returncode == 0 and not shown["updated"] and shown["radius"] == pytest.approx(sep, abs=1e-4)
    assert json.loads((art / "knn.json").read_text())["max_distance"] == 1e-6  # showing writes nothing
    for updated in (True, False):
        r = _cli(["knn", "radius", str(art), "--update"])
        assert r.returncode == 0 and json.loads(r.stdout)["updated"] is updated
        assert json.loads((art / "knn.json").read_text())["max_distance"] == pytest.approx(sep)
    shutil.copytree(art, tmp_path / "knn2")  # a fresh spec: the LLM keeps the drafter it built for `art`
    after = tiny_llm.generate(prompt, max_new_tokens=4, drafter=f"knn-ssd:{tmp_path / 'knn2'}").to_json()["route"]
    assert not after["fallback"] and after["domain"] == before["nearest"]
    r = _cli(["knn", "radius", str(tmp_path / "nothing")])
    assert r.returncode == 2 and "not a readable knn-ssd artifact" in r.stderr


def test_mixed_stream_orders_by_switch_probability():
    from specdraft.bench.questions import Question
    from specdraft.bench.runner import mixed_stream

    qs = [Question(f"{c}{i}", c, ("x",)) for c in "abc" for i in range(6)]
    blocks = [q.category for q in mixed_stream(qs, 0.0)]
    assert sum(x != y for x, y in zip(blocks, blocks[1:])) == 2  # one block per category
    inter = [q.category for q in mixed_stream(qs, 1.0, seed=3)]
    assert sorted(q.question_id for q in mixed_stream(qs, 1.0)) == sorted(q.question_id for q in qs)
    switches = sum(x != y for x, y in zip(inter, inter[1:]))
    assert switches >= 12  # switches after every prompt while another category is left
    half = [q.category for q in mixed_stream(qs, 0.5, seed=1)]
    assert 2 < sum(x != y for x, y in zip(half, half[1:])) < switches
    for c in "abc":  # within a category, file order is kept
        assert [q.question_id for q in mixed_stream(qs, 0.5) if q.category == c] == [f"{c}{i}" for i in range(6)]


def _cli(args, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "specdraft", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_cli_search_skip_writes_a_usable_skip_set(tiny_llm_dir, tmp_path):
    qs = tmp_path / "q.jsonl"
    qs.write_text("\n".join(json.dumps({"question_id": i, "category": "x", "turns": [p]}) for i, p in enumerate(PROMPTS)))
    out = tmp_path / "set.json"
    r = _cli(["search-skip", "--model", str(tiny_llm_dir), "--prompts", str(qs), "--num-prompts", "2", "--tokens", "6",
              "--budget", "6", "--heldout", "1", "--dtype", "float32", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["evals"] <= 6 and 0 <= d["matchness"] <= 1 and d["heldout_tau"] >= 1.0
    r = _cli(["generate", "hi", "--model", str(tiny_llm_dir), "--drafter", f"layerskip:{out}", "--max-new-tokens", "5"])
    assert r.returncode == 0, r.stderr
    r = _cli(["search-skip", "--model", str(tiny_llm_dir), "--domain", "code", "--prompts", str(qs), "--out", str(out)])
    assert r.returncode == 2 and "exactly one of" in r.stderr


def test_cli_knn_build_refuses_a_domain_with_too_few_prompts(tiny_llm_dir, tmp_path):
    pool = tmp_path / "home" / "data" / "pool"
    pool.mkdir(parents=True)
    (pool / "code.jsonl").write_text("\n".join(json.dumps({"turns": [p]}) for p in PROMPTS))
    r = _cli(["knn", "build", "--model", str(tiny_llm_dir), "--domains", "code", "--out", str(tmp_path / "k")],
             env={"SPECDRAFT_HOME": str(tmp_path / "home")})
    assert r.returncode == 2 and "prompts of at most" in r.stderr
    r = _cli(["knn", "build", "--model", str(tiny_llm_dir), "--domains", "nosuch", "--out", str(tmp_path / "k")],
             env={"SPECDRAFT_HOME": str(tmp_path / "home")})
    assert r.returncode == 2 and "no prompt pool" in r.stderr


@pytest.mark.parametrize("source", ["pools", "user files"])
def test_cli_knn_build_writes_an_artifact_knn_ssd_routes_with(tiny_llm_dir, tmp_path, source):
    """A whole `knn build` on the tiny model and two small domains (the built-in pools' place, or a
    directory of the user's files: text and chat JSONL): the artifact loads, its radius is at least
    the domains' separation (and 1.5x the farthest anchor prompt), and `knn-ssd` decodes with it
    exactly as plain decoding does, naming the route it took."""
    from specdraft.drafters.knn import domain_separation

    texts = {"code": [f"def f{i}(x):\n    return x * {i} + {i * i}" for i in range(9)],
             "story": [f"Once upon a time there were {i} little foxes in the wood." for i in range(9)]}
    if source == "pools":
        pool = tmp_path / "home" / "data" / "pool"
        pool.mkdir(parents=True)
        for dom, rows in texts.items():
            (pool / f"{dom}.jsonl").write_text("\n".join(json.dumps({"turns": [t]}) for t in rows))
        domains = "code,story"
    else:
        mine = tmp_path / "mine"
        mine.mkdir()
        (mine / "code.jsonl").write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": t}]})
                                                   for t in texts["code"]))
        (mine / "story.txt").write_text("\n".join(texts["story"]))
        (mine / "notes.md").write_text("not a prompt file: left out")
        domains = str(mine)
    env = {"SPECDRAFT_HOME": str(tmp_path / "home")}
    out = tmp_path / "k"
    r = _cli(["knn", "build", "--model", str(tiny_llm_dir), "--domains", domains, "--anchors-per-domain", "2",
              "--anchor-prompts", "4", "--search-prompts", "1", "--search-evals", "3", "--unseen-prompts", "2",
              "--measure-prompts", "1", "--measure-tokens", "4", "--candidates", "lookup", "--dtype", "float32",
              "--out", str(out)], env=env)
    assert r.returncode == 0, r.stderr
    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    meta, anchors, labels = read_artifact(out, llm.model.cfg.num_layers, llm.model.cfg.hidden_size)
    assert anchors.shape[0] == 4 and sorted(set(labels)) == [0, 1]
    assert meta["max_distance"] >= domain_separation(anchors, labels) > 0
    prompt = texts["code"][8]  # a pool prompt no part of the build used
    plain = llm.generate(prompt, max_new_tokens=12, drafter="plain")
    got = llm.generate(prompt, max_new_tokens=12, drafter=f"knn-ssd:{out}")
    assert got.token_ids == plain.token_ids and got.to_json()["route"]["nearest"] in texts
    assert meta["settings"].get("domains_dir") == (None if source == "pools" else str((tmp_path / "mine").resolve()))


def test_cli_knn_build_refuses_a_directory_of_one_domain(tiny_llm_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "code.txt").write_text("def f(): pass\n")
    r = _cli(["knn", "build", "--model", str(tiny_llm_dir), "--domains", str(tmp_path / "mine"), "--out", str(tmp_path / "k")])
    assert r.returncode == 2 and "two at least" in r.stderr and not (tmp_path / "k").exists()
    (tmp_path / "mine" / "code.json").write_text("[]")
    r = _cli(["knn", "build", "--model", str(tiny_llm_dir), "--domains", str(tmp_path / "mine"), "--out", str(tmp_path / "k")])
    assert r.returncode == 2 and "two files name the domain 'code'" in r.stderr


def test_routes_remeasure_adds_unused_pool_prompts(tiny_llm, tmp_path, monkeypatch):
    """`knn routes --measure-prompts N` times the build's measure prompts plus pool prompts from
    after the unseen part (never anchors, search or routing-accuracy prompts), and says so."""
    from specdraft.train import knn_build

    texts = [f"prompt number {i} about code" for i in range(12)]
    pool = tmp_path / "home" / "data" / "pool"
    pool.mkdir(parents=True)
    (pool / "code.jsonl").write_text("\n".join(json.dumps({"turns": [t]}) for t in texts))
    monkeypatch.setenv("SPECDRAFT_HOME", str(tmp_path / "home"))
    art = write_artifact(tmp_path / "k", tiny_llm, ["code"], torch.randn(1, tiny_llm.model.cfg.hidden_size))
    meta = json.loads((art / "knn.json").read_text())
    meta["settings"] = {"anchor_prompts": 2, "search_prompts": 1, "measure_prompts": 1, "unseen_prompts": 2,
                        "measure_tokens": 4}
    (art / "knn.json").write_text(json.dumps(meta))
    seen = {}

    def fake_measure_routes(llm, domains, sets, skips, candidates, tokens, progress=True, min_gain=None):
        seen.update(sets=sets, tokens=tokens, min_gain=min_gain)
        return {"domains": {d: {"route": "lookup", "measured_speedup": {"lookup": 1.5}} for d in domains},
                "fallback": {"route": "lookup", "skipsets": "skipset:code"}}

    monkeypatch.setattr(knn_build, "measure_routes", fake_measure_routes)
    enc = [tiny_llm.tokenizer.encode_prompt(t) for t in texts]
    out = knn_build.remeasure(tiny_llm, art, ("lookup",), measure_prompts=3, measure_tokens=8, progress=False)
    assert seen["sets"]["code"] == [enc[3], enc[6], enc[7]] and seen["tokens"] == 8
    assert seen["min_gain"] == knn_build.MIN_GAIN
    assert out["settings"]["routes_measure_prompts"] == 3
    assert json.loads((art / "knn.json").read_text())["domains"]["code"]["route"] == "lookup"
    with pytest.raises(SpecdraftError, match="measure prompts"):
        knn_build.remeasure(tiny_llm, art, ("lookup",), measure_prompts=20, progress=False)


def test_routes_are_kept_per_dtype(tiny_llm, tmp_path, monkeypatch):
    """Routes timed in another dtype (another machine kind) do not replace the build's: `knn routes`
    in float32 on a bfloat16 artifact adds `routes.float32`, and `knn-ssd` in float32 follows it,
    while a dtype without a table of its own keeps the top-level routes."""
    from specdraft.train import knn_build

    ids = [tiny_llm.tokenizer.encode_prompt(p) for p in PROMPTS[:2]]
    vecs = prompt_vectors(tiny_llm.model, ids, progress=False)
    art = write_artifact(tmp_path / "k", tiny_llm, ["code", "translation"], vecs, routes={"translation": "plain"})
    meta = json.loads((art / "knn.json").read_text())
    meta.update(dtype="bfloat16", settings={"anchor_prompts": 0, "search_prompts": 0, "measure_prompts": 1,
                                            "unseen_prompts": 0, "measure_tokens": 4})
    (art / "knn.json").write_text(json.dumps(meta))
    pool = tmp_path / "home" / "data" / "pool"
    pool.mkdir(parents=True)
    for d, p in zip(["code", "translation"], PROMPTS):
        (pool / f"{d}.jsonl").write_text(json.dumps({"turns": [p]}))
    monkeypatch.setenv("SPECDRAFT_HOME", str(tmp_path / "home"))
    timed = {"code": "plain", "translation": "lookup"}
    monkeypatch.setattr(knn_build, "measure_routes", lambda llm, domains, *a, **k: {
        "domains": {d: {"route": timed[d], "measured_speedup": {timed[d]: 1.2}} for d in domains},
        "fallback": {"route": "lookup", "skipsets": "skipset:code"}})
    out = knn_build.remeasure(tiny_llm, art, ("lookup",), progress=False)
    stored = json.loads((art / "knn.json").read_text())
    assert stored == out
    assert {d: v["route"] for d, v in stored["domains"].items()} == {"code": "skipset:code", "translation": "plain"}
    f32 = stored["routes"]["float32"]
    assert {d: v["route"] for d, v in f32["domains"].items()} == timed
    assert f32["candidates"] == ["lookup"] and f32["timed_on"].startswith("cpu ") and "routes_measure_prompts" not in stored["settings"]
    assert f32["timed_on"].endswith(", packed") == tiny_llm.packed  # packed weights make verification cheaper
    assert route_table(stored, "bfloat16")["dtype"] == "bfloat16"
    assert route_table(stored, "bfloat16")["domains"]["code"]["route"] == "skipset:code"
    for p, domain in zip(PROMPTS, ["code", "translation"]):
        r = tiny_llm.generate(p, max_new_tokens=12, drafter=f"knn-ssd:{art}")
        route = r.to_json()["route"]
        assert route["domain"] == domain and route["drafter"] == timed[domain] and route["timed_in"] == "float32"
        assert r.token_ids == tiny_llm.generate(p, max_new_tokens=12, drafter="plain").token_ids
    # The build dtype's own re-timing replaces the top-level routes too.
    stored["dtype"] = "float32"
    (art / "knn.json").write_text(json.dumps(stored))
    timed = {"code": "lookup", "translation": "lookup"}
    out = knn_build.remeasure(tiny_llm, art, ("lookup",), progress=False)
    assert {d: v["route"] for d, v in out["domains"].items()} == timed and out["settings"]["candidates"] == ["lookup"]
    # A table with a domain missing is a corrupt artifact, not a KeyError mid-generation.
    # (a fresh copy: the LLM keeps the drafter it built for the first path)
    bad = tmp_path / "bad"
    shutil.copytree(art, bad)
    del out["routes"]["float32"]["domains"]["code"]
    (bad / "knn.json").write_text(json.dumps(out))
    with pytest.raises(SpecdraftError, match="routes for float32 are incomplete"):
        tiny_llm.generate("hi", max_new_tokens=4, drafter=f"knn-ssd:{bad}")


def test_pick_routes_leaves_the_fallback_only_for_a_clear_win():
    from specdraft.train.knn_build import pick_routes

    measured = {"code": {"skipset:code": 0.8, "a": 1.5, "b": 1.58},
                "math": {"skipset:math": 0.9, "a": 1.6, "b": 1.2},
                "qa": {"skipset:qa": 0.7, "a": 0.95, "b": 0.97},
                "chat": {"skipset:chat": 1.9, "a": 1.3, "b": 1.1}}
    # fallback: the best mean over domains (a: 1.34, b: 1.21)
    for gain, want in [(0.0, {"code": "b", "math": "a", "qa": "plain", "chat": "skipset:chat"}),
                       (0.1, {"code": "a", "math": "a", "qa": "plain", "chat": "skipset:chat"}),
                       (0.7, {"code": "a", "math": "a", "qa": "plain", "chat": "a"})]:
        t = pick_routes(measured, gain)
        assert {d: v["route"] for d, v in t["domains"].items()} == want, gain
        assert t["fallback"] == {"route": "a", "skipsets": "skipset:chat"} and t["min_gain"] == gain
        assert t["domains"]["code"]["measured_speedup"] == measured["code"]
    slow = {d: {k: v / 3 for k, v in sp.items()} for d, sp in measured.items()}
    t = pick_routes(slow, 0.1)
    assert t["fallback"]["route"] == "plain" and {v["route"] for v in t["domains"].values()} == {"plain"}


def test_routes_are_chosen_again_from_stored_timings(tiny_llm, tmp_path):
    """`knn routes --reuse-timings` re-picks a dtype's routes with another --min-gain, times
    nothing and keeps the timing settings; a dtype with no timings is a clear error."""
    from specdraft.train import knn_build
    from specdraft.train.knn_build import pick_routes, set_routes

    ids = [tiny_llm.tokenizer.encode_prompt(p) for p in PROMPTS[:2]]
    art = write_artifact(tmp_path / "k", tiny_llm, ["code", "translation"], prompt_vectors(tiny_llm.model, ids, progress=False))
    meta = json.loads((art / "knn.json").read_text())
    meta["dtype"] = "bfloat16"
    measured = {"code": {"skipset:code": 0.8, "lookup": 1.5, "lookup?min_ngram=2": 1.55},
                "translation": {"skipset:translation": 0.9, "lookup": 1.6, "lookup?min_ngram=2": 1.2}}
    set_routes(meta, pick_routes(measured, 0.0), "float32", timed_on="cpu TEST", measure_prompts=2)
    (art / "knn.json").write_text(json.dumps(meta))
    assert route_table(meta, "float32")["domains"]["code"]["route"] == "lookup?min_ngram=2"
    r = _cli(["knn", "routes", str(art), "--reuse-timings", "--min-gain", "0.1", "--dtype", "float32",
              "--model", "no-such-model"])
    assert r.returncode == 0, r.stderr
    assert "min gain 0.1x" in r.stdout
    stored = json.loads((art / "knn.json").read_text())
    f32 = route_table(stored, "float32")
    assert {d: v["route"] for d, v in f32["domains"].items()} == {"code": "lookup", "translation": "lookup"}
    assert f32["timed_on"] == "cpu TEST" and f32["measure_prompts"] == 2 and f32["min_gain"] == 0.1
    assert stored["domains"]["code"]["route"] == "skipset:code"  # the bf16 build's routes untouched
    r = _cli(["knn", "routes", str(art), "--reuse-timings", "--dtype", "float32", "--model", "no-such-model"])
    assert r.returncode == 0 and f"min gain {knn_build.MIN_GAIN}x" in r.stdout  # the default is the library's
    r = _cli(["knn", "routes", str(art), "--reuse-timings", "--dtype", "bfloat16"])
    assert r.returncode == 2 and "cannot read its stored timings" in r.stderr
    r = _cli(["knn", "routes", str(art), "--reuse-timings", "--min-gain", "-1"])
    assert r.returncode == 2 and "must be >= 0" in r.stderr
