"""Grad-CAM of a match: where in the query photo (and in the matched gallery photo) the similarity comes from.

For unit embeddings e(x) of an ``embedding_net`` and a fixed second photo's embedding t, the score
explained is the cosine similarity s(x) = e(x)·t, and ∂s/∂e = t. ``SimilarityToEmbedding`` is the
module x ↦ s(x) (N, 1) with that backward, so nabi's Grad-CAM (``nabi.explain.grad_cam``) runs on it
unchanged: α_k = mean_ij ∂s/∂A_k,ij, cam = ReLU(Σ_k α_k A_k) / max. Explaining both directions (query
against the match, match against the query) shows the regions the two photos share.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import backend
from ..layers import Module


class SimilarityToEmbedding(Module):
    """x (N, C, H, W) ↦ e(x)·t (N, 1) for a unit embedding ``target`` t (D,); backward through ``net.embed``."""

    def __init__(self, net, target):
        super().__init__()
        if not hasattr(net, "backward_embed"):
            raise ValueError("Grad-CAM of a similarity needs an embedding run (nabi train --head arcface, …); "
                             "for a classifier run use nabi explain")
        self.net = net
        object.__setattr__(self, "target", target)
        self.input_size = getattr(net, "input_size", None)
        self.arch = getattr(net, "arch", None)

    def forward(self, x):
        xp = backend.get_array_module(x)
        t = xp.asarray(self.target, dtype=x.dtype)
        return (self.net.embed(x) @ t)[:, None]

    def backward(self, dy):
        xp = backend.get_array_module(dy)
        t = xp.asarray(self.target, dtype=dy.dtype)
        return self.net.backward_embed(dy * t[None, :])


def explain_match(gallery, query, out_dir, layer=None):
    """Grad-CAM heat-maps of the query's similarity to its best match's closest gallery photo, both ways.

    Writes ``query_cam.png`` and ``match_cam.png`` into ``out_dir``; returns the identify result with
    ``files`` and the explained ``similarity`` added.
    """
    from ..explain import grad_cam, overlay
    emb = gallery.embedder
    if emb.kind != "embedding":
        raise ValueError("Grad-CAM of a match needs a gallery built with an embedding run; for a classifier run "
                         "use nabi explain RUN PHOTO")
    result = gallery.identify([query])[0]
    top = result["candidates"][0]
    xq, xm = emb.load(query), emb.load(Path(top["photo"]))
    eq, em = emb.embed([query])[0], emb.embed([Path(top["photo"])])[0]
    out_dir = Path(out_dir)
    files = []
    for name, x, other, shown in (("query_cam.png", xq, em, query), ("match_cam.png", xm, eq, Path(top["photo"]))):
        cam, info = grad_cam(SimilarityToEmbedding(emb.model, other), x, target_class=0, layer=layer)
        C, H, W = emb.input_size
        from ..data import load_image
        image = load_image(shown, channels=C, image_size=(H, W), fit=emb.fit) if isinstance(shown, (str, Path)) \
            else np.clip(x, 0, 1)
        files.append(str(overlay(image, cam, out_dir / name, title=f"{top['name']}: similarity {info['score']:.3f}",
                                 label="Grad-CAM of the similarity")))
    result.update(files=files, explained=top["name"], similarity_explained=float(info["score"]))
    return result
