"""The import graph of mesu_snn: no cycle, and no edge pointing up the documented layers
(README, "Architecture"). Every import counts, also those inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mesu_snn"

#: layer of each module or subpackage (the README's table); a module imports only its own
#: layer or lower ones. mesu_snn/__init__.py is the facade over all of them.
LAYERS = {
    "errors": 0, "_version": 0, "bounds": 0, "filecheck": 0,
    "functional": 1,
    "kernels": 2,
    "synapses": 3, "neurons": 3, "models": 3, "losses": 3, "rules": 3, "multistream": 3,
    "datasets": 4, "encoders": 4, "streams": 4,
    "seeding": 5, "metrics": 5, "evaluation": 5, "callbacks": 5, "trainer": 5, "config": 5, "build": 5, "observe": 5,
    "distributed": 5,
    "runs": 6,
    "export": 7,
    "commands": 8, "cli": 8, "__main__": 8,
}


def _module_name(f: Path) -> str:
    parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    mods = {_module_name(f): f for f in PKG.rglob("*.py")}
    graph = {}
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            out |= {t for t in targets if t.split(".")[0] == "mesu_snn" and t != name}
        graph[name] = out
    return graph


def layer(mod: str) -> int | None:
    parts = mod.split(".")
    return None if len(parts) == 1 else LAYERS.get(parts[1])


def test_every_module_has_a_layer():
    missing = sorted(m for m in import_graph() if m != "mesu_snn" and layer(m) is None)
    assert not missing, f"modules missing from LAYERS (and from the README's architecture table): {missing}"


def test_no_upward_import():
    up = [f"{a} (layer {layer(a)}) -> {b} (layer {layer(b)})" for a, outs in import_graph().items()
          if a != "mesu_snn" for b in outs if b == "mesu_snn" or layer(b) > layer(a)]
    assert not up, "imports that point up the layers:\n" + "\n".join(sorted(up))


def test_no_import_cycle():
    g = {a: {b for b in outs if b in import_graph_cache} for a, outs in import_graph_cache.items() if a != "mesu_snn"}
    # a package's __init__ re-exporting its own modules is not a cycle of concepts: drop
    # package -> own-submodule edges before looking for cycles
    for a in g:
        g[a] = {b for b in g[a] if not b.startswith(a + ".")}
    color, stack, cycles = {}, [], []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in g.get(n, ()):
            if color.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in color:
                visit(m)
        stack.pop()
        color[n] = 2
    for n in sorted(g):
        if n not in color:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


import_graph_cache = import_graph()
