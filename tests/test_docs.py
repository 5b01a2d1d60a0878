"""The documentation: README.md and docs/ build as a MkDocs site with ``--strict``, and every shell command in
them runs on small data, so a command that fails as written fails here.

Each fenced ``bash``/``sh``/``console`` block of README.md and docs/*.md is run command by command in a fresh
temporary folder per page (the page's blocks in order, so a later command may use an earlier one's run
folder). An HTML comment right before a block says how (there is no comment for the default, ``run``):

    <!-- doc-test: short -->            run as written, each run shortened to one epoch (SHORT below)
    <!-- doc-test: help -->             parse only: nabi's own parser and range checks (`python -m` modules:
                                        their argparse parser; other tools: ``--help``), so every flag used
                                        must exist and every value must be allowed
    <!-- doc-test: skip (why) -->       not run, with the reason (a server, a cluster, the test suite itself);
                                        its ``nabi`` commands are still parsed
    <!-- doc-test: file NAME -->        before a non-shell block (TOML): written to NAME in the folder

``pip install`` lines never run; the extras they name must exist in pyproject.toml. The inputs a command names
(``photos``, ``PHOTOS``, ``DATA``, ``KNOWN``, ``photo.jpg``, …) are written by ``FIXTURES`` below: tiny synthetic
photos of individuals (``tests/reid_synth.py``). Pages in ``SLOW_PAGES`` are parsed in the default run and run
in full under ``-m slow``; the README's five-minute recipe runs unshortened under ``-m slow`` too.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SHELL = {"bash", "sh", "console", "shell"}
MODES = {"run", "short", "help", "skip", "file"}
MARK = re.compile(r"^<!--\s*doc-test:\s*(\w+)\s*(.*?)\s*-->$")
# flags appended in `short` mode: argparse keeps the last value, so the command runs as written, one epoch long
SHORT = {"train": ["--epochs", "1"], "demo": ["--epochs", "1"], "pretrain": ["--epochs", "1"],
         "self-train": ["--epochs", "1", "--rounds", "1"]}
# pages whose commands take longer than the default run affords: parsed by default, run under -m slow
SLOW_PAGES = {"reidentification.md", "self-supervised.md", "index.md"}
SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "<", "2>&1", "&"}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    mode: str
    arg: str
    text: str

    def where(self):
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page):
    """The fenced blocks of ``page`` with their doc-test mode; a mark not right before a fence is an error."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, mark, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        m = MARK.match(line.strip())
        if m:
            assert mark is None, f"{page.name}:{i + 1}: two doc-test marks in a row"
            mark = (m.group(1), m.group(2), i + 1)
            assert mark[0] in MODES, f"{page.name}:{i + 1}: unknown doc-test mode {mark[0]!r} (one of {sorted(MODES)})"
        elif line.startswith("```"):
            lang = line[3:].strip()
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            mode, arg = (mark[0], mark[1]) if mark else ("run", "")
            out.append(Block(page, i + 1, lang, mode, arg, "\n".join(lines[i + 1:j])))
            mark, i = None, j
        elif mark and line.strip():
            raise AssertionError(f"{page.name}:{mark[2]}: a doc-test mark must come right before a fenced block")
        i += 1
    assert mark is None, f"{page.name}:{mark[2]}: a doc-test mark at the end of the page"
    return out


def commands(block):
    """The commands of a shell block: continuation lines joined, comments dropped, ``$`` prompts of a console
    block taken (their output lines left out), each split as the shell would."""
    text = block.text.replace("\\\n", " ")
    lines = text.splitlines()
    if block.lang == "console":
        lines = [ln[2:] for ln in lines if ln.startswith("$ ")]
    return [argv for argv in (shlex.split(ln, comments=True) for ln in lines) if argv]


def is_install(argv):
    return argv[:2] == ["pip", "install"] or argv[1:4] == ["-m", "pip", "install"]


def all_blocks():
    return [b for page in PAGES for b in read_blocks(page)]


# -- small data ---------------------------------------------------------------------------------------------------
def _save(array, path):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _individuals(root, individuals, photos, names=None, suffix=".jpg"):
    from reid_synth import photo
    for k, i in enumerate(individuals):
        name = names[k] if names else f"ind{i:02d}"
        for j in photos:
            _save(photo(i, j), root / name / f"IMG_{j:04d}{suffix}")


