"""Dropout, batch normalisation and local response normalisation.

Dropout (inverted): in training y = x · m / (1 − p), m ~ Bernoulli(1 − p); in
evaluation y = x. dx = δ · m / (1 − p).

Batch norm over the axes ``axes`` (N for 1-d, N, H, W for 2-d), per feature c:
    μ = mean x,  σ² = mean (x − μ)²,  x̂ = (x − μ)/√(σ² + ε),  y = γ x̂ + β
    training backward (M elements per feature, g = δ·γ):
        dx = (1/M)(1/√(σ²+ε)) (M g − Σ g − x̂ Σ (g x̂)),   dγ = Σ δ x̂,   dβ = Σ δ
    running statistics: r ← (1 − momentum) r + momentum · stat, with the unbiased
    variance M/(M−1)·σ² for ``running_var`` (as PyTorch). Evaluation uses them.
    with a ReLU fused after it (``relu=True``): z = max(y, 0) is returned instead of y, in the same pass,
    and backward, given that z (``relu_y``), takes the upstream δ of z to δ·[z > 0] before the formula
    above — the two passes of a separate ReLU (its output, its masked δ) are saved.
    float16 input: statistics, normalisation and the sums Σ g, Σ g x̂ run in float32
    (a float16 sum of squares overflows once M·σ² > 65 504); y, x̂, dx, dγ, dβ are
    returned in float16 and the running buffers keep their own dtype.

Synchronised batch norm (data-parallel replicas, each holding a shard of the batch): the same
formulas over the union of the shards. ``all_reduce(a)`` returns the element-wise sum of ``a``
over the replicas (float64, the same on each). Forward: M = Σ_r M_r and μ = Σ_r Σ x / M from
one sum, σ² = Σ_r Σ (x − μ)² / M from a second (two passes, no cancellation). Backward: the
sums Σ g and Σ g x̂ of the formula above are the replicas' summed sums, and dγ, dβ are returned
as this shard's own Σ δ x̂, Σ δ (the replicas' parameter gradients are summed afterwards, like
every other parameter's). With one replica it is batch norm itself.

Local response normalisation across channels (AlexNet; PyTorch's form), size n:
    s_c = k + (α/n) Σ_{c' = c − ⌊n/2⌋}^{c + ⌊(n−1)/2⌋} x_{c'}²,     y_c = x_c · s_c^(−β)
    dx_j = δ_j s_j^(−β) − (2αβ/n) x_j Σ_{c: j ∈ window(c)} δ_c x_c s_c^(−β−1)
    float16 input is computed in float32 (x² overflows float16 past |x| = 256) and
    the result cast back.
"""
from __future__ import annotations

from ..backend import get_array_module
from .dispatch import for_arrays


def dropout_forward(x, p, training, rng):
    """``rng`` is a NumPy Generator (CPU) or a CuPy generator (GPU)."""
    if not training or p == 0.0:
        return x, None
    if p >= 1.0:
        xp = get_array_module(x)
        return xp.zeros_like(x), xp.zeros_like(x)
    draw = x.dtype if x.dtype.itemsize >= 4 else "float32"      # generators draw float32/float64 only
    mask = (rng.random(x.shape, dtype=draw) >= p).astype(x.dtype) / x.dtype.type(1.0 - p)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask


def _compiled(*arrays):
    """The implementation with compiled per-channel loops for these 4-D arrays, or None: the
    formulas written below run then (the reference)."""
    impl = for_arrays(*arrays)
    return impl if arrays[0].ndim == 4 and impl.has_batch_norm else None


def _is_half(a):
    """float16 arrays: reductions over them run in float32 (NumPy sums float16 in float16)."""
    return a.dtype.kind == "f" and a.dtype.itemsize < 4


def _bn_axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _bshape(x):
    return (1, -1) if x.ndim == 2 else (1, -1, 1, 1)


def batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5, relu=False):
    """x (N, C) or (N, C, H, W). Updates ``running_mean``/``running_var`` in place when training.

    Returns ``(y, cache)``; y = max(γ x̂ + β, 0) when ``relu`` (a ReLU fused after the batch norm).
    """
    if _is_half(x):
        f32 = "float32"
        y, (x_hat, inv_std, _, _) = batch_norm_forward(x.astype(f32), gamma.astype(f32), beta.astype(f32),
                                                       running_mean, running_var, training, momentum, eps, relu)
        return y.astype(x.dtype), (x_hat.astype(x.dtype), inv_std, gamma, training)
    axes, bs = _bn_axes(x), _bshape(x)
    xp = get_array_module(x)
    kern = _compiled(x, gamma, beta)
    fast = kern is not None                                # the compiled per-channel loops
    if training:
        M = x.size // x.shape[1]
        if M < 2:
            raise ValueError(f"batch_norm: training needs more than one value per channel, got input shape "
                             f"{tuple(x.shape)} (use a batch larger than 1, or call model.eval())")
        mean, var = kern.batch_norm_stats(x) if fast else (x.mean(axis=axes), x.var(axis=axes))
        running_mean *= 1 - momentum
        running_mean += momentum * mean.astype(running_mean.dtype)
        running_var *= 1 - momentum
        running_var += momentum * (var * (M / (M - 1))).astype(running_var.dtype)
        if fast:
            mean, var = mean.astype(x.dtype), var.astype(x.dtype)
    else:
        mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
    inv_std = 1.0 / xp.sqrt(var + eps)
    if fast:
        y, x_hat = kern.batch_norm_apply(x, mean, inv_std, gamma, beta, relu)
        return y, (x_hat, inv_std, gamma, training)
    x_hat = (x - mean.reshape(bs)) * inv_std.reshape(bs)
    y = x_hat * gamma.reshape(bs) + beta.reshape(bs)
    if relu:
        xp.maximum(y, 0, out=y)                            # NaN stays NaN, as the ReLU's own
    return y, (x_hat, inv_std, gamma, training)


