"""Shared test helpers: copy weights between nabi and PyTorch and compare passes."""
import numpy as np
import torch

from nabi import backend


def copy_to_torch(nabi_module, torch_module):
    """Load nabi's state_dict into the torch module (same key names)."""
    sd = nabi_module.state_dict()
    tsd = torch_module.state_dict()
    missing = [k for k in tsd if k not in sd and not k.endswith("num_batches_tracked")]
    assert not missing, f"torch keys missing in nabi: {missing}"
    torch_module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=False)


def compare_with_torch(nabi_module, torch_module, x, xp=np, dtype=np.float64, rtol=1e-7, atol=1e-9, seed=0,
                       train=True):
    """Forward + backward with a random upstream gradient on both; assert outputs and gradients agree."""
    rng = np.random.default_rng(seed)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch_module = torch_module.to(tdtype)
    copy_to_torch(nabi_module, torch_module)
    nabi_module.train(train)
    torch_module.train(train)
    if xp is not np:
        nabi_module.to("gpu")
    x = np.asarray(x, dtype=dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_module(xt)
    G = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.from_numpy(G))
    nabi_module.zero_grad()
    y = nabi_module(xp.asarray(x))
    np.testing.assert_allclose(backend.to_numpy(y), yt.detach().numpy(), rtol=rtol, atol=atol, err_msg="forward")
    dx = nabi_module.backward(xp.asarray(G))
    np.testing.assert_allclose(backend.to_numpy(dx), xt.grad.numpy(), rtol=rtol, atol=atol, err_msg="input grad")
    tparams = dict(torch_module.named_parameters())
    names = [n for n, _ in nabi_module.named_parameters()]
    assert sorted(names) == sorted(tparams), (names, list(tparams))
    for name, p in nabi_module.named_parameters():
        np.testing.assert_allclose(backend.to_numpy(p.grad), tparams[name].grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"grad of {name}")
    for name, b in nabi_module.named_buffers():
        tb = dict(torch_module.named_buffers())[name]
        np.testing.assert_allclose(backend.to_numpy(b), tb.numpy(), rtol=rtol, atol=atol, err_msg=f"buffer {name}")
    return y


def count_calls(monkeypatch, owner, name):
    """Replace ``owner.name`` with a wrapper that counts its calls and runs the real function; returns the count
    (a one-element list). For tests that must know which algorithm ran, not to stand in for it."""
    count = [0]
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, counted)
    return count
