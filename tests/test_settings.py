"""A training setting is declared once (a ``TrainConfig`` field with ``setting(...)``, nabi.training.config), and
every command's flags, help, checks and study fingerprints come from that declaration."""
import argparse
from dataclasses import dataclass

import pytest

from nabi.cli import main
from nabi.cli.main import build_parser
from nabi.training import config as C
from nabi.training.rules import BadArgument, Float

SETTING_COMMANDS = ("train", "pretrain", "self-train", "experiment", "ablate", "sweep")
POSITIONALS = {"train": ["data"], "pretrain": ["photos"], "self-train": ["labelled", "unlabelled"],
               "experiment": ["data"]}


@pytest.fixture
def dummy_setting(monkeypatch):
    """TrainConfig with one more setting, declared as any setting is: the only change a new setting needs."""
    @dataclass
    class WithDummy(C.TrainConfig):
        dummy_rate: float = C.setting(0.25, "a setting added by the test", Float(0.0, 1.0),
                                      commands=(*C.ALL, C.EXPERIMENT), recipe=True)
    monkeypatch.setattr(C, "TrainConfig", WithDummy)
    monkeypatch.setenv("COLUMNS", "2000")                   # help lines unwrapped: flags are not split at "-"
    return WithDummy


def _command_parsers():
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_a_new_setting_is_in_every_commands_help(dummy_setting):
    parsers = _command_parsers()
    for command in ("train", "pretrain", "self-train", "experiment"):
        text = parsers[command].format_help()
        assert "--dummy-rate DUMMY_RATE" in text and "a setting added by the test" in text, command
    assert "a setting added by the test (default: 0.25)" in parsers["train"].format_help()
    assert "(default: the recipe's)" in parsers["experiment"].format_help().split("--dummy-rate")[2]
    for command in ("experiment", "ablate", "sweep"):            # a key of --set, [base] and [search]
        assert "dummy_rate" in parsers[command].format_help(), command


@pytest.mark.parametrize("command", ["train", "pretrain", "self-train", "experiment"])
def test_a_new_settings_bad_value_is_refused_naming_its_flag(dummy_setting, command, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([command, *POSITIONALS[command], "--dummy-rate", "1.5"]) == 1
    err = capsys.readouterr().err
    assert "--dummy-rate must be a finite number in [0, 1), got 1.5" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []                   # refused before anything was read or written


def test_a_new_settings_bad_value_is_refused_in_an_embedding_run_and_a_config_file(dummy_setting, tmp_path,
                                                                                     capsys):
    assert main(["train", str(tmp_path), "--head", "arcface", "--dummy-rate", "-1"]) == 1
    assert "--dummy-rate must be a finite number in [0, 1), got -1" in capsys.readouterr().err
    (tmp_path / "run.toml").write_text("dummy_rate = 2.0\n")
    for head in ("softmax", "arcface"):
        code = main(["train", str(tmp_path), "--head", head, "--config", str(tmp_path / "run.toml"),
                     "--out", str(tmp_path / "run")])
        assert code == 1 and "--dummy-rate (config key dummy_rate) must be a finite number" in \
            capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_new_setting_is_checked_in_the_library_and_the_studies(dummy_setting):
    with pytest.raises(BadArgument, match=r"--dummy-rate \(config key dummy_rate\) must be"):
        C.check(dummy_setting(dummy_rate=1.0))
    C.check(dummy_setting(dummy_rate=0.5))
    from nabi.studies.recipes import resolve_recipe
    assert resolve_recipe("tiny", {"dummy_rate": 0.5})["dummy_rate"] == 0.5      # experiment --set, recipes
    with pytest.raises(ValueError, match="dummy_rate must be a finite number"):
        resolve_recipe("tiny", {"dummy_rate": 3})
    from nabi.studies.ablation import _base_config, _validate
    with pytest.raises(ValueError, match=r"\[base\]: dummy_rate must be a finite number"):
        _validate(_base_config({"model": "cifar_cnn", "dummy_rate": -0.5}), "[base]")


def test_a_new_setting_enters_fingerprints_only_when_it_leaves_its_default(dummy_setting):
    from nabi.studies.recipes import fingerprint_config
    assert "dummy_rate" not in fingerprint_config({"model": "x", "dummy_rate": 0.25})   # old studies resume
    assert fingerprint_config({"model": "x", "dummy_rate": 0.5})["dummy_rate"] == 0.5


def test_every_flag_of_the_training_commands_is_a_declared_setting_or_the_commands_own():
    """No training flag is declared twice: each is made from the declaration, or belongs to one command."""
    own = {"train": {"config", "recipe", "resume", "overwrite", "keep_checkpoints", "head", "embedding_dim",
                     "margin", "scale", "k", "data"},
           "pretrain": {"photos", "method", "temperature", "projection_dim", "ema_momentum", "resume"},
           "self-train": {"labelled", "unlabelled", "rounds", "recipe", "student_model", "student_model_arg",
                          "soft", "threshold", "max_per_class", "augment", "dropout", "stochastic_depth"}}
    parsers = _command_parsers()
    for command, extra in own.items():
        declared = {"model_arg" if s.type is dict else s.name for s in C.settings()
                    if command in s.commands and s.option is not None}
        if command == "self-train":
            declared = (declared - {"augment"}) | {"teacher_augment"}
        dests = {a.dest for a in parsers[command]._actions if a.dest != "help"}
        assert dests == declared | extra, command


def test_the_declaration_is_complete():
    for s in C.settings():
        assert s.help and s.type is not None, s.name
        assert s.fingerprint in (C.ALWAYS, C.NEVER, C.UNLESS_DEFAULT), s.name
        assert s.rule is None or s.rule.problem(s.default) is None or s.default is None, s.name
        assert set(s.commands) <= {C.TRAIN, C.PRETRAIN, C.SELF_TRAIN, C.EXPERIMENT} and C.TRAIN in s.commands \
            or s.option is None, s.name
