"""``nabi summary``: a zoo model's layers, shapes, parameters, MACs and memory, as a table."""
from __future__ import annotations

from .command import Command


def _parse_shape(text):
    try:
        parts = tuple(int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"--input must look like 3x224x224, got {text!r}") from None
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"--input must be CxHxW with positive sizes, got {text!r}")
    return parts


def run(args):
    from .. import models
    if args.list or not args.model:
        print("\n".join(models.names()))
        return 0
    kwargs = {}
    if args.classes:
        kwargs["num_classes"] = args.classes
    model = models.get(args.model, **kwargs)
    shape = _parse_shape(args.input) if args.input else tuple(model.input_size)
    result = model.summary(shape, batch_size=args.batch_size, file=False if args.markdown else None)
    if args.markdown:
        print(result.to_markdown())
    return 0


def add_arguments(p):
    p.add_argument("model", nargs="?", help="a zoo model name (default: list the names)")
    p.add_argument("--input", help="CxHxW, e.g. 3x336x336 (default: the model's)")
    p.add_argument("--classes", type=int, help="output classes (default: the model's)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for the memory column")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (default: text)")
    p.add_argument("--list", action="store_true", help="list the zoo's model names (default: off)")


COMMAND = Command(
    "summary", "per-layer table: shapes, parameters, MACs, memory", add_arguments, run,
    examples=("nabi summary resnet18 --input 3x224x224", "nabi summary --list"))
