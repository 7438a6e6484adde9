"""KNN-SSD: route each prompt to the drafter of its nearest domain anchor.

The prompt's vector is the mean of the final hidden states of the prefill the engine runs anyway
(chat template included); the nearest anchor by cosine distance (scikit-learn's NearestNeighbors,
K = 1) names a domain, and the domain's route -- a searched skip set (the seed system) or any
other drafter spec measured fastest on that domain (the generalisation) -- drafts for the whole
generation, or with `reroute=N` until the text drifts: every N committed tokens the mean of the
latest `recent` (64) tokens' final states is routed again, and another route's drafter takes over
between two steps (lossless, as every draft is verified; its first step gets those recent states).
A prompt farther than the artifact's `max_distance` from every anchor takes the
fallback route; that radius is the larger of 1.5x the farthest build prompt's distance and the
domains' separation (`domain_separation`, train.knn_build.fallback_radius). The route taken is
reported in the generation's JSON (`route`).

Artifact directory: `knn.json` (domains, routes, skip sets, fallback, build facts) and
`anchors.safetensors` (`anchors` [A, d] float32, `labels` [A] domain index).
Spec: `knn-ssd[:DIR][:skipsets]`; `skipsets` restricts every route to the domain's skip set.
Routes are timed per dtype (`routes.{float32,bfloat16}` in knn.json, see `train.knn_build.set_routes`):
the drafter uses the table of the dtype it runs in, else the top-level routes of the build dtype.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import SpecdraftError
from ..paths import read_json
from ..verify.tree import Draft
from ..verify.verify import Verdict
from .base import Drafter, Needs, StepContext
from .context import DraftContext

FORMAT = "specdraft-knn-1"


class Router:
    """Anchors + labels -> (domain, cosine distance) for a vector."""

    def __init__(self, anchors: torch.Tensor, labels: list[int], domains: list[str]):
        from sklearn.neighbors import NearestNeighbors

        self.domains, self.labels = domains, labels
        self.nn = NearestNeighbors(n_neighbors=1, metric="cosine").fit(anchors.float().numpy())

    def route(self, vec: torch.Tensor) -> tuple[str, float]:
        dist, idx = self.nn.kneighbors(vec.float().cpu().numpy().reshape(1, -1))
        return self.domains[self.labels[int(idx[0, 0])]], float(dist[0, 0])

    def route_many(self, vecs: torch.Tensor) -> tuple[list[str], list[float]]:
        dist, idx = self.nn.kneighbors(vecs.float().cpu().numpy())
        return [self.domains[self.labels[int(i)]] for i in idx[:, 0]], dist[:, 0].tolist()


def domain_separation(anchors: torch.Tensor, labels: list[int]) -> float:
    """How far apart the domains sit: the median, over anchors, of the cosine distance to the
    nearest anchor of another domain (0 with a single domain). A prompt farther than this from
    every anchor is unlike every domain: its nearest anchor says little about it."""
    from sklearn.metrics.pairwise import cosine_distances

    lab = np.asarray(labels)
    if len(set(lab.tolist())) < 2:
        return 0.0
    d = cosine_distances(anchors.float().cpu().numpy())
    d[lab[:, None] == lab[None, :]] = np.inf
    return float(np.median(d.min(1)))


def read_artifact(path: Path, num_layers: int, hidden_size: int) -> tuple[dict, torch.Tensor, list[int]]:
    path = Path(path)
    meta = read_json(path / "knn.json", f"{path} is not a knn-ssd artifact (no knn.json): build one with `specdraft knn build`")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SpecdraftError(f"{path}/knn.json is not a {FORMAT} artifact")
    if meta.get("num_layers") != num_layers or meta.get("hidden_size") != hidden_size:
        raise SpecdraftError(f"{path} was built for {meta.get('model')} ({meta.get('num_layers')} layers, hidden "
                             f"{meta.get('hidden_size')}); this model has {num_layers} layers, hidden {hidden_size}")
    try:
        t = load_file(str(path / "anchors.safetensors"))
        anchors, labels = t["anchors"], t["labels"].tolist()
    except (FileNotFoundError, SafetensorError, OSError, KeyError) as e:
        raise SpecdraftError(f"{path}/anchors.safetensors is missing or corrupt ({e})") from None
    domains = meta.get("domains")
    if (not isinstance(domains, dict) or anchors.ndim != 2 or anchors.shape[1] != hidden_size
            or len(labels) != anchors.shape[0] or any(not 0 <= l < len(domains) for l in labels)
            or not torch.isfinite(anchors).all()):
        raise SpecdraftError(f"{path}: anchors and knn.json do not agree (corrupt artifact)")
    return meta, anchors, labels


def route_table(meta: dict, dtype: str, where: str = "knn.json") -> dict:
    """The artifact's routes for `dtype`: {"domains": {domain: {"route": spec, ...}}, "fallback":
    {"route", "skipsets"}, "dtype": the dtype they were timed in (None if unrecorded)}. Routes timed
    in `dtype` if the artifact has them, else its top-level routes (timed in the build's dtype)."""
    table = (meta.get("routes") or {}).get(dtype)
    if table is not None:
        table = {**table, "dtype": dtype}
    else:
        table = {"domains": {d: {k: v[k] for k in ("route", "measured_speedup") if k in v}
                             for d, v in meta["domains"].items()},
                 "fallback": meta.get("fallback"), "dtype": meta.get("dtype")}
    doms, fb = table.get("domains"), table.get("fallback")
    if (not isinstance(doms, dict) or set(doms) != set(meta["domains"]) or not isinstance(fb, dict)
            or not all(isinstance(v, dict) and isinstance(v.get("route"), str) for v in doms.values())
            or not isinstance(fb.get("route"), str) or not isinstance(fb.get("skipsets"), str)):
        raise SpecdraftError(f"{where}: the routes for {dtype} are incomplete (corrupt artifact): "
                             "re-time them with `specdraft knn routes`")
    return table


class KNNDrafter(Drafter):
    # the final states route; a route's drafter may read intermediate layers' states too (`needs`)
    READS_LAYERS = ("eagle3", "ctc")

    def __init__(self, ctx: DraftContext, path: Path, meta: dict, anchors: torch.Tensor, labels: list[int],
                 skipsets_only: bool = False, reroute: int = 0, recent: int = 64):
        from .layerskip import skipset_from_json

        if reroute < 0 or recent < 1:
            raise SpecdraftError(f"knn-ssd: reroute must be >= 0 (0: route once) and recent >= 1, got {reroute}, {recent}")
        self.reroute, self.recent = reroute, recent
        self.rows: torch.Tensor | None = None  # the final states of the latest `recent` committed tokens
        self.layer_rows: dict[int, torch.Tensor] | None = None  # and their intermediate states, if read
        self._needs: Needs | None = None
        self._seen = None
        self.since = 0  # tokens committed since the route was last checked

        self.ctx, self.meta = ctx, meta
        self.name = f"knn-ssd{':skipsets' if skipsets_only else ''}:{Path(path).name}"
        self.domains = list(meta["domains"])
        self.router = Router(anchors, labels, self.domains)
        self.max_distance = float(meta.get("max_distance", 2.0))
        self.skipsets_only = skipsets_only
        L = ctx.model.cfg.num_layers
        self.skipsets = {d: skipset_from_json(v["skipset"], L, f"{path}/knn.json [{d}]")
                         for d, v in meta["domains"].items() if v.get("skipset")}
        self.routes = route_table(meta, ctx.dtype_name, f"{path}/knn.json")
        self.inner: Drafter | None = None
        self.cache: dict[str, Drafter | None] = {}
        self.last: dict = {}

    def _route_spec(self, domain: str | None) -> str:
        if domain is None:
            return self.routes["fallback"]["skipsets" if self.skipsets_only else "route"]
        return f"skipset:{domain}" if self.skipsets_only else self.routes["domains"][domain]["route"]

    def _route_drafter(self, domain: str | None) -> tuple[str, Drafter | None]:
        from .layerskip import LayerSkipDrafter

        spec = self._route_spec(domain)
        if spec not in self.cache:
            if spec.startswith("skipset:"):
                d = spec.split(":", 1)[1]
                self.cache[spec] = LayerSkipDrafter(self.skipsets[d], d)
            else:
                self.cache[spec] = self.ctx.drafter(spec)  # built once (shared with the target's other drafters)
        return spec, self.cache[spec]

    @property
    def needs(self) -> Needs:
        """The final states (to route), the target (skip sets), and every intermediate layer a
        route's drafter reads (an EAGLE-3 head, a CTC layer with feature layers): the prefill,
        before any route is chosen, collects them. Only drafters of those kinds are built to ask."""
        if self._needs is None:
            layers: set[int] = set()
            for domain in [*self.domains, None]:
                spec = self._route_spec(domain)
                if any(kind in spec for kind in self.READS_LAYERS):
                    d = self._route_drafter(domain)[1]
                    layers |= set(d.needs.hidden_layers if d is not None else ())
            self._needs = Needs(final_hidden=True, hidden_layers=tuple(sorted(layers)), target=True)
        return self._needs

    def prepare(self) -> None:
        """Build now every drafter a prompt may route to (each is otherwise built the first time a
        prompt takes its route): a server prepares its drafters at start, so that no request
        waits for a model to load."""
        for domain in [*self.domains, None]:
            d = self._route_drafter(domain)[1]
            if d is not None:
                d.prepare()

    def _choose(self, vec: torch.Tensor) -> tuple[dict, str, Drafter | None]:
        domain, dist = self.router.route(vec)
        fallback = dist > self.max_distance
        spec, inner = self._route_drafter(None if fallback else domain)
        facts = {"domain": None if fallback else domain, "nearest": domain, "distance": round(dist, 4),
                 "fallback": fallback, "drafter": spec}
        return facts, spec, None if inner is None else inner.fork()  # (a route's drafter is shared: a fork of it)

    def start(self, prompt_ids: list[int], ctx: StepContext) -> None:
        self.rows, self.layer_rows, self._seen = None, None, None
        self._remember(ctx)
        self.since = 0  # the prompt's tokens do not count: they chose the first route
        facts, _, self.inner = self._choose(ctx.rows.float().mean(0))
        self.last = {**facts, "radius": round(self.max_distance, 4), "timed_in": self.routes["dtype"]}
        if self.reroute:
            self.last["switches"] = []
        if self.inner is not None:
            self.inner.start(prompt_ids, ctx)

    def _remember(self, ctx: StepContext) -> None:
        """Keep the final states of the latest `recent` committed tokens (once per target forward)."""
        if ctx.rows is self._seen:
            return
        self._seen = ctx.rows
        rows = ctx.rows if self.rows is None else torch.cat((self.rows, ctx.rows))
        self.rows = rows[-self.recent:]
        if ctx.layer_rows:
            old = self.layer_rows or {}
            self.layer_rows = {i: (r if i not in old else torch.cat((old[i], r)))[-self.recent:]
                               for i, r in ctx.layer_rows.items()}
        self.since += ctx.rows.shape[0]

    def _maybe_switch(self, ctx: StepContext) -> StepContext:
        """Every `reroute` committed tokens, route again on the recent text's states; on another
        route, its drafter takes over now, started on the text so far with the recent states as
        the rows of its first step (a drafter that reads states catches up from those). Returns
        the step context that drafter drafts from on this step."""
        if not self.reroute or self.since < self.reroute:
            return ctx
        self.since = 0
        facts, spec, inner = self._choose(self.rows.float().mean(0))
        if spec == self.last.get("drafter"):
            return ctx
        self.inner = inner
        self.last["switches"].append({"at_token": len(ctx.ids) - 1, **facts})
        self.last["drafter"] = spec
        if inner is None:
            return ctx
        ctx = replace(ctx, rows=self.rows, hidden=self.rows[-1], layer_rows=self.layer_rows)
        inner.start(ctx.ids[:-1], ctx)
        return ctx

    def propose(self, ctx: StepContext) -> Draft:
        self._remember(ctx)
        ctx = self._maybe_switch(ctx)
        return Draft.empty() if self.inner is None else self.inner.propose(ctx)

    def observe(self, draft: Draft, verdict: Verdict) -> None:
        if self.inner is not None:
            self.inner.observe(draft, verdict)

    def catch_up(self, ctx: StepContext) -> None:
        self._remember(ctx)
        if self.inner is not None:
            self.inner.catch_up(ctx)

    def fork(self) -> "KNNDrafter":
        out = super().fork()
        out.inner, out.last, out.rows, out.layer_rows, out._seen = None, {}, None, None, None
        return out

    def describe(self) -> dict:
        out = {"route": dict(self.last)}
        if self.inner is not None:
            out.update(self.inner.describe())
        return out


def load(arg: str, ctx: DraftContext, **options) -> KNNDrafter:
    from .. import artifacts

    parts = [p for p in arg.split(":") if p] if arg else []
    skipsets_only = bool(parts) and parts[-1] == "skipsets"
    if skipsets_only:
        parts = parts[:-1]
    path = Path(":".join(parts)) if parts else artifacts.find(ctx.name, "knn-ssd")
    meta, anchors, labels = read_artifact(path, ctx.model.cfg.num_layers, ctx.model.cfg.hidden_size)
    return KNNDrafter(ctx, path, meta, anchors, labels, skipsets_only, **options)
