"""Grad-CAM of a match: where in the query photo (and in the matched gallery photo) the similarity comes from.

For unit embeddings e(x) of an ``embedding_net`` and a fixed second photo's embedding t, the score
explained is the cosine similarity s(x) = e(x)·t, and ∂s/∂e = t. ``SimilarityToEmbedding`` is the
module x ↦ s(x) (N, 1) with that backward, so nabi's Grad-CAM (``nabi.explain.grad_cam``) runs on it
unchanged: α_k = mean_ij ∂s/∂A_k,ij, cam = ReLU(Σ_k α_k A_k) / max. Explaining both directions (query
against the match, match against the query) shows the regions the two photos share. Given a mask of
the animal, ``nabi.explain.habitat_reliance`` tells how much of that heat lies on the habitat instead:
whether the match rests on the animal or on the place.
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


def _reliance(cam, mask_path, photo, which):
    """``habitat_reliance`` of one photo's heat map, its errors naming the mask and the photo."""
    from ..explain import habitat_reliance
    try:
        return dict(habitat_reliance(cam, mask_path[1]), mask=str(mask_path[0]))
    except ValueError as exc:
        raise ValueError(f"habitat reliance of the {which} photo {photo} with mask {mask_path[0]} (both at the "
                         f"model's input size): {exc}") from None


def explain_match(gallery, query, out_dir, layer=None, mask=None, match_mask=None):
    """Grad-CAM heat-maps of the query's similarity to its best match's closest gallery photo, both ways.

    Writes ``query_cam.png`` and ``match_cam.png`` into ``out_dir``; returns the identify result with
    ``files`` and the explained ``similarity`` added. ``mask`` (of the query photo) and ``match_mask``
    (of the matched gallery photo) are black/white animal masks, any size, brought to the model's input
    as the photo is (``nabi.explain.mask_at_input``); with one, the result gets ``habitat``:
    ``{'query'|'match': {'heat_share', 'area_share', 'heat_total', 'mask'}}`` from
    ``nabi.explain.habitat_reliance``, and the mask's outline is drawn on the PNG. Masks and
    heat maps are checked before any PNG is written.
    """
    from ..data import load_image
    from ..explain import grad_cam, mask_at_input, overlay
    emb = gallery.embedder
    if emb.kind != "embedding":
        raise ValueError("Grad-CAM of a match needs a gallery built with an embedding run; for a classifier run "
                         "use nabi explain RUN PHOTO")
    if mask is not None and not isinstance(query, (str, Path)):
        raise ValueError("a mask needs the query as a photo file (it is brought to the input size as the file is)")
    C, H, W = emb.input_size
    result = gallery.identify([query])[0]
    top = result["candidates"][0]
    matched = Path(top["photo"])
    masks = {}
    for which, path, photo in (("query", mask, query), ("match", match_mask, matched)):
        if path is not None:
            masks[which] = (path, mask_at_input(path, photo, (H, W), emb.fit))
    xq, xm = emb.load(query), emb.load(matched)
    eq, em = emb.embed([query])[0], emb.embed([matched])[0]
    shown = []
    for which, name, x, other, photo in (("query", "query_cam.png", xq, em, query),
                                         ("match", "match_cam.png", xm, eq, matched)):
        cam, info = grad_cam(SimilarityToEmbedding(emb.model, other), x, target_class=0, layer=layer)
        shown.append((which, name, x, photo, cam, info))
    habitat = {which: _reliance(cam, masks[which], photo, which)
               for which, _, _, photo, cam, _ in shown if which in masks}
    out_dir = Path(out_dir)
    files = []
    for which, name, x, photo, cam, info in shown:
        image = load_image(photo, channels=C, image_size=(H, W), fit=emb.fit) if isinstance(photo, (str, Path)) \
            else np.clip(x, 0, 1)
        title = f"{top['name']}: similarity {info['score']:.3f}"
        if which in habitat:
            title += f"; {_percent(habitat[which]['heat_share'])} of the heat on the habitat " \
                     f"({_percent(habitat[which]['area_share'])} of the photo)"
        files.append(str(overlay(image, cam, out_dir / name, title=title, label="Grad-CAM of the similarity",
                                 outline=masks[which][1] if which in masks else None)))
    result.update(files=files, explained=top["name"], similarity_explained=float(info["score"]))
    if habitat:
        result["habitat"] = habitat
    return result


def _percent(share):
    return f"{100 * share:.0f} %"


def describe_habitat(share: dict) -> str:
    """'64 % of the heat on the habitat, which is 70 % of the photo' for one ``habitat_reliance`` result."""
    return f"{_percent(share['heat_share'])} of the heat on the habitat, which is {_percent(share['area_share'])} " \
           f"of the photo"
