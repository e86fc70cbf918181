"""The package's shape: layers import only the layers above them, no import circles, small modules.

Every import is counted, lazy ones inside functions included: a lazy import
hides a dependency from the reader, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nmq"

# Top to bottom: a module may import its own layer and the layers listed before it.
LAYERS = [
    "errors", "shapes", "progress", "files",
    "format", "compress", "kernels", "backends", "runtime", "models", "calibration",
    "integrations",
    "hw.config", "hw.rtl", "hw.estimate", "hw.sim", "hw.board", "hw.impl", "hw",
    "bench", "apps", "cli",
]
TOP_LEVEL_LIMIT = 4
LINE_LIMIT = 450


def module_name(path: Path) -> str:
    parts = ("nmq",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The nmq modules ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "nmq" or t.startswith("nmq."))
    return found - {name}


def layer_of(name: str) -> int | None:
    rest = name.removeprefix("nmq.")
    best = None
    for i, layer in enumerate(LAYERS):
        if rest == layer or rest.startswith(layer + "."):
            if best is None or len(layer) > len(LAYERS[best]):
                best = i
    return best


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) | {"nmq._nmq_cpu", "nmq.kernels.cpu._nmq_cpu"}
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_every_module_belongs_to_a_layer(graph):
    loose = [m for m in graph if m not in ("nmq", "nmq.__main__") and layer_of(m) is None]
    assert not loose, f"modules outside every layer of {LAYERS}: {loose}"


def test_layers_import_only_layers_above(graph):
    # The package root re-exports the public API: it sits at the lowest layer it imports.
    root = max(layer_of(t) for t in graph["nmq"] if layer_of(t) is not None)
    bad = []
    for name, targets in graph.items():
        if name in ("nmq", "nmq.__main__"):
            continue
        mine = layer_of(name)
        for t in targets:
            theirs = root if t == "nmq" else layer_of(t)
            if theirs is not None and theirs > mine:
                bad.append(f"{name} ({LAYERS[mine]}) imports {t} ({LAYERS[theirs]})")
    assert not bad, "imports from a layer to one listed after it:\n" + "\n".join(sorted(bad))


def test_no_import_cycle(graph):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t in graph and t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    # The walkers above on a made-up package: a cycle and an import from format to cli are both seen.
    a = tmp_path / "a.py"
    a.write_text("from .b import x\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from . import a\n")
    known = {"nmq.format.a", "nmq.format.b"}
    assert imports_of("nmq.format.a", a, known) == {"nmq.format.b"}
    assert imports_of("nmq.format.b", b, known) == {"nmq.format.a"}
    assert layer_of("nmq.format.a") < layer_of("nmq.cli.main")
    assert layer_of("nmq.hw.sim.driver") > layer_of("nmq.hw.estimate.cycle_model")


def test_top_level_is_small():
    top = sorted(p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= TOP_LEVEL_LIMIT, f"{len(top)} modules at src/nmq's top level: {top}"


def test_no_module_is_too_long():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > LINE_LIMIT}
    assert not long, f"modules over {LINE_LIMIT} lines: {long}"
