"""Self-distillation data for trained drafters (CTC drafter, Medusa heads).

The base model answers a mix of prompts itself (greedy, batched: runtime/batched.py), recording
for every position the final hidden state (after the final norm) and its own greedy next token. Training labels
come from the base model, never from dataset text, so the drafter learns what it will be asked to
predict at decoding time.

On disk, `DIR/shard-00000.safetensors` ... each hold one batch of conversations:
  hidden  [N, d]  bf16   final hidden state at position t
  next    [N]     int64  the token at position t + 1 (the answer the base model wrote)
  greedy  [N]     int64  the base model's argmax at position t (on answer positions: = next)
  seq     [N]     int32  conversation index inside the shard
  target  [N]     bool   t is an answer position (t + 1 is an answer token)
  layers  [N, k, d] bf16 only when built with `layers`: the residual states after those layers
Only the last `context` prompt positions are stored (the drafter's attention window).
`DIR/data.json` records the model, the prompt mix, sizes and the cost. Shards are written
atomically and skipped when present, so an interrupted build resumes where it stopped.

`build_written` fills the same format from ShareGPT's written answers, teacher-forced (one forward
per conversation, no generation): `next` is then the written token and `greedy` the model's own
choice, and training follows a written answer only while the two agree (trainer.Samples).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from ..data.prompts import encode_fitting, read_prompts
from ..errors import SpecdraftError
from ..paths import atomic_file, home

FORMAT = "specdraft-distill-1"


def training_prompts(n_sharegpt: int, n_per_pool: int, seed: int = 0, progress: bool = True) -> list[dict]:
    """ShareGPT first user turns plus prompts of every domain pool; benchmark questions excluded."""
    from ..bench.questions import read_questions
    from ..data import sources
    from ..data.build import default_questions

    bench = {t.strip() for q in read_questions(default_questions(progress)) for t in q.turns}
    rng = random.Random(seed)
    out: list[dict] = []
    convs = [c[0] for c in sources.sharegpt(progress=progress) if 20 <= len(c[0]) <= 1500]
    rng.shuffle(convs)
    out += [{"domain": "sharegpt", "prompt": p} for p in convs if p.strip() not in bench][:n_sharegpt]
    pool_dir = home() / "data" / "pool"
    for path in sorted(pool_dir.glob("*.jsonl")):
        rows = [json.loads(line)["turns"][0] for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.strip() not in bench]
        rng.shuffle(rows)
        out += [{"domain": path.stem, "prompt": p} for p in rows[:n_per_pool]]
    rng.shuffle(out)
    return out


def taken_prompts(n_sharegpt: int, n_per_pool: int, seed: int = 0, progress: bool = True) -> set[str]:
    """Prompts other data must not reuse: the self-distillation mix and the benchmark questions."""
    from ..bench.questions import read_questions
    from ..data.build import default_questions

    taken = {p["prompt"].strip() for p in training_prompts(n_sharegpt, n_per_pool, seed, progress)}
    return taken | {t.strip() for q in read_questions(default_questions(progress)) for t in q.turns}


def _shard_path(out: Path, i: int) -> Path:
    return out / f"shard-{i:05d}.safetensors"


class _Shards:
    """A data directory being built: settings checked against an earlier run's, shards written
    atomically and counted in data.json, shards already present skipped (resume)."""

    def __init__(self, out: Path, settings: dict):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta_path = self.out / "data.json"
        if self.meta_path.exists():
            old = json.loads(self.meta_path.read_text())
            old.setdefault("dtype", "bfloat16")  # written before the dtype was recorded: always bf16
            if {k: old.get(k) for k in settings} != settings:
                raise SpecdraftError(f"{out} holds data built with other settings ({self.meta_path}); use a new directory")
            self.meta = old
        else:
            self.meta = dict(settings, shards=0, tokens=0, answer_tokens=0, seconds=0.0)

    def done(self, i: int) -> bool:
        return _shard_path(self.out, i).exists()

    def write(self, i: int, cols: dict[str, list[torch.Tensor]], seconds: float) -> None:
        tensors = {k: torch.cat(v).contiguous() for k, v in cols.items()}
        with atomic_file(_shard_path(self.out, i)) as f:
            f.write(_serialize(tensors))
        self.meta["shards"] += 1
        self.meta["tokens"] += int(tensors["next"].numel())
        self.meta["answer_tokens"] += int(tensors["target"].sum())
        self.meta["seconds"] += seconds
        self.write_meta()

    def write_meta(self) -> None:
        with atomic_file(self.meta_path, "w") as f:
            json.dump(self.meta, f, indent=2)


def _columns(layers: tuple[int, ...] = ()) -> dict[str, list[torch.Tensor]]:
    return {"hidden": [], "next": [], "greedy": [], "seq": [], "target": [], **({"layers": []} if layers else {})}


def _decoder_settings(dec, layers: tuple[int, ...]) -> dict:
    """The data.json entries of the decoder that builds the data: its dtype, and `layers` (none when
    empty, so older directories still resume)."""
    n = dec.cfg.num_layers
    if bad := [i for i in layers if not 0 <= i < n]:
        raise SpecdraftError(f"layers {bad} do not exist: the model has {n} layers (0..{n - 1})")
    return {"dtype": str(dec.dtype).removeprefix("torch."), **({"layers": list(layers)} if layers else {})}


def _pack(dec) -> bool:
    """Pack a CPU base for oneDNN as `LLM` does (unless SPECDRAFT_PACK=0): the batched
    generation's few-row products run faster packed (docs/archive/benchmarks-history.md)."""
    from ..runtime import packed

    return packed.wanted() and packed.pack_decoder(dec)


