"""``Module.set_input_grad``: backward computes ∂L/∂input unless the model was told it is not needed;
then only the image gradient is skipped — every parameter gradient is the same."""
import numpy as np
import pytest

from nabi import backend, layers as L
from nabi import optim
from nabi.gradcheck import check_module


def _net(rng):
    return L.Sequential(L.Sequential(L.Conv2d(2, 3, 3, padding=1, rng=rng), L.ReLU()), L.MaxPool2d(2),
                        L.Flatten(), L.Linear(3 * 3 * 3, 4, rng=rng))


@pytest.mark.parametrize("fused_sgd", [False, True])
def test_skipping_the_input_gradient_changes_no_parameter(fused_sgd):
    with backend.default_dtype(np.float64):
        nets = [_net(np.random.default_rng(0)) for _ in range(2)]
    first = nets[1].set_input_grad(False)
    assert first is nets[1][0][0] and first.compute_input_grad is False
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 6))
    loss_fn = L.CrossEntropyLoss()
    outs = []
    for net in nets:
        opt = optim.SGD(net.named_parameters(), lr=0.1)
        if fused_sgd:
            from nabi.training.trainer import enable_fused_sgd
            enable_fused_sgd(net, opt)
        loss_fn(net(x), np.array([0, 3]))
        opt.zero_grad()
        outs.append(net.backward(loss_fn.backward()))
        opt.step()
    assert outs[0].shape == x.shape and outs[1] is None
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    nets[1].set_input_grad(True)
    loss_fn(nets[1](x), np.array([0, 3]))
    assert nets[1].backward(loss_fn.backward()).shape == x.shape


def test_gradcheck_sees_the_input_gradient_even_when_switched_off():
    with backend.default_dtype(np.float64):
        net = _net(np.random.default_rng(2))
    net.set_input_grad(False)
    errors = check_module(net, np.random.default_rng(3).standard_normal((2, 2, 6, 6)))
    assert errors["input"] < 1e-6 and all(v < 1e-6 for v in errors.values())
    assert net[0][0].compute_input_grad is False                    # left as the caller set it


def test_a_model_whose_input_goes_to_several_layers_keeps_its_input_gradient():
    """A residual block first: both branches see the input, so nothing can be skipped (None)."""
    with backend.default_dtype(np.float64):
        net = L.Sequential(L.Residual(L.Conv2d(2, 2, 3, padding=1)), L.Flatten())
    assert net.set_input_grad(False) is None
    x = np.random.default_rng(4).standard_normal((1, 2, 4, 4))
    net(x)
    assert net.backward(np.ones((1, 32))).shape == x.shape
