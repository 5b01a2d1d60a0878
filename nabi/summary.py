"""Per-layer model summary: shapes, kernels, parameters, multiply–accumulates, memory.

    from nabi.summary import summary
    res = summary(net, (3, 224, 224))          # prints the table, returns a SummaryResult
    res.total_params, res.total_macs, res.to_markdown(), res.to_json()

One eval-mode forward pass on zeros of shape (batch, *input_shape) is run with a
recording forward hook (``Module.add_forward_hook``) on every leaf module (one
without children); the hooks are removed afterwards. Each layer describes itself
(``summary_geometry``, ``summary_macs``, ``summary_activation``), so this module
imports no layer. MACs follow torchvision/ptflops: Conv2d N·F·OH·OW·C·KH·KW,
Linear N·in·out, everything else 0 (ResNet-18 at 224×224: 1.814 GMACs).
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import numpy as np

from . import backend

__all__ = ["summary", "SummaryResult"]

_MB = 1024 * 1024  # "MB" as torchsummary and Keras print it (2^20 bytes)


# -- state-preserving tracing (shared with nabi.onnx_export) -------------------------
def _unique_named_modules(model):
    seen, out = set(), []
    for name, m in model.named_modules():
        if id(m) not in seen:
            seen.add(id(m))
            out.append((name, m))
    return out


@contextmanager
def preserved_eval(model):
    """Run the body with ``model`` in eval mode; afterwards every module's attributes
    (training flags, backward caches, forward hooks) are as before."""
    saved = [(m, dict(m.__dict__)) for _, m in _unique_named_modules(model)]
    model.eval()
    try:
        yield
    finally:
        for m, d in saved:
            for key in [k for k in m.__dict__ if k not in d]:
                del m.__dict__[key]
            for key, value in d.items():
                if m.__dict__.get(key, _MISSING) is not value:
                    m.__dict__[key] = value


_MISSING = object()


class _Tagged(ValueError):
    """A ValueError already re-raised with a layer's name (not wrapped twice)."""


def wrap_forwards(named_modules, on_call):
    """Hook each module's forward (``Module.add_forward_hook``) so that ``on_call(name, module, x, y)``
    runs after it; a ValueError inside a module is re-raised naming its dotted path and input
    shape. Undo with ``preserved_eval`` (or the functions returned, one per module)."""
    removers = []
    for name, m in named_modules:
        def hook(_m, forward, x, _name=name):
            try:
                y = forward(x)
            except _Tagged:
                raise
            except ValueError as e:
                label = f"{_name or '(model)'} ({type(_m).__name__})"
                shape = tuple(getattr(x, "shape", ()))
                err = _Tagged(f"layer {label} cannot take an input of shape {_fmt_shape(shape[1:])} "
                              f"(batch {shape[0] if shape else '?'}): {e}")
                err.layer = _name
                raise err from e
            on_call(_name, _m, x, y)
            return y

        removers.append(m.add_forward_hook(hook))
    return removers


# -- formatting helpers -------------------------------------------------------------
def _fmt_shape(shape):
    return "×".join(str(int(s)) for s in shape) if len(shape) else "scalar"


