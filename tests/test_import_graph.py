"""The engine's modules import each other without a cycle, counting imports inside functions too
(a cycle hidden by a local import is still a cycle)."""
import ast
from pathlib import Path

NABI = Path(__file__).resolve().parents[1] / "nabi"
ENGINE = ["backend.py", "init.py", "gradcheck.py", "summary.py", "functional", "layers"]


def _module_name(path):
    rel = path.relative_to(NABI.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path, name):
    """nabi modules imported anywhere in the file (package ``__init__`` imports excluded: a module
    of a package always runs its package first, which is not a dependency of its own)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                out.add(f"{mod}.{alias.name}")
            out.add(mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("nabi")}


def test_engine_modules_have_no_import_cycle():
    files = []
    for entry in ENGINE:
        p = NABI / entry
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    names = {_module_name(f): f for f in files}
    graph = {}
    for name, f in names.items():
        if f.name == "__init__.py":
            continue                                      # re-exports, not dependencies
        deps = set()
        for m in _imports(f, name):
            while m and m not in names:                   # ``from .x import y``: y may be a name, not a module
                m = m.rsplit(".", 1)[0] if "." in m else ""
            if m and m != name and names[m].name != "__init__.py":
                deps.add(m)
        graph[name] = deps
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in graph.get(n, ()):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = "done"

    for n in graph:
        if n not in state:
            visit(n)
    assert "nabi.functional.conv" in graph and "nabi.layers.module" in graph     # the walk saw the engine