@torch.inference_mode()
def build_distill(model: str, out: Path, *, n_sharegpt: int = 6000, n_per_pool: int = 400,
                  max_new_tokens: int = 192, max_prompt_tokens: int = 384, batch_size: int = 24,
                  context: int = 16, seed: int = 0, max_shards: int | None = None, layers: tuple[int, ...] = (),
                  prompts_file: Path | None = None, progress: bool = True) -> Path:
    """Build (or resume) a self-distillation data directory for base `model`; `max_shards` stops
    after the first N shards of the (shuffled) prompt mix, a smaller data set with the same mix;
    `layers` also stores the residual states after those layers (CTC feature layers).

    `prompts_file` (data/prompts.py's formats) replaces the built-in mix with the user's prompts:
    every one is kept whole (a prompt whose tokens and `max_new_tokens` overflow the model's
    context is refused, naming its line), and the directory records the file's sha256, so a resume
    with another file is refused."""
    from .. import fetch
    from ..runtime.batched import greedy_batch
    from ..runtime.cpu import fast_dtype
    from ..runtime.loader import load_decoder
    from ..text import Tokenizer

    user = read_prompts(prompts_file) if prompts_file is not None else None
    path = fetch.resolve(model)
    tok = Tokenizer(path)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dec = load_decoder(path, fast_dtype(dev), dev)
    if user is not None:
        source = {"prompts_file": str(Path(prompts_file).resolve()), "prompts_sha256": fetch.sha256_file(prompts_file)}
        prompts = [{"domain": "file", "prompt": ex.messages(), "where": ex.where} for ex in user]
        rng = random.Random(seed)
        rng.shuffle(prompts)
        encoded_all = encode_fitting(tok, dec.cfg.max_position_embeddings, prompts, max_new_tokens)
    else:
        source = {"n_sharegpt": n_sharegpt, "n_per_pool": n_per_pool, "max_prompt_tokens": max_prompt_tokens}
        prompts = training_prompts(n_sharegpt, n_per_pool, seed, progress)
        encoded_all = None
    packed = _pack(dec)
    shards = _Shards(out, {"format": FORMAT, "model": model, **source, "max_new_tokens": max_new_tokens,
                           "batch_size": batch_size, "context": context, "seed": seed,
                           **_decoder_settings(dec, layers)})
    shards.meta["packed_weights"] = packed  # how the latest run computed (not a setting: same data either way)
    pad = sorted(tok.eos_ids)[0]
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)][:max_shards]
    shards.meta["domains"] = {d: sum(p["domain"] == d for p in prompts) for d in sorted({p["domain"] for p in prompts})}
    shards.meta["shards_total"] = len(batches)

    bar = tqdm(batches, desc="distill", unit="batch", disable=not progress)
    estimate = _Estimate(bar, len(batches), "batch")
    for i, batch in enumerate(bar):
        if shards.done(i):
            estimate.skip()
            continue
        t0 = time.perf_counter()
        if encoded_all is not None:
            encoded = [encoded_all[j] for j in batch]
        else:
            encoded = [tok.encode_prompt(prompts[j]["prompt"])[-max_prompt_tokens:] for j in batch]
        gen = greedy_batch(dec, encoded, max_new_tokens, frozenset(tok.eos_ids), pad, keep=context, layers=layers)
        cols = _columns(layers)
        for r, (e, a) in enumerate(zip(encoded, gen.answers)):
            lo, hi = len(e) - len(gen.prompt_argmax[r]), len(e) + len(a) - 1  # position t predicts t + 1
            x = torch.tensor(e + a, dtype=torch.long)
            cols["hidden"].append(gen.hidden[r].to("cpu", torch.bfloat16))
            if layers:
                cols["layers"].append(gen.layers[r].to("cpu", torch.bfloat16))
            cols["next"].append(x[lo + 1:hi + 1])
            cols["greedy"].append(torch.tensor(gen.prompt_argmax[r] + a[1:], dtype=torch.long))
            cols["seq"].append(torch.full((hi - lo,), r, dtype=torch.int32))
            cols["target"].append(torch.arange(lo, hi) >= len(e) - 1)
        shards.write(i, cols, time.perf_counter() - t0)
        estimate.done(sum(map(len, gen.answers)), time.perf_counter() - t0)
        bar.set_postfix(answer_tokens=shards.meta["answer_tokens"])
    shards.write_meta()  # also when every shard was already there (shards_total)
    return Path(out)


