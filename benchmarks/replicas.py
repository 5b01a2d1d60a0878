"""Scaling of ``nabi train --replicas N``: images/s, the communication share of a step, the all-reduce
bandwidth of the transport, and a paper estimate of efficiency at 8 and 64 replicas.

    python -m benchmarks.replicas                  # ResNet-18 at 64×64, batch 32, 6 steps per run
    python -m benchmarks.replicas --quick          # 3 steps per run, fewer all-reduce sizes

What runs (the same global batch, learning rate and data everywhere):

1. one process with all T usable cores as threads (``nabi --threads T train``);
2. one process with 1 thread: the compute one replica gets when two share two cores;
3. ``--replicas 2`` with T/2 threads each: the same total threads as (1);
4. the same with ``--overlap-sum``: each bucket of gradients sent during the backward pass.

images/s is the trainer's own figure (images of the epoch's steps over the steps' time, start-up excluded).
The communication share is the time replica 0 spent inside the gradients' all-reduce over its steps' time
(with the overlapped sum: launching the buckets and, after the backward pass, waiting for them — the time
the step was held up by the sum).

The all-reduce bandwidth: two processes sum float32 buffers of 1 to 64 MB through torch.distributed
(gloo) over the loopback; the bus bandwidth of a ring all-reduce is 2(N−1)/N · S / t. With ``mpi4py``
importable (an MPI launched by ``mpiexec``), the same sizes through ``MPI.Allreduce`` for the comparison.

The paper estimate for N replicas holding B/N images of a global batch B (this product's semantics):
t_step(N) = t_compute(B/N) + t_allreduce(N), t_compute(B/N) = t_compute(B)/N (the measured one-process
step, perfectly divided), t_allreduce(N) = 2(N−1)/N · S / bw + 2(N−1)·latency, and the efficiency is
t_compute(B)/N / t_step(N). bw and latency are the measured loopback figures, and, as a stated assumption,
a 10 Gb/s network (1.25 GB/s, 50 µs per hop). S: the model's float32 gradient bytes (ResNet-18 and the
embedding workload, a ResNet-18 backbone with a 128-d head).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZES_MB = (1, 4, 16, 45, 64)


def _make_photos(root: Path, n_per_class=96, size=64):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, (size, size, 3)) // (2 if c == "a" else 1)
            Image.fromarray(pixels.astype(np.uint8)).save(root / c / f"{i}.png")
    return root


_RUN = """
import json, sys, numpy as np
from nabi import backend
from nabi.training.config import TrainConfig
from nabi.training.run import train
threads, settings = int(sys.argv[1]), json.loads(sys.argv[2])
backend.set_num_threads(threads)
r = train(TrainConfig(**settings), overwrite=True, log=lambda *a, **k: None)
row = r.trainer.history[-1]
print(json.dumps({"images_per_s": row["train_images_per_s"], "time_s": row["epoch_time_s"],
                  "comm_s": getattr(r.trainer, "comm_seconds", None)}))
