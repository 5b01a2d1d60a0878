"""``nabi export``: a run or a zoo model as an ONNX file, checked against nabi with onnxruntime."""
from __future__ import annotations

from pathlib import Path

from .command import Command


def run(args):
    from ..files.onnx import export_onnx, verify_onnx
    from ..runs import load_run
    from .. import models
    import numpy as np
    src = Path(args.source)
    if src.exists():
        model, meta = load_run(src)
        shape, classes = tuple(meta["input_size"]), meta["classes"]
    else:
        model = models.get(args.source, **({"num_classes": args.classes} if args.classes else {}))
        model.eval()
        shape, classes = tuple(model.input_size), None
    if not args.onnx:
        raise ValueError("give --onnx OUT.onnx")
    export_onnx(model, args.onnx, shape, class_names=classes)
    x = np.random.default_rng(0).random((2,) + shape, dtype=np.float32)
    diff = verify_onnx(model, args.onnx, x)
    print(f"wrote {args.onnx}; onnxruntime vs nabi max |Δlogit| = {diff:.2e}")
    return 0


def add_arguments(p):
    p.add_argument("source", help="a run folder, a .safetensors file, or a zoo model name")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--classes", type=int, help="output classes of a zoo model (default: the model's)")


COMMAND = Command(
    "export", "export a run or a zoo model to ONNX (checked with onnxruntime; needs the onnx extra)", add_arguments,
    run, examples=("nabi export runs/cats --onnx cats.onnx", "nabi export resnet18 --onnx resnet18.onnx"))
