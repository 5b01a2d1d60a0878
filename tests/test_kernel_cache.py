"""The compiled CPU kernels are cached on disk: the first process that needs one compiles it and
says so once on stderr; the next loads it from the cache and says nothing. Where no cache
directory can be written, the kernels are compiled without one instead of failing."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nabi.functional import cpu_kernels as K

pytestmark = pytest.mark.skipif(not K.available(), reason="numba is not installed")

ROOT = Path(__file__).resolve().parents[1]
RUN_TWO_KERNELS = ("import numpy as np; from nabi.functional import cpu_kernels as K; "
                   "x = np.ones(5, np.float32); K.relu_backward(x, K.relu(x)); print('ran')")


def _run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT), NABI_KERNELS="numba")
    return subprocess.run([sys.executable, "-c", RUN_TWO_KERNELS], env=env, capture_output=True, text=True,
                          check=True, timeout=600)


def test_first_run_compiles_and_says_so_once_the_second_loads_silently(tmp_path):
    first = _run(tmp_path)
    assert first.stdout.strip() == "ran"
    assert first.stderr.count(K.COMPILING_MESSAGE) == 1          # two kernels compiled, one message
    assert any(tmp_path.rglob("*.nbi"))                          # numba's cache index was written there
    second = _run(tmp_path)
    assert second.stdout.strip() == "ran"
    assert K.COMPILING_MESSAGE not in second.stderr


def test_no_writable_cache_falls_back_to_compiling(monkeypatch):
    real = K._nb.njit

    def refusing(*args, cache=False, **kwargs):
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real(*args, cache=cache, **kwargs)

    monkeypatch.setattr(K._nb, "njit", refusing)

    def twice(x):
        return 2 * x

    assert K._njit(twice)(np.float32(3)) == 6