def _background(folder, photos):
    from reid_synth import background_photo
    for j in photos:
        _save(background_photo(j), folder / f"IMG_{j:04d}.jpg")


def _photos(root):                                   # the README's layout: two animals and a background, 20 each
    _individuals(root, [0, 1], range(20), names=["뾰또", "베찌"])
    _background(root / "background", range(20))


def _data(root):                                     # DATA/train and DATA/test, with a background class
    for split, photos in (("train", range(0, 8)), ("test", range(8, 12))):
        _individuals(root / split, [0, 1, 2], photos, suffix=".png")
        _background(root / split / "background", photos)


def _masks(root):                                    # one mask per DATA/test photo, white = animal
    mask = np.zeros((32, 32), np.uint8)
    mask[6:26, 6:26] = 255
    for photo in sorted((root.parent / "DATA" / "test").rglob("*.*")):
        _save(mask, root / photo.relative_to(root.parent / "DATA" / "test"))


def _mask_png(path):
    mask = np.zeros((32, 32), np.uint8)
    mask[6:26, 6:26] = 255
    _save(mask, path)


def _one(i, j):
    from reid_synth import photo
    return lambda path: _save(photo(i, j), path)


def _unlabelled(root):
    from reid_synth import photo
    for i in range(8):
        for j in range(2):
            _save(photo(40 + i, j), root / f"{i:02d}-{j}.jpg")


FIXTURES = {
    "photos": _photos,
    "PHOTOS": lambda root: _individuals(root, range(8), range(6)),
    "KNOWN": lambda root: _individuals(root, range(8, 12), range(4)),
    "QUERIES": lambda root: _individuals(root, range(8, 12), range(4, 8)),
    "VALIDATION": lambda root: _individuals(root, range(30, 36), range(6)),
    "DATA": _data,
    "MASKS": _masks,
    "unlabelled": _unlabelled,
    "photo.jpg": _one(0, 30),
    "new_photo.jpg": _one(1, 31),
    "new1.jpg": _one(16, 1),
    "new2.jpg": _one(16, 2),
    "photo_mask.png": _mask_png,
}
ORDER = list(FIXTURES)            # MASKS after DATA


def prepare(folder, argv):
    """Write the inputs ``argv`` names (``FIXTURES``) into ``folder`` when they are not there yet."""
    wanted = {a.rstrip("/") for a in argv}
    if "MASKS" in wanted:
        wanted.add("DATA")
    for name in ORDER:
        if name in wanted and not (folder / name).exists():
            FIXTURES[name](folder / name)


def workspace(tmp_path):
    """A fresh folder for a page, with the repository's examples, benchmarks and docs beside it."""
    folder = tmp_path / "work"
    folder.mkdir()
    for name in ("examples", "benchmarks", "docs", "mkdocs.yml"):
        (folder / name).symlink_to(ROOT / name)
    return folder


# -- running ------------------------------------------------------------------------------------------------------
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("NO_MKDOCS_2_WARNING", "1")
    return env


