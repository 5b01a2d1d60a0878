"""Checking an uploaded photo before anything is stored, and reading its EXIF time and place.

An upload is accepted when

- it is at most ``max_bytes`` long;
- Pillow recognises its *content* as JPEG, PNG or WebP (the file name and the type the
  client claims are ignored: a text file named ``cat.jpg`` is refused);
- its width × height, read from the header before any pixel is decoded, is at most
  ``max_pixels`` (a decompression bomb, a few kilobytes that would expand to gigabytes, is
  refused without being decoded);
- it then decodes completely. A photo above ``images.WORK_PIXELS`` (a 48-megapixel phone photo)
  is decoded at a reduced scale where the format allows (JPEG) into a working copy at most
  ``images.WORK_SIDE`` pixels on its longer side; the original is kept as uploaded.

EXIF time, offset and place are read by ``nabi.data.exif``.
"""
from __future__ import annotations

import io
import unicodedata
import warnings
from dataclasses import dataclass

from ..data.exif import exif_offset, exif_time_place

FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class UploadRefused(ValueError):
    """An upload that is not accepted; ``status`` is the HTTP status to answer with."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


@dataclass
class CheckedPhoto:
    data: bytes
    ext: str                 # jpg | png | webp
    width: int
    height: int
    taken_at: str | None     # YYYY-MM-DDTHH:MM:SS (camera's local time) or None
    latitude: float | None
    longitude: float | None
    taken_offset: str | None = None   # the camera's offset from UTC, "+09:00", when its EXIF says
    work: bytes | None = None         # the working copy (JPEG) of a photo above WORK_PIXELS, else None
    work_size: tuple | None = None    # its (width, height)


def check_photo(data: bytes, max_bytes: int, max_pixels: int, label="the upload") -> CheckedPhoto:
    """Accept or refuse (``UploadRefused``) one upload; see the module docstring."""
    from PIL import Image
    if len(data) == 0:
        raise UploadRefused(f"{label} is empty", 400)
    if len(data) > max_bytes:
        raise UploadRefused(f"{label} is {len(data):,} bytes; the limit is {max_bytes:,} bytes", 413)
    try:
        with warnings.catch_warnings():          # our own limit (max_pixels) decides; Pillow's hard one stays
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError as e:
        raise UploadRefused(f"{label} is refused as a decompression bomb: {e}", 413) from None
    except Exception:
        raise UploadRefused(f"{label} is not a JPEG, PNG or WebP image (the type is read from the content, "
                            f"not the file name)", 415) from None
    from .images import WORK_PIXELS, WORK_SIDE, working_copy
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise UploadRefused(f"{label} is {width}×{height} = {width * height:,} pixels; the limit is "
                                f"{max_pixels:,} pixels (decompression bombs are refused)", 413)
        large = width * height > WORK_PIXELS
        fmt = img.format
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if large:
                    img.draft("RGB", (WORK_SIDE // 2, WORK_SIDE // 2))   # JPEG: decode at 1/2, 1/4 or 1/8 scale
                img.load()
        except Exception as e:
            raise UploadRefused(f"{label} could not be decoded as {fmt}: {type(e).__name__}: {e}",
                                415) from None
        taken_at, lat, lon = exif_time_place(img)
        offset = exif_offset(img)
        work = work_size = None
        if large:
            work = working_copy(img)
            with Image.open(io.BytesIO(work)) as w:
                work_size = w.size
        return CheckedPhoto(data, FORMATS[fmt], width, height, taken_at, lat, lon, offset, work, work_size)


# -- names -----------------------------------------------------------------------------------
MAX_NAME_LENGTH = 80


def clean_name(name, what="name") -> str:
    """An individual's name as typed, checked: 1–80 characters, NFC, no control characters.

    A name is only a label: answers, sightings and the gallery's search refer to the individual's id, and no
    name ever becomes a file path, so ``/`` and ``\\`` are allowed ("Mama/Kitty").
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} must be text, got {type(name).__name__}")
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise ValueError(f"{what} is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed")
    if name.casefold() == "background":
        raise ValueError(f"{what} 'background' is reserved for photos without an animal")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise ValueError(f"{what} {name!r} holds control characters")
    return name


def name_key(name: str) -> str:
    """The form two names are compared in: NFC, case-folded, inner spaces collapsed."""
    return " ".join(unicodedata.normalize("NFC", name).casefold().split())


def clean_place(place) -> str | None:
    if place is None:
        return None
    if not isinstance(place, str):
        raise ValueError(f"place must be text, got {type(place).__name__}")
    place = unicodedata.normalize("NFC", place).strip()
    if len(place) > 200:
        raise ValueError(f"place is {len(place)} characters long; at most 200 are allowed")
    if any(unicodedata.category(c) == "Cc" for c in place):
        raise ValueError("place holds control characters")
    return place or None


def display_name(filename) -> str | None:
    """The last part of a client's file name, for display only (never a path on this machine)."""
    if not filename:
        return None
    base = str(filename).replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c) != "Cc")[:200]
    return base or None
