"""Named crash points for testing that a run survives being killed anywhere.

``fault_point(name)`` does nothing unless the environment variable ``NABI_FAULT``
names that point: ``NABI_FAULT=best_saved:2`` kills the process with SIGKILL the
second time the trainer reaches ``best_saved``; ``any:N`` kills at the N-th point
of any name; ``step:3@1`` only in replica 1 of a ``--replicas`` run (the process whose
``NABI_REPLICA_RANK`` is 1). Several rules may be given, separated by commas. A real SIGKILL:
no ``finally`` block, no atexit handler and no buffered write gets to run, as
when the machine loses power or the kernel's out-of-memory killer strikes.
``NABI_FAULT_LOG=FILE`` appends each point's name to FILE as it is reached
(how a test learns how many points a run passes).

The points: ``step`` (after an optimiser step), ``checkpoint_written`` (a
checkpoint's files are complete under their temporary name, not yet renamed),
``checkpoint_swapped`` (an older checkpoint of the same iteration moved aside,
the new one not yet in place), ``checkpoint_renamed`` (in place, ``latest`` not
yet updated), ``checkpoint_saved`` (all done), ``validated``, ``best_saved``,
``metrics_written``, ``epoch_saved`` (the end-of-epoch checkpoint),
``final_weights`` (before ``model.safetensors`` is written).
"""
from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("NABI_FAULT")
    log = os.environ.get("NABI_FAULT_LOG")
    if not spec and not log:
        return
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(name + "\n")
    if not spec:
        return
    _counts[name] = _counts.get(name, 0) + 1
    _counts["any"] = _counts.get("any", 0) + 1
    rank = os.environ.get("NABI_REPLICA_RANK")
    for rule in spec.split(","):
        rule, _, only = rule.strip().partition("@")
        if only and only != rank:
            continue
        point, _, count = rule.partition(":")
        if point in (name, "any") and _counts[point] == int(count or 1):
            os.kill(os.getpid(), signal.SIGKILL)
