"""nabi.summary: per-leaf shapes, parameters and MACs, error naming, output formats, state kept."""
import io
import json

import numpy as np
import pytest

from nabi.layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, LeakyReLU, Linear, MaxPool2d, Module,
                         ReLU, Sequential, Softmax)
from nabi.summary import SummaryResult, summary


def small_net():
    return Sequential(Conv2d(3, 4, 3, padding=1), ReLU(), MaxPool2d(2),
                      Conv2d(4, 6, 3, stride=2, padding=1), BatchNorm2d(6), LeakyReLU(0.2),
                      AdaptiveAvgPool2d(1), Flatten(), Linear(6, 10), Softmax())


def test_small_net_params_macs_and_shapes_by_hand():
    res = summary(small_net(), (3, 8, 8), batch_size=2, file=False)
    assert isinstance(res, SummaryResult)
    assert [r["name"] for r in res.rows] == [str(i) for i in range(10)]
    assert [r["type"] for r in res.rows] == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "BatchNorm2d", "LeakyReLU",
                                             "AdaptiveAvgPool2d", "Flatten", "Linear", "Softmax"]
    outs = [(4, 8, 8), (4, 8, 8), (4, 4, 4), (6, 2, 2), (6, 2, 2), (6, 2, 2), (6, 1, 1), (6,), (10,), (10,)]
    assert [r["output_shape"] for r in res.rows] == outs
    assert [r["input_shape"] for r in res.rows] == [(3, 8, 8)] + outs[:-1]
    # params: conv1 4·3·9+4, conv2 6·4·9+6, bn 2·6, linear 6·10+10
    assert [r["params"] for r in res.rows] == [112, 0, 0, 222, 12, 0, 0, 0, 70, 0]
    assert res.total_params == 416 == res.trainable_params
    # MACs: N·F·OH·OW·C·KH·KW and N·in·out with N = 2
    macs = [2 * 4 * 8 * 8 * 3 * 9, 0, 0, 2 * 6 * 2 * 2 * 4 * 9, 0, 0, 0, 0, 2 * 6 * 10, 0]
    assert [r["macs"] for r in res.rows] == macs and res.total_macs == 15672
    conv2, pool = res.rows[3], res.rows[2]
    assert (conv2["kernel"], conv2["stride"], conv2["padding"]) == ((3, 3), (2, 2), (1, 1))
    assert (pool["kernel"], pool["stride"], pool["padding"]) == ((2, 2), (2, 2), (0, 0))
    assert [r["activation"] for r in res.rows if r["activation"]] == ["relu", "leaky_relu(0.2)", "softmax(dim=1)"]
    out_elems = 2 * sum(int(np.prod(s)) for s in outs)
    assert res.activation_bytes == out_elems * 4 * 2
    assert res.param_bytes == 416 * 4 and res.input_bytes == 2 * 3 * 8 * 8 * 4
    text = res.to_text()
    assert "3×8×8" in text and "6×2×2" in text and "3×3 /2 p1" in text
    assert "Total params: 416" in text and "Total MACs: 15,672" in text and "GMACs" in text


def test_prints_to_file_and_stdout(capsys):
    buf = io.StringIO()
    res = summary(small_net(), (3, 8, 8), file=buf)
    assert buf.getvalue().strip() == res.to_text()
    small_net().summary((3, 8, 8))  # Module.summary delegates here
    assert "Total params: 416" in capsys.readouterr().out


def test_too_small_input_names_layer_and_shape():
    net = Sequential()
    net.features = Sequential(Conv2d(3, 4, 3), ReLU(), MaxPool2d(2), MaxPool2d(2))
    net.head = Sequential(Flatten(), Linear(4, 2))
    assert summary(net, (3, 6, 6), file=False).rows[3]["output_shape"] == (4, 1, 1)  # 6 → 4 → 2 → 1 fits
    with pytest.raises(ValueError) as info:
        summary(net, (3, 5, 5), file=False)  # conv → 3×3, pool → 1×1, second pool cannot fit 2×2
    msg = str(info.value)
    assert "features.3 (MaxPool2d)" in msg and "4×1×1" in msg
    assert isinstance(info.value.__cause__, ValueError) and "too small" in str(info.value.__cause__)


