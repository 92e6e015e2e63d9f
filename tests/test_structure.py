"""The shape of the code, read from its imports (module level and inside functions; ``TYPE_CHECKING`` blocks
do not count): no import cycle among the project's modules, Ray and MLflow each behind one adapter, no
module importing another module's private names, and the stages package read like the flow."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fnatune", "search_spaces")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str, is_package: bool, type_only: bool = False) -> list[tuple[str, list[str]]]:
    """``(imported module, imported names)`` for every import statement outside TYPE_CHECKING blocks (and inside
    them too with ``type_only``)."""
    tree = ast.parse(path.read_text())
    skip = set() if type_only else {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
                                    for child in node.body for n in ast.walk(child)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [a.name for a in node.names]))
    return out


def _graph(type_only: bool = False) -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for base, names in _imports(path, mod, path.name == "__init__.py", type_only):
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in mods] or ([base] if base in mods else [])
            for t in targets:
                if t != mod and not t.startswith(mod + "."):  # a package importing its own submodules is fine
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_no_import_cycles_counting_type_only_imports() -> None:
    """A type-only import is still a dependency a reader follows (issue 24 item 7): block families take the writer's
    type from fnatune.tensor_rules (below them), task backends their config's from fnatune.config.pipeline, and
    short-form arch files are read by fnatune.space.load_arch, so fnatune.arch never reaches up to the catalog."""
    assert _cycles(_graph(type_only=True)) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_ray_and_mlflow_each_live_behind_one_module() -> None:
    mods = _modules()
    users: dict[str, set[str]] = {"ray": set(), "mlflow": set()}
    for mod, path in mods.items():
        for base, _ in _imports(path, mod, path.name == "__init__.py"):
            top = base.split(".")[0]
            if top in users:
                users[top].add(mod)
    assert users == {"ray": {"fnatune.tune"}, "mlflow": {"fnatune.tracking"}}


def test_stages_and_their_framework_never_reach_the_orchestrator() -> None:
    """Stages get their launcher and reporter through the context; only the orchestration imports Ray's adapter."""
    graph = _graph()
    reach = {m for m in graph if m.startswith(("fnatune.stages", "fnatune.framework", "fnatune.pipeline"))}
    seen, todo = set(), list(reach)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
    assert not seen & {"fnatune.tune", "fnatune.experiment", "fnatune.cli"}


def test_no_module_imports_another_modules_private_names() -> None:
    mods = _modules()
    bad = []
    for mod, path in mods.items():
        for base, names in _imports(path, mod, path.name == "__init__.py"):
            if not base.startswith(PACKAGES):
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{base}.{n}" not in mods:
                    bad.append(f"{mod} imports {base}.{n}")
            private = [p for p in base.split(".") if p.startswith("_") and not p.startswith("__")]
            owner = base.rsplit(".", 1)[0]
            if private and not (mod == owner or mod.startswith(owner + ".")):
                bad.append(f"{mod} imports the private module {base}")
    assert bad == []


def test_the_stages_package_reads_like_the_flow() -> None:
    from fnatune.config import validate
    from fnatune.stages import stages_for

    files = {p.stem for p in (ROOT / "fnatune" / "stages").glob("*.py")} - {"__init__"}
    assert files == {"data", "seed", "remap", "search", "finetune", "evaluate", "export"}
    cfg = validate({"name": "flow", "task": "seg"})
    modules = [fn.__module__.rsplit(".", 1)[-1] for _, fn in stages_for(cfg)]
    assert modules == ["data", "seed", "remap", "search", "remap", "finetune", "evaluate", "export"]
