"""Every flag of every command is checked against one table (``nabi.cli.checks``) before anything runs."""
import argparse
import json
import math

import pytest

from nabi.cli import main
from nabi.cli.checks import CONFIG_ONLY, GLOBAL_RULES, RULES, Float, Int, ModelName
from nabi.cli.main import build_parser

# Positional arguments that let each command parse (the checks run before any of them is opened).
POSITIONALS = {"train": ["data"], "demo": [], "eval": ["run", "data"], "predict": ["run", "x.png"],
               "summary": ["lenet5"], "export": ["lenet5", "--onnx", "m.onnx"], "explain": ["run", "x.png"],
               "experiment": ["data"], "ablate": ["ablation.toml"], "sweep": ["sweep.toml"], "check": ["run"],
               "pretrain": ["photos"], "serve": ["run"], "self-train": ["labelled", "unlabelled"],
               "identify": ["gallery", "x.png"], "train-descriptor": ["photos", "--out", "run"]}


def bad_values(rule):
    """Values just outside the rule, and non-finite ones for numbers."""
    if isinstance(rule, Int):
        out = [rule.low - 1]
        if rule.high is not None:
            out.append(rule.high + 1)
        return out
    if isinstance(rule, Float):
        out = [math.nan, math.inf, rule.low if rule.low_open else rule.low - 0.5]
        if rule.high is not None:
            out.append(rule.high if rule.high_open else rule.high + 0.5)
        return out
    if isinstance(rule, ModelName):
        return ["alexnett"]
    raise AssertionError(rule)


def subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


CASES = [(command, dest, value) for command, rules in RULES.items() for dest, rule in rules.items()
         if dest not in CONFIG_ONLY for value in bad_values(rule)]


@pytest.mark.parametrize("command,dest,value", CASES)
def test_every_flag_out_of_range_is_refused_naming_it(command, dest, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    option = "--" + dest.replace("_", "-")
    positionals = POSITIONALS[command]
    if dest == "model" and command == "summary":
        argv = [command, str(value)]
    else:
        argv = [command, *positionals, option, str(value)]
    code = main(argv)
    err = capsys.readouterr().err
    label = option if not (dest == "model" and command == "summary") else "--model"
    assert code == 1, (argv, err)
    assert label in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []                 # nothing created


@pytest.mark.parametrize("value", ["0", "-3"])
def test_global_threads_flag(value, capsys):
    assert main(["--threads", value, "summary", "lenet5"]) == 1
    assert "--threads" in capsys.readouterr().err
    assert "threads" in GLOBAL_RULES


def test_every_numeric_flag_has_a_rule():
    """The table covers each int/float flag of each command, so a new flag cannot go unchecked."""
    _, commands = subparsers()
    missing = []
    for command, p in commands.items():
        for action in p._actions:
            if action.type in (int, float) and action.dest not in RULES.get(command, {}):
                missing.append(f"{command} --{action.dest}")
    assert missing == []


def test_every_choice_flag_refuses_other_values(capsys):
    _, commands = subparsers()
    seen = 0
    for command, p in commands.items():
        for action in p._actions:
            if action.choices and action.option_strings:
                with pytest.raises(SystemExit) as e:
                    main([command, *POSITIONALS[command], action.option_strings[0], "bogus-choice"])
                err = capsys.readouterr().err
                assert e.value.code == 2 and action.option_strings[0] in err and "invalid choice" in err
                seen += 1
    assert seen >= 10


@pytest.mark.parametrize("key,value,needle", [
    ("epochs", 0, "--epochs (config key epochs) must be at least 1, got 0"),
    ("lr", "nan", "--lr"), ("gamma", 0.0, "config key gamma"), ("channels", 7, "config key channels"),
    ("batch_size", "'four'", "must be a whole number"), ("step_size", 0, "config key step_size"),
])
def test_config_file_values_are_checked_too(key, value, needle, tmp_path, capsys):
    value = "nan" if value == "nan" else value
    (tmp_path / "run.toml").write_text(f"{key} = {value}\n")
    code = main(["train", str(tmp_path), "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and needle in err, err
    assert not (tmp_path / "run").exists()


def test_cross_field_rules(tmp_path, capsys):
    code = main(["train", str(tmp_path), "--val-ratio", "0.5", "--test-ratio", "0.5", "--out", str(tmp_path / "r")])
    assert code == 1 and "--val-ratio + --test-ratio must be below 1" in capsys.readouterr().err
    code = main(["train", str(tmp_path), "--warmup", "10", "--out", str(tmp_path / "r")])
    assert code == 1 and "--schedule warmup_cosine" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
