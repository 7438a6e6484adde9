"""Build a KNN-SSD artifact from per-domain prompts: the built-in pools (`specdraft data build`) or
the user's own files, one per domain (`knn build --domains DIR`).

Per domain, the pool is split into disjoint parts: anchor prompts (k-means over their mean-pooled
final hidden states, scikit-learn KMeans with n_init 10 -> `anchors_per_domain` centroids), search
prompts (the domain's skip set, train/skipsearch.py), measure prompts (the route: every candidate
drafter is timed against plain decoding there and the fastest wins), and unseen prompts (routing
accuracy: never used for the anchors). The mixture of all domains' search prompts gives the
Self-SD(Mix) set, written beside the artifact for the baselines.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import save
from tqdm import tqdm

from ..drafters.knn import FORMAT, Router, domain_separation
from ..drafters.layerskip import LayerSkipDrafter, skipset_to_json
from ..errors import SpecdraftError
from ..paths import atomic_dir, atomic_file, home
from . import skipsearch


PROMPT_SUFFIXES = (".jsonl", ".json", ".txt")


def user_domains(directory: Path) -> tuple[str, ...]:
    """The domains of a directory of the user's prompt files: one per file (data/prompts.py's
    formats), named by its stem; two at least, as routing chooses among domains."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in PROMPT_SUFFIXES)
    stems = [p.stem for p in files]
    if dup := sorted({s for s in stems if stems.count(s) > 1}):
        raise SpecdraftError(f"{directory}: two files name the domain {dup[0]!r}; one file per domain")
    if len(files) < 2:
        raise SpecdraftError(f"{directory} holds {len(files)} prompt files ({', '.join(PROMPT_SUFFIXES)}); the router "
                             "chooses among domains, one file each, two at least")
    return tuple(stems)


def pool_prompts(domain: str, directory: Path | None = None) -> list:
    """A domain's prompts: the built-in pool (`specdraft data build`), or the user's file for it in
    `directory` (plain prompts or chat messages)."""
    if directory is not None:
        from ..data.prompts import read_prompts

        path = next((p for p in sorted(Path(directory).iterdir()) if p.stem == domain and p.suffix.lower() in PROMPT_SUFFIXES), None)
        if path is None:
            raise SpecdraftError(f"no prompt file for domain {domain!r} in {directory}")
        return [ex.messages() for ex in read_prompts(path)]
    path = home() / "data" / "pool" / f"{domain}.jsonl"
    if not path.is_file():
        raise SpecdraftError(f"no prompt pool for domain {domain!r} ({path}): run `specdraft data build` "
                             "(domains: conversation, code, math, qa, translation, summarization)")
    return [json.loads(line)["turns"][0] for line in path.read_text().splitlines() if line.strip()]


@torch.inference_mode()
def prompt_vectors(model, ids_list: list[list[int]], progress: bool = True, desc: str = "anchors") -> torch.Tensor:
    """Mean-pooled final hidden states of the full model's prefill of each prompt: [n, d] float32."""
    out = []
    for ids in tqdm(ids_list, desc=desc, unit="prompt", disable=not progress, leave=False):
        cache = model.new_cache(len(ids))
        fwd = model.prefill(ids, cache, final_hidden=True)  # as the engine prefills, where the router reads it
        out.append(fwd.final_hidden.float().mean(0).cpu())
    return torch.stack(out)


