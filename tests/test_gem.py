"""Generalised-mean (GeM) pooling: the op against finite differences (x and p) and against the same formula in
PyTorch ops, the layer on NumPy and (emulated) CuPy, and the ResNets' ``pool='gem'`` option in training."""
import numpy as np
import pytest
import torch

from nabi import backend
from nabi import functional as F
from nabi import models as zoo
from nabi.gradcheck import check_module, numerical_gradient, relative_error
from nabi.layers import AdaptiveAvgPool2d, GeM, GeneralizedMeanPool2d

TOL = 1e-6
TOLS = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=1e-6)}


def f64(make):
    with backend.default_dtype(np.float64):
        return make()


def gem_in_torch(x, p, eps):
    """GeM as it is usually written in PyTorch: avg_pool2d(x.clamp(min=eps).pow(p), (H, W)).pow(1/p)."""
    return torch.nn.functional.avg_pool2d(x.clamp(min=eps).pow(p), (x.size(-2), x.size(-1))).pow(1.0 / p)


def _input(rng, shape, dtype=np.float64):
    """Post-ReLU-like activations: some exact zeros (clamped to ε), the rest positive, a few large."""
    x = rng.standard_normal(shape) * 2
    x[x < -1.5] = 0.0
    return x.astype(dtype)


# -- the op ---------------------------------------------------------------------------------------------------------

def test_gem_gradients_in_x_and_p_match_finite_differences():
    rng = np.random.default_rng(0)
    x = _input(rng, (3, 4, 5, 6))
    p = np.array([2.7])
    G = rng.standard_normal((3, 4, 1, 1))
    y, cache = F.gem_forward(x, p)
    dx, dp = F.gem_backward(G, cache)
    assert y.shape == (3, 4, 1, 1) and dx.shape == x.shape and dp.shape == (1,)

    def s():
        return float(np.sum(F.gem_forward(x, p)[0] * G))
    assert relative_error(dx, numerical_gradient(s, x)) < TOL
    assert relative_error(dp, numerical_gradient(s, p)) < TOL


@pytest.mark.parametrize("p", [0.5, 1.0, 3.0, 12.0])
def test_gem_gradients_hold_across_exponents(p):
    rng = np.random.default_rng(int(p * 10))
    x = _input(rng, (2, 3, 4, 4))
    pa = np.array([p])
    G = rng.standard_normal((2, 3, 1, 1))
    dx, dp = F.gem_backward(G, F.gem_forward(x, pa)[1])

    def s():
        return float(np.sum(F.gem_forward(x, pa)[0] * G))
    assert relative_error(dx, numerical_gradient(s, x)) < TOL
    assert relative_error(dp, numerical_gradient(s, pa)) < TOL


def test_the_layer_passes_the_module_gradient_check_learnt_and_fixed():
    rng = np.random.default_rng(1)
    x = _input(rng, (2, 5, 3, 4))
    learnt = f64(lambda: GeneralizedMeanPool2d(p=3.0))
    errors = check_module(learnt, x)
    assert set(errors) == {"input", "p"} and max(errors.values()) < TOL, errors
    fixed = f64(lambda: GeneralizedMeanPool2d(p=3.0, learn_p=False))
    errors = check_module(fixed, x)
    assert set(errors) == {"input"} and errors["input"] < TOL, errors
    assert [k for k in fixed.state_dict()] == ["p"] and not list(fixed.parameters())


@pytest.mark.parametrize("p", [3.4, 0.8])             # p < 1: the clamp's zero gradient below ε shows in dx
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gem_equals_the_pytorch_formula_forward_and_both_gradients(dtype, p):
    rng = np.random.default_rng(2)
    x = _input(rng, (4, 6, 7, 5), dtype)
    x[0, 0, 0, :2] = 1e-6                                   # exactly ε: PyTorch's clamp passes the gradient there
    G = rng.standard_normal((4, 6, 1, 1)).astype(dtype)
    layer = GeneralizedMeanPool2d(p=3.0)
    layer.p.data = np.array([p], dtype=dtype)
    y = layer(x)
    dx = layer.backward(G)
    xt = torch.tensor(x, requires_grad=True)
    pt = torch.tensor(p, dtype=xt.dtype, requires_grad=True)
    yt = gem_in_torch(xt, pt, 1e-6)
    yt.backward(torch.tensor(G))
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == (4, 6, 1, 1)
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOLS[dtype])
    np.testing.assert_allclose(dx, xt.grad.numpy(), **TOLS[dtype])
    np.testing.assert_allclose(layer.p.grad, [pt.grad.item()], rtol=TOLS[dtype]["rtol"] * 10)


