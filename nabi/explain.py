"""What is the network looking at? Grad-CAM, occlusion maps, overlays, masked evaluation.

    from nabi import explain
    cam, info = explain.grad_cam(model, x)             # x (C, H, W) or (1, C, H, W), already normalised
    heat, info = explain.occlusion_map(model, x)
    explain.overlay(image01, cam, "cam.png")
    explain.explain_image("runs/train", "cat.jpg", "out/")       # both maps of one photo of a run
    explain.masked_evaluation("runs/train", "test/", "masks/")   # accuracy with the background blanked
    explain.habitat_reliance(cam, animal_mask)                   # share of the heat off the animal

Grad-CAM (Selvaraju et al., 2017), for the target layer's output A (1, K, h, w)
and the chosen logit y_c:

    dA = ∂y_c/∂A                α_k = mean_ij dA_k,ij
    cam = ReLU(Σ_k α_k A_k)     cam ← cam / max(cam)   (an all-zero cam stays zeros)

then bilinearly upsampled (half-pixel centres, edges clamped: PyTorch's
``interpolate(mode='bilinear', align_corners=False)``) to the input's (H, W).
Occlusion (Zeiler & Fergus, 2014): a square of ``fill`` slides over the image;
each pixel gets the mean of p_c(x) − p_c(x occluded) over the patches covering it.

Both run the model in eval mode and leave it as it was (training flags,
``keep_cache``, backward caches, no instance ``forward``/``backward`` left
behind). ``grad_cam`` runs a backward pass, so it ends with ``model.zero_grad()``:
do not call it between a training step's backward and its optimiser step.
"""
from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np

from . import backend
from .layers.conv import Conv2d
from .summary import _unique_named_modules, preserved_eval, wrap_forwards

__all__ = ["find_target_layer", "grad_cam", "occlusion_map", "overlay", "explain_image", "masked_evaluation",
           "mask_at_input", "habitat_reliance"]


class _StopBackward(Exception):
    """Raised by the target layer's backward wrapper once the gradient is captured."""


# -- layers ----------------------------------------------------------------------------
def _label(model):
    arch = getattr(model, "arch", None)
    return arch["name"] if arch else type(model).__name__


def _convs(model):
    return [(n, m) for n, m in _unique_named_modules(model) if isinstance(m, Conv2d) and n]


def _no_conv_error(model):
    return ValueError(f"{_label(model)} cannot be explained with Grad-CAM: no convolutional layer (Conv2d) in the "
                      f"model; use the occlusion map instead")


def _pick_spatial(calls):
    """The last call (name, module, output shape) with h·w > 1, else the last call."""
    spatial = [c for c in calls if len(c[2]) == 4 and c[2][2] * c[2][3] > 1]
    return (spatial or calls)[-1]


def find_target_layer(model, name=None, input_shape=None):
    """``(name, module)`` of the layer Grad-CAM reads.

    ``name`` (a dotted path from ``named_modules``) picks any layer; by default the
    last ``Conv2d`` to run whose output is spatial (h·w > 1), found by a probe
    forward on zeros of ``input_shape`` (C, H, W) (default ``model.input_size``);
    without a shape, the last ``Conv2d`` in ``named_modules`` order.
    ``ValueError`` (listing the conv layers) for an unknown name or a model without conv.
    """
    convs = _convs(model)
    if name is not None:
        table = {n: m for n, m in model.named_modules() if n}
        if name not in table:
            listed = ", ".join(n for n, _ in convs) or "(none: the model has no Conv2d)"
            raise ValueError(f"{_label(model)} has no layer {name!r}; its convolutional layers are: {listed}")
        return name, table[name]
    if not convs:
        raise _no_conv_error(model)
    shape = input_shape if input_shape is not None else getattr(model, "input_size", None)
    if shape is None:
        return convs[-1]
    calls = []
    xp = backend.array_module(model.device)
    x = xp.zeros((1,) + tuple(int(s) for s in shape), dtype=_dtype(model))
    with preserved_eval(model):
        wrap_forwards(convs, lambda n, m, _x, y: calls.append((n, m, tuple(y.shape))))
        model(x)
    if not calls:
        return convs[-1]
    n, m, _ = _pick_spatial(calls)
    return n, m


