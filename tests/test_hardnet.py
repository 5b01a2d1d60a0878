"""The local-descriptor network and its loss: HardNet's hardest-in-batch triplet margin loss proven by finite
differences (float64, random upstream gradient) and equal to the same loss written in PyTorch ops (float64 and
float32, ties included); the ``hardnet`` zoo model equal to HardNet's PyTorch network with the same weights."""
import numpy as np
import pytest
import torch
import torch.nn as tnn

import nabi.models as zoo
from nabi import backend
from nabi.functional import hardnet_loss as F
from nabi.gradcheck import check_module, numerical_gradient, relative_error
from nabi.layers import BatchNorm2d, HardNetLoss
from benchmarks.torch_models import t_hardnet as torch_hardnet   # HardNet's PyTorch network, shared
from helpers import compare_with_torch, copy_to_torch

TOLS = {np.float64: dict(rtol=1e-7, atol=1e-9), np.float32: dict(rtol=1e-4, atol=1e-5)}


def torch_hardnet_loss(x, margin=1.0, eps=F.EPS):
    """HardNet's loss in PyTorch ops; the hardest negative is the first smallest of (row i, column i) without
    the diagonal, as ``nabi.functional.hardnet_loss`` documents (torch's min over a dimension returns, and sends
    the gradient to, the first smallest)."""
    n = x.shape[0] // 2
    a, p = x[:n], x[n:]
    s = (a * a).sum(1)[:, None] + (p * p).sum(1)[None, :] - 2.0 * a @ p.T
    d = torch.sqrt(torch.clamp(s, min=0.0) + eps)
    off = d + torch.diag(torch.full((n,), float("inf"), dtype=x.dtype))
    hardest = torch.cat([off, off.T], dim=1).min(dim=1).values
    return torch.clamp(margin + torch.diagonal(d) - hardest, min=0.0).mean()


def _descriptors(rng, n, dim, dtype=np.float64):
    x = rng.standard_normal((2 * n, dim))
    noise = np.linspace(0.02, 1.0, n)[:, None]              # some positives near their anchors: hinges inactive
    x[n:] = x[:n] + noise * rng.standard_normal((n, dim))
    return (2 * x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)    # rows of length 2


def _loss_and_grad(x, margin, dloss, xp=np):
    loss_fn = HardNetLoss(margin)
    value = loss_fn(xp.asarray(x))
    return value, backend.to_numpy(loss_fn.backward(dloss)), loss_fn


@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_hardnet_loss_gradient_matches_finite_differences(margin):
    rng = np.random.default_rng(0)
    x = _descriptors(rng, 7, 5)
    dloss = float(rng.standard_normal())                     # a random upstream gradient
    loss_fn = HardNetLoss(margin)
    loss_fn(x)
    active = F.hardnet_loss_forward(x, margin)[1][5]
    assert 0 < active.sum() < 7                              # both branches of the hinge are exercised
    analytic = loss_fn.backward(dloss)
    numeric = numerical_gradient(lambda: dloss * loss_fn(x), x)
    assert relative_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("n, dim, margin", [(8, 16, 1.0), (33, 128, 1.0), (5, 3, 0.5)])
def test_hardnet_loss_equals_pytorch(n, dim, margin, dtype, xp):
    rng = np.random.default_rng(n)
    x = _descriptors(rng, n, dim, dtype)
    dloss = float(rng.uniform(0.5, 2.0))
    value, grad, _ = _loss_and_grad(x, margin, dloss, xp)
    xt = torch.tensor(x, requires_grad=True)
    lt = torch_hardnet_loss(xt, margin)
    lt.backward(torch.tensor(dloss, dtype=xt.dtype))
    np.testing.assert_allclose(value, lt.item(), **TOLS[dtype])
    np.testing.assert_allclose(grad, xt.grad.numpy(), **TOLS[dtype])


