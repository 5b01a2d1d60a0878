"""Checking an uploaded photo before anything is stored, and reading its EXIF time and place.

An upload is accepted when

- it is at most ``max_bytes`` long;
- Pillow recognises its *content* as JPEG, PNG or WebP (the file name and the type the
  client claims are ignored: a text file named ``cat.jpg`` is refused);
- its width × height, read from the header before any pixel is decoded, is at most
  ``max_pixels`` (a decompression bomb, a few kilobytes that would expand to gigabytes, is
  refused without being decoded);
- it then decodes completely.

EXIF time and place are read by ``nabi.data.exif``.
"""
from __future__ import annotations

import io
import unicodedata
import warnings
from dataclasses import dataclass

from ..data.exif import exif_time_place

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


def check_photo(data: bytes, max_bytes: int, max_pixels: int, label="the upload") -> CheckedPhoto:
    """Accept or refuse (``UploadRefused``) one upload; see the module docstring."""
    from PIL import Image
    if len(data) == 0:
        raise UploadRefused(f"{label} is empty", 400)
    if len(data) > max_bytes:
        raise UploadRefused(f"{label} is {len(data):,} bytes; the limit is {max_bytes:,} bytes", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError as e:
        raise UploadRefused(f"{label} is refused as a decompression bomb: {e}", 413) from None
    except Image.DecompressionBombWarning as e:
        raise UploadRefused(f"{label} is refused as a decompression bomb: {e}", 413) from None
    except Exception:
        raise UploadRefused(f"{label} is not a JPEG, PNG or WebP image (the type is read from the content, "
                            f"not the file name)", 415) from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise UploadRefused(f"{label} is {width}×{height} = {width * height:,} pixels; the limit is "
                                f"{max_pixels:,} pixels (decompression bombs are refused)", 413)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
        except Exception as e:
            raise UploadRefused(f"{label} could not be decoded as {img.format}: {type(e).__name__}: {e}",
                                415) from None
        taken_at, lat, lon = exif_time_place(img)
        return CheckedPhoto(data, FORMATS[img.format], width, height, taken_at, lat, lon)


# -- names -----------------------------------------------------------------------------------
MAX_NAME_LENGTH = 80


def clean_name(name, what="name") -> str:
    """An individual's name as typed, checked: 1–80 characters, NFC, no path separators or control characters.

    Names are only ever stored in the database; the refusal of ``/``, ``\\`` and ``..`` makes that plain to
    whoever types one (a name is never a file path).
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} must be text, got {type(name).__name__}")
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise ValueError(f"{what} is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"{what} {name!r} looks like a path: '/' and '\\' are not allowed in names")
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
