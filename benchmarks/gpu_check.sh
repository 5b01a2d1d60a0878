#!/usr/bin/env bash
# The GPU check, prepared to run in one call on a machine with an NVIDIA GPU (H100/H200), from the
# repository root, with nabi's dependencies and CuPy installed:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh        # default OUT: ./gpu-check-out
#
# 1. the device: nvidia-smi, CuPy's view of it                          -> $OUT/device.txt
# 2. correctness on the device: every test marked `gpu` (the real-CuPy twins of the emulated tests:
#    layers, blocks and zoo families against the CPU and PyTorch, the CUDA kernels against the CuPy
#    array code, no host<->device transfer inside a training step, mixed precision)  -> $OUT/pytest_gpu.log
# 3. speed on the device: nabi against PyTorch eager on the same GPU (CUDA events, warm-up, medians)
#                                                                        -> $OUT/bench_gpu.json, .log
# Each step has its own time limit, so one that hangs cannot use up the call; the last lines printed
# are a summary. On a machine without a GPU every step says so and skips (a dry run).
set -u
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

{ nvidia-smi || echo "nvidia-smi: not available"
  "$PY" - <<'PYEOF'
try:
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    p = cupy.cuda.runtime.getDeviceProperties(0)
    print(f"cupy {cupy.__version__}; {n} device(s); {p['name'].decode()}; compute capability "
          f"{p['major']}.{p['minor']}; CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")
except Exception as e:                      # no CuPy, or CuPy without a device
    print(f"cupy: no usable device ({type(e).__name__}: {e})")
PYEOF
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

# The test files that hold `gpu`-marked tests or use the `xp` fixture (whose CuPy case is marked gpu).
TESTS=$(grep -lE "mark\.gpu|[(, ]xp[,)]" tests/test_*.py | tr '\n' ' ')
timeout "${PYTEST_LIMIT:-240}" "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs $TESTS \
    > "$OUT/pytest_gpu.log" 2>&1
echo "pytest -m gpu: exit $? ($(tail -n 1 "$OUT/pytest_gpu.log"))"

timeout "${BENCH_LIMIT:-240}" "$PY" -m benchmarks --device gpu --suite all --quick --out "$OUT/bench_gpu.json" \
    > "$OUT/bench_gpu.log" 2>&1
echo "benchmarks --device gpu: exit $?"
tail -n 40 "$OUT/bench_gpu.log"
