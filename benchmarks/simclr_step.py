"""One SimCLR training step, nabi vs PyTorch: backbone → projection head → NT-Xent → backward → SGD step.

    python -m benchmarks.simclr_step [--model resnet18_cifar|cifar_cnn] [--batch 32] [--size 32]
                                     [--threads 2] [--blas-threads K] [--repeats 5] [--reference] [--input-grad]
                                     [--out FILE.json]

Both sides hold the same float32 weights (the nabi SimCLR network's state copied by name into a
PyTorch twin whose backbone is the zoo model's twin without ``fc``), get the same 2N views
(rows i and i + N pairs), use τ = 0.5 and plain SGD (lr 0.01). The first step's loss and
projections are checked against each other, then steps alternate nabi, torch, … (each side's
weights move as training does). Reported: median wall time per step and the ratio nabi/torch, and
the median time of each phase (backbone forward, head forward, loss forward + backward, head backward,
backbone backward, update; PyTorch's backward is split where the gradient reaches the features h, so
its loss backward is counted in its head backward).

nabi is set up as its trainer sets it up: the first convolution computes no image gradient
(``skip_input_gradient``; PyTorch's input needs none either). ``--input-grad`` computes it anyway
(the first version of this benchmark did, which cost nabi a col2im pass per step).
``--reference`` also times, in the same rounds, an ordinary classification step of the same zoo
model on the same 2N images (cross-entropy, SGD): on a busy machine the ratio of the two ratios
says what SimCLR itself adds, whatever the load. ``--blas-threads K`` limits NumPy's BLAS (OpenBLAS) to
K threads while nabi's compiled kernels and PyTorch keep ``--threads``: on a machine with more runnable
threads than cores, OpenBLAS's finely synchronised threads wait for each other's time slices.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict

import numpy as np

from . import common as C


def torch_nt_xent(z, temperature):
    import torch
    M = z.shape[0]
    u = torch.nn.functional.normalize(z, dim=1)
    logits = (u @ u.T / temperature).masked_fill(torch.eye(M, dtype=torch.bool, device=z.device), float("-inf"))
    return torch.nn.functional.cross_entropy(logits, (torch.arange(M, device=z.device) + M // 2) % M)


def classifier_pair(model_name, num_classes=10, seed=0):
    """The zoo model and its PyTorch twin, same weights (the reference classification step)."""
    import torch
    from .torch_models import TBasicBlock, TResNet, copy_weights, t_cifar_cnn
    model = C.build_nabi(model_name, num_classes, "cpu", seed)
    twin = (TResNet(TBasicBlock, (2, 2, 2, 2), num_classes, cifar=True) if model_name == "resnet18_cifar"
            else t_cifar_cnn(num_classes)).to(torch.float32)
    copy_weights(model, twin)
    return model, twin


def nabi_network(model_name, projection_dim, seed=0):
    """The nabi SimCLR network (zoo backbone + projection head) in float32 from a fixed seed; no torch import."""
    from nabi import backend
    from nabi.selfsup.model import SimCLR, backbone_of
    zoo = C.build_nabi(model_name, 10, "cpu", seed)
    backbone, f = backbone_of(zoo)
    with backend.default_dtype(np.float32):
        return SimCLR(backbone, f, projection_dim)


def build(model_name, projection_dim, seed=0):
    import torch
    import torch.nn as tnn
    from .torch_models import TBasicBlock, TResNet, t_cifar_cnn
    model = nabi_network(model_name, projection_dim, seed)
    f = model.feature_dim
    if model_name == "resnet18_cifar":
        tb = TResNet(TBasicBlock, (2, 2, 2, 2), 10, cifar=True)
    elif model_name == "cifar_cnn":
        tb = t_cifar_cnn(10)
    else:
        raise SystemExit(f"no PyTorch twin for {model_name}; use resnet18_cifar or cifar_cnn")
    tb.fc = tnn.Identity()
    twin = tnn.Module()
    twin.backbone = tb
    twin.head = tnn.Sequential(OrderedDict(fc1=tnn.Linear(f, f), relu=tnn.ReLU(), fc2=tnn.Linear(f, projection_dim)))
    sd = model.state_dict()
    tsd = {k: v for k, v in twin.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sorted(tsd) == sorted(sd), (sorted(set(tsd) ^ set(sd)))
    with torch.no_grad():
        for k, v in tsd.items():
            v.copy_(torch.from_numpy(np.ascontiguousarray(sd[k])))
    twin.forward = lambda x: twin.head(twin.backbone(x))
    return model, twin


def _phased_nabi(model, loss_fn, opt, x):
    """One nabi SimCLR step; returns its phase times (s): backbone f, head f, loss f+b, head b, backbone b, update."""
    pc = time.perf_counter
    backbone, head = model._modules["backbone"], model._modules["head"]
    t0 = pc()
    h = backbone(x)
    t1 = pc()
    z = head(h)
    t2 = pc()
    loss_fn(z)
    dz = loss_fn.backward()
    t3 = pc()
    model.zero_grad()
    dh = head.backward(dz)
    t4 = pc()
    backbone.backward(dh)
    t5 = pc()
    opt.step()
    t6 = pc()
    return (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)


def _phased_torch(twin, topt, xt):
    """One PyTorch SimCLR step with the same phases; the backward is split by a hook on h's gradient."""
    pc = time.perf_counter
    marks = {}
    t0 = pc()
    topt.zero_grad(set_to_none=True)
    h = twin.backbone(xt)
    t1 = pc()
    z = twin.head(h)
    t2 = pc()
    loss = torch_nt_xent(z, 0.5)
    t3 = pc()
    h.register_hook(lambda g: marks.__setitem__("h", pc()))      # returns None: the gradient is unchanged
    loss.backward()
    t5 = pc()
    topt.step()
    t6 = pc()
    th = marks.get("h", t5)
    return (t1 - t0, t2 - t1, t3 - t2, th - t3, t5 - th, t6 - t5)


