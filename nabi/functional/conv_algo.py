"""Which algorithm computes a convolution: chosen per layer shape by measurement, remembered per machine.

    im2col     ``conv.py`` / ``conv_fast.py``: columns + one matrix product. Any geometry; the reference.
    winograd   ``conv_winograd.py``: F(2×2, 3×3), 2.25× fewer multiplications. 3×3 kernels, stride 1.
    winograd4  ``conv_winograd.py``: F(4×4, 3×3), 4× fewer multiplications, a larger float32 error (its module
               docstring states both). 3×3 kernels, stride 1.
    direct     ``conv_direct.py``: shifted runs of the padded input planes (of their phases at strides above 1),
               no columns. At most ``conv_direct.MAX_CHANNELS`` channels in and out, compiled CPU kernels.
    outer      ``conv_outer.py``: outer products of input values and vectors of output channels' weights, no
               columns. Any stride, at most ``conv_outer.MAX_CHANNELS`` input channels (a network's first layer),
               compiled CPU kernels.

The setting has one home, ``NABI_CONV_ALGO`` (read when a convolution runs), or ``set_algorithm`` /
``with algorithm(name):`` in code, which win over the environment:

    auto       (default) compiled CPU arrays (NumPy float32/float64, ``cpu_kernels`` on): a layer of at least
               ``MIN_TUNED_MACS`` multiply-adds is timed once with each algorithm that applies — Winograd where
               its buffers fit ``conv_fast.COL_BUDGET_BYTES`` — (forward + backward in training, without ∂L/∂x
               for a layer that computes none, forward in eval; on random data of its shape, alternated, median of
               ``ROUNDS``) and runs the fastest from then on (a less exact one only where clearly faster:
               ``LESS_EXACT``);
               a choice cached before another algorithm applied to its shape is timed again.
               Smaller layers, other arrays (CuPy, float16) and other geometries: im2col.
    im2col     always im2col.
    winograd   Winograd F(2×2, 3×3) wherever it applies (3×3, stride 1), im2col elsewhere: for tests and
               measurements.
    winograd4  Winograd F(4×4, 3×3) likewise.
    direct     the direct convolution wherever it applies, im2col elsewhere: for tests and measurements.
    outer      the outer-product convolution wherever it applies, im2col elsewhere: likewise.

The choices are kept per machine (CPU model and vector instructions, usable cores, nabi's kernel threads, whether
freed memory is kept, the algorithms' ``REVISION``) and per shape in ``<cache folder>/conv-algorithms.json``: ``$NABI_CACHE_DIR``, else
``$XDG_CACHE_HOME/nabi``, else ``~/.cache/nabi``. The file is rewritten atomically (temporary file, fsync,
rename) after each new measurement; one that cannot be read is reported once on stderr and replaced, one that
cannot be written leaves the choices in memory for this process. Timing a layer takes a few of its steps, once per machine.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ALGORITHMS = ("im2col", "winograd", "winograd4", "direct", "outer")
SETTINGS = ("auto",) + ALGORITHMS
ENV = "NABI_CONV_ALGO"
CACHE_ENV = "NABI_CACHE_DIR"
CACHE_FILE = "conv-algorithms.json"
FORMAT = 1

REVISION = 6
"""Bumped when an algorithm's kernels change enough to turn choices (2: the outer-product convolution, the direct
convolution's 4-vector block, Winograd's batch chunks; 3: Winograd F(4×4, 3×3); 4: Winograd's transforms on tiny
planes 2–4× faster; 5: the strided direct convolution's ∂L/∂x per input phase; 6: ``LESS_EXACT``): part of the machine key, so choices timed with older kernels
are timed again once instead of kept."""

MIN_TUNED_MACS = 20_000_000
"""Layers with fewer multiply-adds (N·F·C·KH·KW·OH·OW) run im2col without being timed: measuring costs more
than any difference could save, and tiny layers are overhead-bound whatever the algorithm."""

ROUNDS = 3
"""Timed rounds per algorithm (after one untimed round each), alternated; the median is compared."""

LESS_EXACT = {"winograd4": 1.1}
"""Algorithms whose float32 results are further from the exact convolution (F(4×4, 3×3): about 11× im2col's error,
``conv_winograd``), with the factor their time is multiplied by when compared: such an algorithm is chosen only
where it is at least 10 % faster than the best of the others, not on a tie. In a training step a larger error shows
mostly where a value next to 0 meets a ReLU and its mask flips: ResNet-18 at 64×64 batch 8 with F(4×4, 3×3) forced
on every 3×3 layer moved a step's gradients by up to 2 % (norm-relative, against float64) where im2col and F(2×2, 3×3)
moved them by 6e-6 — every layer's own results within 4e-6."""

_forced = None
_lock = threading.RLock()
_choices = None            # {machine key: {shape key: entry}} as loaded from / written to the cache file
_warned = set()


def setting() -> str:
    """The algorithm setting in force: ``set_algorithm``'s, else ``NABI_CONV_ALGO``'s, else 'auto'."""
    if _forced is not None:
        return _forced
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in SETTINGS:
        raise ValueError(f"{ENV}={os.environ.get(ENV)!r}: expected one of {', '.join(SETTINGS)}")
    return value


def set_algorithm(name) -> None:
    """Force an algorithm for every convolution of this process (one of ``ALGORITHMS``), or go
    back to 'auto' / the environment's setting with None."""
    global _forced
    if name is not None and name not in SETTINGS:
        raise ValueError(f"set_algorithm: expected one of {', '.join(SETTINGS)} or None, got {name!r}")
    _forced = name