"""


def _train_run(threads, settings, replica_threads=None):
    env = dict(os.environ)
    if replica_threads is not None:
        env["NABI_REPLICA_THREADS"] = str(replica_threads)
    out = subprocess.run([sys.executable, "-c", _RUN, str(threads), json.dumps(settings)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


_ALLREDUCE = """
import sys, time, json, numpy as np
from nabi.training.replicas import Replicas
rank, port, sizes = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
r = Replicas(rank, 2, ("127.0.0.1", port), 60)
out = {}
for mb in sizes:
    a = np.ones(int(mb * 2**20 // 4), np.float32)
    r.all_reduce(a)                                   # warm-up
    times = []
    for _ in range(5):
        t = time.perf_counter(); r.all_reduce(a); times.append(time.perf_counter() - t)
    out[mb] = float(np.median(times))
small = np.ones(1, np.float32)
times = []
for _ in range(50):
    t = time.perf_counter(); r.all_reduce(small); times.append(time.perf_counter() - t)
out["latency"] = float(np.median(times))
if rank == 0:
    print(json.dumps(out))
r.close()
"""

_MPI = """
import sys, time, json, numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
sizes = json.loads(sys.argv[1]); out = {}
for mb in sizes:
    a = np.ones(int(mb * 2**20 // 4), np.float32); b = np.empty_like(a)
    comm.Allreduce(a, b)
    times = []
    for _ in range(5):
        comm.Barrier(); t = time.perf_counter(); comm.Allreduce(a, b); times.append(time.perf_counter() - t)
    out[mb] = float(np.median(times))
a = np.ones(1, np.float32); b = np.empty_like(a); times = []
for _ in range(50):
    t = time.perf_counter(); comm.Allreduce(a, b); times.append(time.perf_counter() - t)
out["latency"] = float(np.median(times))
if comm.rank == 0:
    print(json.dumps(out))
"""


def gloo_allreduce(sizes):
    from nabi.training.replicas import free_port
    port = free_port()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _ALLREDUCE, str(r), str(port), json.dumps(sizes)],
                              stdout=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate()[0] for p in procs]
    startup = time.perf_counter() - t0
    res = json.loads(outs[0].strip().splitlines()[-1])
    res["process_start_s"] = startup
    return res


def mpi_allreduce(sizes, mpiexec):
    """The same sizes through mpi4py (``mpiexec -n 2``), or None when no MPI is at hand."""
    if not mpiexec or not Path(mpiexec).exists():
        return None
    python = str(Path(mpiexec).parent / "python")
    out = subprocess.run([mpiexec, "-n", "2", python, "-c", _MPI, json.dumps(sizes)], capture_output=True,
                         text=True, check=False, timeout=300)
    if out.returncode != 0:
        return {"error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bus_bandwidth(seconds, mb, n=2):
    return 2 * (n - 1) / n * mb * 2**20 / seconds


def estimate(t_compute_global, grad_bytes, bw, latency, n):
    comm = 2 * (n - 1) / n * grad_bytes / bw + 2 * (n - 1) * latency
    compute = t_compute_global / n
    return compute / (compute + comm), comm


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--mpiexec", default=os.environ.get("NABI_BENCH_MPIEXEC"),
                    help="an mpiexec beside a python with mpi4py, for the MPI comparison (default: none)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from nabi import backend
    from nabi import models
    cores = backend.usable_cores()
    steps = args.steps or (3 if args.quick else 6)
    sizes = [1, 16, 45] if args.quick else list(SIZES_MB)
    result = {"cores": cores, "steps": steps, "machine_note": f"{cores} usable cores: the replicas share them"}
    with tempfile.TemporaryDirectory() as tmp:
        photos = _make_photos(Path(tmp) / "photos")
        base = dict(data=str(photos), model="resnet18", image_size=64, batch_size=32, iterations=steps, epochs=1,
                    optimizer="sgd", lr=0.01, val_ratio=0.0, test_ratio=0.0, progress=False)
        runs = {}
        runs["1 process, %d threads" % cores] = _train_run(cores, dict(base, out=f"{tmp}/one"))
        runs["1 process, 1 thread"] = _train_run(1, dict(base, out=f"{tmp}/one1"))
        runs["2 replicas, %d thread(s) each" % max(1, cores // 2)] = _train_run(
            cores, dict(base, out=f"{tmp}/two", replicas=2), replica_threads=max(1, cores // 2))
        runs["2 replicas, sum overlapped"] = _train_run(
            cores, dict(base, out=f"{tmp}/two-overlap", replicas=2, overlap_sum=True),
            replica_threads=max(1, cores // 2))
    result["runs"] = runs
    result["gloo"] = gloo_allreduce(sizes)
    result["mpi"] = mpi_allreduce(sizes, args.mpiexec)
    m = models.get("resnet18", num_classes=2)
    resnet_bytes = 4 * sum(p.size for p in m.parameters())
    embed_bytes = resnet_bytes - 4 * (512 * 2 + 2) + 4 * (512 * 128 + 128)
    one = runs["1 process, %d threads" % cores]
    t_global = one["time_s"] / steps                 # one process's step on the whole batch
    big = max(sizes)
    measured_bw = bus_bandwidth(result["gloo"][str(big)] if str(big) in result["gloo"] else result["gloo"][big], big)
    latency = result["gloo"]["latency"]
    est = {}
    for name, nbytes in (("resnet18", resnet_bytes), ("embedding (resnet18 + 128-d head)", embed_bytes)):
        for label, bw, lat in (("measured loopback gloo", measured_bw, latency),
                               ("assumed 10 Gb/s network", 1.25e9, 50e-6)):
            for n in (2, 8, 64):
                eff, comm = estimate(t_global, nbytes, bw, lat, n)
                est[f"{name} · {label} · N={n}"] = {"efficiency": eff, "allreduce_s": comm,
                                                    "compute_s": t_global / n}
    result["gradient_bytes"] = {"resnet18": resnet_bytes, "embedding": embed_bytes}
    result["estimate"] = est
    result["bus_bandwidth_bytes_per_s"] = measured_bw
    _report(result)
    out = Path(args.out or HERE / "results" / f"{time.strftime('%Y%m%d')}-replicas.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwritten: {out}")


def _report(r):
    print(f"machine: {r['machine_note']}; {r['steps']} ResNet-18 steps at 64×64, global batch 32")
    base = next(iter(r["runs"].values()))["images_per_s"]
    print(f"\n{'run':34} {'images/s':>9} {'vs 1 process':>13} {'comm. share':>12}")
    for name, row in r["runs"].items():
        share = f"{row['comm_s'] / row['time_s']:.1%}" if row.get("comm_s") else "-"
        print(f"{name:34} {row['images_per_s']:9.1f} {row['images_per_s'] / base:13.2f} {share:>12}")
    print("\nall-reduce of float32 buffers, 2 processes on the loopback (median of 5)")
    print(f"{'MB':>5} {'gloo ms':>9} {'gloo GB/s':>10} {'MPI ms':>9} {'MPI GB/s':>9}")
    mpi = r.get("mpi") or {}
    for mb in [k for k in r["gloo"] if k not in ("latency", "process_start_s")]:
        g = r["gloo"][mb]
        m = mpi.get(mb) if isinstance(mpi, dict) else None
        print(f"{mb:>5} {g * 1e3:9.2f} {bus_bandwidth(g, float(mb)) / 1e9:10.2f} "
              f"{(m * 1e3 if m else float('nan')):9.2f} {(bus_bandwidth(m, float(mb)) / 1e9 if m else float('nan')):9.2f}")
    print(f"latency (4 bytes): gloo {r['gloo']['latency'] * 1e6:.0f} µs" +
          (f", MPI {mpi['latency'] * 1e6:.0f} µs" if isinstance(mpi, dict) and "latency" in mpi else ""))
    print("\npaper estimate of efficiency, global batch fixed (compute divided by N, ring all-reduce)")
    for k, v in r["estimate"].items():
        print(f"  {k:70} {v['efficiency']:6.1%}  (all-reduce {v['allreduce_s'] * 1e3:.1f} ms, "
              f"compute {v['compute_s'] * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
