"""The engine's modules import each other without a cycle, counting imports inside functions too
(a cycle hidden by a local import is still a cycle)."""
import ast
from pathlib import Path

NABI = Path(__file__).resolve().parents[1] / "nabi"
ENGINE = ["backend.py", "init.py", "gradcheck.py", "summary.py", "optim.py", "functional", "layers"]


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


# -- the rings ----------------------------------------------------------------------------------------------------
# docs/architecture.md: nabi is built in rings, innermost first. A module imports only from its own ring and the
# rings inside it; the package's front door, nabi/__init__.py (re-exports and __version__), stands outside them.
RINGS = [
    ("engine", ["nabi.backend", "nabi.functional", "nabi.layers", "nabi.optim", "nabi.init", "nabi.gradcheck",
                "nabi.summary", "nabi.extras"]),
    ("files", ["nabi.files"]),
    ("models and data", ["nabi.models", "nabi.data"]),
    ("run folders and reports", ["nabi.runs", "nabi.plots", "nabi.evaluate", "nabi.explain"]),
    ("training", ["nabi.training"]),
    ("re-identification and self-supervision", ["nabi.reid", "nabi.selfsup"]),
    ("studies and the web app", ["nabi.studies", "nabi.serve"]),
    ("command line", ["nabi.cli", "nabi.__main__"]),
]


def ring_of(module):
    """The index in ``RINGS`` of the ring holding ``module`` (a package of a ring holds its sub-modules)."""
    for index, (_, members) in enumerate(RINGS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return index
    return None


def _all_imports(path, name, modules):
    """The nabi modules ``path`` imports, at module level or inside functions, each with its line: ``import``
    and ``from … import`` statements, and ``__import__("…")`` / ``importlib.import_module("…")`` of a
    literal name. A name that is not a module (``from .x import y``) stands for its module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{alias.name}" for alias in node.names] or [mod]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and (
                    (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                    or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            names = [node.args[0].value]
        for m in names:
            if not m.startswith("nabi"):
                continue
            while m and m not in modules:
                m = m.rsplit(".", 1)[0] if "." in m else ""
            if m and m != name:
                found.append((m, node.lineno))
    return found


def _modules():
    return {_module_name(f): f for f in sorted(NABI.rglob("*.py"))}


def test_every_module_sits_in_a_ring():
    outside = [name for name in _modules() if name != "nabi" and ring_of(name) is None]
    assert outside == [], f"add these modules to a ring of RINGS (and to the diagram in docs/architecture.md): {outside}"


def test_no_import_runs_back_up_the_rings():
    """An inner ring never imports an outer one, not even inside a function (docs/architecture.md)."""
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        if name == "nabi":
            continue                                     # the front door re-exports from every ring
        here = ring_of(name)
        for target, line in _all_imports(path, name, modules):
            there = ring_of(target)
            if target != "nabi" and there is not None and there > here:
                wrong.append(f"{path.relative_to(NABI.parent)}:{line} ({RINGS[here][0]}) imports {target} "
                             f"({RINGS[there][0]})")
    assert wrong == [], "imports running back up the rings:\n" + "\n".join(wrong)


def test_the_ring_walk_sees_local_and_dynamic_imports(tmp_path):
    """The walk counts an import inside a function and a literal ``__import__``, so neither can hide an arrow."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ..cli import main\n    return __import__('nabi.serve.app')\n")
    modules = {"nabi.cli": None, "nabi.cli.main": None, "nabi.serve.app": None, "nabi.data.probe": None}
    found = {m for m, _ in _all_imports(source, "nabi.data.probe", modules)}
    assert found == {"nabi.cli.main", "nabi.serve.app"}
    assert ring_of("nabi.data.probe") < ring_of("nabi.cli.main")


def test_the_command_line_starts_without_optional_or_web_modules():
    """Building ``nabi``'s parser (what `nabi --help` and every command do first) imports no optional
    package and neither the web app nor re-identification: those load when their command runs."""
    import subprocess
    import sys
    code = ("import sys; from nabi.cli import build_parser; build_parser(); "
            "print(' '.join(sorted(m for m in sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=NABI.parent).stdout.split())
    assert "nabi.cli.train" in loaded and "nabi.training.config" in loaded
    heavy = {"fastapi", "uvicorn", "matplotlib", "ray", "cv2", "onnx", "onnxruntime", "sklearn", "cupy",
             "nabi.serve.app", "nabi.reid.gallery", "nabi.training.trainer"}
    assert loaded & heavy == set()
