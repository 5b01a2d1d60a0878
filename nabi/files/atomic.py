"""Atomic writes: a file is either the old one or the whole new one, never half of either.

The bytes go to a temporary file in the same folder, are flushed and fsync'd, then
``os.replace`` puts the file in place and the folder is fsync'd. If anything fails the
temporary file is removed and a file already at ``path`` is left exactly as it was.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------
def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # pragma: no cover - non-Linux
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data) -> None:
    """Write ``data`` to ``path`` all at once: temp file, fsync, ``os.replace``, fsync of the folder."""
    path = os.fspath(path)
    data = memoryview(data)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    try:
        mode = os.stat(path).st_mode & 0o7777   # keep an existing file's permissions
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def atomic_link(source, path) -> None:
    """Make ``path`` a hard link to the file ``source`` all at once: a link under a temporary name in
    ``path``'s folder, ``os.replace`` onto ``path``, fsync of the folder. An ``OSError`` (a file system
    without hard links, another device, too many links) leaves ``path`` as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.link-{os.getpid()}-{os.urandom(4).hex()}.tmp")
    os.link(source, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> None:
    """``atomic_write_bytes`` of ``text`` encoded (UTF-8 by default)."""
    atomic_write_bytes(path, text.encode(encoding))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def atomic_write_json(path, obj) -> None:
    """Write ``obj`` as JSON (indent 2, UTF-8, non-ASCII kept as is, e.g. Korean class names).

    NumPy scalars and arrays are written as numbers and lists. The object is
    serialised before anything is written, so a failure leaves ``path`` alone.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    atomic_write_text(path, text)


def ensure_writable_folder(path):
    """Create the folder ``path`` (and its parents) when missing and check that a file can be written in
    it; returns it as a ``Path``. An ``OSError`` (read-only file system, a file in the way, no
    permission) says why it cannot be used."""
    from pathlib import Path
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".write-test"
    probe.write_text("ok")
    probe.unlink()
    return path
