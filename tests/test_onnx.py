"""nabi.files.onnx: every layer and container through onnxruntime, dynamic batch, errors, atomic writes."""
import json
import os
from collections import OrderedDict

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from nabi.layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Concat, Conv2d,  # noqa: E402
                         Dropout, Flatten, Identity, LeakyReLU, Linear, LocalResponseNorm, LogSoftmax, MaxPool2d,
                         Module, ReLU, Residual, Sequential, Sigmoid, Softmax, Tanh)
from nabi.files.onnx import export_onnx, verify_onnx

TOL = dict(rtol=1e-4, atol=1e-4)


def _randomise_bn(bn, rng):
    n = bn.num_features
    bn.running_mean[:] = rng.standard_normal(n)
    bn.running_var[:] = rng.uniform(0.5, 2.0, n)
    bn.weight.data[:] = rng.uniform(0.5, 1.5, n)
    bn.bias.data[:] = rng.standard_normal(n) * 0.1


def net_a(rng):
    """Conv/BN/LRN (odd and even)/pools in ceil mode/identity residual/Concat/GAP/BN1d/LogSoftmax."""
    bn2, bn1 = BatchNorm2d(8), BatchNorm1d(5)
    _randomise_bn(bn2, rng), _randomise_bn(bn1, rng)
    return Sequential(
        Conv2d(3, 8, 3, stride=2, padding=1, rng=rng), bn2, ReLU(),
        LocalResponseNorm(5, 1e-2, 0.75, 2.0), LocalResponseNorm(4, 1e-2, 0.75, 2.0),
        MaxPool2d(3, 2, padding=1, ceil_mode=True),
        Residual(Sequential(Conv2d(8, 8, 3, padding=1, rng=rng), LeakyReLU(0.1)), after=ReLU()),
        AvgPool2d(3, 2, padding=1, ceil_mode=True),
        AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
        Concat(Sequential(Conv2d(8, 4, 1, rng=rng), Tanh()),
               Sequential(Conv2d(8, 4, 3, padding=1, rng=rng), Sigmoid())),
        Dropout(0.5), Identity(), AdaptiveAvgPool2d(1), Flatten(), Linear(8, 5, rng=rng), bn1, LogSoftmax())


def net_b(rng):
    """Projection residual (torchvision-style naming), floor pools, adaptive 2×2, Flatten(start_dim=2), Softmax."""
    block = Residual(OrderedDict([("conv1", Conv2d(4, 6, 3, stride=2, padding=1, rng=rng)), ("relu", ReLU()),
                                  ("conv2", Conv2d(6, 6, 3, padding=1, rng=rng))]),
                     shortcut=Conv2d(4, 6, 1, stride=2, rng=rng), after=ReLU(), shortcut_name="downsample")
    return Sequential(
        Conv2d(3, 4, 5, padding=2, bias=False, rng=rng), MaxPool2d(2), block,
        AvgPool2d(3, 1, padding=1, count_include_pad=True), AdaptiveAvgPool2d((2, 2)),
        Flatten(start_dim=2), Tanh(), Flatten(), Linear(24, 4, bias=False, rng=rng), Softmax())


@pytest.mark.parametrize("make, size, ops", [
    (net_a, 29, {"Conv", "BatchNormalization", "Relu", "LRN", "Mul", "Pow", "MaxPool", "Add", "LeakyRelu", "Pad",
                 "AveragePool", "Concat", "Tanh", "Sigmoid", "GlobalAveragePool", "Flatten", "Gemm", "LogSoftmax"}),
    (net_b, 16, {"Conv", "MaxPool", "Relu", "Add", "AveragePool", "Reshape", "Tanh", "Flatten", "Gemm",
                 "Softmax"}),
])
@pytest.mark.parametrize("opset", [13, 17])
def test_onnxruntime_matches_nabi(tmp_path, make, size, ops, opset):
    rng = np.random.default_rng(1)
    net = make(rng)
    path = tmp_path / "m.onnx"
    proto = export_onnx(net, path, (3, size, size), opset=opset)
    assert {n.op_type for n in proto.graph.node} == ops
    assert not {"Dropout", "Identity"} & {n.op_type for n in proto.graph.node}
    assert proto.opset_import[0].version == opset
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    net.eval()
    want = net(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOL)
    assert verify_onnx(net, path, x) < 1e-4


@pytest.mark.parametrize("pool, size", [
    (MaxPool2d(2, 2, padding=1, ceil_mode=True), 5),           # last window would start in the padding: dropped
    (MaxPool2d(3, 2, ceil_mode=True), 8),
    (AvgPool2d(2, 2, padding=1, ceil_mode=True), 5),
    (AvgPool2d(3, 2, padding=1, ceil_mode=True), 6),
    (AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False), 6),
    (AvgPool2d(3, 3, ceil_mode=True), 7),
])
def test_ceil_mode_pools(tmp_path, pool, size):
    x = np.random.default_rng(2).standard_normal((1, 2, size, size)).astype(np.float32)
    export_onnx(pool, tmp_path / "p.onnx", (2, size, size))
    assert verify_onnx(pool, tmp_path / "p.onnx", x) < 1e-5