def batch_norm_backward(dy, cache, relu_y=None):
    """Returns ``(dx, dgamma, dbeta)``. ``relu_y``: the output of a ReLU fused after the batch norm
    (``batch_norm_forward(relu=True)``'s y); δ is the gradient of that output then."""
    x_hat, inv_std, gamma, training = cache
    if _is_half(dy):
        f32 = "float32"
        dx, dgamma, dbeta = batch_norm_backward(dy.astype(f32), (x_hat.astype(f32), inv_std.astype(f32),
                                                                 gamma.astype(f32), training),
                                                None if relu_y is None else relu_y.astype(f32))
        return dx.astype(dy.dtype), dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype)
    kern = _compiled(dy, x_hat, gamma) if training else None
    if kern is not None:
        return kern.batch_norm_train_backward(dy, x_hat, inv_std, gamma, relu_y)
    if relu_y is not None:
        dy = dy * (relu_y > 0)
    axes, bs = _bn_axes(dy), _bshape(dy)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    g = dy * gamma.reshape(bs)
    if not training:
        return g * inv_std.reshape(bs), dgamma, dbeta
    M = dy.size // dy.shape[1]
    dx = (inv_std.reshape(bs) / M) * (M * g - g.sum(axis=axes).reshape(bs)
                                     - x_hat * (g * x_hat).sum(axis=axes).reshape(bs))
    return dx, dgamma, dbeta


def sync_batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, all_reduce):
    """Batch norm whose training statistics are those of every replica's shard together (module docstring).
    Returns ``(y, cache)``; ``cache`` goes to ``sync_batch_norm_backward``."""
    if not training:
        return batch_norm_forward(x, gamma, beta, running_mean, running_var, False, momentum, eps)
    if _is_half(x):
        raise ValueError("synchronised batch norm runs in float32 or float64, got float16 input")
    xp = get_array_module(x)
    axes, bs = _bn_axes(x), _bshape(x)
    C = x.shape[1]
    local_m = x.size // C
    first = all_reduce(xp.concatenate([x.sum(axis=axes, dtype="float64"), xp.asarray([float(local_m)])]))
    M = float(first[C])
    if M < 2:
        raise ValueError(f"synchronised batch norm: training needs more than one value per channel over all "
                         f"replicas, got {M:g}")
    mean = first[:C] / M
    centred = x - mean.astype(x.dtype).reshape(bs)
    var = all_reduce((centred * centred).sum(axis=axes, dtype="float64")) / M
    running_mean *= 1 - momentum
    running_mean += momentum * mean.astype(running_mean.dtype)
    running_var *= 1 - momentum
    running_var += momentum * (var * (M / (M - 1))).astype(running_var.dtype)
    inv_std = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
    x_hat = centred * inv_std.reshape(bs)
    y = x_hat * gamma.reshape(bs) + beta.reshape(bs)
    return y, (x_hat, inv_std, gamma, M, all_reduce)


def sync_batch_norm_backward(dy, cache):
    """Returns ``(dx, dgamma, dbeta)``: dx of the whole batch's loss for this shard; dγ, dβ this shard's sums."""
    if len(cache) == 4:                                    # evaluation mode: plain batch norm
        return batch_norm_backward(dy, cache)
    x_hat, inv_std, gamma, M, all_reduce = cache
    xp = get_array_module(dy)
    axes, bs = _bn_axes(dy), _bshape(dy)
    C = dy.shape[1]
    dbeta = dy.sum(axis=axes, dtype="float64")
    dgamma = (dy * x_hat).sum(axis=axes, dtype="float64")
    total = all_reduce(xp.concatenate([dbeta, dgamma]))
    g_mean = (total[:C] * gamma.astype("float64") / M).astype(dy.dtype)          # Σ g / M
    gx_mean = (total[C:] * gamma.astype("float64") / M).astype(dy.dtype)         # Σ g x̂ / M
    dx = inv_std.reshape(bs) * (dy * gamma.reshape(bs) - g_mean.reshape(bs) - x_hat * gx_mean.reshape(bs))
    return dx, dgamma.astype(dy.dtype), dbeta.astype(dy.dtype)


def _channel_window_sum(a, before, after):
    """out[:, c] = Σ_{c' = c − before}^{c + after} a[:, c'] (zero outside), by cumulative sums."""
    xp = get_array_module(a)
    C = a.shape[1]
    pad = [(0, 0)] * a.ndim
    pad[1] = (before + 1, after)
    cs = xp.cumsum(xp.pad(a, pad), axis=1)
    return cs[:, before + 1 + after:before + 1 + after + C] - cs[:, :C]


def lrn_forward(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """x (N, C, …). Returns ``(y, cache)``."""
    if _is_half(x):
        y, cache = lrn_forward(x.astype("float32"), size, alpha, beta, k)
        return y.astype(x.dtype), cache
    s = k + (alpha / size) * _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    s_pow = s ** (-beta)
    return x * s_pow, (x, s, s_pow, size, alpha, beta)


def lrn_backward(dy, cache):
    if _is_half(dy):
        return lrn_backward(dy.astype("float32"), cache).astype(dy.dtype)
    x, s, s_pow, size, alpha, beta = cache
    t = dy * x * s_pow / s                                   # δ_c x_c s_c^(−β−1)
    # j ∈ window(c)  ⇔  c ∈ [j − ⌊(n−1)/2⌋, j + ⌊n/2⌋]
    back = _channel_window_sum(t, (size - 1) // 2, size // 2)
    return dy * s_pow - (2.0 * alpha * beta / size) * x * back
