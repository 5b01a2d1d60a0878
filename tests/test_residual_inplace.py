"""``Residual`` adds the shortcut into the body's own new array (batch norm's output; a convolution's input
gradient) instead of allocating a sum: the results are those of the plain sums, the input and the shortcut are
never written, and an output a forward hook sees is never changed afterwards."""
from collections import OrderedDict

import numpy as np

from nabi import backend
from nabi import layers as L


def _block(rng):
    with backend.default_dtype(np.float64):
        return L.Residual(OrderedDict(conv=L.Conv2d(3, 3, 3, padding=1, rng=rng), bn=L.BatchNorm2d(3)),
                          after=L.ReLU())


def _plain(block, x, dy):
    """The same block's forward and backward with the sums written out."""
    conv, bn, relu = block.conv, block.bn, block.after
    s = bn(conv(x)) + x
    y = relu(s)
    g = relu.backward(dy)
    return y, conv.backward(bn.backward(g)) + g


def test_in_place_sums_equal_the_plain_ones_and_write_no_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 5))
    dy = rng.standard_normal((2, 3, 5, 5))
    a, b = _block(np.random.default_rng(1)), _block(np.random.default_rng(1))
    x0, dy0 = x.copy(), dy.copy()
    y = a(x)
    dx = a.backward(dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    y_ref, dx_ref = _plain(b, x, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


def test_a_hooked_body_output_is_left_as_the_hook_saw_it():
    rng = np.random.default_rng(2)
    block = _block(np.random.default_rng(3))
    seen = []

    def hook(m, forward, x):
        out = forward(x)
        seen.append((out, out.copy()))
        return out
    block.bn.add_forward_hook(hook)
    block(rng.standard_normal((2, 3, 5, 5)))
    out, copy = seen[0]
    np.testing.assert_array_equal(out, copy)


def test_the_relu_after_the_sum_is_written_over_it_and_a_hooked_one_sees_its_input_kept():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 5, 5))
    block = _block(np.random.default_rng(5))
    made = []
    block.bn.forward = (lambda f: lambda v: made.append(f(v)) or made[-1])(block.bn.forward)
    y = block(x)
    assert y is made[0]                                     # batch norm's own array, summed and rectified in place
    np.testing.assert_array_equal(y, np.maximum(y, 0))
    seen = []

    def hook(m, forward, v):
        seen.append((v, v.copy()))
        return forward(v)
    hooked = _block(np.random.default_rng(5))
    hooked.after.add_forward_hook(hook)
    np.testing.assert_array_equal(hooked(x), y)
    v, copy = seen[0]
    np.testing.assert_array_equal(v, copy)                  # the hook's input is not written over


def _basic_block(seed):
    rng = np.random.default_rng(seed)
    with backend.default_dtype(np.float64):
        block = L.Residual(OrderedDict(conv1=L.Conv2d(3, 3, 3, padding=1, bias=False, rng=rng), bn1=L.BatchNorm2d(3),
                                       relu=L.ReLU(), conv2=L.Conv2d(3, 3, 3, padding=1, bias=False, rng=rng),
                                       bn2=L.BatchNorm2d(3)), after=L.ReLU())
    for bn in (block.bn1, block.bn2):
        bn.weight.data = rng.uniform(0.5, 1.5, 3)
        bn.bias.data = rng.standard_normal(3) * 0.5
    return block


def test_the_bodys_batch_norm_and_relu_run_as_one_and_equal_them_run_one_by_one(monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 5, 5))
    dy = rng.standard_normal((2, 3, 5, 5))
    runs = []
    for fuse in (True, False):
        monkeypatch.setattr(L.Residual, "fuse", fuse)
        block = _basic_block(7)
        y = block(x)
        fused = set(block._fused)
        dx = block.backward(dy)
        runs.append((y, dx, block.conv1.weight.grad.copy(), block.bn1.weight.grad.copy(), block.bn1.bias.grad.copy(),
                     fused))
    assert runs[0][-1] == {2} and runs[1][-1] == set()      # bn1 + relu fused, then not
    for a, b in zip(runs[0][:-1], runs[1][:-1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_a_hooked_relu_in_the_body_runs_on_its_own():
    block = _basic_block(8)
    seen = []
    block.relu.add_forward_hook(lambda m, forward, x: seen.append(x.copy()) or forward(x))
    x = np.random.default_rng(9).standard_normal((2, 3, 5, 5))
    block(x)
    assert block._fused == set() and len(seen) == 1
    assert (seen[0] < 0).any()                               # the hook saw batch norm's output, before the ReLU