@torch.inference_mode()
def build_written(model: str, out: Path, *, conversations: int = 4000, exclude_sharegpt: int = 6000,
                  exclude_per_pool: int = 400, max_answer_tokens: int = 256, max_prompt_tokens: int = 384,
                  per_shard: int = 48, context: int = 16, seed: int = 0, layers: tuple[int, ...] = (),
                  prompts_file: Path | None = None, progress: bool = True) -> Path:
    """Build (or resume) a data directory from ShareGPT's written answers, teacher-forced through
    base `model`: one forward per conversation (no generation), so it costs a small fraction of
    `build_distill` per token. Same shard format; `next` is the written token and `greedy` the
    base model's own choice, so a training sample follows the written answer only as long as it
    agrees with the model (Samples). Conversations whose prompt is in the self-distillation mix
    of `training_prompts(exclude_sharegpt, exclude_per_pool, seed)` or in the benchmark are left
    out, so this data adds only new prompts.

    `prompts_file` (data/prompts.py's formats) takes the written answers of the user's file
    instead: its examples without an answer are left out (counted in data.json), prompts are kept
    whole and refused, naming their line, when they and their answer overflow the model's context."""
    from .. import fetch
    from ..data import sources
    from ..runtime.cpu import fast_dtype
    from ..runtime.loader import load_decoder
    from ..text import Tokenizer

    user = read_prompts(prompts_file) if prompts_file is not None else None
    if user is not None and not any(ex.answer for ex in user):
        raise SpecdraftError(f"{prompts_file} has no written answers to teacher-force (an \"answer\" next to each "
                             "\"prompt\", or conversations that end with the assistant): leave out --teacher-forced "
                             "to have the model answer them")
    path = fetch.resolve(model)
    tok = Tokenizer(path)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dec = load_decoder(path, fast_dtype(dev), dev)
    eos = tok.hf.eos_token_id if tok.hf.eos_token_id in tok.eos_ids else sorted(tok.eos_ids)[0]  # ends a chat turn
    if user is not None:
        source = {"source": "file-written", "prompts_file": str(Path(prompts_file).resolve()),
                  "prompts_sha256": fetch.sha256_file(prompts_file), "max_answer_tokens": max_answer_tokens}
        with_answer = [ex for ex in user if ex.answer]
        rows = [{"prompt": ex.messages(), "where": ex.where} for ex in with_answer]
        encoded = encode_fitting(tok, dec.cfg.max_position_embeddings, rows, 0,
                                  [len(tok.hf.encode(ex.answer, add_special_tokens=False)) + 1 for ex in with_answer],
                                  max_answer_tokens)
        pairs = [(e, ex.answer) for e, ex in zip(encoded, with_answer)]
        random.Random(seed + 1).shuffle(pairs)
        available = len(pairs)
    else:
        source = {"source": "sharegpt-written", "conversations": conversations, "exclude_sharegpt": exclude_sharegpt,
                  "exclude_per_pool": exclude_per_pool, "max_answer_tokens": max_answer_tokens,
                  "max_prompt_tokens": max_prompt_tokens}
        taken = taken_prompts(exclude_sharegpt, exclude_per_pool, seed, progress)
        pairs = [(u, a) for u, a in sources.sharegpt_exchanges(progress) if 20 <= len(u) <= 1500 and u not in taken]
        random.Random(seed + 1).shuffle(pairs)
        available, pairs = len(pairs), pairs[:conversations]
    packed = _pack(dec)
    shards = _Shards(out, {"format": FORMAT, "model": model, **source, "per_shard": per_shard, "context": context,
                           "seed": seed, **_decoder_settings(dec, layers)})
    shards.meta["packed_weights"] = packed  # how the latest run computed (not a setting: same data either way)
    if user is not None:
        shards.meta["without_answer"] = len(user) - available  # the file's prompts left out
    batches = [pairs[i:i + per_shard] for i in range(0, len(pairs), per_shard)]
    shards.meta["shards_total"] = len(batches)
    shards.meta["available"] = available  # conversations eligible (new prompts), of which `conversations` are used

    bar = tqdm(batches, desc="written answers", unit="shard", disable=not progress)
    estimate = _Estimate(bar, len(batches), "shard")
    for i, batch in enumerate(bar):
        if shards.done(i):
            estimate.skip()
            continue
        t0 = time.perf_counter()
        cols = _columns(layers)
        for r, (user_prompt, answer) in enumerate(batch):
            if isinstance(user_prompt, list):  # the user's file: encoded and checked above
                e = user_prompt
            else:
                e = tok.encode_prompt(user_prompt)[-max_prompt_tokens:]
            a = (tok.hf.encode(answer, add_special_tokens=False) + [eos])[:max_answer_tokens]
            x = torch.tensor(e + a, dtype=torch.long, device=dev)
            lo, hi = max(0, len(e) - context), len(x) - 1  # position t predicts t + 1
            cache = dec.new_cache(len(x))
            fw = dec.forward(x, torch.arange(len(x), device=dev), cache, logits_at=slice(lo, hi), final_hidden=True,
                             hidden_layers=layers)
            cols["hidden"].append(fw.final_hidden[lo:hi].to("cpu", torch.bfloat16))
            if layers:
                cols["layers"].append(torch.stack([fw.layer_hidden[i][lo:hi] for i in layers], 1).to("cpu", torch.bfloat16))
            cols["next"].append(x[lo + 1:hi + 1].cpu())
            cols["greedy"].append(fw.logits.argmax(-1).cpu())
            cols["seq"].append(torch.full((hi - lo,), r, dtype=torch.int32))
            cols["target"].append(torch.arange(lo, hi) >= len(e) - 1)
        shards.write(i, cols, time.perf_counter() - t0)
        estimate.done(sum(len(c) for c in cols["next"]), time.perf_counter() - t0)
        bar.set_postfix(answer_tokens=shards.meta["answer_tokens"])
    shards.write_meta()
    return Path(out)


