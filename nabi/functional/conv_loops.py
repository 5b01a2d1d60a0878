"""Convolution as loops over every output element: the formulas written out literally.

Slow (pure Python loops); the tests compare the im2col convolution with these. ∂L/∂x is
computed here as the "full" convolution of the stride-dilated δ with the kernel flipped by
180° (a different route from col2im(Wᵀ·δ), so the two check each other).
"""
from __future__ import annotations

import numpy as np

from .conv import resolve_padding
from .shape import pair


def conv2d_reference_forward(x, w, b=None, stride=1, padding=0):
    """y[n,f,i,j] = b[f] + Σ_{c,u,v} w[f,c,u,v] · x_pad[n,c,i·S+u,j·S+v]."""
    sh, sw = pair(stride, "stride")
    F, C, kh, kw = w.shape
    ph, pw = resolve_padding(padding, (kh, kw), (sh, sw))
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    N, _, Hp, Wp = x_pad.shape
    oh = (Hp - kh) // sh + 1
    ow = (Wp - kw) // sw + 1
    y = np.zeros((N, F, oh, ow), dtype=np.result_type(x, w))
    for n in range(N):
        for f in range(F):
            for i in range(oh):
                for j in range(ow):
                    patch = x_pad[n, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    y[n, f, i, j] = np.sum(patch * w[f]) + (b[f] if b is not None else 0.0)
    return y


def conv2d_reference_backward(dy, x, w, stride=1, padding=0):
    """The gradients, as loops.

    ∂L/∂w[f,c,u,v] = Σ_{n,i,j} δ[n,f,i,j] · x_pad[n,c,i·S+u,j·S+v];
    ∂L/∂x = full convolution of the stride-dilated δ with the 180°-flipped kernel,
    cropped to the unpadded input; ∂L/∂b[f] = Σ δ[n,f,·,·].
    """
    sh, sw = pair(stride, "stride")
    F, C, kh, kw = w.shape
    ph, pw = resolve_padding(padding, (kh, kw), (sh, sw))
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    N, _, Hp, Wp = x_pad.shape
    _, _, oh, ow = dy.shape
    dw = np.zeros_like(w, dtype=np.result_type(dy, x))
    for f in range(F):
        for c in range(C):
            for u in range(kh):
                for v in range(kw):
                    window = x_pad[:, c, u:u + sh * (oh - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw]
                    dw[f, c, u, v] = np.sum(dy[:, f] * window)
    # Dilate δ by the stride, pad it by K−1 and correlate with the flipped kernel.
    dil = np.zeros((N, F, (oh - 1) * sh + 1, (ow - 1) * sw + 1), dtype=dy.dtype)
    dil[:, :, ::sh, ::sw] = dy
    dil = np.pad(dil, ((0, 0), (0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1)))
    w_flip = w[:, :, ::-1, ::-1]
    hh, ww = dil.shape[2] - kh + 1, dil.shape[3] - kw + 1      # = (oh−1)·S + KH ≤ Hp
    dx_pad = np.zeros((N, C, Hp, Wp), dtype=dw.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(hh):
                for j in range(ww):
                    dx_pad[n, c, i, j] = np.sum(dil[n, :, i:i + kh, j:j + kw] * w_flip[:, c])
    dx = dx_pad[:, :, ph:Hp - ph, pw:Wp - pw]
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db