def _subprocess(argv, folder, where, timeout=600):
    done = subprocess.run(argv, cwd=folder, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"{where}: `{shlex.join(argv)}` exited with {done.returncode}\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


# Runs a module's ``main`` with argparse stopped right after a successful parse: every flag must parse.
PARSE_ONLY = """
import argparse, runpy, sys
class Parsed(BaseException): pass
real = argparse.ArgumentParser.parse_args
def parse_args(self, args=None, namespace=None):
    real(self, args, namespace)
    raise Parsed
argparse.ArgumentParser.parse_args = parse_args
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except Parsed:
    sys.exit(0)
sys.exit(f"python -m {module} finished without parsing its arguments")
"""


def parse_nabi(argv, where):
    """``nabi ARGS`` through nabi's own parser and range checks (no file is read: nothing needs to exist)."""
    from nabi.cli.checks import check_args
    from nabi.cli.main import build_parser
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as e:
        raise AssertionError(f"{where}: `{shlex.join(argv)}` does not parse (exit {e.code})") from None
    assert getattr(args, "command", None), f"{where}: `{shlex.join(argv)}` names no command"
    check_args(args)


def check_help(argv, folder, where):
    if argv[0] == "nabi":
        parse_nabi(argv, where)
    elif argv[0] in ("python", "python3") and argv[1] == "-m":
        _subprocess([sys.executable, "-c", PARSE_ONLY] + argv[2:], folder, where)
    else:
        if argv[0] == "mkdocs":
            pytest.importorskip("mkdocs", reason="mkdocs is not installed (the docs extra)")
            argv = [sys.executable, "-m", "mkdocs"] + argv[1:]
        _subprocess(argv + ["--help"], folder, where)


def run_command(argv, folder, where, capsys, monkeypatch, short=False):
    bad = SHELL_OPERATORS.intersection(argv)
    assert not bad, f"{where}: `{shlex.join(argv)}`: write one command a line, without {sorted(bad)}"
    prepare(folder, argv)
    if argv[0] == "nabi":
        from nabi.cli.main import main
        if short and len(argv) > 1:
            argv = argv + SHORT.get(argv[1], [])
        monkeypatch.chdir(folder)
        capsys.readouterr()
        code = main(argv[1:])
        out = capsys.readouterr()
        assert code == 0, f"{where}: `{shlex.join(argv)}` exited with {code}\n{out.out[-3000:]}\n{out.err[-3000:]}"
        return out.out
    if argv[0] in ("python", "python3"):
        return _subprocess([sys.executable] + argv[1:], folder, where)
    if argv[0] == "mkdocs":
        pytest.importorskip("mkdocs", reason="mkdocs is not installed (the docs extra)")
        return _subprocess([sys.executable, "-m", "mkdocs"] + argv[1:], folder, where)
    return _subprocess(argv, folder, where)


def check_page(page, folder, capsys, monkeypatch, parse_only):
    """Every block of ``page`` in order; ``parse_only``: run and short blocks are parsed, not run."""
    for block in read_blocks(page):
        if block.mode == "file":
            (folder / block.arg).write_text(block.text + "\n", encoding="utf-8")
            if not parse_only:
                prepare(folder, re.findall(r'"([^"]*)"', block.text))     # data = "photos" and the like
            continue
        if block.lang not in SHELL:
            continue
        if block.mode == "skip":
            assert block.arg.startswith("(") and block.arg.endswith(")") and len(block.arg) > 2, \
                f"{block.where()}: a skipped block says why: <!-- doc-test: skip (why) -->"
            for argv in commands(block):
                if argv[0] == "nabi":
                    parse_nabi(argv, block.where())        # not run, but its flags must still parse
            continue
        for argv in commands(block):
            if is_install(argv):
                continue                                    # test_install_lines_name_existing_extras
            if block.mode == "help" or parse_only:
                check_help(argv, folder, block.where())
            else:
                run_command(argv, folder, block.where(), capsys, monkeypatch, short=block.mode == "short")


def _page_params(slow):
    params = []
    for page in PAGES:
        name = page.name
        marks = [pytest.mark.slow] if slow else []
        if slow and name not in SLOW_PAGES:
            continue
        params.append(pytest.param(page, id=str(page.relative_to(ROOT)), marks=marks))
    return params


@pytest.mark.parametrize("page", _page_params(slow=False))
def test_every_command_of_the_page_works_as_written(page, tmp_path, capsys, monkeypatch):
    check_page(page, workspace(tmp_path), capsys, monkeypatch, parse_only=page.name in SLOW_PAGES)


@pytest.mark.parametrize("page", _page_params(slow=True))
def test_every_command_of_the_longer_pages_runs(page, tmp_path, capsys, monkeypatch):
    check_page(page, workspace(tmp_path), capsys, monkeypatch, parse_only=False)


@pytest.mark.slow
def test_the_five_minute_recipe_runs_in_full_on_20_photos_per_animal(tmp_path, capsys, monkeypatch):
    """The README's "your own photos" commands, unshortened, on two animals and a background of 20 photos each."""
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    section = text.index("## Your own photos in five minutes")
    block = next(b for b in read_blocks(readme) if b.lang in SHELL and text.index(b.text) > section)
    folder = workspace(tmp_path)
    outputs = [run_command(argv, folder, block.where(), capsys, monkeypatch) for argv in commands(block)]
    assert "test accuracy" in outputs[0] and (folder / "cats.onnx").is_file()


# -- the rules of the pages themselves ----------------------------------------------------------------------------
def test_the_docs_build_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e \".[docs]\"")
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e \".[docs]\"")
    _subprocess([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                 "--site-dir", str(tmp_path / "site")], ROOT, "mkdocs.yml")
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "screenshots" / "identify.png").is_file()


