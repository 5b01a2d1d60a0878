"""Embedding heads and metric-learning losses: finite differences (float64, random upstream gradient)
and equality with the same formulas written in PyTorch ops."""
import math

import numpy as np
import pytest
import torch

from nabi.functional import embedding as F
from nabi.gradcheck import check_module, numerical_gradient, relative_error
from nabi.layers import ArcFaceLoss, CosFaceLoss, CosineLinear, EmbeddingHead, L2Normalize, TripletLoss

TOL = 1e-6


def _loss_gradcheck(loss_obj, out, labels, dloss=0.7):
    """Analytic ∂(dloss·L)/∂out against central differences."""
    loss_obj(out, labels)
    analytic = loss_obj.backward(dloss)
    numeric = numerical_gradient(lambda: dloss * loss_obj(out, labels), out)
    return relative_error(analytic, numeric)


# -- layers: finite differences ---------------------------------------------------------------------
def test_l2_normalize_gradient():
    x = np.random.default_rng(20).standard_normal((5, 7))     # not check_module's upstream seed: G = x has dx = 0
    errs = check_module(L2Normalize(), x)
    assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize("subcenters", [1, 3])
def test_cosine_linear_gradient(subcenters):
    rng = np.random.default_rng(1)
    layer = CosineLinear(6, 4, subcenters=subcenters, rng=rng)
    layer.weight.data = layer.weight.data.astype(np.float64)
    errs = check_module(layer, rng.standard_normal((5, 6)))
    assert max(errs.values()) < TOL, errs


def test_embedding_head_gradient():
    rng = np.random.default_rng(2)
    head = EmbeddingHead(8, 4, rng=rng)
    for p in head.parameters():
        p.data = p.data.astype(np.float64)
    for name in ("running_mean", "running_var"):
        object.__setattr__(head.bn, name, getattr(head.bn, name).astype(np.float64))
    errs = check_module(head, rng.standard_normal((6, 8)))
    assert max(errs.values()) < TOL, errs


# -- losses: finite differences -----------------------------------------------------------------------
def _cosines(rng, n=6, c=5):
    return np.tanh(rng.standard_normal((n, c)))          # inside (−1, 1), like real cosines


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_gradient(easy_margin):
    rng = np.random.default_rng(3)
    c = _cosines(rng)
    y = rng.integers(0, 5, 6)
    c[0, y[0]] = -0.95      # θ + m > π: the fall-back branch (or, with easy margin, c < 0)
    c[1, y[1]] = 0.3
    assert _loss_gradcheck(ArcFaceLoss(scale=8.0, margin=0.5, easy_margin=easy_margin), c, y) < TOL


def test_cosface_gradient():
    rng = np.random.default_rng(4)
    c, y = _cosines(rng), rng.integers(0, 5, 6)
    assert _loss_gradcheck(CosFaceLoss(scale=10.0, margin=0.35), c, y) < TOL


def test_triplet_gradient():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 4))
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert _loss_gradcheck(TripletLoss(margin=5.0), x, y) < TOL     # a wide margin keeps every triplet active


def test_triplet_gradient_with_inactive_triplets():
    rng = np.random.default_rng(1)
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    x = 2 * rng.standard_normal((4, 4))[y] + 0.7 * rng.standard_normal((8, 4))     # four individuals, clustered
    f = TripletLoss(margin=0.3)
    f(x, y)
    active = f._cache[-1]
    assert active.any() and not active.all()            # both kinds present
    assert _loss_gradcheck(f, x, y) < TOL


# -- PyTorch: the same formulas ---------------------------------------------------------------------------
def _torch_arcface(c, y, s, m, easy_margin):
    ct = c.gather(1, y[:, None])[:, 0]
    cc = ct.clamp(-1 + 1e-7, 1 - 1e-7)
    sin = torch.sqrt(1 - cc * cc)
    phi = cc * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        phi = torch.where(cc > 0, phi, cc)
    else:
        phi = torch.where(cc > math.cos(math.pi - m), phi, cc - math.sin(math.pi - m) * m)
    onehot = torch.nn.functional.one_hot(y, c.shape[1]).bool()
    z = torch.where(onehot, phi[:, None], c) * s
    return torch.nn.functional.cross_entropy(z, y)


