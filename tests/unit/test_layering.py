"""The package layering, read from the source: no import loops, no upward imports.

Every module under services/ is parsed with ``ast``; imports under ``if TYPE_CHECKING:`` are
ignored (they never run), imports inside functions count (they run when called). The layers:
models and lm_engine know no service; the controller reaches models only through gRPC; the TTS
service shares the Step1 engines through lm_engine, not through the LLM service; common is shared
by everyone and depends on none of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
SERVICE_PACKAGES = ("vad", "tokenizer", "llm", "tts", "controller", "cli", "lm_engine")

# package → packages it must not import (prefix match on the imported module)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "services.controller": ("services.models", "services.lm_engine"),
    "services.tts": ("services.llm",),
    "services.models": tuple(f"services.{name}" for name in SERVICE_PACKAGES),
    "services.lm_engine": tuple(
        f"services.{name}" for name in SERVICE_PACKAGES if name != "lm_engine"
    ),
    "services.common": ("services.models", "services.lm_engine")
    + tuple(f"services.{name}" for name in SERVICE_PACKAGES),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement below ``node``, skipping ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for orelse in child.orelse:
                yield from _import_nodes(ast.Module(body=[orelse], type_ignores=[]))
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _import_nodes(child)


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules ``path`` imports: ``from a import b`` names module ``a.b`` when one
    exists, else ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            found.add(candidate if candidate in known else base)
    return {module for module in found if module.split(".")[0] == "services"}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in sorted(SERVICES.rglob("*.py"))}
    known = set(paths)
    return {
        name: {m for m in imported_modules(path, name, known) if m in known and m != name}
        for name, path in paths.items()
    }


GRAPH = import_graph()


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_graph_is_read_from_the_source() -> None:
    # guards the parser itself: a graph that missed imports would pass every rule below
    assert "services.lm_engine.engine" in GRAPH["services.llm.server"]
    assert "services.lm_engine.vllm_settings" in GRAPH["services.tts.config"]
    assert "services.common.errors" in GRAPH["services.common.grpc_server"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert find_cycles(GRAPH) == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_imports(layer: str) -> None:
    offending = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module == layer or module.startswith(layer + ".")
        for target in targets
        if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[layer])
    )
    assert offending == []
