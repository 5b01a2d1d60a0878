"""Finite-difference gradient checks: the proof behind every hand-written backward.

For a module f and a *random* upstream gradient G (a plain sum would hide errors
that cancel), the scalar s(x, θ) = Σ f(x; θ) ⊙ G has

    ∂s/∂x = f.backward(G)          ∂s/∂θ = θ.grad after that backward

and each is compared with central differences (s(v + h) − s(v − h)) / 2h in
float64. The error reported is ‖analytic − numeric‖ / max(‖analytic‖, ‖numeric‖).
"""
from __future__ import annotations

import numpy as np

from .backend import to_numpy


def relative_error(a, b) -> float:
    a, b = np.asarray(to_numpy(a), dtype=np.float64), np.asarray(to_numpy(b), dtype=np.float64)
    denom = max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)
    return float(np.linalg.norm(a - b) / denom)


def numerical_gradient(f, v, coords=None, eps=1e-6):
    """Central differences of the scalar function ``f()`` with respect to array ``v`` (changed in place).

    ``coords`` limits the check to some flat indices (others are left 0).
    """
    grad = np.zeros(v.shape, dtype=np.float64)
    flat = v.reshape(-1)
    gflat = grad.reshape(-1)
    for i in (range(flat.size) if coords is None else coords):
        old = float(flat[i])
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def check_module(module, x, seed=0, eps=1e-6, max_coords=200, before_forward=None):
    """Check the input gradient and every parameter gradient of ``module`` at ``x`` (float64).

    Returns ``{'input': err, '<param name>': err, ...}``. Arrays larger than
    ``max_coords`` elements are checked on a random subset of that many entries.
    ``before_forward`` is called before every forward (e.g. to replay a dropout mask).
    """
    if x.dtype != np.float64:
        raise TypeError("gradient checks need float64 inputs and parameters")
    rng = np.random.default_rng(seed)
    prep = before_forward or (lambda: None)
    prep()
    y = module(x)
    G = rng.standard_normal(y.shape)
    module.zero_grad()
    for p in module.parameters():
        p.grad = None
    first = module.input_layer()
    was = getattr(first, "compute_input_grad", True)
    module.set_input_grad(True)                 # the input gradient is checked, whatever the model was told
    try:
        dx = module.backward(G)
    finally:
        module.set_input_grad(was)
    analytic = {"input": dx}
    analytic.update({name: p.grad.copy() for name, p in module.named_parameters()})

    def s():
        prep()
        return float(np.sum(module(x) * G))

    def pick(n):
        return None if n <= max_coords else rng.choice(n, size=max_coords, replace=False)

    errors = {}
    targets = [("input", x)] + [(name, p.data) for name, p in module.named_parameters()]
    for name, arr in targets:
        coords = pick(arr.size)
        num = numerical_gradient(s, arr, coords, eps)
        ana = np.asarray(to_numpy(analytic[name]), dtype=np.float64)
        if coords is not None:
            ana = ana.reshape(-1)[coords]
            num = num.reshape(-1)[coords]
        errors[name] = relative_error(ana, num)
    return errors