def kmeans_anchors(vecs: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    from sklearn.cluster import KMeans

    x = torch.nn.functional.normalize(vecs, dim=-1).numpy()  # cosine geometry
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    return torch.tensor(km.cluster_centers_, dtype=torch.float32)


def measure(llm, specs: list[str], prompts: list[list[int]], max_new_tokens: int, drafters: dict,
            taus: dict | None = None) -> dict[str, float]:
    """Speedup of each spec over plain decoding on the prompts (ratio of mean tokens/s, same
    process, interleaved per prompt); `taus`, if given, receives each spec's tau."""
    from ..engine import generate_ids

    tps: dict[str, list[float]] = {s: [] for s in ["plain", *specs]}
    counts = {s: [0, 0] for s in tps}
    for ids in prompts:
        for s in tps:
            d = drafters.get(s) if s != "plain" else None
            out, st = generate_ids(llm.model, ids, max_new_tokens=max_new_tokens, eos_ids=llm.tokenizer.eos_ids, drafter=d)
            tps[s].append(st.new_tokens / st.wall_s)
            counts[s][0] += st.new_tokens
            counts[s][1] += st.target_forwards
    if taus is not None:
        taus.update({s: c[0] / max(1, c[1]) for s, c in counts.items() if s != "plain"})
    plain = statistics.mean(tps["plain"])
    return {s: statistics.mean(v) / plain for s, v in tps.items() if s != "plain"}


MIN_GAIN = 0.1  # x of plain a domain's own best must win by to leave the fallback route (pick_routes)


def pick_routes(measured: dict, min_gain: float = 0.0) -> dict:
    """A route table from measured speedups (`measured[domain][spec]`: each domain's own
    `skipset:DOMAIN` and the same candidates everywhere). The fallback is the candidate with the
    best mean over the domains (plain if none beats plain); a domain routes to its fastest drafter
    only when that beats the fallback there by more than `min_gain` (in x of plain), else to the
    fallback: timings on a few prompts per domain differ by about 0.1x from one re-timing to the
    next, and a route picked on noise costs more on other prompts than it gains (docs/archive/
    benchmarks-history.md). A route that does not beat plain is plain."""
    cands = [c for c in next(iter(measured.values())) if not c.startswith("skipset:")] if measured else []
    single = {c: statistics.mean(measured[d][c] for d in measured) for c in cands}
    fallback = max(single, key=single.get) if single and max(single.values()) > 1.0 else "plain"
    routes = {}
    for d, sp in measured.items():
        best = max(sp, key=sp.get)
        if fallback != "plain" and sp[best] - sp[fallback] <= min_gain:
            best = fallback
        routes[d] = {"route": best if sp[best] > 1.0 else "plain",
                     "measured_speedup": {k: round(v, 3) for k, v in sp.items()}}
    skip_best = max(measured, key=lambda d: measured[d]["skipset:" + d]) if measured else None
    return {"domains": routes, "fallback": {"route": fallback, "skipsets": f"skipset:{skip_best}"},
            "min_gain": min_gain}


def measure_routes(llm, domains, measure_sets: dict, skips: dict, candidates, tokens: int,
                   progress: bool = True, min_gain: float = 0.0) -> dict:
    """Time every candidate and each domain's skip set on the domain's measure prompts; the route
    table of those timings (`pick_routes`)."""
    measured = {}
    for d in tqdm(list(domains), desc="measure routes", unit="domain", disable=not progress):
        drafters = {"skipset:" + d: LayerSkipDrafter(skips[d], d)}
        for c in candidates:
            drafters[c] = llm.drafter(c)
        measured[d] = measure(llm, list(drafters), measure_sets[d], tokens, drafters)
    return pick_routes(measured, min_gain)


def timed_on(llm) -> str:
    """The hardware a route table was timed on: the GPU's name, or torch's CPU capability
    (AVX2, AVX512, ...), and whether the weights were packed for oneDNN (runtime/packed.py,
    which makes verification cheaper)."""
    if llm.device.type == "cuda":
        return torch.cuda.get_device_name(llm.device)
    return f"cpu {torch.backends.cpu.get_cpu_capability()}" + (", packed" if llm.packed else "")


def set_routes(meta: dict, table: dict, dtype: str, **settings) -> bool:
    """Store a measured route table as the artifact's routes for `dtype` (`meta["routes"][dtype]`).
    Which drafter is fastest depends on the dtype and the machine kind (on an AVX2-only CPU the
    auto dtype is float32 and int8 drafters win; with bf16 units it is bfloat16): `knn-ssd` uses
    the table of the dtype it runs in. The build dtype's table is also the top-level routes, which
    a dtype without its own table falls back to. Returns whether the table became the top-level
    routes."""
    meta.setdefault("routes", {})[dtype] = {**table, **settings}
    if meta.get("dtype", dtype) != dtype:
        return False
    for d, v in table["domains"].items():
        meta["domains"][d].update(v)
    meta["fallback"] = dict(table["fallback"])
    return True


def fallback_radius(farthest_build: float, anchors: torch.Tensor, labels: list[int]) -> float:
    """The distance beyond which a prompt takes the fallback route: 1.5x the farthest anchor-building
    prompt's distance to its nearest anchor, widened to the domains' separation
    (`domain_separation`). The build prompts alone give too tight a radius: prompts of the same
    domains worded otherwise (the bench's MT-bench, HumanEval and man-page prompts against the
    pools' ShareGPT, stdlib and README ones) sit up to 2.5x farther, still nearest their own
    domain (docs/archive/benchmarks-history.md)."""
    return max(1.5 * farthest_build, domain_separation(anchors, labels))


def radius_facts(path: Path) -> tuple[dict, float, float]:
    """(knn.json, its stored fallback radius, the domains' separation) of an artifact."""
    from ..drafters.knn import read_artifact

    knn = Path(path) / "knn.json"
    try:
        stored = json.loads(knn.read_text())
        meta, anchors, labels = read_artifact(Path(path), stored["num_layers"], stored["hidden_size"])
        return meta, float(meta["max_distance"]), domain_separation(anchors, labels)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpecdraftError(f"{knn}: not a readable knn-ssd artifact ({type(e).__name__}: {e})") from None


def widen_radius(path: Path) -> tuple[float, float]:
    """Give an artifact built before `fallback_radius` took the domains' separation into account
    the current radius, max(stored, separation): running it again changes nothing. knn.json is
    rewritten only when the radius grows. Returns (stored radius, separation), as `radius_facts`."""
    meta, old, sep = radius_facts(path)
    if sep > old:
        meta["max_distance"] = sep
        with atomic_file(Path(path) / "knn.json", "w") as f:
            json.dump(meta, f, indent=2)
    return old, sep


def rechoose(path: Path, dtype: str, min_gain: float) -> dict:
    """Choose an artifact's routes for `dtype` again from the speedups stored with them, with
    another `min_gain` (`pick_routes`), without timing anything; the timing settings are kept."""
    from ..drafters.knn import route_table

    knn = Path(path) / "knn.json"
    try:
        meta = json.loads(knn.read_text())
        table = route_table(meta, dtype, str(knn))
        if table["dtype"] != dtype:
            raise SpecdraftError(f"{knn}: no routes timed in {dtype} to choose from: time them with `specdraft knn routes`")
        measured = {d: dict(v["measured_speedup"]) for d, v in table["domains"].items()}
        st = meta.get("settings", {})
        kept = ({k: v for k, v in table.items() if k not in ("domains", "fallback", "dtype", "min_gain")}
                if dtype in (meta.get("routes") or {}) else
                {"candidates": st.get("candidates"), "measure_prompts": st.get("routes_measure_prompts", st.get("measure_prompts")),
                 "measure_tokens": st.get("routes_measure_tokens", st.get("measure_tokens"))})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SpecdraftError(f"{knn}: cannot read its stored timings ({type(e).__name__}: {e})") from None
    set_routes(meta, pick_routes(measured, min_gain), dtype, **kept)
    with atomic_file(knn, "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def remeasure(llm, path: Path, candidates: tuple[str, ...], measure_prompts: int | None = None,
              measure_tokens: int | None = None, progress: bool = True, min_gain: float = MIN_GAIN) -> dict:
    """Re-time the routes of an existing artifact with new candidates (e.g. once ctc is trained),
    keeping its anchors and skip sets. The measure prompts are the build's own; asking for more
    than the build used adds pool prompts from after the build's unseen part (never used for
    anchors, skip sets or routing accuracy). The table is stored for the dtype `llm` runs in; it
    replaces the top-level routes only when that is the build's dtype (`set_routes`)."""
    from ..drafters.knn import read_artifact
    from ..drafters.layerskip import skipset_from_json

    meta, _, _ = read_artifact(path, llm.model.cfg.num_layers, llm.model.cfg.hidden_size)
    st = meta["settings"]
    lo = st["anchor_prompts"] + st["search_prompts"]
    built = st["measure_prompts"]
    n = measure_prompts or built
    tokens = measure_tokens or st["measure_tokens"]
    cap = st.get("max_prompt_tokens", 10**9)
    extra_from = lo + built + st["unseen_prompts"]
    directory = st.get("domains_dir")
    sets = {}
    for d in meta["domains"]:
        enc = [e for e in (llm.tokenizer.encode_prompt(t) for t in pool_prompts(d, directory)) if len(e) <= cap]
        sets[d] = enc[lo: lo + min(n, built)] + enc[extra_from: extra_from + max(0, n - built)]
        if len(sets[d]) < n:
            raise SpecdraftError(f"domain {d!r} has only {len(sets[d])} measure prompts available, asked for {n}")
    skips = {d: skipset_from_json(v["skipset"], llm.model.cfg.num_layers, str(path)) for d, v in meta["domains"].items()}
    table = measure_routes(llm, meta["domains"], sets, skips, candidates, tokens, progress, min_gain=min_gain)
    if set_routes(meta, table, llm.dtype_name, candidates=list(candidates), measure_prompts=n, measure_tokens=tokens,
                  timed_on=timed_on(llm)):
        meta["settings"].update(candidates=list(candidates), routes_measure_prompts=n, routes_measure_tokens=tokens)
    with atomic_file(Path(path) / "knn.json", "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def build_knn(llm, out: Path, *, domains: tuple[str, ...], anchors_per_domain: int = 10, anchor_prompts: int = 100,
              search_prompts: int = 6, search_tokens: int = 24, search_evals: int = 120, unseen_prompts: int = 30,
              measure_prompts: int = 2, measure_tokens: int = 48, candidates: tuple[str, ...] = ("lookup",),
              max_prompt_tokens: int = 1024, seed: int = 0, progress: bool = True, min_gain: float = MIN_GAIN,
              domains_dir: Path | None = None) -> dict:
    """Build a KNN-SSD artifact into `out` for `domains`: the built-in pools, or with `domains_dir`
    the user's files in it (one per domain, `user_domains`)."""
    t0 = time.perf_counter()
    model, tok = llm.model, llm.tokenizer
    L = model.cfg.num_layers
    splits: dict[str, dict[str, list[list[int]]]] = {}
    for d in domains:
        need = anchor_prompts + search_prompts + measure_prompts + unseen_prompts
        if anchor_prompts < anchors_per_domain:
            raise SpecdraftError(f"k-means needs at least {anchors_per_domain} anchor prompts per domain, "
                                 f"got --anchor-prompts {anchor_prompts}")
        enc = [e for e in (tok.encode_prompt(r) for r in pool_prompts(d, domains_dir)) if len(e) <= max_prompt_tokens][:need]
        if len(enc) < need:
            raise SpecdraftError(f"domain {d!r} has {len(enc)} prompts of at most {max_prompt_tokens} tokens; building "
                                 f"needs {need} (--anchor-prompts {anchor_prompts}, --search-prompts {search_prompts}, "
                                 f"--measure-prompts {measure_prompts}, --unseen-prompts {unseen_prompts}): "
                                 "add prompts or lower those")
        a, s, m = anchor_prompts, anchor_prompts + search_prompts, anchor_prompts + search_prompts + measure_prompts
        splits[d] = {"anchor": enc[:a], "search": enc[a:s], "measure": enc[s:m], "unseen": enc[m:need]}

    anchors, labels, meta_domains, build_vecs = [], [], {}, {}
    anchor_dists = []
    for di, d in enumerate(domains):
        vecs = build_vecs[d] = prompt_vectors(model, splits[d]["anchor"], progress, f"anchors {d}")
        cent = kmeans_anchors(vecs, anchors_per_domain, seed)
        anchors.append(cent)
        labels += [di] * cent.shape[0]
        meta_domains[d] = {"anchor_prompts": len(splits[d]["anchor"])}
    anchors_t = torch.cat(anchors)
    router = Router(anchors_t, labels, list(domains))
    for d in domains:  # how far build prompts sit from their nearest anchor: the fallback radius
        _, dist = router.route_many(build_vecs[d])
        anchor_dists += dist
    max_distance = fallback_radius(max(anchor_dists), anchors_t, labels)

    # Skip sets: one per domain, one for the mixture (the Self-SD(Mix) baseline).
    searches = {}
    groups = {d: splits[d]["search"] for d in domains}
    groups["mix"] = [p for d in domains for p in splits[d]["search"][: max(1, search_prompts // len(domains) + 1)]]
    for name, prompts in groups.items():
        data = skipsearch.prepare(model, prompts, search_tokens, progress=False)
        obj = skipsearch.Objective(model, data, protect=(0, L - 1))
        r = skipsearch.search(obj, max_evals=search_evals, patience=max(30, search_evals // 3), seed=seed,
                              progress=progress)
        skip = skipsearch.bits_to_skip(list(r["bits"]), L)
        searches[name] = {"skip": skip, "json": skipset_to_json(
            skip, llm.name, domain=name, matchness=r["matchness"], cost=r["cost"],
            modelled_speedup=r["modelled_speedup"], evals=r["total_evals"], seconds=round(r["total_seconds"], 1))}

    for d in domains:
        meta_domains[d]["skipset"] = searches[d]["json"]
    table = measure_routes(llm, meta_domains, {d: splits[d]["measure"] for d in domains},
                           {d: searches[d]["skip"] for d in domains}, candidates, measure_tokens, progress,
                           min_gain=min_gain)

    # Routing accuracy on prompts never used for anchors.
    correct, total, per = 0, 0, {}
    for d in domains:
        got, _ = router.route_many(prompt_vectors(model, splits[d]["unseen"], progress, f"unseen {d}"))
        hits = sum(g == d for g in got)
        per[d] = hits / len(got)
        correct, total = correct + hits, total + len(got)
    meta = {"format": FORMAT, "model": llm.name, "num_layers": L, "hidden_size": model.cfg.hidden_size,
            "dtype": llm.dtype_name, "domains": meta_domains, "max_distance": max_distance,
            "mix_skipset": searches["mix"]["json"], "routing_accuracy": correct / total, "routing_accuracy_per_domain": per,
            "build_seconds": round(time.perf_counter() - t0, 1),
            "settings": {"anchors_per_domain": anchors_per_domain, "anchor_prompts": anchor_prompts,
                         "search_prompts": search_prompts, "search_tokens": search_tokens, "search_evals": search_evals,
                         "unseen_prompts": unseen_prompts, "measure_prompts": measure_prompts,
                         "measure_tokens": measure_tokens, "candidates": list(candidates), "seed": seed,
                         "max_prompt_tokens": max_prompt_tokens,
                         **({"domains_dir": str(Path(domains_dir).resolve())} if domains_dir is not None else {})}}
    set_routes(meta, table, llm.dtype_name, candidates=list(candidates), measure_prompts=measure_prompts,
               measure_tokens=measure_tokens, timed_on=timed_on(llm))
    with atomic_dir(Path(out)) as tmp:
        (tmp / "anchors.safetensors").write_bytes(save({"anchors": anchors_t.contiguous(),
                                                         "labels": torch.tensor(labels, dtype=torch.long)}))
        (tmp / "knn.json").write_text(json.dumps(meta, indent=2))
        for name, s in searches.items():
            (tmp / f"skipset-{name}.json").write_text(json.dumps(s["json"], indent=2))
    return meta


def search_skipset(llm, texts: list[str], label: str, *, num_prompts: int = 8, tokens: int = 32, budget: int = 300,
                   patience: int = 100, max_seconds: float = 900.0, heldout: int = 3, seed: int = 0) -> dict:
    """`specdraft search-skip`: a layer-skip set searched on the first `num_prompts` of `texts`
    (TPE + random moves over the modelled speedup), then timed as a drafter on the next `heldout`
    (skipped with 0). Returns the skip-set JSON (drafters/layerskip.py) with the search's facts."""
    from ..drafters.layerskip import LayerSkipDrafter, skipset_to_json

    if len(texts) < num_prompts + heldout:
        raise SpecdraftError(f"{len(texts)} prompts; need {num_prompts} for the search + {heldout} held apart")
    ids = [llm.tokenizer.encode_prompt(t) for t in texts[: num_prompts + heldout]]
    data = skipsearch.prepare(llm.model, ids[:num_prompts], tokens)
    L = llm.model.cfg.num_layers
    obj = skipsearch.Objective(llm.model, data, protect=(0, L - 1))
    r = skipsearch.search(obj, max_evals=budget, patience=patience, max_seconds=max_seconds, seed=seed)
    skip = skipsearch.bits_to_skip(list(r["bits"]), L)
    facts = dict(domain=label, matchness=r["matchness"], cost=r["cost"], modelled_speedup=r["modelled_speedup"],
                 evals=r["total_evals"], seconds=round(r["total_seconds"], 1), trace=r["trace"])
    if heldout:
        taus: dict = {}
        facts["heldout_speedup"] = measure(llm, ["layerskip"], ids[num_prompts:], 64,
                                           {"layerskip": LayerSkipDrafter(skip, "search")}, taus)["layerskip"]
        facts["heldout_tau"] = taus["layerskip"]
    return skipset_to_json(skip, llm.name, **facts)
