"""nabi vs PyTorch benchmarks: ``python -m benchmarks --help`` (see benchmarks/README.md).

The suites alternate nabi and torch step by step in one process, so an idle library's
worker threads must not busy-wait while the other library runs: with two threads on two
cores, torch's spinning OpenMP threads and OpenBLAS's spinning threads slow the other
side down by up to 20× on a shared machine. Before NumPy or torch is imported, waiting
threads are therefore made to sleep (``OMP_WAIT_POLICY=PASSIVE`` for torch's OpenMP,
``OPENBLAS_THREAD_TIMEOUT=4`` for NumPy's OpenBLAS). Values already in the environment
win: ``OMP_WAIT_POLICY=ACTIVE python -m benchmarks`` restores spinning.
"""
import os as _os

WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
for _k, _v in WAIT_ENV.items():
    _os.environ.setdefault(_k, _v)
