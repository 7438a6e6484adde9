"""`specdraft knn build|routes|radius`: KNN-SSD routing artifacts."""

from __future__ import annotations

import json

from .. import fetch, zoo
from ..errors import require
from .options import Parser, dtype_option, min_gain_option, positive_int


def add(sub) -> None:
    kn = sub.add_parser("knn", help="KNN-SSD routing artifacts")
    kn.set_defaults(run=run)
    knsub = kn.add_subparsers(dest="knn_command", required=True, parser_class=Parser)
    kb = knsub.add_parser("build", help="anchors, per-domain skip sets and measured routes from the domain pools "
                                        "or your own files")
    kb.add_argument("--model", default=zoo.DEFAULT_MODEL)
    kb.add_argument("--domains", default="conversation,code,math,qa,translation,summarization",
                    help="built-in domain pools, comma-separated (default: %(default)s), or a directory of your own "
                         "prompt files, one per domain named by the file (.jsonl, .json or .txt, as `train data "
                         "--prompts` reads them)")
    kb.add_argument("--candidates", default="lookup",
                    help="drafter specs a domain may route to besides its skip set (default: %(default)s)")
    kb.add_argument("--anchors-per-domain", type=positive_int, default=10)
    kb.add_argument("--anchor-prompts", type=positive_int, default=100)
    kb.add_argument("--search-prompts", type=positive_int, default=6)
    kb.add_argument("--search-evals", type=positive_int, default=120)
    kb.add_argument("--unseen-prompts", type=positive_int, default=30)
    kb.add_argument("--measure-prompts", type=positive_int, default=2)
    kb.add_argument("--measure-tokens", type=positive_int, default=48)
    min_gain_option(kb)
    dtype_option(kb)
    kb.add_argument("--device", default=None)
    kb.add_argument("--out", required=True, help="artifact directory to write")

    kr = knsub.add_parser("routes", help="re-time an artifact's routes with other candidate drafters")
    kr.add_argument("artifact")
    kr.add_argument("--model", default=zoo.DEFAULT_MODEL)
    kr.add_argument("--candidates", default="lookup")
    kr.add_argument("--measure-prompts", type=positive_int, default=None,
                    help="prompts per domain to time on (default: the build's; more come from unused pool prompts)")
    kr.add_argument("--measure-tokens", type=positive_int, default=None, help="default: the build's")
    min_gain_option(kr)
    kr.add_argument("--reuse-timings", action="store_true",
                    help="time nothing: choose the routes of this dtype again from their stored timings, "
                         "with --min-gain")
    dtype_option(kr)
    kr.add_argument("--device", default=None)

    kw = knsub.add_parser("radius", help="show an artifact's fallback radius; --update widens an older "
                          "artifact's to the current rule")
    kw.add_argument("artifact")
    kw.add_argument("--update", action="store_true",
                    help="write max(stored radius, domain separation) into knn.json (running it again changes nothing)")


def run(a) -> int:
    from pathlib import Path

    from ..api import LLM
    from ..drafters import check_spec
    from ..drafters.knn import route_table
    from ..train.knn_build import MIN_GAIN, build_knn

    if a.knn_command == "radius":
        return knn_radius(Path(a.artifact), a.update)
    if a.knn_command == "build":
        require("train", "specdraft knn build (its skip-set searches)")
        from ..train.knn_build import user_domains

        domains_dir = Path(a.domains) if Path(a.domains).is_dir() else None  # checked before the model loads
        domains = user_domains(domains_dir) if domains_dir else tuple(d.strip() for d in a.domains.split(",") if d.strip())
    min_gain = MIN_GAIN if a.min_gain is None else a.min_gain

    if a.knn_command == "routes" and a.reuse_timings:
        from ..api import dtype_name, resolve_device, resolve_dtype
        from ..train.knn_build import rechoose

        path = fetch.resolve(a.model, pull_missing=False) if a.dtype == "auto" else None  # auto depends on its size
        dtype = dtype_name(resolve_dtype(a.dtype, resolve_device(a.device), path))
        meta = rechoose(Path(a.artifact), dtype, min_gain)
        a.out = a.artifact
    else:
        cands = tuple(s.strip() for s in a.candidates.split(",") if s.strip())
        for c in cands:
            check_spec(c)
        llm = LLM(a.model, dtype=a.dtype, device=a.device, exact=a.exact, backend="torch")  # hidden-state anchors
        dtype = llm.dtype_name
        if a.knn_command == "routes":
            from ..train.knn_build import remeasure

            meta = remeasure(llm, Path(a.artifact), cands, a.measure_prompts, a.measure_tokens, min_gain=min_gain)
            a.out = a.artifact
        else:
            meta = build_knn(llm, Path(a.out), domains=domains, domains_dir=domains_dir,
                             anchors_per_domain=a.anchors_per_domain, anchor_prompts=a.anchor_prompts,
                             search_prompts=a.search_prompts, search_evals=a.search_evals,
                             unseen_prompts=a.unseen_prompts, measure_prompts=a.measure_prompts,
                             measure_tokens=a.measure_tokens, candidates=cands, min_gain=min_gain)
    routes = route_table(meta, dtype)
    print(f"routes timed in {dtype}" + (f" on {routes['timed_on']}" if "timed_on" in routes else "")
          + (f", min gain {routes['min_gain']}x" if "min_gain" in routes else ""))
    for d, v in routes["domains"].items():
        print(f"{d:<14} route {v['route']:<28} " + " ".join(f"{k}={x:.2f}x" for k, x in v["measured_speedup"].items()))
    acc = meta.get("routing_accuracy")
    print((f"routing accuracy on unseen prompts: {acc:.3f}; " if acc is not None else "")
          + f"fallback route {routes['fallback']['route']}")
    print(a.out)
    return 0


def knn_radius(path, update: bool) -> int:
    """`knn radius`: the stored fallback radius beside the domains' separation (and the change)."""
    from ..train.knn_build import radius_facts, widen_radius

    old, sep = widen_radius(path) if update else radius_facts(path)[1:]
    print(json.dumps({"artifact": str(path), "stored_radius": round(old, 4), "domain_separation": round(sep, 4),
                      "radius": round(max(old, sep), 4), "updated": update and sep > old}))
    if not update and sep > old:
        print(f"the current rule gives {sep:.4f}: `specdraft knn radius {path} --update` writes it")
    return 0
