"""The ``nabi`` command line: ``build_parser`` registers every command of ``COMMANDS``, ``main`` runs one.

Each command lives in its own module under ``nabi/cli/`` (``train``, ``eval``, ``predict``, ``gallery``,
``identify``, ``pretrain``, ``serve``, …) as a ``Command``: its flags and a call of the library.

Exit codes: 0 success; 1 an error in the input (its message names the file or argument); 2 a usage
error (argparse); 3 training diverged (NaN/Inf loss); 130 interrupted (state saved, ``--resume`` continues).
"""
from __future__ import annotations

import argparse
import sys

from . import (check, demo, eval, explain, export, gallery, identify, predict, pretrain, self_train, serve, studies,
               summary, train, train_descriptor)
from .command import EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED, HelpFormatter, examples

__all__ = ["COMMANDS", "build_parser", "main", "HelpFormatter", "EXIT_ERROR", "EXIT_DIVERGED", "EXIT_INTERRUPTED"]

# Every command, in the order `nabi --help` lists them: the one place a command is registered.
COMMANDS = (train.COMMAND, demo.COMMAND, eval.COMMAND, studies.EXPERIMENT, studies.ABLATE, studies.SWEEP,
            explain.COMMAND, predict.COMMAND, summary.COMMAND, check.COMMAND, export.COMMAND, self_train.COMMAND,
            pretrain.COMMAND, serve.COMMAND, gallery.COMMAND, identify.COMMAND, train_descriptor.COMMAND)


def build_parser():
    from .. import __version__
    parser = argparse.ArgumentParser(
        prog="nabi", formatter_class=HelpFormatter,
        description="Convolutional networks written from scratch: train, evaluate and inspect image classifiers.\n"
                    "P1–P4 below are the four background-class accuracies that `nabi eval --help` defines.",
        epilog=examples("nabi demo                                  # a first run, under a minute on 2 cores",
                        "nabi train photos/ --model resnet18 --epochs 20 --out runs/cats",
                        "nabi COMMAND --help                        # each command's flags"))
    parser.add_argument("--version", action="version", version=f"nabi {__version__}",
                        help="print nabi's version and exit")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for BLAS and nabi's compiled kernels; goes before the command: "
                             "nabi --threads 1 train … (default: all cores)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def _plain_warning(message, category, filename, lineno, line=None):
    """A warning as one line (``nabi: warning: …``), without Python's source-line echo."""
    return f"nabi: warning: {message}\n"


def main(argv=None):
    import warnings
    before, warnings.formatwarning = warnings.formatwarning, _plain_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = before


def _main(argv=None):
    from ..training.trainer import TrainingDiverged, TrainingInterrupted
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .checks import BadArgument, check_args
    try:
        check_args(args)
    except BadArgument as e:
        print(f"nabi {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.threads is not None:
            from ..backend import set_num_threads
            set_num_threads(args.threads)
        return args.func(args)
    except BrokenPipeError:  # `nabi summary vgg16 | head`: the reader left; not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TrainingDiverged as e:
        print(f"nabi {args.command}: training diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        print(f"nabi {args.command}: interrupted. {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, KeyError, TypeError, RuntimeError, ImportError, NotImplementedError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, ImportError):
            from ..extras import missing_module_message
            msg = missing_module_message(e) or msg
        if isinstance(e, OSError) and e.filename:                 # e.g. [Errno 20] Not a directory: '/x/y'
            msg = f"{e.filename}: {e.strerror or msg}"
        print(f"nabi {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:       # a fault of nabi's own: one line for the user, the traceback on request
        import os
        if os.environ.get("NABI_DEBUG"):
            raise
        print(f"nabi {args.command}: unexpected error: {type(e).__name__}: {e} (set NABI_DEBUG=1 to see where; "
              f"please report it)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