def test_large_activations_and_exponents_do_not_overflow():
    """(1/HW) Σ x^p overflows float32 at x = 1e4, p = 12; the max-scaled form does not, and equals float64."""
    x = np.full((1, 2, 3, 3), 1e4, dtype=np.float32)
    x[0, 1, 1, 1] = 2e4
    y, cache = F.gem_forward(x, np.array([12.0], dtype=np.float32))
    dx, dp = F.gem_backward(np.ones((1, 2, 1, 1), np.float32), cache)
    ref, ref_cache = F.gem_forward(x.astype(np.float64), np.array([12.0]))
    assert np.isfinite(y).all() and np.isfinite(dx).all() and np.isfinite(dp).all()
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    np.testing.assert_allclose(dp, F.gem_backward(np.ones((1, 2, 1, 1)), ref_cache)[1], rtol=1e-4)


def test_p_one_is_average_pooling_and_a_large_p_approaches_the_maximum():
    rng = np.random.default_rng(3)
    x = rng.random((2, 3, 6, 6)) + 0.1
    np.testing.assert_allclose(F.gem_forward(x, 1.0)[0], AdaptiveAvgPool2d(1)(x), rtol=1e-12)
    y = F.gem_forward(x, 200.0)[0]
    top = x.max(axis=(2, 3), keepdims=True)
    assert np.all(y <= top) and np.all(y > 0.97 * top)
    assert np.all(F.gem_forward(x, 3.0)[0] > F.gem_forward(x, 1.0)[0])      # power means grow with p


def test_float16_input_is_computed_in_float32_and_keeps_its_dtype():
    rng = np.random.default_rng(4)
    x = (rng.random((2, 3, 8, 8)) * 40).astype(np.float16)        # 40^3 · 64 overflows a float16 sum
    y, cache = F.gem_forward(x, np.array([3.0], dtype=np.float16))
    dx, dp = F.gem_backward(np.ones((2, 3, 1, 1), np.float16), cache)
    assert y.dtype == np.float16 and dx.dtype == np.float16 and np.isfinite(y).all()
    np.testing.assert_allclose(y, F.gem_forward(x.astype(np.float32), 3.0)[0], rtol=2e-3)


@pytest.mark.parametrize("p", [0, -1, float("nan"), float("inf"), True, "3"])
def test_bad_exponents_are_refused(p):
    with pytest.raises(ValueError, match="GeneralizedMeanPool2d: the exponent p must be a finite number > 0"):
        GeneralizedMeanPool2d(p=p)