def _tied_batch(dtype):
    """Integer-valued descriptors (every squared distance exact): pair 0's hardest negative is tied between
    D(a0, p1), D(a0, p2) (row entries) and D(a1, p0) (a column entry); pair 1's between D(a1, p3) (row) and
    D(a3, p1) (column)."""
    return np.array([[-1, -2, -2], [0, 1, 0], [-2, -2, 2], [-2, 2, -1],
                     [1, -2, -1], [0, 1, -1], [2, -1, -1], [1, 1, -2]], dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_hardnet_loss_ties_go_to_the_first_row_entry_like_pytorch(dtype, xp):
    x = _tied_batch(dtype)
    _, cache = F.hardnet_loss_forward(x, 3.0)
    dist, pick, active = cache[2], cache[4], cache[5]
    assert dist[0, 1] == dist[0, 2] == dist[1, 0] < min(dist[0, 3], dist[2, 0], dist[3, 0])   # exact ties
    assert dist[1, 3] == dist[3, 1] < min(dist[1, 0], dist[1, 2], dist[0, 1], dist[2, 1])
    assert pick[0] == 1 and pick[1] == 3 and active[:2].all()   # the first row entry wins each tie
    value, grad, _ = _loss_and_grad(x, 3.0, 1.3, xp)
    xt = torch.tensor(x, requires_grad=True)
    lt = torch_hardnet_loss(xt, 3.0)
    lt.backward(torch.tensor(1.3, dtype=xt.dtype))
    np.testing.assert_allclose(value, lt.item(), **TOLS[dtype])
    np.testing.assert_allclose(grad, xt.grad.numpy(), **TOLS[dtype])
    # the other convention (the gradient to the tied column entry D(a1, p0) instead) gives another gradient
    n = 4
    swapped = list(backend.to_numpy(pick))
    swapped[0] = n + 1
    cache = F.hardnet_loss_forward(x, 3.0)[1]
    other = F.hardnet_loss_backward(cache[:4] + (np.array(swapped),) + cache[5:], 1.3)
    assert np.abs(other - grad).max() > 0.1


def test_hardnet_loss_value_by_hand_and_matching_count():
    # two pairs in one dimension: a = (0, 10), p = (1, 10.5); D = [[1, 10.5], [10, 0.5]] (+ε under the root)
    x = np.array([[0.0], [10.0], [1.0], [10.5]])
    loss_fn = HardNetLoss(margin=1.0)
    d = lambda v: np.sqrt(v * v + F.EPS)                                  # noqa: E731
    expected = (max(0, 1 + d(1.0) - min(d(10.5), d(10.0))) + max(0, 1 + d(0.5) - min(d(10.0), d(10.5)))) / 2
    assert loss_fn(x) == pytest.approx(expected)
    assert loss_fn.correct == 2
    x = np.array([[0.0], [10.0], [20.0], [1.0], [10.5], [10.2]])          # p2 beside a1: a1 and a2 go wrong
    loss_fn(x)
    assert loss_fn.correct == 1


def test_hardnet_loss_refuses_bad_input():
    loss_fn = HardNetLoss()
    with pytest.raises(RuntimeError, match="before the loss"):
        loss_fn.backward()
    with pytest.raises(ValueError, match="even number"):
        loss_fn(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="even number"):
        loss_fn(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(2n, D\)"):
        loss_fn(np.zeros((4, 3, 1)))
    with pytest.raises(TypeError, match="floating"):
        loss_fn(np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="margin"):
        HardNetLoss(-1.0)


# -- the network -----------------------------------------------------------------------------------------------


def test_hardnet_has_hardnets_keys_and_sizes():
    model = zoo.get("hardnet")
    assert set(model.state_dict()) == {k for k in torch_hardnet(32).state_dict() if "num_batches" not in k}
    assert sum(p.size for p in model.parameters()) == 1_334_560
    assert model.input_size == (1, 32, 32)
    assert zoo.count_parameters("hardnet", width=8) == sum(p.numel() for p in torch_hardnet(8).parameters())
    with pytest.raises(ValueError, match="width"):
        zoo.get("hardnet", width=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_hardnet_equals_pytorch(dtype, train, xp):
    rng = np.random.default_rng(3)
    with backend.default_dtype(dtype):
        model = zoo.get("hardnet", width=4, embedding_dim=16, dropout=0.0)
    tmodel = torch_hardnet(4, 16, dropout=0.0)
    if not train:                                    # non-trivial running statistics for the eval forward
        for name, b in model.named_buffers():
            b[...] = rng.uniform(0.5, 1.5, b.shape) if name.endswith("var") else rng.normal(0, 0.3, b.shape)
        model.set_keep_cache()
    tol = TOLS[dtype] if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    compare_with_torch(model, tmodel, rng.standard_normal((6, 1, 32, 32)), xp=xp, dtype=dtype, train=train, **tol)


def test_hardnet_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    backend.seed(0)        # the weights too: not whatever the tests before left in the global generator
    with backend.default_dtype(np.float64):
        model = zoo.get("hardnet", width=2, embedding_dim=6, dropout=0.0)
    errs = check_module(model, rng.standard_normal((3, 1, 32, 32)), max_coords=40)
    assert max(errs.values()) < 1e-6, errs


def test_batchnorm_without_affine_has_no_parameters_and_is_proven():
    bn = BatchNorm2d(3, affine=False)
    assert list(bn.parameters()) == [] and set(bn.state_dict()) == {"running_mean", "running_var"}
    assert "affine=False" in repr(bn)
    with backend.default_dtype(np.float64):
        bn = BatchNorm2d(3, affine=False)
    errs = check_module(bn, np.random.default_rng(5).standard_normal((4, 3, 5, 5)))
    assert max(errs.values()) < 1e-6, errs


def test_hardnet_loads_a_pytorch_state_dict():
    tmodel = torch_hardnet(4, 16).eval()
    with torch.no_grad():
        for b in tmodel.buffers():
            if b.dtype.is_floating_point:
                b.uniform_(0.5, 1.5)
    model = zoo.get("hardnet", width=4, embedding_dim=16)
    model.load_state_dict({k: v.numpy() for k, v in tmodel.state_dict().items() if "num_batches" not in k})
    model.eval()
    x = np.random.default_rng(6).standard_normal((3, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), expected, rtol=1e-4, atol=1e-5)
    copy_to_torch(model, torch_hardnet(4, 16))       # and back: the same keys both ways
