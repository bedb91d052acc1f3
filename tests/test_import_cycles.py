"""No module of the core imports, directly or through others, a module that imports it.

The core: ``pyro_flows.transforms``, ``pyro_flows.infer``, ``flows`` and ``distributions``;
and the scaling layers: ``data``, ``training``, ``density``, ``checkpoint``, ``distributed``.
Imports inside functions count too: a lazy import is how a circle hides.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pyro_flows

ROOT = Path(pyro_flows.__file__).parent
CORE = (
    "pyro_flows.transforms.",
    "pyro_flows.infer.",
    "pyro_flows.flows",
    "pyro_flows.distributions",
)
#: The scaling layers, bottom up: data -> checkpoint/distributed -> training -> density.
SCALING = (
    "pyro_flows.data",
    "pyro_flows.checkpoint",
    "pyro_flows.distributed",
    "pyro_flows.training",
    "pyro_flows._density_memmap",
    "pyro_flows.density",
)


def module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path, modules):
    """The modules of pyro_flows that the file imports anywhere in its body."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, node.level - 1 levels up
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != name}
    return found


def import_graph():
    """Module -> the modules it imports; packages (``__init__``) are left out of the circles."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = {m for m, p in files.items() if p.name != "__init__.py"}
    return {m: imports_of(files[m], files) & modules for m in modules}


def reachable(graph, start):
    seen, stack = set(), [start]
    while stack:
        for nxt in graph[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def test_no_import_circles():
    graph = import_graph()
    assert "pyro_flows.infer.compare" in graph["pyro_flows.infer.guides"]  # the graph sees it
    circles = sorted(m for m in graph if m.startswith(CORE) and m in reachable(graph, m))
    assert not circles, f"modules on an import circle: {circles}"


def test_guides_and_compare_import_alone():
    for module in ("pyro_flows.infer.guides", "pyro_flows.infer.compare"):
        code = f"import {module}"
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_scaling_layers_are_on_no_circle():
    graph = import_graph()
    assert "pyro_flows.data" in graph["pyro_flows.training"]  # the graph sees it
    circles = [m for m in SCALING if m in reachable(graph, m)]
    assert not circles, f"modules on an import circle: {circles}"


def test_data_depends_on_no_estimator():
    """The data layer reads rows; it imports no trainer, estimator, or anything above them."""
    graph = import_graph()
    allowed = {"pyro_flows._validation", "pyro_flows.transforms.standardization"}
    direct = graph["pyro_flows.data"]
    assert direct <= allowed, f"pyro_flows.data imports {sorted(direct - allowed)}"
    above = {"pyro_flows.training", "pyro_flows.density", "pyro_flows.distributed"}
    assert not reachable(graph, "pyro_flows.data") & above


def test_scaling_layers_import_alone():
    """Each module imported first, in a fresh package (torch and pyro stay loaded: faster)."""
    code = (
        "import importlib, sys, torch, pyro\n"
        f"for module in {list(SCALING)!r}:\n"
        "    for name in [n for n in sys.modules if n.startswith('pyro_flows')]:\n"
        "        del sys.modules[name]\n"
        "    importlib.import_module(module)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
