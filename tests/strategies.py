"""Hypothesis strategies that draw only valid sliding-window geometries, so no example is wasted.

A test that returns early on a geometry its op rejects passes without testing anything
(for max pooling, about 60 % of uniformly drawn geometries); one that calls ``assume``
discards them and fails hypothesis's health check when too many go. Drawing the kernel
and padding first and the input size from what they allow gives only valid examples.
"""
from hypothesis import strategies as st


@st.composite
def window_axis(draw, size, kernel, stride, padding, pooling=False):
    """One spatial axis: ``(n, k, s, p)`` with n ∈ ``size``, k ∈ ``kernel``, s ∈ ``stride``, p ∈ ``padding``
    (inclusive ranges), and at least one window: n + 2p ≥ k. ``pooling``: also p ≤ k // 2 (PyTorch's rule
    for pooling padding)."""
    k = draw(st.integers(*kernel))
    p_max = min(padding[1], k // 2) if pooling else padding[1]
    p = draw(st.integers(padding[0], p_max))
    n = draw(st.integers(max(size[0], k - 2 * p), size[1]))
    s = draw(st.integers(*stride))
    return n, k, s, p


@st.composite
def square_window(draw, size, kernel, stride, padding):
    """Two axes sharing k, s and p: ``(h, w, k, s, p)`` with h + 2p ≥ k and w + 2p ≥ k."""
    k = draw(st.integers(*kernel))
    p = draw(st.integers(*padding))
    lo = max(size[0], k - 2 * p)
    return draw(st.integers(lo, size[1])), draw(st.integers(lo, size[1])), k, draw(st.integers(*stride)), p