class SummaryResult:
    """Rows (one dict per leaf call, in execution order) and totals of :func:`summary`."""

    COLUMNS = ("Layer", "Type", "Input", "Kernel/stride/pad", "Output", "Params", "MACs")

    def __init__(self, rows, *, model_name, input_shape, batch_size, dtype, total_params, buffer_elements,
                 param_bytes, input_bytes, output_elements, activation_bytes):
        self.rows = rows
        self.model_name = model_name
        self.input_shape = tuple(input_shape)
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype).name
        self.total_params = total_params
        self.trainable_params = total_params  # every nabi Parameter is trained
        self.buffer_elements = buffer_elements
        self.total_macs = sum(r["macs"] for r in rows)
        self.param_bytes = param_bytes
        self.input_bytes = input_bytes
        self.output_elements = output_elements
        self.activation_bytes = activation_bytes

    @property
    def total_bytes(self):
        """Input + activations and their gradients + parameters and their gradients."""
        return self.input_bytes + self.activation_bytes + 2 * self.param_bytes

    def _cells(self, r):
        return [r["name"], r["type"], _fmt_shape(r["input_shape"]), r["geometry"], _fmt_shape(r["output_shape"]),
                f"{r['params']:,}", f"{r['macs']:,}"]

    def _totals(self):
        return [
            ("Total params", f"{self.total_params:,}"),
            ("Trainable params", f"{self.trainable_params:,}"),
            ("Buffers (not trained)", f"{self.buffer_elements:,}"),
            ("Total MACs", f"{self.total_macs:,} ({self.total_macs / 1e9:.3f} GMACs, "
                           f"{self.total_macs / 1e6:.2f} MMACs)"),
            ("Input size (MB)", f"{self.input_bytes / _MB:.2f}"),
            ("Forward/backward activations (MB)", f"{self.activation_bytes / _MB:.2f}"),
            ("Params + grads (MB)", f"{2 * self.param_bytes / _MB:.2f}"),
            ("Estimated total (MB)", f"{self.total_bytes / _MB:.2f}"),
        ]

    def to_text(self) -> str:
        body = [self._cells(r) for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in body]) for i, c in enumerate(self.COLUMNS)]
        right = {5, 6}

        def line(cells):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule_len = sum(widths) + 2 * (len(widths) - 1)
        head = (f'{self.model_name}: input {_fmt_shape(self.input_shape)}, batch {self.batch_size}, {self.dtype}')
        out = [head, "=" * rule_len, line(self.COLUMNS).rstrip(), "=" * rule_len]
        out += [line(row).rstrip() for row in body]
        out.append("=" * rule_len)
        out += [f"{k}: {v}" for k, v in self._totals()]
        out.append("-" * rule_len)
        return "\n".join(out)

    def to_markdown(self) -> str:
        out = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "|".join(["---"] * 5 + ["---:"] * 2) + "|"]
        for r in self.rows:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in self._cells(r)) + " |")
        out.append("")
        out += [f"- **{k}**: {v}" for k, v in self._totals()]
        return "\n".join(out)

    def to_dict(self) -> dict:
        rows = [{**r, "input_shape": list(r["input_shape"]), "output_shape": list(r["output_shape"]),
                 "kernel": list(r["kernel"]) if r["kernel"] else None,
                 "stride": list(r["stride"]) if r["stride"] else None,
                 "padding": list(r["padding"]) if r["padding"] else None} for r in self.rows]
        return {"model": self.model_name, "input_shape": list(self.input_shape), "batch_size": self.batch_size,
                "dtype": self.dtype, "rows": rows, "total_params": self.total_params,
                "trainable_params": self.trainable_params, "buffer_elements": self.buffer_elements,
                "total_macs": self.total_macs, "input_bytes": self.input_bytes,
                "activation_bytes": self.activation_bytes, "param_bytes": self.param_bytes,
                "total_bytes": self.total_bytes}

    def to_json(self, indent=2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self):
        return self.to_text()


def summary(model, input_shape, batch_size=1, file=None, dtype=np.float32) -> SummaryResult:
    """Print and return a per-leaf table of ``model`` on input (batch_size, *input_shape).

    ``file`` defaults to ``sys.stdout``; pass ``False`` to print nothing. The model's
    training flags and backward caches are left as they were. A layer that cannot take
    what reaches it raises ``ValueError`` naming its dotted path and that input shape.
    """
    input_shape = tuple(int(s) for s in input_shape)
    dtype = np.dtype(dtype)
    rows, seen_params = [], set()

    def on_call(name, m, x, y):
        own = [p for p in m._parameters.values() if p is not None]
        first = id(m) not in seen_params
        seen_params.add(id(m))
        kernel, stride, padding, geometry = m.summary_geometry()
        rows.append({
            "name": name or "(model)", "type": type(m).__name__,
            "input_shape": tuple(int(s) for s in x.shape[1:]), "output_shape": tuple(int(s) for s in y.shape[1:]),
            "kernel": kernel, "stride": stride, "padding": padding, "geometry": geometry,
            "activation": m.summary_activation(),
            "params": sum(p.size for p in own) if first else 0, "shared": not first,
            "macs": int(m.summary_macs(x.shape, y.shape)), "output_elements": int(np.prod(y.shape)),
        })

    leaves = [(n, m) for n, m in _unique_named_modules(model) if not m._modules]
    xp = backend.array_module(model.device)
    x = xp.zeros((int(batch_size),) + input_shape, dtype=dtype)
    with preserved_eval(model):
        wrap_forwards(leaves, on_call)
        try:
            model(x)
        except _Tagged as e:
            raise ValueError(f"summary: input {_fmt_shape(input_shape)} is too small or the wrong shape for "
                             f"{type(model).__name__}: {e}") from e.__cause__
        except ValueError as e:
            last = rows[-1]["name"] if rows else "(none)"
            raise ValueError(f"summary: {type(model).__name__} failed on input {_fmt_shape(input_shape)} "
                             f"after layer {last}: {e}") from e

    out_elems = sum(r["output_elements"] for r in rows)
    result = SummaryResult(
        rows, model_name=type(model).__name__, input_shape=input_shape, batch_size=int(batch_size), dtype=dtype,
        total_params=model.num_parameters(), buffer_elements=sum(int(b.size) for _, b in model.named_buffers()),
        param_bytes=sum(int(p.data.nbytes) for p in model.parameters()),
        input_bytes=int(x.nbytes), output_elements=out_elems, activation_bytes=out_elems * dtype.itemsize * 2)
    if file is not False:
        print(result.to_text(), file=file if file is not None else sys.stdout)
    return result