PHASES = ("backbone forward", "head forward", "loss forward+backward", "head backward", "backbone backward",
          "update")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18_cifar", choices=["resnet18_cifar", "cifar_cnn"])
    ap.add_argument("--batch", type=int, default=32, help="N photos per step (2N views)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--projection-dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blas-threads", type=int, help="threads of NumPy's BLAS only (default: --threads)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--input-grad", action="store_true",
                    help="let nabi compute the image gradient too (the trainer does not)")
    ap.add_argument("--reference", action="store_true",
                    help="also time an ordinary classification step of the same model on the same 2N images")
    ap.add_argument("--out", help="JSON output (default benchmarks/results/<date>-simclr-<threads>t.json)")
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as TF
    from nabi.layers import CrossEntropyLoss
    from nabi.layers.contrastive import NTXentLoss
    from nabi.optim import SGD
    from nabi.training.trainer import skip_input_gradient
    note = C.set_threads(args.threads)
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.blas_threads, user_api="blas")
        note = (note + " " if note else "") + f"NumPy's BLAS limited to {args.blas_threads} thread(s)"
    print(C.blas_kernel_note())
    model, twin = build(args.model, args.projection_dim)
    model.train()
    twin.train()
    if not args.input_grad:
        skip_input_gradient(model)
    x = np.random.default_rng(0).random((2 * args.batch, 3, args.size, args.size)).astype(np.float32)
    xt = torch.from_numpy(x)
    loss_fn = NTXentLoss(0.5)
    opt = SGD(model.named_parameters(), lr=0.01)
    topt = torch.optim.SGD(twin.parameters(), lr=0.01)

    # the check: same projections and loss on the first batch
    z = model(x)
    zt = twin(xt)
    loss, tloss = loss_fn(z), float(torch_nt_xent(zt, 0.5).detach())
    z_err = C.rel_err(z, zt.detach().numpy())
    print(f"check: projections rel. error {z_err:.2e}, loss nabi {loss:.6f} torch {tloss:.6f}")
    if not (z_err < C.RTOL and abs(loss - tloss) <= C.RTOL * max(1.0, abs(tloss))):
        print("nabi and torch disagree: not timing", file=sys.stderr)
        return 1

    phases = {"nabi": [], "torch": []}
    steps = {"simclr": (lambda: phases["nabi"].append(_phased_nabi(model, loss_fn, opt, x)),
                        lambda: phases["torch"].append(_phased_torch(twin, topt, xt)))}
    if args.reference:
        cls, tcls = classifier_pair(args.model)
        cls.train()
        tcls.train()
        if not args.input_grad:
            skip_input_gradient(cls)
        y = np.random.default_rng(1).integers(0, 10, 2 * args.batch)
        yt = torch.from_numpy(y)
        ce = CrossEntropyLoss()
        copt = SGD(cls.named_parameters(), lr=0.01)
        tcopt = torch.optim.SGD(tcls.parameters(), lr=0.01)

        def cls_step():
            ce(cls(x), y)
            cls.zero_grad()
            cls.backward(ce.backward())
            copt.step()

        def tcls_step():
            tcopt.zero_grad(set_to_none=True)
            TF.cross_entropy(tcls(xt), yt).backward()
            tcopt.step()
        steps["classification"] = (cls_step, tcls_step)
    # warm-up, then rounds: each round times every workload, nabi then torch, in this one process
    for _ in range(args.warmup):
        for a, b in steps.values():
            a()
            b()
    for side in phases:
        phases[side].clear()
    times = {name: C.Times() for name in steps}
    for _ in range(args.repeats):
        for name, pair in steps.items():
            r = C.alternate(*pair, 1, warmup=0)
            for side in ("nabi", "torch"):
                times[name].wall[side] += r.wall[side]
                times[name].cpu[side] += r.cpu[side]
    results = {name: C.summarize(t) for name, t in times.items()}
    views = 2 * args.batch
    rows = []
    for name, s in results.items():
        label = (f"SimCLR {args.model} {views}×3×{args.size}×{args.size}" if name == "simclr"
                 else f"classify {args.model} {views}×3×{args.size}×{args.size}")
        rows.append([label, f"{s['nabi']['median_ms']:.1f}", f"{s['torch']['median_ms']:.1f}", f"{s['ratio']:.2f}",
                     f"{s['cpu_ratio']:.2f}", f"{views / s['nabi']['median_ms'] * 1e3:.0f}",
                     f"{views / s['torch']['median_ms'] * 1e3:.0f}"])
    print(C.table(["step", "nabi ms", "torch ms", "nabi/torch", "cpu ratio", "nabi views/s", "torch views/s"], rows))
    med = {side: np.median(np.asarray(phases[side]), axis=0) * 1e3 for side in phases}
    print(C.table(["SimCLR phase", "nabi ms", "torch ms", "nabi/torch"],
                  [[p, f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}" if b > 0 else "-"]
                   for p, a, b in zip(PHASES, med["nabi"], med["torch"])]))
    if args.reference:
        print(f"SimCLR ratio / classification ratio: {results['simclr']['ratio'] / results['classification']['ratio']:.2f}"
              f" (what SimCLR adds beyond the model's ordinary training step, on this machine now)")
    command = "python -m benchmarks.simclr_step " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"machine": C.machine_info(args, "cpu", command, [note]), "model": args.model, "batch": args.batch,
               "views": views, "size": args.size, "input_grad": bool(args.input_grad),
               "blas_threads": args.blas_threads if args.blas_threads is not None else args.threads,
               "check": {"z_rel_err": z_err, "loss": [loss, tloss]}, **results["simclr"],
               "phases_ms": {side: dict(zip(PHASES, map(float, med[side]))) for side in med}}
    if args.reference:
        payload["classification"] = results["classification"]
    out = args.out or C.default_out("simclr", args.threads, "cpu")
    C.write_json(out, payload)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
