"""No module of the core imports, directly or through others, a module that imports it.

The core: ``pyro_flows.transforms``, ``pyro_flows.infer``, ``flows`` and ``distributions``.
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
