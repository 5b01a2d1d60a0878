"""Shared machinery: thread limits, devices, alternating timing, checks, machine info, tables, JSON."""
from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RTOL = 1e-3          # float32 agreement asked of nabi vs torch (norm-relative, see ``rel_err``)
ATOL = 1e-6

# ----------------------------------------------------------------------------------
# threads
# ----------------------------------------------------------------------------------



def set_threads(n: int, torch_too: bool = True) -> str:
    """Use ``n`` threads in NumPy's BLAS and OpenMP (threadpoolctl), nabi's compiled kernels and
    (``torch_too``) torch. Returns a note for the record ('' when every limit could be applied)."""
    from nabi.backend import set_num_threads
    if torch_too:
        import torch
        torch.set_num_threads(int(n))
    os.environ.setdefault("OMP_NUM_THREADS", str(n))       # for the memory suite's child processes
    if not set_num_threads(int(n), required=False):
        return ("threadpoolctl is not installed: NumPy's BLAS thread count was NOT limited "
                "(pip install threadpoolctl)")
    return ""


def threadpool_info():
    try:
        from threadpoolctl import threadpool_info as info
    except ImportError:
        return "threadpoolctl not installed"
    out = []
    for d in info():
        out.append({k: d.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads",
                                          "threading_layer", "architecture", "filepath")})
    return out


# ----------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------

def gpu_ready():
    """``(ok, message)``: whether both nabi (CuPy) and torch see a CUDA device."""
    from nabi import backend
    if not backend.gpu_available():
        return False, ("--device gpu: nabi.backend.gpu_available() is False (CuPy is not installed or sees no "
                       "CUDA device); skipping the GPU benchmarks. Install nabi[gpu] on a machine with an NVIDIA GPU.")
    import torch
    if not torch.cuda.is_available():
        return False, ("--device gpu: CuPy sees a GPU but torch.cuda.is_available() is False (a CPU-only torch "
                       "build?); skipping the GPU benchmarks.")
    return True, ""


def setup_gpu_float32():
    """Plain float32 on the GPU for torch: no TF32 in cuDNN convolutions or cuBLAS matmuls (CuPy uses none)."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def nabi_sync(device):
    if device == "gpu":
        import cupy
        cupy.cuda.Device().synchronize()


def torch_sync(device):
    if device == "gpu":
        import torch
        torch.cuda.synchronize()


def to_nabi(a, device):
    """A host NumPy array → the array nabi works on for ``device``."""
    if device == "gpu":
        import cupy
        return cupy.asarray(a)
    return a


def to_torch(a, device, requires_grad=False):
    import torch
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device == "gpu":
        t = t.to("cuda")
    if requires_grad:
        t.requires_grad_(True)
    return t


def host(a):
    """Any array or tensor → a float64 NumPy array (for comparisons)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    from nabi import backend
    return np.asarray(backend.to_numpy(a), dtype=np.float64)


def build_nabi(name, num_classes, device="cpu", seed=0, nabi_kwargs=None):
    """The zoo model ``name`` in float32 from a fixed seed (so the same weights every time), on ``device``
    (``num_classes`` None: a model without classes, e.g. ``hardnet``)."""
    import nabi.models as zoo
    from nabi import backend

    backend.seed(seed)
    classes = {} if num_classes is None else {"num_classes": num_classes}
    with backend.default_dtype(np.float32):
        model = zoo.get(name, **classes, **(nabi_kwargs or {}))
    if device == "gpu":
        model.to("gpu")
    return model


# ----------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------

class Times:
    """Per-step wall-clock and process-CPU seconds of both sides."""

    def __init__(self):
        self.wall = {"nabi": [], "torch": []}
        self.cpu = {"nabi": [], "torch": []}


def alternate(nabi_step, torch_step, repeats, warmup=1, pause=0.0, nabi_done=None, torch_done=None,
              nabi_after=None, torch_after=None):
    """Warm up, then time nabi, torch, nabi, torch, … ``repeats`` rounds in this one process.

    ``*_done`` (called inside the timed region) waits for the device to finish
    (GPU); ``*_after`` runs after each step outside the timed region (the train
    suite restores the weights there); ``pause`` seconds of sleep after each step
    (outside the timed region) lets the other library's idle worker threads stop spinning.
    Returns a ``Times``: per-step wall time (``time.perf_counter``) and process CPU
    time (``time.process_time``, all threads of this process) of each side.
    """
    for _ in range(warmup):
        for step, done, after in ((nabi_step, nabi_done, nabi_after), (torch_step, torch_done, torch_after)):
            step()
            done and done()
            after and after()
    gc.collect()
    times = Times()
    was_enabled = gc.isenabled()
    gc.disable()                       # no collector pauses inside a timed step
    try:
        for _ in range(repeats):
            for side, step, done, after in (("nabi", nabi_step, nabi_done, nabi_after),
                                            ("torch", torch_step, torch_done, torch_after)):
                c0, t0 = time.process_time(), time.perf_counter()
                step()
                if done is not None:
                    done()
                t1, c1 = time.perf_counter(), time.process_time()
                times.wall[side].append(t1 - t0)
                times.cpu[side].append(c1 - c0)
                if after is not None:
                    after()
                if pause:
                    time.sleep(pause)
    finally:
        if was_enabled:
            gc.enable()
    return times


