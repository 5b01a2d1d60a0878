"""nabi vs PyTorch benchmarks: ``python -m benchmarks --help`` (see benchmarks/README.md).

The suites alternate nabi and torch step by step in one process, so an idle library's
worker threads must not busy-wait while the other library runs: with two threads on two
cores, torch's spinning OpenMP threads and OpenBLAS's spinning threads slow the other
side down by up to 20× on a shared machine. Before NumPy or torch is imported, waiting
threads are therefore made to sleep (``OMP_WAIT_POLICY=PASSIVE`` for torch's OpenMP,
``OPENBLAS_THREAD_TIMEOUT=4`` for NumPy's OpenBLAS). Values already in the environment
win: ``OMP_WAIT_POLICY=ACTIVE python -m benchmarks`` restores spinning.

A process that imported torch before this package (``import torch; import benchmarks``) keeps torch's OpenMP
threads spinning whatever is set here (GNU OpenMP reads the variable when it loads): nabi's steps then run up to
about twice as slow. ``TORCH_BEFORE`` records it, and the suites print a note (``common.omp_wait_note``). The same
holds for any program that runs nabi after importing torch: set ``OMP_WAIT_POLICY=PASSIVE`` before torch loads.
"""
import os as _os
import sys as _sys

WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
TORCH_BEFORE = "torch" in _sys.modules and "OMP_WAIT_POLICY" not in _os.environ
for _k, _v in WAIT_ENV.items():
    _os.environ.setdefault(_k, _v)
