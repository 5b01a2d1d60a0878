"""``nabi check``: every file of a run folder read back and checked against its recorded SHA-256 and size."""
from __future__ import annotations

from .command import EXIT_ERROR, Command


def run(args):
    """Read back every file of a run folder (weights, checkpoints, sidecars, records); exit 1 if any is damaged."""
    from ..runs import check_run_folder
    results = check_run_folder(args.run)
    bad = [(p, why) for p, why in results if why]
    for path, why in results:
        rel = path.relative_to(args.run) if path.is_relative_to(args.run) else path
        print(f"{'OK ' if why is None else 'BAD'}  {rel}" + (f": {why}" if why else ""))
    print(f"{len(results)} checked, {len(bad)} damaged" + (": restore them from a backup, or train again "
                                                           "(a damaged checkpoint only: --resume uses the "
                                                           "previous one)" if bad else ""))
    return EXIT_ERROR if bad else 0


def add_arguments(p):
    p.add_argument("run", help="the run folder to verify")


COMMAND = Command(
    "check", "verify every file of a run folder: weights, checkpoints, sidecars", add_arguments, run,
    description="Read back every weight file, checkpoint, sidecar and record of a run folder and check each "
                "against the SHA-256 and size its sidecar recorded: OK or BAD per file, exit status 1 if any is "
                "damaged.", examples=("nabi check runs/cats",))
