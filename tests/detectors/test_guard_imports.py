"""The Guard's modules import one way (issue 23 items 1-2, for the guard side): no import cycle
through any of them (lazy and TYPE_CHECKING imports included), and no private name imported from
another module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = {
    "detectors.guard", "detectors.guard_commands", "detectors.guard_decoder", "detectors.guard_loop",
    "detectors.guard_output", "detectors.guard_run", "detectors.guard_scoring", "detectors.guard_stream",
    "detectors.guard_types", "detectors.policy", "detectors.policy_engine", "detectors.policy_knobs", "detectors.regenerate",
    "detectors.router", "detectors.audit", "detectors.cli_guard", "circuits.steering",
    "circuits.steered_forward", "circuits.steering_vectors", "circuits.token_avoidance",
    "circuits.generation", "circuits.generation_state", "circuits.generation_lock", "circuits.tl_decoder",
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("circuits", "detectors", "probe"):
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = f
    return out


def _imports(path: Path, name: str, known: set[str]) -> list[tuple[str, list[str]]]:
    """(module imported, names imported from it) for every import anywhere in the file."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            names = [a.name for a in node.names]
            out.append((base, names))
            out += [(f"{base}.{n}", []) for n in names if f"{base}.{n}" in known]  # submodules
    return [(m, n) for m, n in out if m in known]


def test_no_import_cycle_through_the_guard_modules():
    mods = _modules()
    graph = {m: {i for i, _ in _imports(p, m, set(mods)) if i != m and not m.startswith(i + ".")} for m, p in mods.items()}
    # package __init__ re-exports are not cycles of the modules themselves
    graph = {m: {i for i in deps if i not in ("circuits", "detectors", "probe")} for m, deps in graph.items()}
    cycles = []
    for start in sorted(OURS & set(graph)):
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    cycles.append(path + [start])
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_names_imported_across_the_guard_modules():
    mods = _modules()
    bad = []
    for m in sorted(OURS & set(mods)):
        for src, names in _imports(mods[m], m, set(mods)):
            bad += [f"{m}: from {src} import {n}" for n in names if n.startswith("_") and src != m]
    assert not bad, bad


def test_guard_modules_are_small_and_the_guard_is_composed():
    mods = _modules()
    for m in sorted(OURS & set(mods)):
        n = len(mods[m].read_text().splitlines())
        assert n < 400 or "(Over 400 lines:" in mods[m].read_text()[:800], f"{m}: {n} lines and no reason given"
    from detectors.guard import Guard

    assert Guard.__bases__ == (object,)  # no mixins
