"""What users read: every flag's help and default, example lines, P1–P4 defined, renamed options, and
product text that speaks only of nabi and public references."""
import argparse
import re
import subprocess
from pathlib import Path

import pytest

from nabi.cli.main import HelpFormatter, build_parser, main
from nabi.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# Commands whose flags are defined outside nabi/cli/ (nabi/studies/experiment.py and ablation.py
# add_arguments, nabi/selfsup/cli.py and nabi/serve/cli.py add_commands): their help texts are still to be
# completed there.
# The marks are strict: once a command's texts are complete its test passes, fails as XPASS, and the
# command must leave this set.
HELP_PENDING = set()


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def _commands():
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="help texts pending in nabi/studies or nabi/selfsup"))
            if name in HELP_PENDING else name for name in _subparsers()[1]]


def _rendered_help(parser, action):
    return HelpFormatter(parser.prog)._expand_help(action)


@pytest.mark.parametrize("command", _commands())
def test_every_flag_has_a_description_and_shows_its_default(command):
    parser = _subparsers()[1][command]
    missing_help, missing_default = [], []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        text = _rendered_help(parser, action)
        if not text.strip():
            missing_help.append(name)
        elif action.option_strings and not action.required and "default" not in text:
            missing_default.append(name)
        elif not action.option_strings and action.default not in (None, argparse.SUPPRESS) \
                and "default" not in text:
            missing_default.append(name)
    assert missing_help == [] and missing_default == [], f"nabi {command}: no help: {missing_help}; " \
                                                         f"no default shown: {missing_default}"


@pytest.mark.parametrize("command", list(_subparsers()[1]))
def test_every_command_help_ends_with_example_lines(command):
    text = _subparsers()[1][command].format_help()
    tail = text.rstrip().splitlines()
    examples = [line for line in tail[tail.index("examples:") + 1:]] if "examples:" in tail else []
    assert 1 <= len(examples) <= 3 and examples[0].strip().startswith(f"nabi {command}"), text
    assert all(line.strip().startswith("nabi ") for line in examples), text


def test_top_level_help_lists_commands_and_examples():
    parser, commands = _subparsers()
    text = parser.format_help()
    assert "examples:" in text and "nabi demo" in text
    for name in commands:
        assert name in text


def test_train_help_shows_the_training_defaults():
    parser = _subparsers()[1]["train"]
    text = parser.format_help()
    d = TrainConfig()
    for flag, value in (("--epochs", d.epochs), ("--batch-size", d.batch_size), ("--lr", d.lr),
                        ("--optimizer", d.optimizer), ("--seed", d.seed), ("--out", d.out),
                        ("--augment", d.augment), ("--schedule", d.schedule)):
        action = next(a for a in parser._actions if flag in a.option_strings)
        assert f"(default: {value})" in _rendered_help(parser, action), flag
    assert "(default: " in text


@pytest.mark.parametrize("command", ["eval", "experiment"])
def test_p1_to_p4_are_defined_in_the_help(command):
    text = " ".join(_subparsers()[1][command].format_help().split())
    for p in ("P1", "P2", "P3", "P4"):
        assert re.search(rf"\b{p} accuracy on", text), p
    assert "COSE362, Korea University, 2019" in text


def test_old_option_names_still_work_with_a_warning():
    with pytest.warns(FutureWarning, match="'seed2019' is now called 'linear_step'"):
        assert TrainConfig(schedule="seed2019").schedule == "linear_step"
    with pytest.warns(FutureWarning, match="'seed2019' is now called 'pixel256'"):
        assert TrainConfig.from_dict({"normalize": "seed2019"}).normalize == "pixel256"
    with pytest.warns(FutureWarning, match="is now called"):                # accepted, mapped as parsed
        args = build_parser().parse_args(["train", "x", "--normalize", "seed2019", "--schedule", "seed2019"])
    assert (args.normalize, args.schedule) == ("pixel256", "linear_step")
    with pytest.warns(FutureWarning, match="'seed2019' is now called 'alexnet336-2019'"):
        assert build_parser().parse_args(["experiment", "x", "--recipe", "seed2019"]).recipe == "alexnet336-2019"
    for command in ("train", "experiment", "pretrain"):                     # no help text shows the old names
        text = _subparsers()[1][command].format_help()
        assert "seed2019" not in text, command
    train = _subparsers()[1]["train"].format_usage()
    assert "linear_step" in train and "pixel256" in train


def test_a_missing_extra_is_named_with_its_pip_line(monkeypatch, capsys):
    import nabi.files.onnx as onnx_mod

    def no_onnx(*a, **k):
        raise ModuleNotFoundError("No module named 'onnx'", name="onnx")
    monkeypatch.setattr(onnx_mod, "export_onnx", no_onnx)
    assert main(["export", "lenet5", "--onnx", "x.onnx"]) == 1
    assert 'nabi export: error: onnx is not installed; run: pip install "nabi[onnx]"' in capsys.readouterr().err


# -- product text -------------------------------------------------------------------------------------------
# Words from outside the product: they mean nothing to a user. Written in pieces so this file passes itself.
FORBIDDEN = [
    re.compile(r"\bseed[ _-]?0\d\d", re.I),          # internal report numbers
    re.compile(r"\.\./" + "shared"),                 # a path outside the repository
    re.compile("shared/" + "data"),
    re.compile("stee" + "ring", re.I),
    re.compile(r"\bseed" + r" project", re.I),
    re.compile(r"\bthe seed" + "'s", re.I),
    re.compile("SEED" + "2019"),
    re.compile("/" + "work/"),
]
# The old name "seed2019" (recipe, schedule, normalisation) and SeedScale / SeedStepDecay survive only where
# they are accepted as aliases that warn, and in the tests of those aliases.
OLD_NAME = re.compile(r"seed2019|SeedScale|SeedStepDecay")
ALIAS_FILES = {
    "nabi/training/config.py", "nabi/optim.py", "nabi/data/transforms.py", "nabi/data/__init__.py",
    "nabi/data/prepare.py", "nabi/cli/main.py", "nabi/studies/experiment.py", "nabi/studies/ablation.py",
    "tests/test_optim.py", "tests/test_data.py", "tests/test_experiment.py", "tests/test_product.py",
    "README.md", "examples/README.md", "nabi/studies/recipes.py", "nabi/selfsup/cli.py",
}
# Files other branches are still cleaning. After merging them, empty this set: the test then checks every file.
PENDING = set()
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ".json", ".sh", ""}


def _product_files():
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the product-text scan lists files with git")
    return sorted(p for p in out if Path(p).suffix in TEXT_SUFFIXES and (ROOT / p).is_file())


def test_product_text_names_only_nabi_and_public_references():
    hits = []
    for rel in _product_files():
        if rel in PENDING:
            continue
        text = (ROOT / rel).read_text(encoding="utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in FORBIDDEN) or (rel not in ALIAS_FILES and OLD_NAME.search(line)):
                hits.append(f"{rel}:{n}: {line.strip()[:120]}")
        if any(p.search(rel) for p in FORBIDDEN):
            hits.append(f"{rel}: the file name")
    assert hits == [], "\n".join(hits)


def test_pending_files_exist():
    """A renamed or removed file must leave PENDING too (else the list hides nothing and misleads)."""
    assert [p for p in sorted(PENDING) if not (ROOT / p).is_file()] == []