def summarize(times):
    """Median, min and quartiles (ms) of both sides, the ratio of medians nabi/torch, and the same for CPU time."""
    def stats(ts):
        ms = sorted(t * 1e3 for t in ts)
        q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) >= 2 else [ms[0]] * 3
        return {"median_ms": statistics.median(ms), "min_ms": ms[0], "q1_ms": q[0], "q3_ms": q[2],
                "all_ms": [round(t * 1e3, 3) for t in ts]}
    out = {}
    for side in ("nabi", "torch"):
        out[side] = stats(times.wall[side])
        c = stats(times.cpu[side])
        out[side]["cpu_median_ms"] = c["median_ms"]
        out[side]["cpu_all_ms"] = c["all_ms"]
    n, t = out["nabi"]["median_ms"], out["torch"]["median_ms"]
    out["ratio"] = n / t if t > 0 else math.inf
    cn, ct = out["nabi"]["cpu_median_ms"], out["torch"]["cpu_median_ms"]
    out["cpu_ratio"] = cn / ct if ct > 0 else math.inf
    return out


# ----------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------

def rel_err(a, b):
    """‖a − b‖ / ‖b‖ (Frobenius), the norm-relative error; ``inf`` for a shape mismatch or non-finite values."""
    a, b = host(a), host(b)
    if a.shape != b.shape:
        return math.inf
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.inf
    ref = float(np.linalg.norm(b))
    err = float(np.linalg.norm(a - b))
    if ref == 0.0:
        return 0.0 if err <= ATOL else math.inf
    return err / ref


class Check:
    """Collects named comparisons (and dtype complaints) for one workload."""

    def __init__(self, rtol=RTOL):
        self.rtol = rtol
        self.items = []          # (what, rel error, rtol)
        self.notes = []
        self.skipped = None      # why nothing was compared, if so

    def compare(self, what, a, b, rtol=None):
        e = rel_err(a, b)
        self.items.append((what, e, rtol or self.rtol))
        return e

    def dtype(self, what, a, want=np.float32):
        if a is None:
            self.notes.append(f"{what} is None")
            return
        dt = np.dtype(getattr(a, "dtype", type(a)))
        if dt != np.dtype(want):
            self.notes.append(f"{what} is {dt}, not {np.dtype(want)}")

    @property
    def ok(self):
        return all(e <= r for _, e, r in self.items) and not self.notes

    @property
    def worst(self):
        return max((e for _, e, _ in self.items), default=0.0)

    def summary(self):
        bad = [f"{w}: rel err {e:.2e} > {r:g}" for w, e, r in self.items if not e <= r]
        return {"ok": self.ok, "max_rel_err": self.worst, "rtol": self.rtol,
                "items": {w: {"rel_err": e, "rtol": r} for w, e, r in self.items}, "problems": bad + self.notes,
                "skipped": self.skipped}

    def label(self):
        return f"ok {self.worst:.0e}" if self.ok else "MISMATCH"


# ----------------------------------------------------------------------------------
# machine info
# ----------------------------------------------------------------------------------

def _cpu_model():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else platform.machine()


def _torch_blas():
    import torch
    cfg = torch.__config__.show()
    out = {}
    m = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
    if m:
        out["blas_info"] = m.group(1)
    for line in cfg.splitlines():
        s = line.strip(" -\t")
        if "Math Kernel Library" in s or s.startswith("Intel(R) MKL-DNN") or "OpenBLAS" in s:
            out.setdefault("libraries", []).append(s)
        if "CPU capability usage" in s:
            out["cpu_capability"] = s.split(":", 1)[1].strip()
    out["mkldnn_enabled"] = bool(torch.backends.mkldnn.is_available())
    return out


def _numpy_blas():
    try:
        d = np.show_config(mode="dicts")
        blas = d.get("Build Dependencies", {}).get("blas", {})
        return {k: blas.get(k) for k in ("name", "version", "openblas configuration") if blas.get(k)}
    except Exception:                                        # older NumPy
        return {}


def _kernels_info():
    from nabi.functional import cpu_kernels
    if not cpu_kernels.available():
        return "numpy (numba not installed)"
    import numba
    state = "numba" if cpu_kernels.enabled(np.zeros(1, np.float32)) else "numpy (switched off)"
    return f"{state} {numba.__version__}, threading layer {cpu_kernels.threading_layer()}, {numba.get_num_threads()} threads"


def blas_kernel_note():
    """Which kernels NumPy's OpenBLAS runs, and whether ``OPENBLAS_CORETYPE`` chose them.

    OpenBLAS picks its kernels for the processor at load time unless ``OPENBLAS_CORETYPE`` names
    one; a machine that pins an older kernel (e.g. ``Haswell``, AVX2, on a processor with AVX-512)
    runs nabi's matrix products at about half speed while PyTorch's oneDNN is unaffected. The
    benchmarks print this line so that a ratio is read with the kernels it was measured with."""
    info = threadpool_info()
    archs = sorted({i.get("architecture") for i in (info if isinstance(info, list) else [])
                    if i.get("internal_api") == "openblas" and i.get("architecture")})
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    line = f"NumPy's OpenBLAS runs its {'/'.join(archs) or 'unknown'} kernels"
    return line + (f" (OPENBLAS_CORETYPE={pinned} pins them)" if pinned else " (chosen for this processor)")