def test_markdown_and_json():
    res = summary(small_net(), (3, 8, 8), file=False)
    md = res.to_markdown().splitlines()
    assert md[0] == "| Layer | Type | Input | Kernel/stride/pad | Output | Params | MACs |"
    assert md[2] == "| 0 | Conv2d | 3×8×8 | 3×3 /1 p1 | 4×8×8 | 112 | 6,912 |"
    assert any(line.startswith("- **Total params**: 416") for line in md)
    d = json.loads(res.to_json())
    assert d["total_params"] == 416 and d["total_macs"] == res.total_macs == 6912 + 864 + 60
    assert d["rows"][3]["output_shape"] == [6, 2, 2] and d["rows"][3]["stride"] == [2, 2]
    assert d["activation_bytes"] == res.activation_bytes


def test_train_flags_and_caches_untouched():
    rng = np.random.default_rng(0)
    net = Sequential(Conv2d(3, 4, 3, padding=1, rng=rng), BatchNorm2d(4), ReLU(), MaxPool2d(2), Flatten(),
                     Linear(4 * 4 * 4, 3, rng=rng))
    net[1].eval()  # a frozen batch norm inside a training model: per-module flags must come back
    flags = [m.training for m in net.modules()]
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    dy = rng.standard_normal((2, 3)).astype(np.float32)
    net.zero_grad()
    y_ref = net(x)
    net.backward(dy)
    grads_ref = [p.grad.copy() for p in net.parameters()]

    net.zero_grad()
    y = net(x)                          # training forward …
    summary(net, (3, 8, 8), batch_size=5, file=False)  # … a summary at another batch in between …
    net.backward(dy)                    # … and the backward still uses the first forward's caches
    np.testing.assert_array_equal(y, y_ref)
    for g, r in zip((p.grad for p in net.parameters()), grads_ref):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-7)
    assert [m.training for m in net.modules()] == flags
    assert all("forward" not in m.__dict__ for m in net.modules())


class AuxNet(Module):
    """GoogLeNet-like: an aux head that runs only in training, not a container subclass."""

    def __init__(self):
        super().__init__()
        self.stem = Sequential(Conv2d(3, 4, 3, padding=1), ReLU())
        self.aux = Sequential(AdaptiveAvgPool2d(1), Flatten(), Linear(4, 2))
        self.head = Sequential(AdaptiveAvgPool2d(1), Flatten(), Linear(4, 2))

    def forward(self, x):
        h = self.stem(x)
        out = self.head(h)
        return (out, self.aux(h)) if self.training else out


def test_custom_module_with_training_only_aux_head():
    net = AuxNet()
    res = summary(net, (3, 6, 6), file=False)
    assert [r["name"] for r in res.rows] == ["stem.0", "stem.1", "head.0", "head.1", "head.2"]
    assert res.total_params == net.num_parameters() == 112 + 10 + 10
    assert sum(r["params"] for r in res.rows) == 112 + 10
    assert net.training  # restored


def alexnet_336():
    return Sequential(
        Conv2d(3, 96, 11, stride=4), ReLU(), MaxPool2d(3, 2),
        Conv2d(96, 256, 5, padding=2), ReLU(), MaxPool2d(3, 2, ceil_mode=True),
        Conv2d(256, 384, 3, padding=1), ReLU(), Conv2d(384, 384, 3, padding=1), ReLU(),
        Conv2d(384, 256, 3, padding=1), ReLU(), MaxPool2d(3, 2, ceil_mode=True),  # 20 → 10 needs ceil mode
        Flatten(), Linear(25600, 4096), ReLU(), Linear(4096, 5))


def test_alexnet_336_matches_the_2019_report_tables():
    res = summary(alexnet_336(), (3, 336, 336), file=False)
    assert res.total_params == 108_629_381
    shape = {r["name"]: r["output_shape"] for r in res.rows}
    hwc = lambda s: (s[1], s[2], s[0])  # noqa: E731 - the 2019 report writes H×W×C
    assert [hwc(shape[k]) for k in ("0", "2", "3", "5", "6", "12")] == \
        [(82, 82, 96), (40, 40, 96), (40, 40, 256), (20, 20, 256), (20, 20, 384), (10, 10, 256)]
    assert shape["13"] == (25600,) and shape["16"] == (5,)
    macs = (96 * 82 * 82 * 3 * 121 + 256 * 40 * 40 * 96 * 25 + 384 * 20 * 20 * 256 * 9 + 384 * 20 * 20 * 384 * 9
            + 256 * 20 * 20 * 384 * 9 + 25600 * 4096 + 4096 * 5)
    assert res.total_macs == macs
    text = res.to_text()
    assert "3×336×336" in text and "96×82×82" in text and "Total params: 108,629,381" in text
    assert "11×11 /4 p0" in text and "3×3 /2 p0 ceil" in text
