"""Export a nabi model to ONNX with the ``onnx`` helper API (no PyTorch involved).

    from nabi.files.onnx import export_onnx, verify_onnx
    export_onnx(net, "net.onnx", (3, 224, 224), class_names=["cat", "dog"])
    verify_onnx(net, "net.onnx", x)          # max |onnxruntime − nabi| on x

The module tree is walked in eval order: ``Sequential`` → a chain; ``Residual`` →
body chain and shortcut (or the input) → ``Add`` → optional ``after``; ``Concat`` →
every branch on the same input → ``Concat``. A shape-tracing eval forward on zeros
runs first, so each layer's input shape is known (adaptive pooling, even-size LRN).

Protocol for custom networks: a module that is not one of these containers but has
children (e.g. a GoogLeNet whose aux heads run only in training) must define
``onnx_emit(exporter, x, path)`` writing its own sub-graph with ``exporter.node``/``exporter.emit``
(DenseBlock, SqueezeExcitation), or ``eval_chain()`` returning the modules its eval forward applies, in order, each to
the previous one's output. Anything else is a ``NotImplementedError`` naming it.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .. import backend
from ..functional.shape import output_hw
from ..layers.activation import Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from . import atomic_write_bytes
from ..layers.container import Concat, Residual, Sequential
from ..layers.conv import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d
from ..layers.drop_path import DropPath
from ..layers.linear import Flatten, Linear
from ..layers.module import Parameter
from ..layers.norm import BatchNorm1d, BatchNorm2d, Dropout, LocalResponseNorm
from ..summary import _Tagged, _unique_named_modules, preserved_eval, wrap_forwards

__all__ = ["export_onnx", "verify_onnx"]

MIN_OPSET = 13  # Softmax/LogSoftmax over a single axis


def _own_forward(m, cls):
    """True when ``m`` runs ``cls``'s forward (a subclass overriding it is not trusted)."""
    return isinstance(m, cls) and getattr(type(m), "forward") is cls.forward