GEMM_PEAK_SIZE = 1536


def gemm_peak(rounds=5):
    """The machine's measured float32 matrix-product rate (GFLOP/s) with the thread counts set: the best of
    ``rounds`` timed 1536×1536×1536 products each through NumPy's BLAS as it is set up, nabi's split product
    (``nabi.functional.blas.matmul``) and ``torch.mm``, alternated. Returns ``{"numpy_blas": …, "nabi": …,
    "torch": …, "peak": the largest, "size": n}``: the roofline's ceiling, so "close to the limit" is a number."""
    import torch
    from nabi.functional.blas import matmul
    n = GEMM_PEAK_SIZE
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(np.empty((n, n), np.float32))
    ways = {"numpy_blas": lambda: np.matmul(a, b, out=out), "nabi": lambda: matmul(a, b, out=out),
            "torch": lambda: torch.mm(ta, tb, out=tout)}
    best = {k: float("inf") for k in ways}
    for f in ways.values():
        f()
    for _ in range(rounds):
        for k, f in ways.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    rates = {k: 2 * n ** 3 / t / 1e9 for k, t in best.items()}
    return {**{k: round(v, 1) for k, v in rates.items()}, "peak": round(max(rates.values()), 1), "size": n}


def omp_wait_note():
    """A warning when PyTorch's OpenMP threads may spin while nabi runs, else ''.

    ``benchmarks/__init__.py`` sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported. That cannot work when
    torch was imported before the benchmarks (GNU OpenMP reads the variable once, when it loads) or when the
    environment asks for ``ACTIVE``: torch's idle threads then busy-wait after each of its parallel regions and
    nabi's steps, alternated with torch's, measured up to about 2× slower on 2 cores."""
    from . import TORCH_BEFORE, WAIT_ENV
    policy = os.environ.get("OMP_WAIT_POLICY", "").upper()
    if TORCH_BEFORE:
        return ("torch was imported before the benchmarks could set OMP_WAIT_POLICY=PASSIVE: its OpenMP threads "
                "spin after each parallel region and slow nabi's alternated steps (up to ~2x on 2 cores); run "
                "`python -m benchmarks` in a fresh interpreter, or set OMP_WAIT_POLICY=PASSIVE before importing torch")
    if policy != WAIT_ENV["OMP_WAIT_POLICY"]:
        return (f"OMP_WAIT_POLICY={policy or '(unset)'}: torch's idle OpenMP threads spin between its parallel regions "
                f"and slow nabi's alternated steps (up to ~2x on 2 cores); the default here is PASSIVE")
    return ""


def machine_info(args, device, command, notes=()):
    import torch
    import nabi
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "threads": args.threads,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "nabi": getattr(nabi, "__version__", "?"),
        "numpy_blas": _numpy_blas(),
        "nabi_cpu_kernels": _kernels_info(),
        "torch_blas": _torch_blas(),
        "torch_num_threads": torch.get_num_threads(),
        "threadpool_info": threadpool_info(),
        "notes": [n for n in notes if n],
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS",
                                               "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "CUPY_TF32",
                                               "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    }
    try:
        import threadpoolctl
        info["threadpoolctl"] = threadpoolctl.__version__
    except ImportError:
        info["threadpoolctl"] = None
    if device == "gpu":
        import cupy
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cudnn_torch"] = torch.backends.cudnn.version()
        info["tf32"] = "off in torch (cuDNN and cuBLAS); CuPy default (off)"
    return info


# ----------------------------------------------------------------------------------
# memory (CPU: resident set size of this process)
# ----------------------------------------------------------------------------------

def _status_kb(field):
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def trim_heap() -> bool:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so the RSS before a step holds
    no free-but-resident memory the step could reuse unseen. False where there is no glibc."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0)) or True
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_bytes():
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def peak_rss_bytes():
    """VmHWM, or ru_maxrss (KiB on Linux) where /proc is missing."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


# ----------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------

def fmt_ms(x):
    if x is None:
        return "-"
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_mb(b):
    return "-" if b is None else f"{b / 2**20:,.1f}"


def table(headers, rows):
    """A plain-text table: ``rows`` are lists of strings."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [" | ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))),
             "-+-".join("-" * w for w in widths)]
    for r in rows:
        lines.append(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def default_out(suite, threads, device):
    date = _dt.date.today().isoformat()
    dev = "-gpu" if device == "gpu" else ""
    return Path(__file__).resolve().parent / "results" / f"{date}-{suite}{dev}-{threads}t.json"


def _jsonable(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return _jsonable(o.item())
    return o


def write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    tmp.replace(path)
    return path


def log(*a):
    print(*a, flush=True)


def eprint(*a):
    print(*a, file=sys.stderr, flush=True)
