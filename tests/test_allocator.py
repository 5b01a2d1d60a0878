"""``backend.keep_freed_memory``: glibc's malloc keeps the memory a training step frees for the next step (trim
threshold, top pad and no block mapped on its own, set by ``mallopt``), unless the user asked otherwise. Each case
runs in a fresh process: the setting is process-wide and its first answer is kept."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                           reason="glibc's mallopt only")


def _env(**env):
    """This environment without the allocator's variables (nabi's and glibc's), plus ``env``, nabi importable."""
    e = {k: v for k, v in os.environ.items() if k != "NABI_MALLOC" and not k.startswith("MALLOC_")
         and k != "GLIBC_TUNABLES"}
    e.update(env, PYTHONPATH=str(ROOT))
    return e


def _kept(**env):
    e = _env(**env)
    code = ("from nabi import backend; a = backend.keep_freed_memory(); b = backend.keep_freed_memory(); "
            "print(a, b)")
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@glibc
def test_set_once_on_glibc_and_the_same_answer_after():
    assert _kept() == ["True", "True"]


@glibc
@pytest.mark.parametrize("env", [dict(NABI_MALLOC="system"), dict(MALLOC_TRIM_THRESHOLD_="1000000"),
                                 dict(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000")])
def test_left_alone_when_the_user_chose(env):
    assert _kept(**env) == ["False", "False"]


@glibc
def test_training_sets_it(tmp_path):
    """A run through the trainer leaves the allocator set in its process."""
    code = ("import numpy as np; from nabi import backend; from nabi.training.config import TrainConfig; "
            "from nabi.training.build import run_training; "
            f"run_training(TrainConfig(data='embedded:mnist5k', model='lenet5', iterations=1, batch_size=8, "
            f"out={str(tmp_path / 'run')!r}, progress=False), log=lambda *a: None); "
            "print(backend.freed_memory_kept())")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "True"


def _refaults(**env):
    """Minor page faults of writing a 64 MB array a first and a second time, freed in between, in a fresh process."""
    e = _env(**env)
    code = ("import resource, numpy as np; from nabi import backend; backend.keep_freed_memory()\n"
            "def faults():\n"
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    a = np.empty(16 << 20, np.float32); a.fill(1.0); del a\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
            "print(faults(), faults())")
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [int(v) for v in out.stdout.split()]


@glibc
def test_a_large_array_freed_is_not_faulted_in_again():
    """Blocks above malloc's mapping threshold (at most 32 MB) get a mapping of their own, unmapped when freed;
    kept memory serves them from the heap too, so the second array finds its pages resident. The control, the
    system's setting, shows the test can fail: there the second array is faulted in like the first."""
    first, second = _refaults()
    assert first > 0 and second <= max(4, first // 8), (first, second)
    first, second = _refaults(NABI_MALLOC="system")
    assert second >= first // 2 > 0, (first, second)


@glibc
def test_convolution_choices_are_kept_apart_by_the_allocator_setting():
    """The per-shape algorithm timings depend on whether buffers are faulted in afresh at each call, so choices
    made with freed memory kept are stored under their own machine key."""
    code = ("from nabi import backend; from nabi.functional import conv_algo as A; a = A.machine_key(); "
            "backend.keep_freed_memory(); print(a); print(A.machine_key())")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.strip().splitlines()
    assert "| freed memory returned |" in before and "| freed memory kept |" in after
    assert before.replace("freed memory returned", "freed memory kept") == after