class _Builder:
    def __init__(self, model, shapes, names):
        from onnx import helper, numpy_helper
        self.h, self.nh = helper, numpy_helper
        self.model, self.shapes, self.names = model, shapes, names
        self.nodes, self.inits = [], []
        self._init_names = {}
        self._used = set()
        self._cursor = {}

    # -- naming ----------------------------------------------------------------
    def fresh(self, base):
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def node(self, op, inputs, path, suffix="", **attrs):
        out = self.fresh(f"{path or 'model'}{suffix}:{op}")
        self.nodes.append(self.h.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, array, name, key=None):
        """An initializer (float32 unless integer); ``key`` dedupes a shared parameter."""
        if key is not None and key in self._init_names:
            return self._init_names[key]
        a = backend.to_numpy(array)
        a = a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)
        name = self.fresh(name)
        self.inits.append(self.nh.from_array(np.ascontiguousarray(a), name))
        if key is not None:
            self._init_names[key] = name
        return name

    def param(self, m, path, attr):
        p = getattr(m, attr)
        data = p.data if isinstance(p, Parameter) else p
        return self.const(data, f"{path}.{attr}" if path else attr, key=(id(m), attr))

    def in_shape(self, m, path):
        calls = self.shapes.get(id(m))
        if not calls:
            raise RuntimeError(f"onnx export: {path or 'model'} ({type(m).__name__}) did not run in the "
                               f"shape-tracing eval forward, so it cannot be exported where it is used")
        i = self._cursor.get(id(m), 0)
        self._cursor[id(m)] = i + 1
        return calls[min(i, len(calls) - 1)]

    def path_of(self, m, fallback):
        return self.names.get(id(m), fallback)

    # -- tree walk ------------------------------------------------------------------
    def emit(self, m, x, path):
        if callable(getattr(m, "onnx_emit", None)):  # a block that writes its own ONNX sub-graph
            self.in_shape(m, path)
            return m.onnx_emit(self, x, path)
        if m._modules and callable(getattr(m, "eval_chain", None)):
            for i, c in enumerate(m.eval_chain()):
                x = self.emit(c, x, self.path_of(c, f"{path}.chain{i}"))
            return x
        if _own_forward(m, Sequential):
            for name, c in m._modules.items():
                x = self.emit(c, x, f"{path}.{name}" if path else name)
            return x
        if _own_forward(m, Residual):
            self.in_shape(m, path)
            y = x
            for name in m._body_names:
                y = self.emit(m._modules[name], y, f"{path}.{name}" if path else name)
            sc = m.shortcut_module
            s = self.emit(sc, x, f"{path}.{m._shortcut_name}" if path else m._shortcut_name) if sc is not None else x
            out = self.node("Add", [y, s], path, ".add")
            if m._has_after:
                out = self.emit(m.after, out, f"{path}.after" if path else "after")
            return out
        if _own_forward(m, Concat):
            self.in_shape(m, path)
            outs = [self.emit(c, x, f"{path}.{name}" if path else name) for name, c in m._modules.items()]
            return self.node("Concat", outs, path, ".concat", axis=int(m.axis))
        if m._modules:
            raise NotImplementedError(
                f"onnx export: {path or 'model'} ({type(m).__name__}) has child modules but is not a Sequential, "
                f"Residual or Concat; give {type(m).__name__} an eval_chain() method returning the modules its "
                f"eval forward applies, in order")
        return self.leaf(m, x, path)

    def leaf(self, m, x, path):
        label = f"{path or 'model'} ({type(m).__name__})"
        shape = self.in_shape(m, path)
        if _own_forward(m, Identity) or _own_forward(m, Dropout) or _own_forward(m, DropPath):
            return x
        if _own_forward(m, Conv2d):
            ph, pw = m.padding
            ins = [x, self.param(m, path, "weight")] + ([self.param(m, path, "bias")] if m.bias is not None else [])
            return self.node("Conv", ins, path, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                             pads=[ph, pw, ph, pw], dilations=[1, 1], group=1)
        for cls, op in ((ReLU, "Relu"), (Sigmoid, "Sigmoid"), (Tanh, "Tanh")):
            if _own_forward(m, cls):
                return self.node(op, [x], path)
        if _own_forward(m, LeakyReLU):
            return self.node("LeakyRelu", [x], path, alpha=float(m.negative_slope))
        if _own_forward(m, LogSoftmax):
            return self.node("LogSoftmax", [x], path, axis=int(m.dim))
        if _own_forward(m, Softmax):
            return self.node("Softmax", [x], path, axis=int(m.dim))
        if _own_forward(m, MaxPool2d) or _own_forward(m, AvgPool2d):
            return self.pool(m, x, path, shape)
        if _own_forward(m, AdaptiveAvgPool2d):
            H, W = shape[2:]
            oh, ow = m.output_size
            if (oh, ow) == (1, 1):
                return self.node("GlobalAveragePool", [x], path)
            if H % oh == 0 and W % ow == 0:
                k = [H // oh, W // ow]
                return self.node("AveragePool", [x], path, kernel_shape=k, strides=k)
            raise NotImplementedError(
                f"onnx export: {label} pools {H}×{W} to {oh}×{ow}, which is not an even split; ONNX has no "
                f"adaptive average pooling (use an input size whose H, W are multiples of {oh}, {ow})")
        if _own_forward(m, Flatten):
            start = m.start_dim % len(shape)
            if start == 1:
                return self.node("Flatten", [x], path, axis=1)
            target = [0] + [int(d) for d in shape[1:start]] + [-1]
            return self.node("Reshape", [x, self.const(np.array(target, np.int64), f"{path}.shape")], path)
        if _own_forward(m, Linear):
            ins = [x, self.param(m, path, "weight")] + ([self.param(m, path, "bias")] if m.bias is not None else [])
            return self.node("Gemm", ins, path, transB=1)  # nabi's Linear takes (N, in) only
        if _own_forward(m, BatchNorm1d) or _own_forward(m, BatchNorm2d):
            if m.affine:
                ins = [x] + [self.param(m, path, a) for a in ("weight", "bias", "running_mean", "running_var")]
            else:                               # γ = 1, β = 0 (no parameters) as constants
                ones = np.ones(m.num_features, np.float32)
                ins = [x, self.const(ones, f"{path}.weight", key=(id(m), "weight")),
                       self.const(ones * 0, f"{path}.bias", key=(id(m), "bias"))] + \
                      [self.param(m, path, a) for a in ("running_mean", "running_var")]
            return self.node("BatchNormalization", ins, path, epsilon=float(m.eps))
        if _own_forward(m, LocalResponseNorm):
            return self.lrn(m, x, path, shape)
        raise NotImplementedError(f"onnx export: no ONNX translation for {label}")

    def pool(self, m, x, path, shape):
        (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
        H, W = shape[2:]
        oh, ow = output_hw((H, W), (kh, kw), (sh, sw), (ph, pw), m.ceil_mode, layer=path)
        eh, ew = max(0, (oh - 1) * sh + kh - (H + 2 * ph)), max(0, (ow - 1) * sw + kw - (W + 2 * pw))
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw])
        # ceil mode = floor mode with (eh, ew) extra cells on the bottom/right that never count,
        # written out explicitly so every runtime agrees with nabi (PyTorch) on the last window.
        if isinstance(m, MaxPool2d):
            return self.node("MaxPool", [x], path, pads=[ph, pw, ph + eh, pw + ew], ceil_mode=0, **attrs)
        if m.count_include_pad and (ph or pw) and (eh or ew):
            pads = self.const(np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64), f"{path}.pads")
            x = self.node("Pad", [x, pads], path, mode="constant")
            return self.node("AveragePool", [x], path, pads=[0, 0, eh, ew], ceil_mode=0, count_include_pad=0,
                             **attrs)
        return self.node("AveragePool", [x], path, pads=[ph, pw, ph + eh, pw + ew], ceil_mode=0,
                         count_include_pad=int(m.count_include_pad and not (eh or ew)), **attrs)

    def lrn(self, m, x, path, shape):
        n = m.size
        if n % 2 == 1:  # ONNX's window [c − ⌊(n−1)/2⌋, c + ⌈(n−1)/2⌉] equals PyTorch's for odd n
            return self.node("LRN", [x], path, size=n, alpha=float(m.alpha), beta=float(m.beta), bias=float(m.k))
        # even n: PyTorch sums channels [c − n/2, c + n/2 − 1]; write it as a banded 1×1 convolution
        C = int(shape[1])
        c, j = np.arange(C)[:, None], np.arange(C)[None, :]
        band = ((j >= c - n // 2) & (j <= c + (n - 1) // 2)).astype(np.float32)
        band = band.reshape((C, C) + (1,) * (len(shape) - 2))
        sq = self.node("Mul", [x, x], path, ".sq")
        s = self.node("Conv", [sq, self.const(band, f"{path}.window")], path, ".sum")
        s = self.node("Mul", [s, self.const(np.array(m.alpha / n, np.float32), f"{path}.alpha_n")], path, ".scale")
        s = self.node("Add", [s, self.const(np.array(m.k, np.float32), f"{path}.k")], path, ".bias")
        s = self.node("Pow", [s, self.const(np.array(-m.beta, np.float32), f"{path}.neg_beta")], path, ".pow")
        return self.node("Mul", [x, s], path)


def _trace_shapes(model, x):
    """id(module) → list of input shapes, one per call, from an eval forward on ``x``."""
    shapes, outs = {}, {}

    def on_call(name, m, xin, y):
        shapes.setdefault(id(m), []).append(tuple(int(s) for s in xin.shape))
        outs.setdefault(id(m), []).append(tuple(int(s) for s in y.shape))

    with preserved_eval(model):
        wrap_forwards(_unique_named_modules(model), on_call)
        try:
            y = model(x)
        except _Tagged as e:
            raise ValueError(f"export_onnx: input {tuple(x.shape[1:])} does not fit {type(model).__name__}: {e}") \
                from e.__cause__
    return shapes, tuple(int(s) for s in y.shape)


def export_onnx(model, path, input_shape, opset=17, input_name="input", output_name="logits", class_names=None,
                dynamic_batch=True, batch_size=1):
    """Write ``model`` (eval mode) to ``path`` as ONNX; ``input_shape`` excludes the batch.

    Weights become float32 initializers; ``class_names`` (a list) is stored as JSON
    in the metadata under ``class_names``. The model is checked with
    ``onnx.checker.check_model`` and written atomically. Returns the ``ModelProto``.
    """
    import onnx
    from onnx import TensorProto, helper

    if not MIN_OPSET <= int(opset) <= onnx.defs.onnx_opset_version():
        raise ValueError(f"export_onnx: opset must be in [{MIN_OPSET}, {onnx.defs.onnx_opset_version()}] "
                         f"(the installed onnx), got {opset}")
    input_shape = tuple(int(s) for s in input_shape)
    xp = backend.array_module(model.device)
    shapes, out_shape = _trace_shapes(model, xp.zeros((int(batch_size),) + input_shape,
                                                       dtype=_param_dtype(model)))

    names = {id(m): n for n, m in _unique_named_modules(model)}
    b = _Builder(model, shapes, names)
    b._used.update({input_name, output_name})
    last = b.emit(model, input_name, "")
    if b.nodes and b.nodes[-1].output[0] == last:
        b.nodes[-1].output[0] = output_name
    else:
        b.nodes.append(helper.make_node("Identity", [last], [output_name], name=f"{output_name}:Identity"))

    batch = "batch" if dynamic_batch else int(batch_size)
    graph = helper.make_graph(
        b.nodes, type(model).__name__,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, *input_shape])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, *out_shape[1:]])],
        initializer=b.inits)
    opsets = [helper.make_opsetid("", int(opset))]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="nabi",
                              ir_version=helper.find_min_ir_version_for(opsets))
    from .. import __version__
    proto.producer_version = __version__
    if class_names is not None:
        helper.set_model_props(proto, {"class_names": json.dumps([str(c) for c in class_names])})
    if proto.ByteSize() >= 2**31 - 1:
        raise ValueError(f"export_onnx: {type(model).__name__} is over 2 GB, the protobuf limit; "
                         f"external-data export is not supported")
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(path, proto.SerializeToString())
    return proto





def verify_onnx(model, path, x) -> float:
    """max |onnxruntime(x) − model(x)| with the CPU provider and nabi in eval mode (flags restored)."""
    import onnxruntime as ort
    x = np.ascontiguousarray(backend.to_numpy(x), dtype=np.float32)
    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    xp = backend.array_module(model.device)
    with preserved_eval(model):
        want = backend.to_numpy(model(xp.asarray(x.astype(_param_dtype(model), copy=False))))
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0


def _param_dtype(model):
    for p in model.parameters():
        return p.data.dtype
    return np.float32
