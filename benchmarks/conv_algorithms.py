"""Each convolution algorithm on one layer shape, as ``conv_algo`` times it, against PyTorch's convolution.

    python -m benchmarks.conv_algorithms                          # the patch descriptor's stride-1 layers, batch 512
    python -m benchmarks.conv_algorithms --purpose eval --repeats 9
    python -m benchmarks.conv_algorithms --shapes 32x64x64x16 --out conv.json     # N×C×F×H: 3×3, padding 1

A row is one layer shape (N images of C channels, H×H, F filters of 3×3, stride 1, padding 1, float32) and one
purpose: ``train`` times forward + backward (∂x, ∂w) of each algorithm that applies (im2col, Winograd, the direct
convolution: ``nabi.functional.conv_fast._trial``, the step ``conv_algo`` times when it chooses) and of
``torch.nn.functional.conv2d`` with autograd; ``eval`` times the forward alone (PyTorch's under ``no_grad``). All
of them are alternated round by round in this one process after one untimed round each; reported: the median wall
time and process CPU time (all threads) of each, and each algorithm's ratio to PyTorch's median. On a shared
machine the CPU times and the ratios are the figures to read.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from . import common as C

# The stride-1 convolutions of the patch descriptor (``hardnet`` width 8) at the batch it trains with.
DESCRIPTOR_SHAPES = ((512, 1, 8, 32), (512, 8, 8, 32), (512, 16, 16, 16), (512, 32, 32, 8))


def _shape(text):
    try:
        n, c, f, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N×C×F×H such as 512x8x8x32, got {text!r}") from None
    if min(n, c, f, h) < 1:
        raise argparse.ArgumentTypeError(f"every size must be positive, got {text!r}")
    return n, c, f, h


def _torch_step(x_shape, w_shape, purpose):
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(x_shape).astype(np.float32))
    w = torch.from_numpy((rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32))
    if purpose == "eval":
        def step():
            with torch.no_grad():
                F.conv2d(x, w, padding=1)
        return step
    x.requires_grad_(True)
    w.requires_grad_(True)
    dy = torch.from_numpy(rng.standard_normal((x_shape[0], w_shape[0], x_shape[2], x_shape[3])).astype(np.float32))

    def step():
        x.grad = w.grad = None
        F.conv2d(x, w, padding=1).backward(dy)
    return step


def run(shape, purpose, repeats):
    from nabi.functional import conv_fast
    from nabi.functional.conv import conv_geometry
    n, c, f, h = shape
    x = np.zeros((n, c, h, h), np.float32)
    w = np.zeros((f, c, 3, 3), np.float32)
    geom = conv_geometry(x, w, 1, 1)
    candidates = ["im2col"]
    if conv_fast.CW.applies(geom, np.float32):
        candidates += [name for name, tile in conv_fast.WINOGRAD_TILES.items()
                       if min(geom[6], geom[7]) >= conv_fast.WINOGRAD_MIN_OUTPUT[tile]]
    if conv_fast.CD.applies(x, w, geom):
        candidates.append("direct")
    if conv_fast.CO.applies(x, w, geom):
        candidates.append("outer")
    steps = {a: conv_fast._trial(a, x.shape, w.shape, geom, np.float32, purpose) for a in candidates}
    steps["torch"] = _torch_step(x.shape, w.shape, purpose)
    for step in steps.values():
        step()
    wall = {a: [] for a in steps}
    cpu = {a: [] for a in steps}
    for _ in range(repeats):
        for a, step in steps.items():
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            wall[a].append(1e3 * (time.perf_counter() - t0))
            cpu[a].append(1e3 * (time.process_time() - c0))
    med = {a: {"median_ms": statistics.median(wall[a]), "cpu_median_ms": statistics.median(cpu[a]),
               "all_ms": [round(t, 3) for t in wall[a]]} for a in steps}
    for a in candidates:
        med[a]["ratio_to_torch"] = med[a]["median_ms"] / med["torch"]["median_ms"]
        med[a]["cpu_ratio_to_torch"] = med[a]["cpu_median_ms"] / med["torch"]["cpu_median_ms"]
    return {"shape": f"{n}x{c}x{h}x{h} -> {f} 3x3 p1", "purpose": purpose, "times": med}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv_algorithms", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n" + "\n".join(__doc__.split("\n\n")[1].splitlines()))
    p.add_argument("--shapes", type=_shape, nargs="+", default=list(DESCRIPTOR_SHAPES), metavar="NxCxFxH",
                   help="layer shapes (default: the patch descriptor's stride-1 layers at batch 512)")
    p.add_argument("--purpose", choices=("train", "eval", "both"), default="both")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    C.set_threads(args.threads)
    purposes = ("train", "eval") if args.purpose == "both" else (args.purpose,)
    rows = []
    for purpose in purposes:
        for shape in args.shapes:
            row = run(shape, purpose, args.repeats)
            rows.append(row)
            t = row["times"]
            cells = [f"{a} {v['median_ms']:.1f} (cpu {v['cpu_median_ms']:.1f})" for a, v in t.items()]
            ratios = [f"{a} {v['cpu_ratio_to_torch']:.2f}" for a, v in t.items() if a != "torch"]
            print(f"{purpose} {row['shape']}: {'  '.join(cells)} ms | cpu ÷ torch: {', '.join(ratios)}", flush=True)
    if args.out:
        from nabi.files import atomic_write_json
        atomic_write_json(args.out, {"command": "python -m benchmarks.conv_algorithms "
                                     + " ".join(sys.argv[1:] if argv is None else argv),
                                     "threads": args.threads, "repeats": args.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