class _Estimate:
    """The cost of a data build, measured on its first batch done here and said once, before the
    rest runs: tokens/s and the time the remaining batches will take."""

    def __init__(self, bar, total: int, unit: str):
        self.bar, self.left, self.unit, self.said = bar, total, unit, False

    def skip(self) -> None:
        self.left -= 1

    def done(self, tokens: int, seconds: float) -> None:
        self.left -= 1
        if self.said or self.left <= 0:
            return
        self.said = True
        eta = seconds * self.left
        self.bar.write(f"first {self.unit}: {tokens / max(seconds, 1e-9):.0f} tokens/s; the other {self.left} "
                       f"{self.unit}es will take about {_duration(eta)}", file=sys.stderr)


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def _serialize(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={"format": FORMAT})


def shard_paths(data: Path) -> list[Path]:
    data = Path(data)
    meta = data / "data.json"
    if not meta.is_file():
        raise SpecdraftError(f"{data} is not a distillation data directory (no data.json): build it with "
                             "`specdraft train data --model M --out DIR`")
    shards = sorted(data.glob("shard-*.safetensors"))
    if not shards:
        raise SpecdraftError(f"{data} has no shards yet")
    return shards


def load_shards(data: Path, progress: bool = True, first_seq: int = 0) -> dict[str, torch.Tensor]:
    """Concatenate every shard; `seq` becomes unique, numbered from `first_seq` (so that several
    directories can be joined)."""
    cols: dict[str, list[torch.Tensor]] = {}
    offset = first_seq
    for p in tqdm(shard_paths(data), desc="load data", unit="shard", disable=not progress):
        try:
            t = load_file(str(p))
        except Exception as e:  # a truncated or foreign file
            raise SpecdraftError(f"corrupt data shard {p}: {e}") from None
        t["seq"] = t["seq"].long() + offset
        offset = int(t["seq"].max()) + 1
        for k, v in t.items():
            cols.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in cols.items()}


def need_layers(stored: list[int], wanted: tuple[int, ...], where: str) -> None:
    """Refuse data (`where`) whose stored layer states lack some of the `wanted` ones."""
    if missing := [i for i in wanted if i not in stored]:
        raise SpecdraftError(f"{where} holds no hidden states after layers {missing}: build it with "
                             f"`specdraft train data ... --layers {','.join(map(str, wanted))}`")


def keep_layers(data: dict[str, torch.Tensor], stored: list[int], wanted: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """`data` with its `layers` column (states after the `stored` layers) cut to the `wanted` ones,
    in that order; without it when none are wanted."""
    need_layers(stored, wanted, "the data")
    out = {k: v for k, v in data.items() if k != "layers"}
    if wanted:
        out["layers"] = data["layers"][:, [stored.index(i) for i in wanted]]
    return out


__all__ = ["build_distill", "build_written", "load_shards", "training_prompts"]