def test_bad_inputs_are_refused_with_the_layer_named():
    layer = GeM()
    with pytest.raises(ValueError, match=r"GeneralizedMeanPool2d: expected a 4-D input"):
        layer(np.ones((2, 3, 4)))
    with pytest.raises(TypeError, match=r"GeneralizedMeanPool2d: expected a floating-point input"):
        layer(np.ones((2, 3, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="eps must be a number > 0"):
        GeM(eps=0)
    layer.eval()
    layer(np.ones((1, 2, 2, 2), np.float32))
    with pytest.raises(RuntimeError, match="backward called without a forward pass in training mode"):
        layer.backward(np.ones((1, 2, 1, 1), np.float32))


# -- on the GPU path --------------------------------------------------------------------------------------------------

def test_the_layer_runs_on_cupy_as_on_numpy(xp):
    rng = np.random.default_rng(5)
    x = _input(rng, (3, 4, 5, 5), np.float32)
    G = rng.standard_normal((3, 4, 1, 1)).astype(np.float32)
    ref = GeM()
    y_ref, dx_ref = ref(x), ref.backward(G)
    layer = GeM().to("gpu" if xp is not np else "cpu")
    y = layer(xp.asarray(x))
    dx = layer.backward(xp.asarray(G))
    assert type(y) is type(xp.asarray(x)) and type(dx) is type(y)              # stays on the device
    assert type(layer.p.grad) is type(y)
    np.testing.assert_allclose(backend.to_numpy(y), y_ref, rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(dx), dx_ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(backend.to_numpy(layer.p.grad), ref.p.grad, rtol=1e-5)
    assert layer.exponent() == pytest.approx(3.0)


# -- the ResNets' option ----------------------------------------------------------------------------------------------

def test_resnet_pool_gem_keeps_the_torchvision_keys_and_adds_avgpool_p():
    backend.seed(0)
    avg = zoo.get("resnet20", num_classes=4)
    backend.seed(0)
    gem = zoo.get("resnet20", num_classes=4, pool="gem")
    a, g = avg.state_dict(), gem.state_dict()
    assert [k for k in g if k not in a] == ["avgpool.p"] and set(a) <= set(g)
    np.testing.assert_array_equal(g["avgpool.p"], [3.0])
    for k in a:                                                              # the same initial weights
        np.testing.assert_array_equal(a[k], g[k], err_msg=k)
    assert isinstance(gem.avgpool, GeneralizedMeanPool2d) and gem.arch["kwargs"]["pool"] == "gem"
    assert zoo.get("resnet18", num_classes=3, pool="gem").state_dict()["avgpool.p"].shape == (1,)
    with pytest.raises(ValueError, match=r"resnet: pool must be one of 'avg', 'gem'.*got 'max'"):
        zoo.get("resnet20", pool="max")


def test_an_embedding_net_with_gem_trains_and_its_saved_run_loads_back(tmp_path):
    """``embedding_net`` on a ``resnet20`` backbone with ``pool='gem'`` (what ``nabi train --model resnet20
    --model-arg pool=gem --head arcface`` builds): a few ArcFace SGD steps on a fixed batch lower the loss and
    move p; the weights saved as a run (p included) rebuild the same model from their sidecar."""
    from nabi.files import save_weights
    from nabi.layers import ArcFaceLoss
    from nabi.runs import load_run, model_metadata
    from nabi import optim
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = np.arange(8) % 4
    backend.seed(1)
    model = zoo.get("embedding_net", backbone="resnet20", num_classes=4, embedding_dim=16, head="arcface",
                    backbone_args={"pool": "gem"})
    pool = model.backbone.avgpool
    assert isinstance(pool, GeneralizedMeanPool2d) and "backbone.avgpool.p" in model.state_dict()
    model.train()
    opt = optim.SGD(model.named_parameters(), lr=0.05, momentum=0.9)
    loss_fn = ArcFaceLoss(scale=8.0, margin=0.2)
    losses = []
    for _ in range(10):
        losses.append(loss_fn(model(x), y))
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    assert losses[-1] < 0.7 * losses[0], losses
    assert pool.exponent() != 3.0                                            # p is learnt
    model.eval()
    emb = model.embed(x)
    save_weights(tmp_path / "best.safetensors", model.state_dict(), model_metadata(model, list("abcd"), None))
    loaded, meta = load_run(tmp_path)
    assert meta["arch"]["kwargs"]["backbone_args"] == {"pool": "gem"}
    assert loaded.backbone.avgpool.exponent() == pool.exponent()
    np.testing.assert_array_equal(loaded.embed(x), emb)


def test_gem_exports_to_onnx_and_onnxruntime_agrees(tmp_path):
    """A ResNet with a learnt p, and a small network with a fixed p (a buffer): both export, and
    onnxruntime gives nabi's outputs."""
    pytest.importorskip("onnxruntime")
    from nabi.files.onnx import export_onnx, verify_onnx
    from nabi.layers import Conv2d, Flatten, Linear, ReLU, Sequential
    backend.seed(2)
    resnet = zoo.get("resnet20", num_classes=5, pool="gem")
    resnet.avgpool.p.data[:] = 4.2                                 # a learnt value, not the default
    small = Sequential(Conv2d(3, 6, 3, padding=1), ReLU(), GeneralizedMeanPool2d(p=2.5, learn_p=False), Flatten(),
                       Linear(6, 4))
    x = np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for name, model in (("resnet", resnet), ("small", small)):
        model.eval()
        proto = export_onnx(model, tmp_path / f"{name}.onnx", (3, 32, 32))
        assert {"Max", "Pow", "GlobalAveragePool", "Reciprocal"} <= {n.op_type for n in proto.graph.node}
        assert verify_onnx(model, tmp_path / f"{name}.onnx", x) < 1e-4, name