@contextmanager
def algorithm(name):
    """``with algorithm('winograd'): ...`` runs a block with that setting, then restores the previous one."""
    global _forced
    old = _forced
    set_algorithm(name)
    try:
        yield
    finally:
        _forced = old


def choose(candidates, shape_key, macs, compiled, trial):
    """The algorithm for one convolution call.

    ``candidates``: the algorithms that apply to this call (im2col first); ``shape_key``: a string naming the
    shape, dtype and purpose; ``macs``: its multiply-adds; ``compiled``: whether the compiled CPU kernels serve
    its arrays; ``trial(name)``: a function that runs one step of that algorithm on random data of this shape.
    """
    mode = setting()
    if mode != "auto":
        return mode if mode in candidates else candidates[0]
    if len(candidates) == 1 or not compiled or macs < MIN_TUNED_MACS:
        return candidates[0]
    with _lock:
        table = _machine_table()
        entry = table.get(shape_key)
        if (entry is not None and entry.get("algorithm") in candidates
                and set(candidates) <= set(entry.get("ms") or ())):     # a choice made among fewer: timed again
            return entry["algorithm"]
        ms = measure(candidates, trial)
        best = min(candidates, key=lambda a: ms[a] * LESS_EXACT.get(a, 1.0))
        table[shape_key] = {"algorithm": best, "ms": {a: round(ms[a], 3) for a in candidates}}
        _save(shape_key, table[shape_key])
        return best


def measure(candidates, trial):
    """Median milliseconds of a step of each candidate: one untimed round each, then ``ROUNDS`` alternated."""
    runs = {a: trial(a) for a in candidates}
    for a in candidates:
        runs[a]()
    times = {a: [] for a in candidates}
    for _ in range(ROUNDS):
        for a in candidates:
            t0 = time.perf_counter()
            runs[a]()
            times[a].append(1e3 * (time.perf_counter() - t0))
    return {a: float(np.median(t)) for a, t in times.items()}


# ---------------------------------------------------------------------------
# the cache file
# ---------------------------------------------------------------------------
def cache_path() -> Path:
    """``$NABI_CACHE_DIR/conv-algorithms.json``, else under ``$XDG_CACHE_HOME/nabi`` or ``~/.cache/nabi``."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "nabi")
    return Path(folder) / CACHE_FILE


def machine_key() -> str:
    """What the timings depend on besides the shape: the processor (its name, family and model, widest vector
    instructions), the usable cores, the kernel threads, the algorithms' ``REVISION``, and whether the allocator keeps
    freed memory (``backend.keep_freed_memory``, as training sets it): where it does not, every algorithm's buffers
    are faulted in afresh at each call, which weighs on the one with the largest buffers (im2col's columns) and can
    turn the choice."""
    from ..backend import freed_memory_kept, usable_cores
    try:
        import numba
        threads = numba.get_num_threads()
    except Exception:  # pragma: no cover - numba is optional
        threads = 1
    memory = "freed memory kept" if freed_memory_kept() else "freed memory returned"
    return (f"{_cpu_model()} | {platform.machine()} | {usable_cores()} cores | {threads} kernel threads | {memory}"
            f" | algorithms r{REVISION}")


VECTOR_FLAGS = ("avx512f", "avx2", "asimd", "sve")
"""The widest vector instructions decide much of what each algorithm costs (BLAS kernels, the compiled loops), and a
model name alone can hide them: virtual machines report generations apart as "AMD EPYC"."""


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return describe_cpu(f.read())
    except OSError:  # pragma: no cover - not Linux
        return describe_cpu("")


def describe_cpu(cpuinfo: str) -> str:
    """The first processor of a ``/proc/cpuinfo`` text as the machine key names it: model name, family and model
    numbers where given, and the widest of ``VECTOR_FLAGS`` it has."""
    fields, flags = {}, set()
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break                                       # the first processor's block is enough
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features"):
            flags = set(value.split())
        else:
            fields.setdefault(key, value.strip())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    widest = next((f for f in VECTOR_FLAGS if f in flags), None)
    return f"{name}, {widest}" if widest else name


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        print(f"nabi: {message}", file=sys.stderr, flush=True)


def _read(path):
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        _warn_once(f"cannot read the convolution-algorithm cache {path} ({e}); it will be measured again and "
                   f"the file replaced")
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("machines"), dict):
        _warn_once(f"the convolution-algorithm cache {path} is not in format {FORMAT}; it will be replaced")
        return {}
    return data["machines"]


def _machine_table():
    global _choices
    if _choices is None:
        _choices = _read(cache_path())
    return _choices.setdefault(machine_key(), {})


def _save(shape_key, entry):
    """Merge one new entry into the file (re-read first: another process may have added its own)."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        machines = _read(path)
        machines.setdefault(machine_key(), {})[shape_key] = entry
        _write_atomic(path, json.dumps({"format": FORMAT, "machines": machines}, indent=1, sort_keys=True))
    except OSError as e:
        _warn_once(f"cannot write the convolution-algorithm cache {path} ({e}); the choices are kept for this "
                   f"process only")


def _write_atomic(path, text):
    """Temporary file in the same folder, flushed and fsync'd, then renamed over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def forget() -> None:
    """Drop the choices held in memory (the next call reads the cache file again)."""
    global _choices
    with _lock:
        _choices = None
