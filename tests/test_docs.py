"""The README's commands run as written: every `specdraft` line parses with the CLI's own parser,
every `make` target and `python` script exists, every Python block compiles, every drafter spec
in it is one the drafter registry knows; and the user docs carry no session numbers."""

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from specdraft.cli import build_parser
from specdraft.drafters import check_spec

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "GUIDE.md"]


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


def commands(path: Path) -> list[list[str]]:
    out = []
    for block in blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            while set(argv) & {"<", ">"}:  # a redirection and its file are the shell's
                i = next(i for i, a in enumerate(argv) if a in ("<", ">"))
                del argv[i:i + 2]
            if argv:
                out.append(argv)
    return out


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_shell_command_in_the_docs_is_one_that_exists(doc):
    parser = build_parser()
    seen = 0
    for argv in commands(doc):
        if argv[0] == "specdraft":
            try:
                a = parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{doc.name}: `{shlex.join(argv)}` does not parse")
            drafter = getattr(a, "drafter", None)
            if drafter:
                check_spec(drafter)
            for m in (getattr(a, "methods", None) or "").split(","):
                if m and not m.startswith(("hf-", "llamacpp")):
                    check_spec(m)
        elif argv[0] == "make":
            assert set(argv[1:]) <= make_targets(), f"{doc.name}: `{shlex.join(argv)}`: no such target"
        elif argv[0] in ("python", "python3"):
            assert (ROOT / argv[1]).is_file(), f"{doc.name}: `{shlex.join(argv)}`: no such script"
        else:
            pytest.fail(f"{doc.name}: `{shlex.join(argv)}`: a command this test does not know")
        seen += 1
    assert seen >= 5


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_python_block_in_the_docs_compiles(doc):
    found = blocks(doc, "python")
    assert found
    for code in found:
        ast.parse(code)


def test_the_benchmark_scripts_in_the_readme_take_its_arguments():
    for argv in commands(ROOT / "README.md"):
        if argv[0] in ("python", "python3"):
            r = subprocess.run([sys.executable, argv[1], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            for flag in (a for a in argv[2:] if a.startswith("--")):
                assert flag in r.stdout, f"{argv[1]} has no {flag}"


def test_the_readme_is_short_and_docs_code_and_artifacts_cite_no_sessions():
    """Git is the record of who measured what when; the current docs, the code and the shipped
    artifacts name the measurement (docs/BENCHMARKS.md, or its archive for superseded ones)."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    files = DOCS + [ROOT / "docs" / "BENCHMARKS.md", ROOT / "Makefile"]
    files += sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "src").rglob("*.json"))
    files += sorted((ROOT / "benchmarks").glob("*.py"))
    cited = [str(f.relative_to(ROOT)) for f in files if re.search(r"\b[Ss]essions? \d", f.read_text())]
    assert cited == []


def test_the_sections_the_docs_and_code_cite_exist():
    headings = [line for line in (ROOT / "docs" / "BENCHMARKS.md").read_text().splitlines() if line.startswith("#")]
    files = DOCS + sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "src").rglob("*.json")) + [ROOT / "Makefile"]
    cited = {(f.name, name) for f in files
             for name in re.findall(r'docs/BENCHMARKS\.md,? \\?"([^"\\]+)\\?"', f.read_text())}
    assert cited
    missing = [c for c in cited if not any(" ".join(c[1].split()).lower() in h.lower() for h in headings)]
    assert missing == []
