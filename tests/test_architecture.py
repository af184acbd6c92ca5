"""The layering, enforced: core (pure torch/numpy) <- lab (the application layer, no Qt) <- ui (Qt), like napari's
model and `_qt` layers. Imports inside functions count too, and the package's modules import without cycles."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maml_lab"
QT = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "shiboken6", "qtpy")
QT_LAYER = ("maml_lab.ui", "maml_lab.app")  # app.py starts the Qt application


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> list[str]:
    """Every module named by an import anywhere in the file (function bodies included), made absolute."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            out += [base] + [f"{base}.{a.name}" for a in node.names]
    return out


def _in(name: str, layer) -> bool:
    layers = (layer,) if isinstance(layer, str) else layer
    return any(name == x or name.startswith(x + ".") for x in layers)


def test_only_the_qt_layer_imports_qt():
    bad = [f"{name}: {imp}" for name, path in MODULES.items() if not _in(name, QT_LAYER)
           for imp in _imports(name, path) if imp.split(".")[0] in QT]
    assert not bad, bad


def test_the_application_layer_never_imports_the_qt_layer_and_core_imports_neither():
    bad = []
    for name, path in MODULES.items():
        for imp in _imports(name, path):
            if _in(name, "maml_lab.lab") and _in(imp, QT_LAYER):
                bad.append(f"{name} imports {imp}")
            if _in(name, "maml_lab.core") and _in(imp, ("maml_lab.lab", *QT_LAYER, "maml_lab.cli")):
                bad.append(f"{name} imports {imp}")
    assert not bad, bad


def test_no_import_cycles_among_the_package_modules():
    edges = defaultdict(set)
    for name, path in MODULES.items():
        for imp in _imports(name, path):
            target = imp
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                edges[name].add(target)
    # Tarjan's strongly connected components
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in list(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_importing_core_and_lab_loads_no_qt():
    code = ("import importlib, sys\n"
            f"names = {sorted(n for n in MODULES if _in(n, ('maml_lab.core', 'maml_lab.lab')))!r}\n"
            "for n in names: importlib.import_module(n)\n"
            "from maml_lab.core.algorithms import ALGORITHMS\n"
            "from maml_lab.core.tasks.registry import TASKS\n"
            "list(ALGORITHMS), list(TASKS)  # the registries load their built-ins (and plug-ins) without Qt\n"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {QT!r}]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
