"""Batch norm + ReLU as one pass: a training step with the fusion on and off, alternated in one process.

    python -m benchmarks.fusion                        # training steps and the pair alone, 7 rounds
    python -m benchmarks.fusion --quick                # 3 rounds
    python -m benchmarks.fusion --only "b16" --repeats 9 --out fusion.json

``Sequential.fuse`` and ``Residual.fuse`` switch every layer + ReLU pair (convolution + ReLU, batch norm + ReLU)
on and off together; with ``--bn-only`` only the batch-norm pairs are switched (the convolution + ReLU fusion,
older, stays on in both): the figure of this change alone. A step is what the trainer runs: forward,
cross-entropy, backward (the first convolution computes no image gradient), SGD with momentum; the weights are
put back after each step outside the timing. The pair rows time batch norm + ReLU alone (forward and backward)
at the shapes of ResNet-18's first stage, five times as many rounds. Reported: the median step of each side, the ratio fused/unfused
(below 1: the fusion is faster) and the first step's peak memory is not measured here (``--suite memory``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from . import common as C

WORKLOADS = (("resnet18 b32 64x64", "resnet18", 32, 64), ("resnet18 b16 160x160", "resnet18", 16, 160),
             ("resnet20 b64 128x128 (the re-ID embedding's backbone)", "resnet20", 64, 128))
# The pair alone, forward and backward, at the shapes of ResNet-18's first stage (after the stem).
PAIRS = (("batch norm + ReLU (32, 64, 16, 16): resnet18 b32 64x64's layer1", (32, 64, 16, 16)),
         ("batch norm + ReLU (16, 64, 40, 40): resnet18 b16 160x160's layer1", (16, 64, 40, 40)))


class _BnOnly:
    """Fusion switched for batch-norm + ReLU pairs only: ``fuses_relu`` of every batch norm turned off."""

    def __init__(self):
        from nabi.layers.norm import _BatchNorm
        self.cls, self.prop = _BatchNorm, _BatchNorm.__dict__["fuses_relu"]

    def set(self, on):
        self.cls.fuses_relu = self.prop if on else False


def _switch(bn_only):
    from nabi.layers.container import Residual, Sequential
    if bn_only:
        return _BnOnly().set

    def set_all(on):
        Sequential.fuse = Residual.fuse = bool(on)
    return set_all


def run(name, model_name, batch, size, repeats, warmup, bn_only):
    from nabi import optim
    from nabi.layers.loss import CrossEntropyLoss
    switch = _switch(bn_only)
    model = C.build_nabi(model_name, 10, "cpu", 0)
    model.train()
    model.set_input_grad(False)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    loss = CrossEntropyLoss()
    params = list(model.parameters())
    saved = [p.data.copy() for p in params]

    def step(on):
        switch(on)
        opt.zero_grad()
        out = model(x)
        loss(out, y)
        model.backward(loss.backward())
        opt.step()

    def restore():
        for p, s in zip(params, saved):
            p.data[...] = s

    for _ in range(warmup):
        for on in (True, False):
            step(on)
            restore()
    times = {True: [], False: []}
    for _ in range(repeats):
        for on in (True, False):
            t0 = time.perf_counter()
            step(on)
            times[on].append(time.perf_counter() - t0)
            restore()
    switch(True)
    fused, plain = (statistics.median(times[k]) * 1e3 for k in (True, False))
    return {"workload": name, "fused_ms": fused, "unfused_ms": plain, "ratio": fused / plain,
            "fused_all_ms": [round(t * 1e3, 2) for t in times[True]],
            "unfused_all_ms": [round(t * 1e3, 2) for t in times[False]]}


def run_pair(name, shape, repeats, warmup, bn_only):
    from nabi import backend
    from nabi.layers import BatchNorm2d, ReLU, Sequential
    switch = _switch(bn_only)
    with backend.default_dtype(np.float32):
        pair = Sequential(BatchNorm2d(shape[1]), ReLU())
    pair.train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)

    def step(on):
        switch(on)
        pair.zero_grad()
        pair(x)
        pair.backward(dy)

    for _ in range(warmup):
        for on in (True, False):
            step(on)
    times = {True: [], False: []}
    for _ in range(repeats * 5):                 # a pass takes milliseconds: more rounds
        for on in (True, False):
            t0 = time.perf_counter()
            step(on)
            times[on].append(time.perf_counter() - t0)
    switch(True)
    fused, plain = (statistics.median(times[k]) * 1e3 for k in (True, False))
    return {"workload": name, "fused_ms": fused, "unfused_ms": plain, "ratio": fused / plain,
            "fused_all_ms": [round(t * 1e3, 3) for t in times[True]],
            "unfused_all_ms": [round(t * 1e3, 3) for t in times[False]]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 rounds, 1 warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="comma-separated substrings of the workload names")
    ap.add_argument("--bn-only", action="store_true", help="switch only the batch norm + ReLU pairs")
    ap.add_argument("--out", help="write the rows as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 3, 1
    from nabi.backend import keep_freed_memory
    keep_freed_memory()                                  # as nabi's trainer does (NABI_MALLOC=system: not)
    note = C.set_threads(args.threads, torch_too=False)
    if note:
        C.eprint(note)
    every = [(w[0], run, w[1:]) for w in WORKLOADS] + [(p[0], run_pair, p[1:]) for p in PAIRS]
    chosen = [w for w in every if not args.only or any(s.strip() in w[0] for s in args.only.split(","))]
    if not chosen:
        sys.exit(f"--only {args.only!r} matches none of: {', '.join(w[0] for w in every)}")
    rows = []
    for name, fn, rest in chosen:
        r = fn(name, *rest, args.repeats, args.warmup, args.bn_only)
        rows.append(r)
        C.log(f"{r['workload']}: fused {r['fused_ms']:.1f} ms, unfused {r['unfused_ms']:.1f} ms, "
              f"ratio {r['ratio']:.3f}")
    if args.out:
        C.write_json(args.out, {"rows": rows, "args": vars(args), "switched": "batch norm + ReLU only"
                                if args.bn_only else "every layer + ReLU pair"})
    return rows


if __name__ == "__main__":
    main()
