"""`specdraft data build`: the benchmark question file and the per-domain pools.

Six domains, after Spec-Bench: conversation (MT-bench, both turns), code (HumanEval), math
(GSM8K), qa (FanOutQA), translation (German -> English, gettext catalogs), summarization (man
pages and READMEs). Each prompt's wording is drawn from several phrasings (seeded), so no domain
shares one fixed template -- a router must not be able to tell domains apart by boilerplate.

Output (Spec-Bench format, one JSON object a line: question_id, category, turns):
- questions.jsonl: the benchmark suite, up to --per-domain questions per domain;
- pool/DOMAIN.jsonl: a larger pool per domain, disjoint from the benchmark questions, for
  training data (CTC / Medusa) and KNN anchors;
- manifest.json: sources, pins, counts, seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..paths import atomic_dir, home
from . import sources

DOMAINS = ("conversation", "code", "math", "qa", "translation", "summarization")

CODE = [
    "Complete the following Python function.\n\n```python\n{code}```",
    "{code}\nFinish this function so that it does what its docstring says.",
    "Here is the start of a Python function:\n```python\n{code}```\nWrite the full implementation.",
    "Implement the body of this function and briefly explain your approach:\n\n{code}",
    "```python\n{code}```\nPlease write the missing code.",
    "Can you fill in this Python function for me?\n{code}",
]
CODE_POOL = [
    "Explain what this function does, step by step:\n```python\n{code}\n```",
    "Write unit tests with pytest for the following function:\n\n{code}",
    "Add type hints to this function and explain each choice.\n```python\n{code}\n```",
    "{code}\n\nCould this function be simplified? Show an improved version.",
    "Rewrite the following function in a more readable style:\n{code}",
]
MATH = [
    "{q}",
    "{q} Show your reasoning.",
    "Solve this problem step by step: {q}",
    "Question: {q}\nAnswer:",
    "Here's a word problem I'm stuck on. {q}",
    "{q} Explain how you got the answer.",
    "Please work out the following. {q}",
]
QA = [
    "{q}",
    "Answer the following question: {q}",
    "{q} Please be specific.",
    "I'd like to know: {q}",
    "Quick question -- {q}",
    "{q} List what you know.",
]
TRANSLATION = [
    "Translate into English: {de}",
    "What does this German sentence mean in English?\n{de}",
    "German: {de}\nEnglish:",
    "Please give an English translation of \"{de}\"",
    "{de}\n\nTranslate the text above from German to English.",
    "How would you say this in English? {de}",
]
SUMMARY = [
    "Summarize the following text in a few sentences.\n\n{text}",
    "{text}\n\nWrite a short summary of the passage above.",
    "Give me the gist of this documentation:\n{text}",
    "TL;DR please:\n\n{text}",
    "Here is part of the documentation of {name}. Summarize what it says.\n\n{text}",
    "Condense this into three bullet points:\n{text}",
    "Read this and explain briefly what the tool does.\n\n{text}",
]


def _render(rng: random.Random, templates: list[str], **kw) -> str:
    return rng.choice(templates).format(**kw)


def domain_prompts(domain: str, rng: random.Random, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """(benchmark-eligible questions, pool-only questions) of one domain, each {id, turns}."""
    if domain == "conversation":
        bench = [{"id": f"mtbench-{q['id']}", "turns": q["turns"]} for q in sources.mtbench(progress)]
        pool = [{"id": f"sharegpt-{i}", "turns": t[:1]} for i, t in enumerate(sources.sharegpt(3000, progress))]
        return bench, pool
    if domain == "code":
        bench = [{"id": q["id"], "turns": [_render(rng, CODE, code=q["prompt"])]} for q in sources.humaneval(progress)]
        pool = [{"id": f"stdlib-{n}", "turns": [_render(rng, CODE_POOL, code=c)]} for n, c in sources.stdlib_functions()]
        return bench, pool
    if domain == "math":
        return [{"id": f"gsm8k-{i}", "turns": [_render(rng, MATH, q=q)]} for i, q in enumerate(sources.gsm8k(progress))], []
    if domain == "qa":
        tops, subs = sources.fanoutqa(progress)
        bench = [{"id": f"fanoutqa-{i}", "turns": [_render(rng, QA, q=q)]} for i, q in enumerate(tops)]
        pool = [{"id": f"fanoutqa-sub-{i}", "turns": [_render(rng, QA, q=q)]} for i, q in enumerate(subs)]
        return bench, pool
    if domain == "translation":
        pairs = sources.gettext_pairs()
        return [{"id": f"gettext-de-{i}", "turns": [_render(rng, TRANSLATION, de=de)]} for i, (de, _) in enumerate(pairs)], []
    if domain == "summarization":
        docs = sources.documents()
        return [{"id": f"doc-{name}-{i}", "turns": [_render(rng, SUMMARY, text=t, name=name)]}
                for i, (name, t) in enumerate(docs)], []
    raise ValueError(domain)


def build(out: Path | None = None, per_domain: int = 80, pool_size: int = 1000, seed: int = 0,
          domains: tuple[str, ...] = DOMAINS, progress: bool = True) -> Path:
    """Write questions.jsonl, pool/*.jsonl and manifest.json into `out` (atomically)."""
    out = out or home() / "data"
    manifest = {"seed": seed, "per_domain": per_domain, "pool_size": pool_size,
                "packages": {k: v[0] for k, v in sources.PACKAGES.items()}, "domains": {}}
    with atomic_dir(out) as tmp:
        (tmp / "pool").mkdir()
        with open(tmp / "questions.jsonl", "w") as qf:
            for domain in domains:
                rng = random.Random(f"{seed}-{domain}")
                eligible, pool_only = domain_prompts(domain, rng, progress)
                rng.shuffle(eligible)
                if domain == "conversation":  # MT-bench is ordered by category: interleave them
                    eligible.sort(key=lambda q: int(q["id"].split("-")[1]) % 10)
                bench, rest = eligible[:per_domain], eligible[per_domain:]
                rng.shuffle(pool_only)
                pool = (rest + pool_only)[:pool_size]
                for q in bench:
                    qf.write(json.dumps({"question_id": q["id"], "category": domain, "turns": q["turns"]}) + "\n")
                with open(tmp / "pool" / f"{domain}.jsonl", "w") as pf:
                    for q in pool:
                        pf.write(json.dumps({"question_id": q["id"], "category": domain, "turns": q["turns"]}) + "\n")
                manifest["domains"][domain] = {"bench": len(bench), "pool": len(pool)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def default_questions(progress: bool = True) -> Path:
    """The built suite's question file, building it on first use."""
    path = home() / "data" / "questions.jsonl"
    if not path.is_file():
        build(progress=progress)
    return path
