"""The SHA-256 of a file, read in blocks (a weight file or a photo never has to fit in memory twice)."""
from __future__ import annotations

import hashlib


def file_sha256(path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
