"""One SimCLR training step, nabi vs PyTorch: backbone → projection head → NT-Xent → backward → SGD step.

    python -m benchmarks.simclr_step [--model resnet18_cifar|cifar_cnn] [--batch 32] [--size 32]
                                     [--threads 2] [--repeats 5] [--out FILE.json]

Both sides hold the same float32 weights (the nabi SimCLR network's state copied by name into a
PyTorch twin whose backbone is the zoo model's twin without ``fc``), get the same 2N views
(rows i and i + N pairs), use τ = 0.5 and plain SGD (lr 0.01). The first step's loss and
projections are checked against each other, then steps alternate nabi, torch, … (each side's
weights move as training does). Reported: median wall time per step and the ratio nabi/torch.
"""
from __future__ import annotations

import argparse
import sys
from collections import OrderedDict

import numpy as np

from . import common as C


def torch_nt_xent(z, temperature):
    import torch
    M = z.shape[0]
    u = torch.nn.functional.normalize(z, dim=1)
    logits = (u @ u.T / temperature).masked_fill(torch.eye(M, dtype=torch.bool, device=z.device), float("-inf"))
    return torch.nn.functional.cross_entropy(logits, (torch.arange(M, device=z.device) + M // 2) % M)


def build(model_name, projection_dim, seed=0):
    import torch
    import torch.nn as tnn
    from nabi.selfsup.model import SimCLR, backbone_of
    from .torch_models import TBasicBlock, TResNet, t_cifar_cnn
    zoo = C.build_nabi(model_name, 10, "cpu", seed)
    backbone, f = backbone_of(zoo)
    from nabi import backend
    with backend.default_dtype(np.float32):
        model = SimCLR(backbone, f, projection_dim)
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18_cifar", choices=["resnet18_cifar", "cifar_cnn"])
    ap.add_argument("--batch", type=int, default=32, help="N photos per step (2N views)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--projection-dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", help="JSON output (default benchmarks/results/<date>-simclr-<threads>t.json)")
    args = ap.parse_args(argv)
    import torch
    from nabi.layers.contrastive import NTXentLoss
    from nabi.training.optim import SGD
    note = C.set_threads(args.threads)
    model, twin = build(args.model, args.projection_dim)
    model.train()
    twin.train()
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

    def nabi_step():
        z = model(x)
        loss_fn(z)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()

    def torch_step():
        topt.zero_grad(set_to_none=True)
        torch_nt_xent(twin(xt), 0.5).backward()
        topt.step()

    times = C.alternate(nabi_step, torch_step, args.repeats, warmup=args.warmup)
    s = C.summarize(times)
    views = 2 * args.batch
    print(C.table(["step", "nabi ms", "torch ms", "nabi/torch", "nabi views/s", "torch views/s"],
                  [[f"SimCLR {args.model} {views}×3×{args.size}×{args.size}", f"{s['nabi']['median_ms']:.1f}",
                    f"{s['torch']['median_ms']:.1f}", f"{s['ratio']:.2f}",
                    f"{views / s['nabi']['median_ms'] * 1e3:.0f}", f"{views / s['torch']['median_ms'] * 1e3:.0f}"]]))
    command = "python -m benchmarks.simclr_step " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"machine": C.machine_info(args, "cpu", command, [note]), "model": args.model, "batch": args.batch,
               "views": views, "size": args.size, "check": {"z_rel_err": z_err, "loss": [loss, tloss]}, **s}
    out = args.out or C.default_out("simclr", args.threads, "cpu")
    C.write_json(out, payload)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
