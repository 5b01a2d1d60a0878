"""nabi vs PyTorch: layer, training-step, inference and memory benchmarks.

    python -m benchmarks [--suite layers|train|infer|memory|all] [--threads N] [--repeats N]
                         [--quick] [--full] [--device cpu|gpu] [--out FILE.json] [--only NAMES]

Every workload is built twice, in nabi and in PyTorch, with the same float32 weights
(copied by name) and the same input; the two are checked against each other once,
then stepped alternately (nabi, torch, nabi, torch, …) in this one process. The
tables report median times and the ratio of medians nabi/torch (< 1: nabi faster).
See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import common as C

SUITES = ("layers", "train", "infer", "memory")
LR, MOMENTUM = 0.01, 0.9


# ----------------------------------------------------------------------------------
# workloads
# ----------------------------------------------------------------------------------

@dataclass
class Workload:
    name: str
    model: str
    batch: int
    shape: tuple          # (C, H, W)
    num_classes: int
    sgd: str = "momentum"  # momentum (0.9) | plain (w ← w − lr·g, both sides) | fused (plain; nabi updates in backward)
    usage: str = "trainer"  # trainer (as nabi.training.Trainer sets it up) | plain (as a PyTorch user writes it)
    kind: str = "classify"  # classify (cross-entropy) | reid (embedding_net + ArcFace) | simclr (SimCLR + NT-Xent)
    #                         | hardnet (the patch descriptor + HardNet's loss; num_classes: its width)

    def as_dict(self):
        return {"model": self.model, "batch": self.batch, "input": list(self.shape), "num_classes": self.num_classes,
                "sgd": self.sgd, "usage": self.usage, "kind": self.kind}


def model_workloads(device, full):
    """The whole-model workloads of the train, infer and memory suites."""
    gpu = device == "gpu"
    w = [Workload("lenet5 b64", "lenet5", 64, (1, 32, 32), 10),
         Workload("cifar_cnn b128", "cifar_cnn", 128, (3, 32, 32), 10),
         Workload("alexnet336 b1", "alexnet336", 1, (3, 336, 336), 5),
         Workload("alexnet336 b1, plain usage", "alexnet336", 1, (3, 336, 336), 5, usage="plain"),
         Workload("alexnet336 b1 plain SGD (2019 report)", "alexnet336", 1, (3, 336, 336), 5, "plain"),
         Workload("alexnet336 b1 plain SGD, nabi fused", "alexnet336", 1, (3, 336, 336), 5, "fused")]
    if gpu or full:
        w.append(Workload("alexnet336 b32", "alexnet336", 32, (3, 336, 336), 5))
    else:
        w.append(Workload("alexnet336 b8 (CPU; b32 with --full)", "alexnet336", 8, (3, 336, 336), 5))
    if gpu:
        w.append(Workload("vgg11 b64 224x224", "vgg11", 64, (3, 224, 224), 1000))
        w.append(Workload("resnet18 b128 224x224", "resnet18", 128, (3, 224, 224), 1000))
    elif full:
        w.append(Workload("vgg11 b8 224x224 (CPU --full)", "vgg11", 8, (3, 224, 224), 1000))
        w.append(Workload("resnet18 b8 224x224 (CPU --full)", "resnet18", 8, (3, 224, 224), 1000))
    else:
        w.append(Workload("vgg11 b8 64x64 (CPU; 224 with --full)", "vgg11", 8, (3, 64, 64), 1000))
        w.append(Workload("resnet18 b8 64x64 (CPU; 224 with --full)", "resnet18", 8, (3, 64, 64), 1000))
    if not gpu:                 # the sizes people train with on a CPU, and the re-ID and self-supervised steps
        w += [Workload("resnet18 b32 64x64", "resnet18", 32, (3, 64, 64), 1000),
              Workload("resnet18 b16 160x160", "resnet18", 16, (3, 160, 160), 1000),
              Workload("re-ID embedding resnet18 b16 160x160 ArcFace", "resnet18", 16, (3, 160, 160), 100,
                       kind="reid"),
              Workload("SimCLR resnet18_cifar 2x32 views 32x32", "resnet18_cifar", 64, (3, 32, 32), 128,
                       kind="simclr"),
              Workload("patch descriptor hardnet w8 2x256 patches 32x32", "hardnet", 512, (1, 32, 32), 8,
                       kind="hardnet")]
    return w


def _selected(name, only):
    return not only or any(s.strip().lower() in name.lower() for s in only.split(",") if s.strip())


def _batch(w, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((w.batch,) + tuple(w.shape), dtype=np.float32)
    labels = rng.integers(0, w.num_classes, size=w.batch).astype(np.int64)
    return x, labels


def _free(device):
    gc.collect()
    if device == "gpu":
        import cupy
        import torch
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()


def _set_dropout(nabi_model, torch_model, p_by_name=None):
    """Set every dropout probability to 0 (returns the old ones) or back to ``p_by_name``."""
    import torch.nn as tnn
    from nabi.layers import Dropout
    old = {}
    for name, m in nabi_model.named_modules():
        if isinstance(m, Dropout):
            old["n:" + name] = m.p
            m.p = 0.0 if p_by_name is None else p_by_name["n:" + name]
    for name, m in torch_model.named_modules():
        if isinstance(m, tnn.Dropout):
            old["t:" + name] = m.p
            m.p = 0.0 if p_by_name is None else p_by_name["t:" + name]
    return old


def step_macs(model, x, w):
    """Multiply-adds of one training step: 3× the forward's (the forward, ∂L/∂input and ∂L/∂weight of every
    convolution and fully connected layer; the torchvision/ptflops count of ``summary_macs``), less the first
    layer's ∂L/∂input, which neither side computes (the image needs no gradient; ``usage="plain"`` computes it).
    Counted in one eval-mode forward with hooks, before the timed steps."""
    counts = []

    def hook(m, forward, inp):
        out = forward(inp)
        counts.append(int(m.summary_macs(tuple(inp.shape), tuple(out.shape))))
        return out
    from nabi.layers import Module
    removers = [m.add_forward_hook(hook) for m in model.modules() if type(m).summary_macs is not Module.summary_macs]
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        for r in removers:
            r()
        model.train(was)
    total = sum(counts)
    first = counts[0] if counts and w.usage != "plain" else 0
    return 3 * total - first


# ----------------------------------------------------------------------------------
# train suite
# ----------------------------------------------------------------------------------

def _nabi_training(model, w):
    """nabi's SGD for workload w, set up as the Trainer does: the first layer computes no image
    gradient (PyTorch's input has none either), and with ``fused`` the update happens in backward.
    ``usage="plain"``: none of that, as a PyTorch user would write it (the image gradient is computed)."""
    from nabi.optim import SGD
    from nabi.training.trainer import enable_fused_sgd, skip_input_gradient
    opt = SGD(model.named_parameters(), lr=LR, momentum=MOMENTUM if w.sgd == "momentum" else 0.0)
    if w.usage == "plain":
        return opt
    if model.set_input_grad(False) is None:          # the re-ID network: its backbone's first layer (as nabi.reid)
        skip_input_gradient(getattr(model, "backbone", model))
    if w.sgd == "fused":
        enable_fused_sgd(model, opt)
    return opt


class _Unlabelled:
    """A loss of the outputs alone (NT-Xent, HardNet's: their pairs are rows i and i + N) with the unused labels
    argument of the other losses."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, z, labels):
        return self.loss(z)

    def backward(self):
        return self.loss.backward()


def _nt_xent():
    from nabi.layers.contrastive import NTXentLoss
    return _Unlabelled(NTXentLoss(0.5))


def _hardnet_loss():
    from nabi.layers import HardNetLoss
    return _Unlabelled(HardNetLoss(1.0))


def nabi_network(w, seed=0):
    """The nabi side of ``training_pair`` alone (``(model, loss)``), without importing torch."""
    from nabi.layers import ArcFaceLoss, CrossEntropyLoss
    if w.kind == "reid":
        return (C.build_nabi("embedding_net", w.num_classes, "cpu", seed,
                             {"backbone": w.model, "embedding_dim": 128, "head": "arcface"}), ArcFaceLoss(30.0, 0.5))
    if w.kind == "simclr":
        from .simclr_step import nabi_network as simclr_network
        return simclr_network(w.model, w.num_classes, seed), _nt_xent()
    if w.kind == "hardnet":
        return C.build_nabi(w.model, None, "cpu", seed, {"width": w.num_classes}), _hardnet_loss()
    return C.build_nabi(w.model, w.num_classes, "cpu", seed), CrossEntropyLoss()


def training_pair(w, dev, seed=0):
    """``(model, twin, nabi_loss, torch_loss)`` for workload ``w``: the two networks with the same float32 weights;
    ``nabi_loss(out, labels)`` returns a float and has ``backward()``; ``torch_loss(out, labels)`` a tensor."""
    import torch.nn.functional as F
    from nabi.layers import ArcFaceLoss, CrossEntropyLoss
    from .torch_models import build_embedding_pair, build_pair, torch_arcface
    if w.kind == "reid":
        model, twin = build_embedding_pair(w.model, w.num_classes, seed=seed)
        pair = model, twin, ArcFaceLoss(30.0, 0.5), torch_arcface
    elif w.kind == "simclr":
        from .simclr_step import build, torch_nt_xent
        model, twin = build(w.model, w.num_classes, seed=seed)
        pair = model, twin, _nt_xent(), lambda z, labels: torch_nt_xent(z, 0.5)
    elif w.kind == "hardnet":
        from .torch_models import build_hardnet_pair, torch_hardnet_loss
        model, twin = build_hardnet_pair(w.num_classes, seed=seed)
        pair = model, twin, _hardnet_loss(), lambda z, labels: torch_hardnet_loss(z)
    else:
        model, twin = build_pair(w.model, w.num_classes, "cpu", seed)
        pair = model, twin, CrossEntropyLoss(), F.cross_entropy
    if dev == "gpu":
        model.to("gpu")
        twin.to("cuda")
    return pair


def run_train(w, args, repeats, warmup):
    import torch

    dev = args.device
    model, twin, loss_fn, torch_loss = training_pair(w, dev)
    x, labels = _batch(w)
    xn, yn = C.to_nabi(x, dev), C.to_nabi(labels, dev)
    xt, yt = C.to_torch(x, dev), C.to_torch(labels, dev)
    model.train()
    twin.train()
    macs = step_macs(model, xn, w)
    opt = _nabi_training(model, w)
    topt = torch.optim.SGD(twin.parameters(), lr=LR, momentum=opt.hyper["momentum"])
    pc = time.perf_counter
    phases = {"nabi": [], "torch": []}
    last = {}

    plain = w.usage == "plain"

    def nabi_step():
        t0 = pc()
        if plain:                                       # as in PyTorch: the optimizer zeroes, first
            opt.zero_grad()
        logits = model(xn)
        loss = loss_fn(logits, yn)                      # a Python float (syncs on the GPU)
        t1 = pc()
        if not plain:
            model.zero_grad()
        model.backward(loss_fn.backward())
        t2 = pc()
        opt.step()
        if dev == "cpu":
            phases["nabi"].append((t1 - t0, t2 - t1, pc() - t2))
        last["nabi"] = (loss, logits)

    def torch_step():
        t0 = pc()
        topt.zero_grad(set_to_none=True)
        out = twin(xt)
        loss = torch_loss(out, yt)
        t1 = pc()
        loss.backward()
        t2 = pc()
        topt.step()
        if dev == "cpu":
            phases["torch"].append((t1 - t0, t2 - t1, pc() - t2))
        last["torch"] = (loss, out)

    # correctness, with dropout off in both (masks are random): loss at step 1 and after one SGD update
    # (float32 batch norm makes the second looser: the gradients themselves differ by ~1e-3 in ResNets)
    chk = C.Check()
    old_p = _set_dropout(model, twin)
    for label, rtol in (("loss", C.RTOL), ("loss after 1 SGD step", 10 * C.RTOL)):
        nabi_step()
        C.nabi_sync(dev)
        torch_step()
        C.torch_sync(dev)
        chk.compare(label, last["nabi"][0], last["torch"][0].item(), rtol=rtol)
        if label == "loss":
            chk.dtype("logits", last["nabi"][1])
            for pname, p in model.named_parameters():
                if w.sgd != "fused":                   # fused layers never store a gradient
                    chk.dtype(f"grad of {pname}", p.grad)
    for pname, p in model.named_parameters():
        chk.dtype(f"{pname} after SGD", p.data)
    _set_dropout(model, twin, old_p)

    # Every timed step starts from this state: weights and momentum are put back after each step
    # (outside the timing), so repeated steps on one batch cannot diverge to NaN or memorise it.
    n_params = [p for _, p in model.named_parameters()]
    n_saved = [p.data.copy() for p in n_params]
    n_bufs = [st["momentum_buffer"] for st in opt.state.values() if "momentum_buffer" in st]
    n_bufs_saved = [b.copy() for b in n_bufs]
    t_params = list(twin.parameters())
    t_saved = [p.detach().clone() for p in t_params]
    t_bufs = [topt.state[p]["momentum_buffer"] for p in t_params if "momentum_buffer" in topt.state[p]]
    t_bufs_saved = [b.clone() for b in t_bufs]

    def nabi_restore():
        for p, s in zip(n_params, n_saved):
            p.data[...] = s
        for b, s in zip(n_bufs, n_bufs_saved):
            b[...] = s
        C.nabi_sync(dev)

    def torch_restore():
        with torch.no_grad():
            for p, s in zip(t_params + t_bufs, t_saved + t_bufs_saved):
                p.copy_(s)
        C.torch_sync(dev)

    phases["nabi"].clear()
    phases["torch"].clear()
    times = C.alternate(nabi_step, torch_step, repeats, max(0, warmup - 2), args.pause,
                        (lambda: C.nabi_sync(dev)) if dev == "gpu" else None,
                        (lambda: C.torch_sync(dev)) if dev == "gpu" else None,
                        nabi_restore, torch_restore)
    row = {"suite": "train", "workload": w.name, **w.as_dict(), **C.summarize(times), "check": chk.summary(),
           "params": int(model.num_parameters()), "macs_per_step": macs,
           "final_loss": {"nabi": float(last["nabi"][0]), "torch": float(last["torch"][0].item())}}
    for side in ("nabi", "torch"):
        row[side]["gflops"] = 2 * macs / (row[side]["median_ms"] / 1e3) / 1e9
    if dev == "cpu":
        for side in ("nabi", "torch"):
            ph = np.array(phases[side][-repeats:]) * 1e3
            row[side]["phases_median_ms"] = dict(zip(("forward+loss", "backward", "update"),
                                                     np.median(ph, axis=0).round(3).tolist()))
    if not np.isfinite(row["final_loss"]["nabi"]) or not np.isfinite(row["final_loss"]["torch"]):
        row["check"]["problems"].append(f"non-finite loss after timing: {row['final_loss']}")
    return row                         # the models go with this frame; the caller frees the memory


# ----------------------------------------------------------------------------------
# infer suite
# ----------------------------------------------------------------------------------

def run_infer(w, args, repeats, warmup):
    import torch
    from .torch_models import build_pair

    dev = args.device
    model, twin = (training_pair(w, dev)[:2] if w.kind in ("hardnet", "simclr")     # no classifier twin of their own
                   else build_pair(w.model, w.num_classes, dev))
    x, _ = _batch(w)
    xn, xt = C.to_nabi(x, dev), C.to_torch(x, dev)
    model.eval()
    twin.eval()
    out = {}

    def nabi_step():
        out["nabi"] = model(xn)

    def torch_step():
        with torch.inference_mode():
            out["torch"] = twin(xt)

    chk = C.Check()
    nabi_step()
    torch_step()
    chk.compare("logits", out["nabi"], out["torch"])
    chk.dtype("logits", out["nabi"])
    times = C.alternate(nabi_step, torch_step, repeats, max(0, warmup - 1), args.pause,
                         (lambda: C.nabi_sync(dev)) if dev == "gpu" else None,
                         (lambda: C.torch_sync(dev)) if dev == "gpu" else None)
    row = {"suite": "infer", "workload": w.name, **w.as_dict(), **C.summarize(times), "check": chk.summary(),
           "params": int(model.num_parameters())}
    for side in ("nabi", "torch"):
        row[side]["images_per_s"] = w.batch / (row[side]["median_ms"] / 1e3)
    return row


# ----------------------------------------------------------------------------------
# layers suite: AlexNet-336's layers one by one (the 2019 campus-cat report's tables 3-7)
# ----------------------------------------------------------------------------------

ALEX_LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")


def _layer_desc(name, m, in_shape):
    from nabi.layers import Conv2d, Linear, MaxPool2d
    dims = "x".join(str(d) for d in in_shape[1:])
    if isinstance(m, Conv2d):
        (kh, kw), (sh, _), (ph, _) = m.kernel_size, m.stride, m.padding
        return f"{name} {dims} -> {m.out_channels} {kh}x{kw}/{sh} p{ph}"
    if isinstance(m, MaxPool2d):
        (kh, kw), (sh, _) = m.kernel_size, m.stride
        return f"{name} max {kh}x{kw}/{sh}{' ceil' if m.ceil_mode else ''} on {dims}"
    if isinstance(m, Linear):
        return f"{name} {m.in_features} -> {m.out_features}"
    return f"{name} {dims}"


def layer_shapes(model, device):
    """Input shape (batch 1) of every top-level layer of AlexNet-336, by running it once."""
    x = C.to_nabi(np.zeros((1,) + tuple(model.input_size), dtype=np.float32), device)
    model.eval()
    shapes = {}
    for name, m in model._modules.items():
        shapes[name] = tuple(x.shape)
        x = m(x)
    model.train()
    return shapes


def run_layers(args, repeats, warmup, batches):
    import torch
    from .torch_models import build_pair

    dev = args.device
    model, twin = build_pair("alexnet336", 5, dev)
    twin.train()
    shapes = layer_shapes(model, dev)
    rows = []
    for B in batches:
        for name in ALEX_LAYERS:
            m, tm = model._modules[name], getattr(twin, name)
            in_shape = (B,) + shapes[name][1:]
            wname = f"{_layer_desc(name, m, in_shape)} b{B}"
            if not _selected(wname, args.only):
                continue
            try:
                rows.append(_one_layer(wname, m, tm, in_shape, B, args, repeats, warmup, torch))
            except Exception as exc:                 # keep going: report the failure as a row
                rows.append(_error_row("layers", wname, exc))
            _print_progress(rows[-1])
            gc.collect()
    return rows


def _one_layer(wname, m, tm, in_shape, B, args, repeats, warmup, torch):
    dev = args.device
    rng = np.random.default_rng(2)
    x = rng.standard_normal(in_shape, dtype=np.float32)
    m.train()
    y_shape = tuple(m(C.to_nabi(x, dev)).shape)
    m.backward(C.to_nabi(np.zeros(y_shape, np.float32), dev))     # drop the cache
    g = rng.standard_normal(y_shape, dtype=np.float32)
    xn, gn = C.to_nabi(x, dev), C.to_nabi(g, dev)
    xt, gt = C.to_torch(x, dev, requires_grad=True), C.to_torch(g, dev)
    res = {}

    def nabi_step():
        m.zero_grad()
        y = m(xn)
        res["nabi"] = (y, m.backward(gn))

    def torch_step():
        xt.grad = None
        tm.zero_grad(set_to_none=True)
        y = tm(xt)
        y.backward(gt)
        res["torch"] = (y, xt.grad)

    chk = C.Check()
    nabi_step()
    torch_step()
    (yn, dxn), (yt, dxt) = res["nabi"], res["torch"]
    chk.compare("output", yn, yt)
    chk.compare("input grad", dxn, dxt)
    chk.dtype("output", yn)
    chk.dtype("input grad", dxn)
    for pname, p in m.named_parameters():
        tp = dict(tm.named_parameters())[pname]
        chk.compare(f"{pname} grad", p.grad, tp.grad)
        chk.dtype(f"{pname} grad", p.grad)
    res.clear()
    times = C.alternate(nabi_step, torch_step, repeats, max(0, warmup - 1), args.pause,
                         (lambda: C.nabi_sync(dev)) if dev == "gpu" else None,
                         (lambda: C.torch_sync(dev)) if dev == "gpu" else None)
    res.clear()
    return {"suite": "layers", "workload": wname, "layer": wname.split()[0], "batch": B, "input": list(in_shape[1:]),
            "output": list(y_shape[1:]), "what": "forward + backward (input, weight and bias gradients)",
            **C.summarize(times), "check": chk.summary()}


# ----------------------------------------------------------------------------------
# memory suite: one training step per side, each in a fresh process
# ----------------------------------------------------------------------------------

def _warm_up_kernels():
    """Load (or, the very first time, compile) nabi's numba kernels before measuring, so that the
    one-off JIT — LLVM's memory, like a library's import — is not counted as the step's memory.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    import itertools
    import nabi.layers as L
    from nabi.functional import conv_algo
    from nabi.optim import SGD
    from nabi.training.trainer import enable_fused_sgd
    from nabi.functional import cpu_kernels as K
    # every algorithm, and each kernel's parallel build as well as its one-thread build (the tiny arrays here would
    # run only the latter): a first run after the kernels' source changed compiles them, and that compiler's
    # memory, 50-300 MB, would otherwise count as the step's
    algorithms = ("im2col", "winograd", "winograd4", "direct")
    for fused, algo, parallel_min in itertools.product((False, True), algorithms, (K.PARALLEL_MIN_ELEMENTS, 0)):
        net = L.Sequential(L.Conv2d(3, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU(), L.Conv2d(4, 4, 3, padding=1),
                           L.ReLU(), L.MaxPool2d(2), L.MaxPool2d(3, 1, padding=1), L.MaxPool2d(3, 2, ceil_mode=True),
                           L.Flatten(), L.Linear(4 * 2 * 2, 3))          # the pooling kernels: 2×2, general, 3×3/2
        opt = SGD(net.named_parameters(), lr=0.01, momentum=0.0 if fused else MOMENTUM)
        if fused:
            enable_fused_sgd(net, opt)
        loss = L.CrossEntropyLoss()
        saved, K.PARALLEL_MIN_ELEMENTS = K.PARALLEL_MIN_ELEMENTS, parallel_min
        for n in (1, 2):
            with conv_algo.algorithm(algo):
                loss(net(np.zeros((n, 3, 8, 8), np.float32)), np.zeros(n, np.int64))
                net.zero_grad()
                net.backward(loss.backward())
                opt.step()
        K.PARALLEL_MIN_ELEMENTS = saved
    return round(time.perf_counter() - t0, 3)


def memory_child(args):
    """Runs in a fresh interpreter: build one side, take two training steps, print one JSON line."""
    spec = json.loads(args.memory_child)
    side, dev = spec["side"], args.device
    w = Workload(spec["name"], spec["model"], spec["batch"], tuple(spec["shape"]), spec["num_classes"],
                 spec.get("sgd", "momentum"), kind=spec.get("kind", "classify"))
    momentum = MOMENTUM if w.sgd == "momentum" else 0.0
    if side == "torch":
        C.set_threads(args.threads)
        if dev == "gpu":
            C.setup_gpu_float32()
    else:                                           # the nabi side never imports torch
        C.set_threads(args.threads, torch_too=False)
    x, labels = _batch(w)
    out = {"side": side}
    if side == "tune":
        model, loss_fn = nabi_network(w)
        model.train()
        loss_fn(model(C.to_nabi(x, dev)), C.to_nabi(labels, dev))
        model.backward(loss_fn.backward())
        return 0
    if side == "nabi":
        if dev == "cpu":
            out["kernels_warm_up_s"] = _warm_up_kernels()
        model, loss_fn = nabi_network(w)
        if dev == "gpu":
            model.to("gpu")
        model.train()
        xn, yn = C.to_nabi(x, dev), C.to_nabi(labels, dev)
        opt = _nabi_training(model, w)

        def step():
            loss = loss_fn(model(xn), yn)
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            C.nabi_sync(dev)
            return float(loss)
        out["weights_bytes"] = int(sum(p.data.nbytes for p in model.parameters()))
        from nabi.layers import Dropout
        out["dropout"] = any(isinstance(m, Dropout) and m.p > 0 for m in model.modules())
    else:
        import torch
        model, twin, _, torch_loss = training_pair(w, dev)
        del model
        twin.train()
        xt, yt = C.to_torch(x, dev), C.to_torch(labels, dev)
        topt = torch.optim.SGD(twin.parameters(), lr=LR, momentum=momentum)

        def step():
            topt.zero_grad(set_to_none=True)
            loss = torch_loss(twin(xt), yt)
            loss.backward()
            topt.step()
            C.torch_sync(dev)
            return float(loss.item())
        out["weights_bytes"] = int(sum(p.numel() * p.element_size() for p in twin.parameters()))
        out["dropout"] = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in twin.modules())
    gc.collect()
    if dev == "cpu":
        _memory_cpu(step, side, out)
    else:
        _memory_gpu(step, side, out)
    if side == "nabi":   # buffers Conv2d layers keep between steps (in RSS before step 2, so not in its peak)
        from nabi.functional.conv_fast import training_scratch_bytes
        out["workspace_bytes"] = int(sum(b.nbytes for m in model.modules()
                                         for b in (getattr(m, "_workspace", None) or {}).values())
                                     + training_scratch_bytes())
    print("MEMORY-RESULT " + json.dumps(out), flush=True)
    return 0


def _memory_cpu(step, side, out):
    import tracemalloc
    can_reset = C.reset_peak_rss()
    trimmed = C.trim_heap()
    out["method"] = (("peak RSS (VmHWM, reset via /proc/self/clear_refs) during the step minus RSS before it"
                      if can_reset else "ru_maxrss after the step minus ru_maxrss before it (a lower bound: "
                      "the peak while building the model may hide part of the step's)")
                     + ("; glibc malloc_trim(0) before each step" if trimmed else ""))
    losses = []
    for k in (1, 2):
        gc.collect()
        C.trim_heap()
        base = C.rss_bytes() if can_reset else C.peak_rss_bytes()
        if can_reset:
            C.reset_peak_rss()
        if side == "nabi":
            tracemalloc.start()
        losses.append(step())
        peak = C.peak_rss_bytes()
        out[f"step{k}_peak_bytes"] = max(0, peak - base)
        out[f"step{k}_rss_after_bytes"] = C.rss_bytes()
        if side == "nabi":
            out[f"step{k}_tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    out["losses"] = losses


def _memory_gpu(step, side, out):
    losses = []
    if side == "nabi":
        import cupy
        pool = cupy.get_default_memory_pool()
        out["method"] = ("CuPy default memory pool: growth of total_bytes() (bytes the pool holds, its high-water "
                         "mark since the pool keeps freed blocks) over the step, after free_all_blocks()")
        for k in (1, 2):
            gc.collect()
            pool.free_all_blocks()
            used0, total0 = pool.used_bytes(), pool.total_bytes()
            losses.append(step())
            out[f"step{k}_peak_bytes"] = pool.total_bytes() - total0
            out[f"step{k}_used_growth_bytes"] = pool.used_bytes() - used0
    else:
        import torch
        out["method"] = ("torch.cuda: max_memory_reserved() growth (comparable to CuPy's pool) and "
                         "max_memory_allocated() growth over the step")
        for k in (1, 2):
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            a0, r0 = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
            losses.append(step())
            out[f"step{k}_peak_bytes"] = torch.cuda.max_memory_reserved() - r0
            out[f"step{k}_allocated_peak_bytes"] = torch.cuda.max_memory_allocated() - a0
    out["losses"] = losses


def run_memory(w, args):
    root = Path(__file__).resolve().parent.parent
    spec = {"name": w.name, "model": w.model, "batch": w.batch, "shape": list(w.shape), "num_classes": w.num_classes,
            "sgd": w.sgd, "kind": w.kind}
    res = {}
    for side in ("tune", "nabi", "torch"):
        if side == "tune" and args.device != "cpu":
            continue
        cmd = [sys.executable, "-m", "benchmarks", "--memory-child", json.dumps({**spec, "side": side}),
               "--threads", str(args.threads), "--device", args.device]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if side == "tune":          # a first process times the convolution algorithms for these shapes (and keeps the
            continue                # choices in the cache file), so the measured step is training, not that timing
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY-RESULT ")]
        if proc.returncode != 0 or not line:
            raise RuntimeError(f"{side} child failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        res[side] = json.loads(line[-1][len("MEMORY-RESULT "):])
    chk = C.Check()
    if res["nabi"]["dropout"] or res["torch"]["dropout"]:
        chk.skipped = "losses not compared: dropout masks differ (the train suite checks this model)"
    else:
        chk.compare("step-1 loss", res["nabi"]["losses"][0], res["torch"]["losses"][0])
        chk.compare("step-2 loss", res["nabi"]["losses"][1], res["torch"]["losses"][1], rtol=10 * C.RTOL)
    n1, t1 = res["nabi"]["step1_peak_bytes"], res["torch"]["step1_peak_bytes"]
    return {"suite": "memory", "workload": w.name, **w.as_dict(), "nabi": res["nabi"], "torch": res["torch"],
            "ratio": n1 / t1 if t1 else float("inf"), "check": chk.summary()}


# ----------------------------------------------------------------------------------
# printing
# ----------------------------------------------------------------------------------

def _error_row(suite, name, exc):
    tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
    C.eprint(f"  ERROR in {name}: {tb}")
    return {"suite": suite, "workload": name, "error": tb, "traceback": traceback.format_exc(),
            "check": {"ok": False, "problems": [tb]}}


def _noise(row):
    def spread(s):
        return 100 * (s["q3_ms"] - s["q1_ms"]) / s["median_ms"] if s["median_ms"] else 0.0
    return f"{spread(row['nabi']):.0f}%/{spread(row['torch']):.0f}%"


def _check_label(row):
    chk = row.get("check", {})
    if row.get("error"):
        return "ERROR"
    if chk.get("ok"):
        return "ok (not compared: dropout)" if chk.get("skipped") else f"ok {chk.get('max_rel_err', 0):.0e}"
    return "WARNING: " + "; ".join(chk.get("problems", []))[:160]


def _cells(row):
    s = row["suite"]
    if row.get("error"):
        n = len(HEADERS[s])
        return [row["workload"]] + ["-"] * (n - 2) + ["ERROR: " + row["error"][:120]]
    if s == "memory":
        n, t = row["nabi"], row["torch"]
        extra = (C.fmt_mb(n.get("step1_tracemalloc_peak_bytes")) if "step1_tracemalloc_peak_bytes" in n
                 else C.fmt_mb(t.get("step1_allocated_peak_bytes")))
        return [row["workload"], C.fmt_mb(n["step1_peak_bytes"]), C.fmt_mb(t["step1_peak_bytes"]),
                f"{row['ratio']:.2f}", C.fmt_mb(n["step2_peak_bytes"]), C.fmt_mb(t["step2_peak_bytes"]),
                extra, C.fmt_mb(n.get("workspace_bytes")), _check_label(row)]
    cells = [row["workload"], C.fmt_ms(row["nabi"]["median_ms"]), C.fmt_ms(row["torch"]["median_ms"]),
             f"{row['ratio']:.2f}", f"{row['cpu_ratio']:.2f}"]
    if s == "infer":
        cells += [f"{row['nabi']['images_per_s']:,.1f}", f"{row['torch']['images_per_s']:,.1f}"]
    if s == "train":
        def ph(side):
            p = row[side].get("phases_median_ms")
            return "/".join(C.fmt_ms(v) for v in p.values()) if p else "-"
        cells += [ph("nabi"), ph("torch")]
    return cells + [_noise(row), _check_label(row)]


HEADERS = {
    "layers": ["workload (fwd+bwd)", "nabi ms", "torch ms", "ratio", "cpu ratio", "IQR n/t", "check"],
    "train": ["workload (train step)", "nabi ms", "torch ms", "ratio", "cpu ratio", "nabi f/b/u ms",
              "torch f/b/u ms", "IQR n/t", "check"],
    "infer": ["workload (inference)", "nabi ms", "torch ms", "ratio", "cpu ratio", "nabi img/s", "torch img/s",
              "IQR n/t", "check"],
    "memory": ["workload (1 train step)", "nabi MB", "torch MB", "ratio", "nabi MB s2", "torch MB s2",
               "traced MB", "nabi kept MB", "check"],
}


def _print_progress(row):
    cells = _cells(row)
    C.log("  " + "  ".join(cells))


def print_roofline(rows, peak):
    """Per training workload: multiply-adds per step, each side's achieved GFLOP/s and its share of the peak."""
    rows = [r for r in rows if r["suite"] == "train" and not r.get("error") and r.get("macs_per_step")]
    if not rows or not peak:
        return
    C.log("")
    C.log(f"== roofline: machine GEMM peak {peak['peak']} GFLOP/s (float32 {peak['size']}^3, best of NumPy's BLAS, "
          f"nabi's split product and torch.mm) ==")
    cells = [[r["workload"], f"{r['macs_per_step'] / 1e9:.2f}", f"{r['nabi']['gflops']:.1f}",
              f"{r['torch']['gflops']:.1f}", f"{100 * r['nabi']['gflops'] / peak['peak']:.0f}%",
              f"{100 * r['torch']['gflops'] / peak['peak']:.0f}%"] for r in rows]
    C.log(C.table(["workload (train step)", "GMAC/step", "nabi GFLOP/s", "torch GFLOP/s", "nabi % peak",
                   "torch % peak"], cells))
    C.log("   GMAC/step = multiply-adds of the convolutions and fully connected layers in one step (3x the forward's,"
          " less the image gradient);\n   GFLOP/s = 2 x GMAC/step / median step time")


def print_suite_table(suite, rows, args, gemm_peak=None):
    rows = [r for r in rows if r["suite"] == suite]
    if not rows:
        return
    headers = list(HEADERS[suite])
    if suite == "memory" and args.device == "gpu":
        headers[1:4] = ["nabi pool MB", "torch reserved MB", "ratio"]
        headers[6] = "torch alloc MB"
    C.log("")
    C.log(f"== {suite} ({args.device}, {args.threads} thread{'s' if args.threads != 1 else ''}) ==")
    C.log(C.table(headers, [_cells(r) for r in rows]))
    if suite == "train" and args.device == "cpu":
        C.log("   f/b/u = median forward+loss / backward / SGD update, ms")
    if suite == "memory":
        C.log("   MB = peak extra memory during the first training step (s2: the second step); "
              + ("traced = nabi's NumPy allocations seen by tracemalloc (step 1)" if args.device == "cpu"
                 else "torch alloc = max_memory_allocated growth")
              + "\n   nabi kept = Conv2d workspaces and the shared training scratch held between steps (already "
                "resident when step 2 starts)")
    if suite == "memory":
        C.log("   ratio = nabi / torch (step 1); < 1 means nabi needs less")
    else:
        C.log("   ratio = median nabi time / median torch time (wall clock); < 1 means nabi is faster\n"
              "   cpu ratio = the same with process CPU time (less sensitive to other processes; counts spinning "
              "threads)\n   IQR n/t = interquartile range / median of nabi / torch wall times (noise)")
    if suite == "train":
        print_roofline(rows, gemm_peak)


# ----------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=SUITES + ("all",), default="all", help="what to run (default: all)")
    p.add_argument("--threads", type=int, default=2, help="threads for both NumPy's BLAS and torch (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per workload (default 10, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds first, counting the correctness-check steps (default 2, 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="few repeats; layers at batch 1 only")
    p.add_argument("--full", action="store_true",
                   help="CPU: alexnet336 at batch 32 and vgg11/resnet18 at 224x224 (slow; the GPU sizes are always full)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<date>-<suite>-<threads>t.json)")
    p.add_argument("--only", default=None, help="comma-separated substrings: run only workloads whose name has one")
    p.add_argument("--pause", type=float, default=0.0,
                   help="seconds to sleep after each timed step (outside the timing; default 0)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from nabi.backend import keep_freed_memory
    kept = keep_freed_memory()          # as nabi's trainer does (NABI_MALLOC=system: not); both libraries share it
    if args.memory_child:
        return memory_child(args)
    if args.device == "gpu":
        ok, msg = C.gpu_ready()
        if not ok:
            C.log(msg)
            return 0
        C.setup_gpu_float32()
    notes = [C.set_threads(args.threads), "the allocator keeps freed memory between steps (nabi.backend."
             "keep_freed_memory, as nabi's trainer sets it; it serves PyTorch in this process too)" if kept else
             "the allocator returns freed memory as it chooses (NABI_MALLOC=system or not glibc)"]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.threads > (usable or 1):
        notes.append(f"--threads {args.threads} exceeds the {usable} usable CPUs")
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    suites = SUITES if args.suite == "all" else (args.suite,)
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv)
    info = C.machine_info(args, args.device, command.strip(), notes)
    C.log(f"{command.strip()}")
    C.log(f"{info['cpu_model']}, {info['cpus_usable']}/{info['cpu_count']} CPUs usable, load {info['load_average_at_start']}; "
          f"threads {args.threads}; numpy {info['numpy']} ({info['numpy_blas'].get('name', '?')}), "
          f"torch {info['torch']} ({info['torch_blas'].get('blas_info', '?')}); repeats {repeats}, warmup {warmup}"
          + (f"; GPU {info['gpu']}" if args.device == "gpu" else ""))
    if args.device == "cpu":
        C.log(C.blas_kernel_note())
        wait_note = C.omp_wait_note()
        if wait_note:
            info["notes"].append(wait_note)
    for n in info["notes"]:
        C.log("NOTE: " + n)
    if args.device == "cpu" and "train" in suites:
        info["gemm_peak"] = C.gemm_peak()
        g = info["gemm_peak"]
        C.log(f"GEMM peak (float32 {g['size']}^3, {args.threads} threads, best of 5): {g['peak']} GFLOP/s "
              f"(NumPy's BLAS {g['numpy_blas']}, nabi's split product {g['nabi']}, torch.mm {g['torch']})")
    rows = []
    t_start = time.perf_counter()
    for suite in suites:
        C.log(f"\n-- {suite} --")
        if suite == "layers":
            batches = (1,) if args.quick else (1, 8)
            rows += run_layers(args, repeats, warmup, batches)
            _free(args.device)
        else:
            for w in model_workloads(args.device, args.full):
                if not _selected(w.name, args.only):
                    continue
                if suite == "infer" and w.sgd != "momentum":   # the optimiser variants only matter in training
                    continue
                try:
                    if suite == "train":
                        row = run_train(w, args, repeats, warmup)
                    elif suite == "infer":
                        row = run_infer(w, args, repeats, warmup)
                    else:
                        row = run_memory(w, args)
                except Exception as exc:
                    row = _error_row(suite, w.name, exc)
                _free(args.device)
                rows.append(row)
                _print_progress(row)
        print_suite_table(suite, rows, args, info.get("gemm_peak"))
    info["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out) if args.out else C.default_out(args.suite, args.threads, args.device)
    payload = {"machine": info,
               "config": {"suite": args.suite, "threads": args.threads, "repeats": repeats, "warmup": warmup,
                          "quick": args.quick, "full": args.full, "device": args.device, "pause_s": args.pause,
                          "rtol": C.RTOL, "dtype": "float32", "sgd": {"lr": LR, "momentum": MOMENTUM}},
               "rows": rows}
    path = C.write_json(out, payload)
    bad = [r["workload"] for r in rows if not r.get("check", {}).get("ok", False)]
    if bad:
        C.log(f"\nWARNING: {len(bad)} workload(s) failed the nabi-vs-torch check or errored: {', '.join(bad)}")
    C.log(f"\nwrote {path}  ({info['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