# -- helpers ---------------------------------------------------------------------------
def _dtype(model):
    for p in model.parameters():
        return p.data.dtype
    return backend.get_default_dtype()


def _as_batch(model, x):
    """(C, H, W) or (1, C, H, W) → (1, C, H, W) on the model's device, in its dtype."""
    x = np.asarray(backend.to_numpy(x))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image shaped (C, H, W) or (1, C, H, W), got shape {tuple(x.shape)}")
    return backend.to_device(np.ascontiguousarray(x, dtype=_dtype(model)), model.device)


def _check_class(c, k):
    c = int(c)
    if not 0 <= c < k:
        raise ValueError(f"target_class {c} is out of range: the model has {k} classes (0…{k - 1})")
    return c


def _softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _interp_matrix(n_out, n_in):
    """R (n_out, n_in): linear interpolation, src = (i + ½)·n_in/n_out − ½ clamped to [0, n_in − 1]."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    R = np.zeros((n_out, n_in))
    R[np.arange(n_out), lo] += 1 - frac
    R[np.arange(n_out), hi] += frac
    return R


def upsample_bilinear(a, size):
    """(h, w) → (H, W), bilinear with half-pixel centres (PyTorch ``align_corners=False``, no antialias)."""
    a = np.asarray(a, dtype=np.float64)
    H, W = size
    return _interp_matrix(H, a.shape[0]) @ a @ _interp_matrix(W, a.shape[1]).T


# -- Grad-CAM --------------------------------------------------------------------------
def grad_cam(model, x, target_class=None, layer=None):
    """Grad-CAM of one image: ``(cam (H, W) float32 in [0, 1], info)``.

    ``x`` (C, H, W) or (1, C, H, W), already normalised as the model expects;
    ``target_class`` defaults to the predicted class; ``layer`` a dotted name (default:
    see ``find_target_layer``). α_k = mean_ij ∂y_c/∂A_k,ij; cam = ReLU(Σ_k α_k A_k) / max
    (all zeros when nothing is positive), upsampled bilinearly to (H, W).
    ``info``: ``class``, ``score`` (the logit y_c), ``probability`` (softmax p_c),
    ``layer``, ``activation_shape`` (K, h, w), ``cam_lowres`` (h, w).
    Ends with ``model.zero_grad()``; the model is otherwise left exactly as it was.
    """
    x4 = _as_batch(model, x)
    H, W = int(x4.shape[2]), int(x4.shape[3])
    if layer is not None:
        watch = [find_target_layer(model, layer)]
    else:
        watch = _convs(model)
        if not watch:
            raise _no_conv_error(model)
    calls, grads = [], []
    with preserved_eval(model):
        model.set_keep_cache(True)
        try:
            wrap_forwards(watch, lambda n, m, _x, y: calls.append((n, m, tuple(y.shape), y.copy())))
            logits = model(x4)
            if not calls:
                raise ValueError(f"layer {watch[0][0]!r} did not run in the forward pass of {_label(model)}")
            name, target, shape = _pick_spatial([c[:3] for c in calls]) if layer is None else calls[-1][:3]
            outs = [c[3] for c in calls if c[1] is target]
            if len(outs) != 1:
                raise ValueError(f"layer {name!r} runs {len(outs)} times in one forward pass (shared weights); "
                                 f"Grad-CAM needs a layer that runs once")
            A = outs[0]
            if A.ndim != 4:
                raise ValueError(f"layer {name!r} gives output of shape {shape}; Grad-CAM needs a spatial "
                                 f"(N, K, h, w) output: pick a convolutional layer")
            if logits.ndim != 2:
                raise ValueError(f"{_label(model)} gives output of shape {tuple(logits.shape)}; expected logits (1, K)")
            k = int(logits.shape[1])
            c = int(backend.to_numpy(logits)[0].argmax()) if target_class is None else _check_class(target_class, k)
            def capture(dy, *args, **kwargs):
                grads.append(dy.copy())
                raise _StopBackward  # the gradient at the layer's output is complete: skip the layers below

            object.__setattr__(target, "backward", capture)
            xp = backend.get_array_module(logits)
            g = xp.zeros_like(logits)
            g[0, c] = 1
            try:
                model.backward(g)
            except _StopBackward:
                pass
            if not grads:
                raise ValueError(f"layer {name!r} got no gradient in the backward pass of {_label(model)}")
        finally:
            model.zero_grad()
    A = backend.to_numpy(A)[0].astype(np.float64)
    dA = backend.to_numpy(grads[0])[0].astype(np.float64)
    alpha = dA.mean(axis=(1, 2))
    low = np.maximum(np.tensordot(alpha, A, axes=1), 0)
    top = low.max()
    low = low / top if top > 0 else np.zeros_like(low)
    cam = np.clip(upsample_bilinear(low, (H, W)), 0, 1).astype(np.float32)
    z = backend.to_numpy(logits)[0]
    info = {"class": c, "score": float(z[c]), "probability": float(_softmax(z)[c]), "layer": name,
            "activation_shape": tuple(int(s) for s in A.shape), "cam_lowres": low.astype(np.float32)}
    return cam, info


# -- occlusion -------------------------------------------------------------------------
def _positions(n, patch, stride):
    pos = list(range(0, n - patch + 1, stride))
    if pos[-1] != n - patch:
        pos.append(n - patch)  # the last patch touches the far edge, so every pixel is covered
    return pos


def occlusion_map(model, x, target_class=None, patch=None, stride=None, fill=None, batch_size=32):
    """Occlusion sensitivity of one image: ``(heat (H, W) float32, info)``.

    A ``patch``×``patch`` square (default max(1, H//8)) of ``fill`` (default the
    per-channel mean of ``x``; a scalar or one value per channel, in the same —
    normalised — space as ``x``) slides with ``stride`` (default max(1, patch//2));
    the last row/column of positions touches the far edges. For each position
    d = p_c(x) − p_c(x occluded) (softmax probabilities), and
    heat[i, j] = mean of d over the positions whose patch covers (i, j). Positive:
    hiding that part lowers the class's probability. Occluded copies run in
    batches of ``batch_size`` (the result does not depend on it).
    ``info``: ``class``, ``probability`` p_c(x), ``patch``, ``stride``, ``fill``,
    ``drops`` (rows, cols) grid of d, ``tops``, ``lefts``.
    """
    x4 = _as_batch(model, x)
    _, C, H, W = (int(s) for s in x4.shape)
    patch = int(patch) if patch is not None else max(1, H // 8)
    if not 1 <= patch <= min(H, W):
        raise ValueError(f"patch must be between 1 and {min(H, W)} for a {H}×{W} image, got {patch}")
    stride = int(stride) if stride is not None else max(1, patch // 2)
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    xh = backend.to_numpy(x4)
    if fill is None:
        fillv = xh[0].mean(axis=(1, 2))
    elif np.size(fill) in (1, C):
        fillv = np.broadcast_to(np.asarray(fill, dtype=np.float64).reshape(-1), (C,))
    else:
        raise ValueError(f"fill must be a scalar or {C} per-channel values, got {fill!r}")
    fillv = np.asarray(fillv, dtype=xh.dtype)
    tops, lefts = _positions(H, patch, stride), _positions(W, patch, stride)
    spots = list(product(range(len(tops)), range(len(lefts))))
    drops = np.zeros((len(tops), len(lefts)))
    xp = backend.get_array_module(x4)
    fill_dev = backend.to_device(fillv.reshape(C, 1, 1), model.device)
    with preserved_eval(model):
        z = backend.to_numpy(model(x4))
        if z.ndim != 2:
            raise ValueError(f"{_label(model)} gives output of shape {z.shape}; expected logits (1, K)")
        c = int(z[0].argmax()) if target_class is None else _check_class(target_class, z.shape[1])
        p0 = float(_softmax(z[0])[c])
        for start in range(0, len(spots), int(batch_size)):
            chunk = spots[start:start + int(batch_size)]
            batch = xp.repeat(x4, len(chunk), axis=0)
            for i, (r, q) in enumerate(chunk):
                t, l = tops[r], lefts[q]
                batch[i, :, t:t + patch, l:l + patch] = fill_dev
            p = _softmax(backend.to_numpy(model(batch)))[:, c]
            for (r, q), pi in zip(chunk, p):
                drops[r, q] = p0 - pi
    total = np.zeros((H, W))
    count = np.zeros((H, W))
    for r, t in enumerate(tops):
        for q, l in enumerate(lefts):
            total[t:t + patch, l:l + patch] += drops[r, q]
            count[t:t + patch, l:l + patch] += 1
    heat = (total / count).astype(np.float32)
    info = {"class": c, "probability": p0, "patch": patch, "stride": stride, "fill": fillv.tolist(),
            "drops": drops, "tops": tops, "lefts": lefts}
    return heat, info


# -- pictures --------------------------------------------------------------------------
def overlay(image, heat, path, title=None, alpha=0.45, cmap=None, vmin=None, vmax=None, label=None, outline=None):
    """Write a PNG: the photo, and the photo with ``heat`` over it in a colour map plus a colour bar.

    ``image`` (C, H, W) in [0, 1] with C = 1 (shown in gray) or 3; ``heat`` (H, W);
    ``outline`` an optional (H, W) mask whose border is drawn in white on both panels.
    Default colours: 'jet' from 0 to max(heat) for a map ≥ 0; a signed map (occlusion)
    gets 'RdBu_r' symmetric about 0. Written atomically (``nabi.plots.save_figure``).
    """
    from .plots import plotting, save_figure
    img = np.asarray(backend.to_numpy(image), dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"image must be shaped (C, H, W) with C = 1 or 3, got {img.shape}")
    heat = np.asarray(backend.to_numpy(heat), dtype=np.float64)
    if heat.shape != img.shape[1:]:
        raise ValueError(f"heat map {heat.shape} and image {img.shape[1:]} must have the same (H, W)")
    if outline is not None and np.shape(outline) != heat.shape:
        raise ValueError(f"outline mask {np.shape(outline)} and image {img.shape[1:]} must have the same (H, W)")
    img = np.clip(img, 0, 1)
    lo, hi = float(np.nanmin(heat)), float(np.nanmax(heat))
    if cmap is None:
        cmap = "RdBu_r" if lo < 0 else "jet"
    if vmin is None and vmax is None:
        if lo < 0:
            m = max(abs(lo), abs(hi), 1e-12)
            vmin, vmax = -m, m
        else:
            vmin, vmax = 0.0, max(hi, 1e-12)
    with plotting() as plt:
        gray = img.shape[0] == 1
        shown = img[0] if gray else img.transpose(1, 2, 0)
        fig, (a, b) = plt.subplots(1, 2, figsize=(8.6, 4))
        try:
            for ax in (a, b):
                ax.imshow(shown, cmap="gray" if gray else None, vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
            a.set_title("image")
            im = b.imshow(heat, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, interpolation="bilinear")
            b.set_title(label or "heat map")
            if outline is not None and 0 < np.count_nonzero(outline) < np.size(outline):
                for ax in (a, b):
                    ax.contour(np.asarray(outline, dtype=np.float64), levels=[0.5], colors="white", linewidths=1)
            bar = fig.colorbar(im, ax=b, fraction=0.046, pad=0.04)
            if bar.solids is not None:
                bar.solids.set_alpha(1)
            if label:
                bar.set_label(label)
            if title:
                fig.suptitle(title)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return save_figure(fig, path)
        finally:
            plt.close(fig)


# -- runs --------------------------------------------------------------------------------
def _load_run(run):
    """``load_run`` with a ValueError naming the run and its weights file when they do not fit."""
    from .runs import find_weights, load_run
    path = find_weights(run)
    try:
        return load_run(run)
    except KeyError as e:
        msg = e.args[0] if e.args else str(e)
        raise ValueError(f"run {run}: the weights in {path} do not fit the model its sidecar describes "
                         f"(incompatible or edited run folder?): {msg}") from None


def _sizes(meta):
    """(C, (H, W)) the model takes and the (h, w) images were loaded at in training (before padding)."""
    C, H, W = (int(s) for s in meta["input_size"])
    s = (meta.get("config") or {}).get("image_size")
    return C, (H, W), ((int(s), int(s)) if s else (H, W))


def _apply(transforms, x):
    for t in transforms:
        if t is not None:
            x = t(x, None)
    return x


def explain_image(run, image_path, out_dir, method="both", layer=None, target=None, patch=None, stride=None):
    """Explain one photo with a trained run: writes ``<stem>_gradcam.png`` and/or ``<stem>_occlusion.png``.

    The image is read at the run's input size and channels and given the run's
    evaluation transforms (padding, normalisation); ``target`` (class name or
    index) defaults to the predicted class. Returns ``{'class', 'class_index',
    'probability' (p of that class), 'predicted', 'files', 'layer'}``. A model without
    conv layers cannot do Grad-CAM (ValueError; ``method='occlusion'`` works).
    """
    from .data.folder import load_image
    from .data.prepare import eval_transforms
    from .runs import image_fit
    if method not in ("both", "gradcam", "occlusion"):
        raise ValueError(f"method must be 'both', 'gradcam' or 'occlusion', got {method!r}")
    model, meta = _load_run(run)
    classes = list(meta["classes"])
    if method in ("both", "gradcam"):
        if layer is None and not _convs(model):
            raise ValueError(f"run {run}: {_no_conv_error(model)} (method='occlusion')")
        if layer is not None:
            find_target_layer(model, layer)
    C, hw, load_hw = _sizes(meta)
    image_path = Path(image_path)
    # FileNotFoundError / ImageDecodeError (a ValueError) name the file
    raw = load_image(image_path, C, load_hw, image_fit(meta))
    shown = _apply(eval_transforms(hw, {"kind": "unit"}), raw)
    x = _apply(eval_transforms(hw, meta["normalization"]), raw)
    if target is None:
        c = None
    elif isinstance(target, str) and target in classes:
        c = classes.index(target)
    elif isinstance(target, str) and not target.lstrip("-").isdigit():
        raise ValueError(f"target {target!r} is not a class of run {run}; classes: {', '.join(classes)}")
    else:
        c = _check_class(int(target), len(classes))
    with preserved_eval(model):
        z = backend.to_numpy(model(_as_batch(model, x)))[0]
    probs = _softmax(z)
    pred = int(probs.argmax())
    c = pred if c is None else c
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, used_layer = [], None
    head = f"{image_path.name}: {classes[c]} (p = {probs[c]:.3f})"
    if c != pred:
        head += f", predicted {classes[pred]} (p = {probs[pred]:.3f})"
    if method in ("both", "gradcam"):
        cam, info = grad_cam(model, x, target_class=c, layer=layer)
        used_layer = info["layer"]
        files.append(str(overlay(shown, cam, out_dir / f"{image_path.stem}_gradcam.png",
                                 title=f"{head}\nGrad-CAM at {used_layer}", label="Grad-CAM")))
    if method in ("both", "occlusion"):
        heat, info = occlusion_map(model, x, target_class=c, patch=patch, stride=stride)
        files.append(str(overlay(shown, heat, out_dir / f"{image_path.stem}_occlusion.png",
                                 title=f"{head}\nocclusion {info['patch']}×{info['patch']} stride {info['stride']}",
                                 label=f"drop in p({classes[c]})")))
    return {"class": classes[c], "class_index": c, "probability": float(probs[c]), "predicted": classes[pred],
            "files": files, "layer": used_layer}


# -- masked evaluation -----------------------------------------------------------------
def _find_mask(masks_root, rel):
    from .data.folder import IMG_EXTENSIONS
    exact = masks_root / rel
    if exact.is_file():
        return exact
    folder = (masks_root / rel).parent
    if not folder.is_dir():
        return None
    stems = {rel.stem, rel.stem + "_mask"}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.stem in stems and p.suffix.lower() in IMG_EXTENSIONS:
            return p
    return None


def _read_mask(path, size):
    """Boolean (h, w) foreground of a mask image resized (nearest) to ``size`` = (w, h).

    Alpha channel if the file has a non-trivial one, else gray levels; foreground is
    value > max/2 (0/1, 0/255 and slightly noisy JPEG masks all work)."""
    from PIL import Image, ImageOps

    from .data.folder import ImageDecodeError
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if "A" in img.getbands() and img.getchannel("A").getextrema()[0] < 255:
                img = img.getchannel("A")
            elif img.mode not in ("L", "I", "F", "1"):
                img = img.convert("L")
            img = img.resize(size, Image.NEAREST)
            m = np.asarray(img, dtype=np.float64)
    except Exception as exc:
        raise ImageDecodeError(f"could not decode mask file {path}: {type(exc).__name__}: {exc}") from exc
    top = m.max()
    return m > top / 2 if top > 0 else np.zeros(m.shape, dtype=bool)


def mask_at_input(mask_path, photo_path, size, fit="crop"):
    """Boolean (H, W) animal mask of ``photo_path`` as the model sees the photo.

    The mask file is read as ``masked_evaluation`` reads it (alpha or gray, foreground
    above half the maximum, resized with nearest to the photo's own size, any size of
    file), then brought to ``size`` = (H, W) with the same ``fit`` (crop, squash or pad,
    see ``nabi.data.folder.FITS``) that brings the photo there; pixels the fit blends
    count as animal when they are more than half white, and padding counts as not animal.
    Raises ``ImageDecodeError`` naming the file when it is not an image.
    """
    from PIL import Image

    from .data.folder import fit_image, open_image
    mask_path = Path(mask_path)
    if not mask_path.is_file():
        raise FileNotFoundError(f"mask file not found: {mask_path}")
    photo = open_image(photo_path, 1, None)
    fg = _read_mask(mask_path, photo.size)
    shown = fit_image(Image.fromarray(fg.astype(np.uint8) * 255), tuple(size), fit)
    return np.asarray(shown) > 127


def habitat_reliance(heat, mask):
    """How much of a heat map falls off the animal: ``{'heat_share', 'area_share', 'heat_total'}``.

    ``heat`` (H, W), negative values clipped to 0 (h = max(heat, 0)); ``mask`` (H, W), animal where
    true / non-zero (m = 1) and habitat elsewhere (m = 0):

        heat_share = Σ h·(1 − m) / Σ h        the share of the heat on the habitat
        area_share = Σ (1 − m) / (H·W)         the habitat's share of the photo: heat_share for a
                                                heat map spread evenly, the figure to read it against

    Raises ValueError when the shapes differ, when the mask is all animal or all habitat (the
    share is then 0 or 1 whatever the heat), or when the heat is zero everywhere (no share to give).
    """
    h = np.maximum(np.asarray(backend.to_numpy(heat), dtype=np.float64), 0)
    m = np.asarray(backend.to_numpy(mask)) != 0
    if h.ndim != 2 or h.shape != m.shape:
        raise ValueError(f"heat map {h.shape} and mask {m.shape} must both be (H, W) of the same size")
    n_animal = int(m.sum())
    if n_animal == 0:
        raise ValueError("the mask has no animal (all black): habitat reliance would be 1 whatever the heat")
    if n_animal == m.size:
        raise ValueError("the mask is all animal (all white): habitat reliance would be 0 whatever the heat")
    total = float(h.sum())
    if not total > 0:
        raise ValueError("the heat map is zero everywhere: nothing in the photo raises the score, so there "
                         "is no share of the heat to give")
    return {"heat_share": float(h[~m].sum() / total), "area_share": float(1 - n_animal / m.size),
            "heat_total": total}


def _blank(img, mask, value):
    """Pillow image with pixels outside ``mask`` set to ``value`` (in [0, 1], per channel or one)."""
    from PIL import Image
    a = np.array(img)
    v = np.clip(np.rint(np.asarray(value, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    a[~mask] = v if a.ndim == 3 else v.reshape(-1)[0]
    return Image.fromarray(a)


def masked_evaluation(run, data_dir, masks_dir=None, background_value=None, batch_size=64):
    """Accuracy of a run on photos as they are and with the background blanked out.

    ``data_dir``: one sub-folder per class (a dataset root with ``test/`` uses that).
    ``masks_dir`` mirrors it (same class/file path; any image extension, or
    ``<stem>_mask``); a mask is foreground where its value (alpha if present) is above
    half its maximum, resized to the photo with nearest. Pixels outside the mask become
    ``background_value`` (default 0, black; one value or one per channel, in [0, 1]
    pixel space, before normalisation, rounded to 8 bits), at the photo's own
    resolution, before the run's resize and transforms. Photos without a mask are
    listed in ``missing_masks`` and left out of both evaluations. With ``masks_dir``
    None, ``data_dir`` holds already-masked photos and only ``accuracy_masked`` is
    given (``accuracy_original`` and ``change`` are None).
    Returns ``{'accuracy_original', 'accuracy_masked', 'change' (masked − original), 'n',
    'missing_masks', 'unreadable', 'foreground_fraction', 'per_class': {name: {...}}}``.
    """
    from .data.background import background_kinds
    from .data.folder import ImageDecodeError, ImageFolder, fit_image, open_image, pil_to_array
    from .data.split import find_splits
    from .runs import image_fit
    from .data.prepare import eval_transforms
    model, meta = _load_run(run)
    classes = list(meta["classes"])
    C, hw, load_hw = _sizes(meta)
    fit = image_fit(meta)
    value = 0.0 if background_value is None else background_value
    if np.size(value) not in (1, C) or not np.all((np.asarray(value) >= 0) & (np.asarray(value) <= 1)):
        raise ValueError(f"background_value must be one value or {C} values in [0, 1], got {background_value!r}")
    root = Path(data_dir)
    masks_root = Path(masks_dir) if masks_dir is not None else None
    splits = find_splits(root)
    if splits:
        if "test" not in splits:
            raise ValueError(f"{root} has split folders but no test/ folder to evaluate")
        if masks_root is not None and (masks_root / splits["test"].name).is_dir():
            masks_root = masks_root / splits["test"].name
        root = splits["test"]
    if masks_root is not None and not masks_root.is_dir():
        raise FileNotFoundError(f"masks folder not found: {masks_root}")
    # a model that learnt background kinds reads the background folder's <kind>/ sub-folders as its kinds
    folder = ImageFolder(root, channels=C, classes=classes, background_kinds=bool(background_kinds(classes)))
    transforms = eval_transforms(hw, meta["normalization"])
    originals, masked, labels, missing, unreadable, fractions = [], [], [], [], [], []
    for path, label in folder.samples:
        rel = Path(path).relative_to(root)
        mask_path = None
        if masks_root is not None:
            mask_path = _find_mask(masks_root, rel)
            if mask_path is None:
                missing.append(str(rel))
                continue
        try:
            img = open_image(path, C, None)
            if mask_path is not None:
                fg = _read_mask(mask_path, img.size)
                fractions.append(float(fg.mean()))
                masked.append(_apply(transforms, pil_to_array(fit_image(_blank(img, fg, value), load_hw, fit))))
        except (ImageDecodeError, OSError) as exc:
            unreadable.append(f"{rel}: {exc}")
            continue
        x = _apply(transforms, pil_to_array(fit_image(img, load_hw, fit)))
        (originals if mask_path is not None else masked).append(x)
        labels.append(label)
    if not labels:
        raise ValueError(f"nothing to evaluate in {root}: " + (f"none of its photos has a mask in {masks_root}"
                                                                 if missing else "no readable photos"))
    labels = np.asarray(labels)

    def predict(xs):
        out = []
        with preserved_eval(model):
            for s in range(0, len(xs), int(batch_size)):
                xb = np.stack(xs[s:s + int(batch_size)]).astype(_dtype(model))
                out.append(backend.to_numpy(model(backend.to_device(xb, model.device))).argmax(axis=1))
        return np.concatenate(out) == labels

    ok_masked = predict(masked)
    ok_orig = predict(originals) if masks_root is not None else None
    per_class = {}
    for k, name in enumerate(classes):
        sel = labels == k
        if not sel.any():
            continue
        am = float(ok_masked[sel].mean())
        ao = float(ok_orig[sel].mean()) if ok_orig is not None else None
        per_class[name] = {"n": int(sel.sum()), "accuracy_original": ao, "accuracy_masked": am,
                           "change": am - ao if ao is not None else None}
    am = float(ok_masked.mean())
    ao = float(ok_orig.mean()) if ok_orig is not None else None
    return {"accuracy_original": ao, "accuracy_masked": am, "change": am - ao if ao is not None else None,
            "n": int(len(labels)), "missing_masks": missing, "unreadable": unreadable,
            "foreground_fraction": float(np.mean(fractions)) if fractions else None,
            "background_value": value if np.size(value) == 1 else list(np.ravel(value)), "per_class": per_class}