def test_dynamic_and_static_batch(tmp_path):
    rng = np.random.default_rng(3)
    net = net_b(rng)
    export_onnx(net, tmp_path / "dyn.onnx", (3, 16, 16))
    x5 = rng.standard_normal((5, 3, 16, 16)).astype(np.float32)
    assert verify_onnx(net, tmp_path / "dyn.onnx", x5) < 1e-4
    model = onnx.load(str(tmp_path / "dyn.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim[1:]] == [4]

    export_onnx(net, tmp_path / "static.onnx", (3, 16, 16), dynamic_batch=False)
    model = onnx.load(str(tmp_path / "static.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    sess = ort.InferenceSession(str(tmp_path / "static.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        sess.run(None, {"input": x5})
    assert verify_onnx(net, tmp_path / "static.onnx", x5[:1]) < 1e-4


def test_names_metadata_and_state(tmp_path):
    net = net_b(np.random.default_rng(4))
    net.train()
    proto = export_onnx(net, tmp_path / "m.onnx", (3, 16, 16), input_name="image", output_name="probs",
                        class_names=["cat", "dog", "eel", "fox"])
    assert net.training and all(m.training for m in net.modules())
    assert all("forward" not in m.__dict__ for m in net.modules())
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["probs"]
    inits = {i.name: i for i in proto.graph.initializer}
    assert {"0.weight", "2.conv1.weight", "2.downsample.weight", "2.downsample.bias", "8.weight"} <= set(inits)
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in inits.values() if not i.name.endswith(".shape"))
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(inits["2.conv1.weight"]), net[2].conv1.weight.data)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["class_names"]) == ["cat", "dog", "eel", "fox"]
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert json.loads(sess.get_modelmeta().custom_metadata_map["class_names"])[2] == "eel"


class Mystery(Module):
    def forward(self, x):
        return x * 2


class Wrapper(Module):
    """Has children, is no container: needs eval_chain()."""

    def __init__(self):
        super().__init__()
        self.body = Sequential(Conv2d(3, 4, 3), ReLU())
        self.aux = Sequential(Flatten(), Linear(4 * 6 * 6, 2))   # training-only head
        self.head = Sequential(AdaptiveAvgPool2d(1), Flatten(), Linear(4, 2))

    def forward(self, x):
        h = self.body(x)
        return (self.head(h), self.aux(h)) if self.training else self.head(h)


class ChainedWrapper(Wrapper):
    def eval_chain(self):
        return [self.body, self.head]


def test_unsupported_layers_raise_clear_errors(tmp_path):
    with pytest.raises(NotImplementedError, match=r"2 \(AdaptiveAvgPool2d\) pools 8×8 to 3×3"):
        export_onnx(Sequential(Conv2d(3, 4, 1), ReLU(), AdaptiveAvgPool2d(3)), tmp_path / "a.onnx", (3, 8, 8))
    with pytest.raises(NotImplementedError, match=r"1 \(Mystery\)"):
        export_onnx(Sequential(ReLU(), Mystery()), tmp_path / "b.onnx", (3, 4, 4))
    with pytest.raises(NotImplementedError, match=r"Wrapper.*eval_chain"):
        export_onnx(Wrapper(), tmp_path / "c.onnx", (3, 8, 8))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(Sequential(ReLU()), tmp_path / "d.onnx", (3, 4, 4), opset=11)
    assert os.listdir(tmp_path) == []


def test_eval_chain_protocol(tmp_path):
    net = ChainedWrapper()
    proto = export_onnx(net, tmp_path / "w.onnx", (3, 8, 8))
    names = {i.name for i in proto.graph.initializer}
    assert "body.0.weight" in names and "head.2.weight" in names and not any(n.startswith("aux") for n in names)
    x = np.random.default_rng(5).standard_normal((3, 3, 8, 8)).astype(np.float32)
    assert verify_onnx(net, tmp_path / "w.onnx", x) < 1e-5


def test_atomic_write(tmp_path, monkeypatch):
    net = Sequential(Conv2d(3, 2, 3), ReLU(), Flatten(), Linear(2 * 4 * 4, 3))
    path = tmp_path / "model.onnx"
    export_onnx(net, path, (3, 6, 6))
    assert os.listdir(tmp_path) == ["model.onnx"]
    good = path.read_bytes()
    assert onnx.load(str(path)).graph.node[0].op_type == "Conv"

    # a failing export (model does not fit the input) leaves the old file alone
    with pytest.raises(ValueError, match=r"3 \(Linear\)"):
        export_onnx(net, path, (3, 7, 7))
    # a failure while replacing leaves the old file and no temp file
    def boom(src, dst):
        raise OSError("disk on fire")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        export_onnx(Sequential(Conv2d(3, 2, 1), Tanh()), path, (3, 6, 6))
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_batch_norm_without_affine_exports(tmp_path):
    """γ = 1, β = 0 of ``BatchNorm2d(affine=False)`` (no parameters) become constants of the BatchNormalization node."""
    bn = BatchNorm2d(3, affine=False)
    net = Sequential(Conv2d(2, 3, 3, padding=1, bias=False, rng=np.random.default_rng(4)), bn, ReLU())
    bn.running_mean[:] = [0.2, -0.4, 1.0]
    bn.running_var[:] = [0.5, 2.0, 1.5]
    path = tmp_path / "bn.onnx"
    proto = export_onnx(net, path, (2, 6, 6))
    assert "BatchNormalization" in {n.op_type for n in proto.graph.node}
    assert verify_onnx(net, path, np.random.default_rng(5).standard_normal((2, 2, 6, 6)).astype(np.float32)) < 1e-5
