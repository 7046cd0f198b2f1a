"""The package's shape, read from the source (nothing imported): imports point one way (no cycles), no
module grows past the line limit without saying why, r1ft's own modules are imported at module level unless
they are heavy, sub-packages re-export nothing, and docs/architecture.md describes the tree as it is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "r1ft"
LINE_LIMIT = 500
# Third-party libraries whose import costs seconds or a GPU runtime: a module that imports one at module
# level (directly or through r1ft's own modules) may be imported inside a function instead.
HEAVY = {
    "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "liger_kernel", "triton",
}  # fmt: skip


def _all_module_names() -> set[str]:
    return {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in PACKAGE.rglob("*.py")
    }


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULE_NAMES = _all_module_names()


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import, those of `if TYPE_CHECKING:` blocks included: an
    import for annotations only still points from one module to another, and a circle through one is one."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                names = [f"{child.module}.{a.name}" for a in child.names]
                submodules = [n for n in names if n in MODULE_NAMES]  # `from pkg import module`
                found.extend((n, top) for n in submodules)
                if len(submodules) < len(names):
                    found.append((child.module, top))
            visit(child, inner)

    visit(ast.parse(path.read_text()), True)
    return found


def internal_graph(top_only: bool = False) -> dict[str, set[str]]:
    """Module -> the r1ft modules it imports (a name imported from a package counts as its module)."""
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        for target, top in imports(path):
            if top_only and not top:
                continue
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                found.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(internal_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_no_module_passes_the_line_limit_without_saying_why():
    long = []
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > LINE_LIMIT and f"longer than {LINE_LIMIT} lines" not in doc:
            long.append(f"{name}: {lines} lines")
    assert long == [], f"split these, or say in the module docstring why it is longer than {LINE_LIMIT} lines"


def heavy_modules() -> set[str]:
    """r1ft modules that import a heavy library at module level, themselves or through r1ft modules."""
    mods = modules()
    direct = {
        name
        for name, path in mods.items()
        if any(top and target.split(".")[0] in HEAVY for target, top in imports(path))
    }
    graph = internal_graph(top_only=True)
    heavy, changed = set(direct), True
    while changed:
        changed = False
        for name, deps in graph.items():
            if name not in heavy and deps & heavy:
                heavy.add(name)
                changed = True
    return heavy


def test_own_modules_are_imported_at_module_level_unless_heavy():
    mods, heavy = modules(), heavy_modules()
    late = []
    for name, path in mods.items():
        for target, top in imports(path):
            if top or not target.startswith("r1ft"):
                continue
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target not in heavy and target != name:
                late.append(f"{name} imports {target} inside a function")
    assert sorted(set(late)) == []


def test_subpackages_re_export_nothing():
    inits = [p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE and p.parent.name != "assets"]
    assert inits, "expected sub-packages"
    assert [str(p.relative_to(REPO)) for p in inits if p.read_text().strip()] == []


def test_architecture_doc_matches_the_tree():
    doc = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(r1ft/[\w/]+\.py|r1ft/\w+/)`", doc))
    packages = {f"r1ft/{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} - {
        "r1ft/assets/"
    }
    top = {f"r1ft/{p.name}" for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    inner = {
        str(p.relative_to(REPO))
        for p in PACKAGE.glob("*/*.py")
        if p.name != "__init__.py" and p.parent.name != "assets"
    }
    missing = sorted((packages | top | inner) - named)
    stale = sorted(n for n in named if not (REPO / n).exists())
    assert missing == [] and stale == [], f"docs/architecture.md: missing {missing}, no longer there {stale}"
