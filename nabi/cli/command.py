"""What a ``nabi`` command is: its name, help, examples, flags and the function that runs it.

Each module under ``nabi/cli/`` defines one ``Command`` (or a few related ones); ``nabi.cli.main.COMMANDS``
lists them all, and ``build_parser`` registers them in that order, the one way commands are added.
"""
from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Exit codes: 0 success; 1 an error in the input (its message names the file or argument); 2 a usage
# error (argparse); 3 training diverged (NaN/Inf loss); 130 interrupted (state saved, --resume continues).
EXIT_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 3, 130


@dataclass(frozen=True)
class Command:
    """A ``nabi`` sub-command: ``add_arguments(parser)`` adds its flags, ``run(args)`` runs it and returns the
    exit code. ``description`` (default: ``help`` as a sentence), ``definitions`` (a block kept as written)
    and ``examples`` (``nabi …`` lines) make its ``--help``."""
    name: str
    help: str
    add_arguments: Callable
    run: Callable | None
    description: str | None = None
    examples: tuple = ()
    definitions: str | None = None

    def register(self, subparsers):
        text = textwrap.fill(self.description or self.help[0].upper() + self.help[1:] + ".", 79)
        if self.definitions:
            text += "\n\n" + self.definitions
        p = subparsers.add_parser(self.name, help=self.help, description=text,
                                  epilog=examples(*self.examples) if self.examples else None,
                                  formatter_class=HelpFormatter)
        self.add_arguments(p)
        if self.run is not None:                  # None: a group whose sub-commands run (nabi gallery …)
            p.set_defaults(func=self.run)
        return p


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and example epilogs keep their line breaks; every flag's help ends with its default.

    A default of None, False (an off switch) or [] says nothing and is left out;
    help that already names its default is left as it is.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is argparse.SUPPRESS or default is None or default is False \
                or default == [] or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def examples(*lines):
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_sub_commands(parser, dest, metavar, help, commands):
    """Sub-commands of a command (``nabi gallery build``, ``add`` …): each of ``commands`` registered on
    ``parser``, one of them required."""
    sub = parser.add_subparsers(dest=dest, metavar=metavar, required=True, help=help)
    for command in commands:
        command.register(sub)
    return sub


def writable_folder(path, flag):
    """``path`` as a folder that exists and can be written, or a ValueError naming ``flag``."""
    from ..files import ensure_writable_folder
    path = Path(path)
    try:
        ensure_writable_folder(path)
    except OSError as e:
        raise ValueError(f"{flag} {path} cannot be used: {e.strerror or e} (give a folder that can be created "
                         f"and written)") from None
    return path


def print_json(obj):
    import json
    print(json.dumps(obj, ensure_ascii=False, indent=2))
