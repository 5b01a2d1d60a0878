"""Self-supervised pretraining: NT-Xent (finite differences and PyTorch), the SimCLR model and data,
``nabi pretrain``, and ``nabi train --init`` from the pretrained backbone."""
import numpy as np
import pytest
import torch

from nabi.functional.contrastive import nt_xent_backward, nt_xent_forward, positive_top1
from nabi.layers.contrastive import NTXentLoss


def torch_nt_xent(z, temperature):
    """NT-Xent written with PyTorch ops: normalise, cosine logits with the diagonal masked, cross-entropy."""
    M = z.shape[0]
    u = torch.nn.functional.normalize(z, dim=1)
    logits = u @ u.T / temperature
    logits = logits.masked_fill(torch.eye(M, dtype=torch.bool), float("-inf"))
    target = (torch.arange(M) + M // 2) % M
    return torch.nn.functional.cross_entropy(logits, target)


def _numeric_grad(f, z, h=1e-6):
    g = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        old = z[idx]
        z[idx] = old + h
        fp = f(z)
        z[idx] = old - h
        fm = f(z)
        z[idx] = old
        g[idx] = (fp - fm) / (2 * h)
    return g


@pytest.mark.parametrize("N,D,tau", [(1, 3, 0.5), (2, 4, 0.1), (3, 5, 1.0), (4, 2, 0.07)])
def test_nt_xent_gradient_matches_finite_differences(N, D, tau):
    rng = np.random.default_rng(N * 100 + D)
    z = rng.standard_normal((2 * N, D))
    g = float(rng.uniform(0.5, 2.0)) * (1 if rng.random() < 0.5 else -1)      # random upstream scalar
    loss, cache = nt_xent_forward(z, tau)
    dz = nt_xent_backward(cache, g)
    num = _numeric_grad(lambda a: g * float(nt_xent_forward(a, tau)[0]), z.copy())
    np.testing.assert_allclose(dz, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-10, 1e-12), (np.float32, 2e-5, 1e-6)])
@pytest.mark.parametrize("N,D,tau", [(1, 4, 0.5), (4, 8, 0.5), (8, 16, 0.1), (16, 3, 0.2), (5, 32, 1.0)])
def test_nt_xent_equals_pytorch(N, D, tau, dtype, rtol, atol):
    rng = np.random.default_rng(7 * N + D)
    z = (rng.standard_normal((2 * N, D)) * rng.uniform(0.1, 5.0)).astype(dtype)
    g = float(rng.uniform(-2.0, 2.0))
    loss, cache = nt_xent_forward(z, tau)
    assert loss.dtype == dtype
    dz = nt_xent_backward(cache, g)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch_nt_xent(zt, tau)
    lt.backward(torch.tensor(g, dtype=zt.dtype))
    np.testing.assert_allclose(float(loss), lt.item(), rtol=rtol, atol=atol)
    assert dz.dtype == dtype
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=rtol, atol=atol)


def test_nt_xent_zero_row_uses_the_clamped_norm_like_pytorch():
    z = np.random.default_rng(1).standard_normal((4, 3))
    z[2] = 0.0
    loss, cache = nt_xent_forward(z, 0.5)
    dz = nt_xent_backward(cache, 1.0)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch_nt_xent(zt, 0.5)
    lt.backward()
    np.testing.assert_allclose(float(loss), lt.item(), rtol=1e-12)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_nt_xent_top1_counts_anchors_whose_other_view_is_nearest():
    base = np.eye(4)
    z = np.concatenate([base, base + 0.01])               # every view's nearest row is its pair
    _, cache = nt_xent_forward(z, 0.5)
    assert positive_top1(cache) == 8
    z2 = np.concatenate([base, base[[1, 0, 3, 2]]])       # the pairs are swapped: no positive is nearest
    _, cache2 = nt_xent_forward(z2, 0.5)
    assert positive_top1(cache2) == 0


def test_nt_xent_loss_layer_ignores_labels_and_rejects_bad_input():
    z = np.random.default_rng(2).standard_normal((6, 4))
    f = NTXentLoss(0.3)
    a = f(z, np.full(6, -1))
    b = f(z, None)
    assert a == b == pytest.approx(float(nt_xent_forward(z, 0.3)[0]))
    np.testing.assert_allclose(f.backward(2.0), nt_xent_backward(nt_xent_forward(z, 0.3)[1], 2.0))
    with pytest.raises(ValueError, match="even number"):
        f(z[:5])
    with pytest.raises(ValueError, match=r"\(2N, D\)"):
        f(z[None])
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(RuntimeError, match="before the loss"):
        NTXentLoss().backward()
