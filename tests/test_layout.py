"""The house's shape: no import circles under src/, and lower layers never import higher ones
(runtime and verify know nothing of drafters; drafters nothing of the engine, the LLM facade or
the edges). Every import counts, those inside functions too."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "specdraft"

# layer -> the packages and modules it must not import
BELOW = {
    "specdraft.runtime": ("drafters", "verify", "engine", "batch", "api", "server", "cli", "train", "bench"),
    "specdraft.verify": ("drafters", "engine", "batch", "api", "server", "cli", "train", "bench"),
    "specdraft.drafters": ("engine", "batch", "api", "server", "cli", "train", "bench"),
    "specdraft.engine": ("batch", "api", "server", "cli", "train", "bench"),
    "specdraft.batch": ("api", "server", "cli", "train", "bench"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The specdraft modules `name` imports (a package's own modules by their names)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {m: imports(m) for m in MODULES}


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circles():
    assert len(GRAPH) > 40 and sum(map(len, GRAPH.values())) > 100  # the graph was read
    assert cycles() == []


def test_a_cycle_would_be_found():
    GRAPH["specdraft.runtime.cache"].add("specdraft.zoo")  # zoo -> runtime.config; a back edge
    GRAPH["specdraft.runtime.config"].add("specdraft.runtime.cache")
    try:
        assert cycles()
    finally:
        GRAPH.update({m: imports(m) for m in ("specdraft.runtime.cache", "specdraft.runtime.config")})


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for name, targets in GRAPH.items():
        for layer, banned in BELOW.items():
            if name == layer or name.startswith(layer + "."):
                wrong += [(name, t) for t in targets
                          if any(t == f"specdraft.{b}" or t.startswith(f"specdraft.{b}.") for b in banned)]
    assert wrong == []


def test_the_cli_is_thin_and_a_long_module_says_why():
    assert len((SRC / "cli" / "__init__.py").read_text().splitlines()) < 150
    assert all(len(p.read_text().splitlines()) < 150 for p in (SRC / "cli").glob("*.py"))
    long = [p for p in SRC.rglob("*.py") if len(p.read_text().splitlines()) > 400]
    unexplained = [str(p.relative_to(SRC)) for p in long
                   if "Long because" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert unexplained == []
