"""A photo's EXIF time and place.

``DateTimeOriginal`` (tag 36867 in the Exif IFD; else ``DateTime``, tag 306) gives the time the photo was
taken, in the camera's clock; ``OffsetTimeOriginal`` (tag 36881, EXIF 2.31) its offset from UTC when the
camera wrote one; the GPS IFD (latitude/longitude as degrees,
minutes, seconds with N/S, E/W references) gives the place, in signed decimal degrees.
"""
from __future__ import annotations

import re
from datetime import datetime

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _DATETIME, _OFFSET_ORIGINAL = 36867, 306, 36881


def _rational(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        num, den = v
        return float(num) / float(den)


def _dms(value, ref) -> float | None:
    try:
        d, m, s = (_rational(x) for x in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    deg = d + m / 60 + s / 3600
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    return -deg if str(ref).strip().upper() in ("S", "W") else deg


def exif_offset(img):
    """The camera's offset from UTC (``OffsetTimeOriginal``, e.g. "+09:00"), or None."""
    try:
        raw = img.getexif().get_ifd(_EXIF_IFD).get(_OFFSET_ORIGINAL)
    except Exception:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if isinstance(raw, str):
        m = re.fullmatch(r"\s*([+-])(\d{2}):(\d{2})\s*\x00*", raw)
        if m and int(m.group(2)) <= 14 and int(m.group(3)) < 60:
            return f"{m.group(1)}{m.group(2)}:{m.group(3)}"
    return None


def exif_time_place(img):
    """``(taken_at, latitude, longitude)`` from a Pillow image's EXIF; ``None`` where absent or unreadable."""
    try:
        exif = img.getexif()
    except Exception:
        return None, None, None
    taken = None
    try:
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    except Exception:
        raw = None
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if isinstance(raw, str):
        m = re.match(r"^\s*(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})", raw)
        if m and m.group(1) != "0000":
            taken = "{}-{}-{}T{}:{}:{}".format(*m.groups())
    lat = lon = None
    try:
        gps = exif.get_ifd(_GPS_IFD)
    except Exception:
        gps = {}
    if gps and 2 in gps and 4 in gps:
        lat, lon = _dms(gps[2], gps.get(1, "N")), _dms(gps[4], gps.get(3, "E"))
        if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
            lat = lon = None
    return taken, lat, lon


def photo_time(path):
    """The time a photo file was taken (EXIF, as a naive ``datetime``), or None when it has none or cannot be
    read."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            taken, _, _ = exif_time_place(img)
    except Exception:
        return None
    if taken is None:
        return None
    try:
        return datetime.fromisoformat(taken)
    except ValueError:
        return None