def _compare(nabi_loss, torch_fn, out, y, rtol=1e-10):
    rng = np.random.default_rng(9)
    g = float(rng.standard_normal())
    t = torch.tensor(out, requires_grad=True)
    lt = torch_fn(t, torch.from_numpy(y))
    lt.backward(torch.tensor(g, dtype=torch.float64))
    loss = nabi_loss(out, y)
    np.testing.assert_allclose(loss, lt.item(), rtol=rtol)
    np.testing.assert_allclose(nabi_loss.backward(g), t.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_matches_torch(easy_margin):
    rng = np.random.default_rng(10)
    c, y = _cosines(rng, 8, 6), rng.integers(0, 6, 8)
    c[0, y[0]] = -0.99         # θ ≈ 172°: θ + m > π
    c[1, y[1]] = -0.2
    c[2, y[2]] = 0.999
    _compare(ArcFaceLoss(30.0, 0.5, easy_margin), lambda t, yt: _torch_arcface(t, yt, 30.0, 0.5, easy_margin), c, y)


def test_cosface_matches_torch():
    rng = np.random.default_rng(11)
    c, y = _cosines(rng, 8, 6), rng.integers(0, 6, 8)

    def ref(t, yt):
        onehot = torch.nn.functional.one_hot(yt, t.shape[1]).to(t.dtype)
        return torch.nn.functional.cross_entropy(30.0 * (t - 0.35 * onehot), yt)
    _compare(CosFaceLoss(30.0, 0.35), ref, c, y)


def _torch_triplet(x, y, margin):
    d = torch.cdist(x, x)                               # selection only
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    p = torch.where(pos_mask, d, torch.tensor(-math.inf, dtype=x.dtype)).argmax(1)
    n = torch.where(neg_mask, d, torch.tensor(math.inf, dtype=x.dtype)).argmin(1)
    a = torch.nonzero(valid)[:, 0]
    dap = torch.sqrt(((x[a] - x[p[a]]) ** 2).sum(1).clamp_min(1e-12))
    dan = torch.sqrt(((x[a] - x[n[a]]) ** 2).sum(1).clamp_min(1e-12))
    return torch.relu(dap - dan + margin).mean()


def test_triplet_matches_torch():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((12, 5))
    y = np.repeat(np.arange(4), 3)
    y[-1] = 9                                            # an individual alone in the batch: no anchor of its own
    _compare(TripletLoss(0.5), lambda t, yt: _torch_triplet(t, yt, 0.5), x, y)


def test_cosine_linear_matches_torch():
    rng = np.random.default_rng(13)
    layer = CosineLinear(5, 3, subcenters=2, rng=rng)
    w = rng.standard_normal((6, 5))
    layer.weight.data = w.copy()
    x = rng.standard_normal((4, 5))
    G = rng.standard_normal((4, 3))
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ct = torch.nn.functional.normalize(xt) @ torch.nn.functional.normalize(wt).T
    yt = ct.reshape(4, 3, 2).amax(2)
    yt.backward(torch.from_numpy(G))
    y = layer(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    layer.zero_grad()
    dx = layer.backward(G)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, wt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_embedding_head_matches_torch():
    rng = np.random.default_rng(14)
    head = EmbeddingHead(6, 4, rng=rng)
    for p in head.parameters():
        p.data = p.data.astype(np.float64)
    x = rng.standard_normal((5, 6))
    G = rng.standard_normal((5, 4))
    fc = torch.nn.Linear(6, 4, bias=False).double()
    bn = torch.nn.BatchNorm1d(4).double()
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(head.fc.weight.data))
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.normalize(bn(fc(xt)))
    yt.backward(torch.from_numpy(G))
    y = head(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    head.zero_grad()
    np.testing.assert_allclose(head.backward(G), xt.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(head.fc.weight.grad, fc.weight.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(head.bn.weight.grad, bn.weight.grad.numpy(), rtol=1e-8, atol=1e-10)


# -- margin cases and ties --------------------------------------------------------------------------------
def test_arcface_fallback_when_angle_passes_pi():
    """θ + m > π: the target logit is s·(cos θ − m·sin m), not s·cos(θ + m) (which would rise again)."""
    m, s = 0.5, 1.0
    th = math.cos(math.pi - m)
    c = np.array([[th - 0.01, 0.0], [th + 0.01, 0.0]])
    y = np.array([0, 0])
    f = ArcFaceLoss(scale=s, margin=m)
    f(c, y)
    logits0 = np.array([c[0, 0] - math.sin(math.pi - m) * m, 0.0])
    logits1 = np.array([math.cos(math.acos(c[1, 0]) + m), 0.0])
    expected = np.mean([-(z[0] - np.log(np.exp(z).sum())) for z in (logits0, logits1)])
    assert f(c, y) == pytest.approx(expected, rel=1e-12)
    d = f.backward()
    p0 = np.exp(logits0) / np.exp(logits0).sum()
    assert d[0, 0] == pytest.approx((p0[0] - 1) / 2 * 1.0, rel=1e-12)      # dφ/dc = 1 on the fall-back


def test_arcface_easy_margin_leaves_obtuse_angles():
    c = np.array([[-0.3, 0.1]])
    y = np.array([0])
    f = ArcFaceLoss(scale=2.0, margin=0.5, easy_margin=True)
    z = np.array([-0.6, 0.2])
    assert f(c, y) == pytest.approx(-(z[0] - np.log(np.exp(z).sum())), rel=1e-12)


def test_arcface_clamps_cosine_of_one():
    c = np.array([[1.0, 0.0], [-1.0, 0.0]])
    y = np.array([0, 0])
    f = ArcFaceLoss(scale=4.0, margin=0.5)
    assert math.isfinite(f(c, y))
    d = f.backward()
    assert np.isfinite(d).all()
    assert d[0, 0] == 0 and d[1, 0] == 0        # no gradient through the clip, as torch.clamp


def test_triplet_ties_pick_the_first_index():
    # anchor 0 at the origin; positives 1 and 2 at the same distance 1; negatives 3 and 4 at distance 2
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    a, p, n = F.batch_hard_pairs(x, y)
    assert a[0] == 0 and p[0] == 1 and n[0] == 3
    f = TripletLoss(margin=1.5)
    loss = f(x, y)
    # anchor 0: d_ap = 1, d_an = 2 → 0.5; the others by hand below
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    hand = []
    for i in range(6):
        pos = [j for j in range(6) if y[j] == y[i] and j != i]
        neg = [j for j in range(6) if y[j] != y[i]]
        hand.append(max(0.0, max(d[i, pos]) - min(d[i, neg]) + 1.5))
    assert loss == pytest.approx(np.mean(hand), rel=1e-12)
    g = f.backward()
    t = torch.tensor(x, requires_grad=True)
    _torch_triplet(t, torch.from_numpy(y), 1.5).backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12, atol=1e-14)   # same tie-break as torch.argmax


def test_triplet_needs_positive_and_negative():
    with pytest.raises(ValueError, match="P×K"):
        TripletLoss()(np.eye(3), np.array([0, 1, 2]))


def test_losses_check_labels():
    with pytest.raises(ValueError, match="labels"):
        ArcFaceLoss()(np.zeros((2, 3)), np.array([0, 5]))
    with pytest.raises(ValueError, match="margin"):
        ArcFaceLoss(margin=2.0)(np.zeros((2, 3)), np.array([0, 1]))


def test_heads_and_losses_on_the_device(xp):
    """The same numbers on the GPU code path (CuPy, or the emulated CuPy without a GPU) as on NumPy."""
    from nabi import backend
    rng = np.random.default_rng(30)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    out = {}
    for dev in ("cpu", "gpu" if xp is not np else "cpu"):
        layer = CosineLinear(6, 4, subcenters=2, rng=np.random.default_rng(1)).to(dev)
        c = layer(backend.to_device(x, dev))
        f = ArcFaceLoss(scale=8.0)
        loss = f(c, backend.to_device(y, dev))
        dx = layer.backward(f.backward())
        t = TripletLoss(0.5)
        tl = t(backend.to_device(x, dev), backend.to_device(y, dev))
        out[dev] = (loss, backend.to_numpy(dx), tl, backend.to_numpy(t.backward()))
    a, b = out["cpu"], out["gpu" if xp is not np else "cpu"]
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a[2] == pytest.approx(b[2], rel=1e-5)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a[3], b[3], rtol=1e-4, atol=1e-6)
