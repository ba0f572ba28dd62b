"""The shape of the code: no import cycles between clipsam's modules, no class over 250 lines, no function over 80."""

from __future__ import annotations

import ast
from pathlib import Path

import clipsam

ROOT = Path(clipsam.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, name: str) -> set[str]:
    """Modules of clipsam that *path* imports when it is imported (imports inside functions run later, on use)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks never run
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                body += node.body + node.orelse
        elif isinstance(node, ast.Try):
            body += node.body
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("clipsam")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("clipsam"):
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in _top_level_imports(path, name) if m in files and m != name}
            for name, path in files.items()}


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules is how packages work; a cycle through any other edge is not
    edges = {a: {b for b in deps if not (b.startswith(a + ".") and (ROOT.parent / a.replace(".", "/")).is_dir())}
             for a, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert {"clipsam.stages.label", "clipsam.pipelines.requests"} <= graph["clipsam.pipelines.points"]


def test_no_class_over_250_lines_and_no_function_over_80():
    big = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = 250 if isinstance(node, ast.ClassDef) else 80
                size = node.end_lineno - node.lineno + 1
                if size > limit:
                    big.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({size} lines)")
    assert not big, big