def test_every_page_is_in_the_nav_and_every_image_exists():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert [p for p in pages if f": {p}" not in nav] == []
    for page in PAGES:
        base = page.parent
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            assert (base / target).is_file(), f"{page.name}: image {target} does not exist"
    used = "".join(p.read_text(encoding="utf-8") for p in PAGES)
    for image in sorted((ROOT / "docs").rglob("*.png")):
        assert image.relative_to(ROOT / "docs").as_posix() in used, f"docs/{image.name} is on no page"


def test_the_readme_links_only_to_files_that_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_every_shell_block_has_commands_and_a_known_mode():
    for block in all_blocks():
        if block.lang in SHELL:
            assert block.mode != "file", f"{block.where()}: `file` is for non-shell blocks"
            assert commands(block), f"{block.where()}: an empty shell block"
        elif block.mode not in ("run", "file"):
            raise AssertionError(f"{block.where()}: doc-test {block.mode} on a {block.lang or 'plain'} block")


def _pyproject():
    try:
        import tomllib
    except ImportError:                                   # Python 3.10
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_install_lines_name_existing_extras():
    extras = set(_pyproject()["project"]["optional-dependencies"])
    named = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for group in re.findall(r"(?:nabi|\.)\[([a-z0-9_,\- ]+)\]", text):
            named += [(page.name, e.strip()) for e in group.split(",")]
    assert named, "no install line names an extra"
    assert [(p, e) for p, e in named if e not in extras] == []


def test_the_markers_the_readme_names_are_declared():
    declared = {m.split(":")[0].strip() for m in _pyproject()["tool"]["pytest"]["ini_options"]["markers"]}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert declared == {"slow", "gpu", "shared_data"}
    for marker in declared:
        assert f"`{marker}`" in readme and f"-m {marker}" in readme, f"the README does not say how to run {marker}"


def test_fresh_machine_commands():
    """The two commands for a fresh machine, the same in README.md and docs/install.md: the demo parses as
    written, and the test command is the one CI runs."""
    found = {}
    for page in (ROOT / "README.md", ROOT / "docs" / "install.md"):
        lines = [b.text for b in read_blocks(page) if b.lang in SHELL and b.text.startswith("python3 -m venv")]
        assert len(lines) == 2, page.name
        found[page.name] = lines
    demo, tests = found["README.md"]
    assert found["install.md"] == [demo, tests]
    assert demo.split(" && ")[-1] == "nabi demo"
    parse_nabi(["nabi", "demo"], "README.md")
    assert tests.endswith('pip install -e ".[test]" && python -m pytest -q')
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install --quiet -e ".[test]"' in ci and "\npython -m pytest -q\n" in ci


def test_the_architecture_diagram_names_the_rings_of_the_import_test():
    """docs/architecture.md draws the rings that tests/test_import_graph.py enforces, innermost last."""
    from test_import_graph import RINGS
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    diagram = re.search(r"```\n( command line.*?)```", text, re.S).group(1)
    rings = [set()]
    for line in diagram.splitlines():
        if line.strip().startswith("─"):
            rings.append(set())
            continue
        for path in re.findall(r"nabi/[\w/]*(?:\.py)?", line):
            rings[-1].add(path.rstrip("/").removesuffix(".py").replace("/", "."))
    assert rings == [set(members) for _, members in reversed(RINGS)]


def test_doc_commands_tally():
    """Each shell command is counted once: run, run shortened, parsed (help) or skipped, and none is lost."""
    tally = {"run": 0, "short": 0, "help": 0, "skip": 0, "install": 0}
    for block in all_blocks():
        if block.lang in SHELL:
            for argv in commands(block):
                tally["install" if is_install(argv) else block.mode] += 1
    assert tally["run"] + tally["short"] > tally["skip"] and sum(tally.values()) > 50, tally
