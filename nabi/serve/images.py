"""Pictures the server makes from the photos: thumbnails, working copies of very large photos, heat-maps.

- ``thumbnail(path, size)``: a JPEG at most ``size`` pixels on its longer side, turned upright as its EXIF
  orientation says (what the pages show; the original is sent only when asked for);
- ``working_copy(img)``: a photo above ``WORK_PIXELS`` is identified, thumbnailed and drawn on through a
  copy of ``WORK_SIDE / 2`` to ``WORK_SIDE`` pixels on its longer side (a JPEG is decoded straight at 1/2, 1/4
  or 1/8 scale); the original is kept as uploaded;
- ``heatmap_png(cam, path, hw)``: a Grad-CAM map drawn over the photo as the model saw it.
"""
from __future__ import annotations

import io

import numpy as np

WORK_PIXELS = 40_000_000          # above this many pixels a photo is worked on through a smaller copy
WORK_SIDE = 4096                  # the working copy's longer side: at most this, at least half of it
THUMB_SIZES = (96, 192, 384, 768)  # the thumbnail sizes the server makes (longer side, pixels)


def working_copy(img) -> bytes:
    """JPEG bytes of ``img`` (a loaded Pillow image) shrunk to at most ``WORK_SIDE`` pixels on its longer side."""
    from PIL import Image, ImageOps
    img = ImageOps.exif_transpose(img).convert("RGB")     # the copy has no EXIF: turn it upright now
    img.thumbnail((WORK_SIDE, WORK_SIDE), Image.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def thumbnail(path, size) -> bytes:
    """JPEG bytes of the photo at ``path``, upright, at most ``size`` pixels on its longer side."""
    from PIL import Image, ImageOps
    if size not in THUMB_SIZES:
        raise ValueError(f"thumbnail size must be one of {THUMB_SIZES}, got {size}")
    with Image.open(path) as img:
        img.draft("RGB", (size, size))            # JPEG: decode at a reduced scale, far faster
        img = ImageOps.exif_transpose(img).convert("RGB")
        img.thumbnail((size, size), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue()


def heatmap_png(cam, image_path, hw, size=384, fit="crop") -> bytes:
    """PNG bytes: the photo (brought to the model's aspect ``hw`` as the run's ``fit`` says, ``size`` pixels
    high) with the heat-map ``cam`` (values in [0, 1]) drawn over it in the 'jet' colours, 45 % opaque."""
    from PIL import Image
    from ..data.folder import fit_image, open_image, pil_to_array
    H, W = hw
    shown = fit_image(open_image(image_path, 3, None), (size, max(1, round(size * W / H))), fit)
    cam_img = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize(shown.size, Image.BILINEAR)
    t = np.asarray(cam_img, dtype=np.float64) / 255.0
    jet = np.stack([np.clip(1.5 - np.abs(4 * t - k), 0, 1) for k in (3, 2, 1)], axis=-1)
    photo = pil_to_array(shown).transpose(1, 2, 0).astype(np.float64)
    mixed = np.clip(0.55 * photo + 0.45 * jet, 0, 1)
    buf = io.BytesIO()
    Image.fromarray((mixed * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
