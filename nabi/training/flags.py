"""The command-line flags of the training settings, made from their declaration (``nabi.training.config``).

``add_setting_flags(parser, command)`` gives an argparse parser one flag per setting declared for
``command`` (its help text, default, choices and type from the declaration); ``given_settings(args,
command)`` reads the flags given back as settings, ``--model-arg KEY=VALUE`` as ``model_args``.
``setting_keys_help`` lists the keys a TOML table or ``--set`` takes, for the studies' help.
"""
from __future__ import annotations

import json

from . import config as C


def _shown(value) -> str:
    return "none" if value is None else str(value)


def add_setting_flags(parser, command, *, defaults=None, layered=False, note="", shown=None, rename=None,
                      choices=None, prefix=None, suffix=None, group=None):
    """Add a flag to ``parser`` (or ``group``) for each setting ``command`` takes, in declaration order.

    ``defaults``: the command's own defaults where they differ from ``TrainConfig``'s. ``layered`` (True,
    or the names it applies to): the flags default to None, because something after the flags fills what
    is not given (a ``--config`` TOML file, a recipe, the command); help still names the default,
    followed by ``note``. ``shown``: one text for every default (``"the recipe's"``). ``rename``:
    ``{setting: flag name}`` where the command calls a setting otherwise (``augment`` →
    ``teacher_augment``). ``choices``: ``{setting: values}`` where a command allows fewer. ``prefix``:
    ``{setting: text}`` put before the declared help (whose augmentation, for instance), ``suffix`` after
    it (what the setting means for this command). Returns the settings added.
    """
    defaults, rename, choices = dict(defaults or {}), dict(rename or {}), dict(choices or {})
    prefix, suffix = dict(prefix or {}), dict(suffix or {})
    target = group or parser
    added = []
    for s in C.settings():
        if command not in s.commands or s.option is None:
            continue
        value = defaults.get(s.name, s.default)
        option = C.flag(rename[s.name]) if s.name in rename else s.option
        dest = flag_dest(s, rename)
        late = layered is True or (layered is not False and s.name in layered)
        text = f"{prefix[s.name]}: {s.help}" if s.name in prefix else s.help
        if s.name in suffix:
            text = f"{text}; {suffix[s.name]}"
        if "default: " not in text:                   # help that names its own default keeps it
            said = shown or ("off" if s.type is bool and not value else
                             s.shown if s.shown is not None and s.name not in defaults else _shown(value))
            text = f"{text} (default: {said}{note if late else ''})"
        kwargs = {"dest": dest, "help": text}
        if s.metavar:
            kwargs["metavar"] = s.metavar
        if s.type is bool:
            kwargs.update(action="store_true" if not s.default else "store_false",
                          default=None if late else value)
        elif s.type in (dict, list):
            kwargs.update(action="append", default=None if late or s.type is dict else list(value))
        else:
            kwargs["default"] = None if late else value
            if isinstance(s.rule, C.OneOf):
                kwargs["choices"] = list(choices.get(s.name, s.rule.values))
                if s.name in C.RENAMED:
                    kwargs["type"] = C.renamed_value(s.name)
            elif s.type in (int, float):
                kwargs["type"] = s.type
        target.add_argument(option, **kwargs)
        added.append(s)
    return added


def flag_dest(s, rename=None) -> str:
    """The argparse ``dest`` of setting ``s``'s flag."""
    return (rename or {}).get(s.name, "model_arg" if s.type is dict else s.name)


def given_settings(args, command, rename=None, model_args_flag="--model-arg") -> dict:
    """The settings whose flags were given (not None) in the parsed ``args`` of ``command``;
    ``--model-arg KEY=VALUE`` items become the ``model_args`` dict."""
    out = {}
    for s in C.settings():
        if command not in s.commands or s.option is None:
            continue
        value = getattr(args, flag_dest(s, rename), None)
        if value is None:
            continue
        out[s.name] = parse_model_args(value, model_args_flag) if s.type is dict else value
    return out


def parse_model_args(items, flag="--model-arg") -> dict:
    """``["KEY=VALUE", ...]`` as a dict; each VALUE read as JSON when it is JSON (numbers, true, lists),
    else as a string. ``ValueError`` naming ``flag`` for an item without ``=``."""
    model_args = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} must look like KEY=VALUE, got {item!r}")
        try:
            model_args[key] = json.loads(value)
        except json.JSONDecodeError:
            model_args[key] = value                  # a bare word: a string
    return model_args


def flag_rules(command) -> dict:
    """``{dest: rule}`` of the numbers and model names among ``command``'s setting flags: what a flag given
    on the command line is checked against before anything runs (a flag with choices is argparse's)."""
    from .rules import Float, Int, ModelName
    return {flag_dest(s): s.rule for s in C.settings()
            if command in s.commands and s.option is not None and isinstance(s.rule, (Int, Float, ModelName))}


def setting_keys_help(names=None, leave_out=()) -> str:
    """The setting keys ``names`` (default: every one) less ``leave_out``, comma-separated, for a help text."""
    names = [s.name for s in C.settings()] if names is None else list(names)
    return ", ".join(n for n in names if n not in leave_out)

