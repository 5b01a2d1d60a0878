"""Weight files a user keeps: safetensors plus a JSON sidecar, written atomically.

* Nothing here unpickles: nabi weights are ``.safetensors`` (read with
  ``safetensors.numpy`` from bytes), and PyTorch ``.pth`` files are read with
  ``torch.load(..., weights_only=True)``, which refuses anything but tensors
  and plain containers.
* Every write is atomic: the bytes go to a temporary file in the same folder,
  are flushed and fsync'd, then ``os.replace`` puts the file in place and the
  folder is fsync'd. If anything fails the temporary file is removed and a
  file already at ``path`` is left exactly as it was.
* ``save_weights(path, state, metadata)`` writes ``model.safetensors`` and
  ``model.json`` beside it (architecture, arguments, class names, input size,
  normalisation, ...) and the weight file's own SHA-256 and size
  (``"weights_file": {"sha256", "bytes"}``). ``load_weights`` returns both,
  checking the file against them first: a file cut short, damaged on disk or
  replaced after the sidecar was written is refused with a message naming it.
  (The safetensors header also carries a SHA-256 of the tensor data, checked on
  every read with or without a sidecar.)
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .. import backend
from .atomic import _json_default, atomic_link, atomic_write_bytes, atomic_write_text


_KEYS_FIELD = "nabi.keys"      # safetensors header metadata: the tensor names in the caller's order


_HASH_FIELD = "nabi.sha256"    # ... and a SHA-256 of the tensor bytes, checked on load

FILE_FIELD = "weights_file"    # sidecar key: {"sha256": hex digest of the whole .safetensors file, "bytes": size}


# ---------------------------------------------------------------------------
# nabi weight files
# ---------------------------------------------------------------------------
def sidecar_path(path) -> str:
    """``model.safetensors`` -> ``model.json``; any other name gets ``.json`` appended."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return path[: -len(".safetensors")] + ".json"
    return path + ".json"


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _to_host_arrays(state: Mapping) -> "OrderedDict[str, np.ndarray]":
    if not isinstance(state, Mapping):
        raise TypeError(f"weights must be a dict name -> array, got {type(state).__name__}")
    out = OrderedDict()
    for k, v in state.items():
        if not isinstance(k, str):
            raise TypeError(f"weight names must be strings, got {k!r}")
        a = backend.to_numpy(v)
        if a.dtype == object:
            raise TypeError(f"weight {k!r} is not a numeric array (dtype object)")
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        out[k] = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray would make 0-d 1-d)
    return out


def save_weights(path, state: Mapping, metadata: dict | None = None, *, same_as=(), overwrite=False) -> None:
    """Write ``state`` (name -> array) as safetensors at ``path`` and ``metadata`` as JSON beside it.

    The sidecar is ``sidecar_path(path)`` (``model.safetensors`` -> ``model.json``) and
    is always written (``{}`` without metadata), so it never describes older weights.
    Both are serialised before either file is touched, and each write is atomic.

    ``same_as``: other weight files (missing ones are skipped). When one of them holds exactly the
    bytes this call would write, ``path`` becomes a hard link to it instead of a second copy (a run's
    final weights, its last checkpoint and its best weights are often the same); where the file system
    refuses the link, the bytes are written as usual. Each name keeps its own sidecar, which records
    the same SHA-256, so every name is checked on load as before. Linked files must never be changed
    in place — nabi never does: every write replaces the whole file under a new inode.

    A file already at ``sidecar_path(path)`` that is not a nabi sidecar (a JSON object recording
    ``weights_file`` or ``nabi_version``) is someone else's: ``FileExistsError``, nothing written, unless
    ``overwrite`` is given.
    """
    import safetensors.numpy as stnp

    path = os.fspath(path)
    _refuse_foreign_sidecar(path, overwrite)
    arrays = _to_host_arrays(state)
    header = {_KEYS_FIELD: json.dumps(list(arrays), ensure_ascii=False),
              _HASH_FIELD: _digest([arrays[k] for k in sorted(arrays)])}
    try:
        blob = _canonical(stnp.save(dict(arrays), metadata=header))
    except Exception as e:
        raise ValueError(f"cannot write {path}: {e}") from e
    side = dict(metadata or {})
    digest = hashlib.sha256(blob).hexdigest()
    side[FILE_FIELD] = {"sha256": digest, "bytes": len(blob)}
    meta_text = json.dumps(side, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    twin = next((os.fspath(p) for p in same_as if _holds_bytes(os.fspath(p), blob, digest)), None)
    if twin is None or not _link(twin, path):
        atomic_write_bytes(path, blob)
    atomic_write_text(sidecar_path(path), meta_text)


def _canonical(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header in one fixed order (the metadata's keys sorted, then
    the tensors by offset): the library writes its metadata map in an order that varies from call to
    call, and equal weights must give equal bytes (a file's SHA-256 in its sidecar, hard links between
    equal files). The data and its offsets are untouched; the header is padded to 8 bytes as the format
    asks."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    for name in sorted(header, key=lambda k: (header[k]["data_offsets"], k)):
        ordered[name] = header[name]
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + n:]


def _refuse_foreign_sidecar(path: str, overwrite: bool) -> None:
    side = sidecar_path(path)
    if overwrite or not os.path.exists(side):
        return
    try:
        with open(side, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        found = None
    if isinstance(found, dict) and (FILE_FIELD in found or "nabi_version" in found):
        return
    raise FileExistsError(f"{side} already exists and is not the metadata file of {path} (nabi's record "
                          f"'{FILE_FIELD}'); saving {path} would replace it with the weights' metadata. Move it, "
                          f"save under another name, or pass overwrite=True")


def _link(source: str, path: str) -> bool:
    """Make ``path`` a hard link to ``source`` (already one: nothing to do); False where links are refused."""
    try:
        if os.path.exists(path) and os.path.samefile(source, path):
            return True
        atomic_link(source, path)
        return True
    except OSError:             # no hard links here, another device, too many links: a copy of its own
        return False


def _holds_bytes(path: str, blob: bytes, digest: str) -> bool:
    """Whether the weight file ``path`` holds exactly ``blob``: its sidecar records ``digest`` (cheap to
    rule out) and its bytes, read back, are equal (so a damaged file is never linked to)."""
    try:
        if os.path.getsize(path) != len(blob):
            return False
        with open(sidecar_path(path), encoding="utf-8") as f:
            recorded = json.load(f).get(FILE_FIELD) or {}
        if recorded.get("sha256") != digest:
            return False
        with open(path, "rb") as f:
            return f.read() == blob
    except (OSError, ValueError, AttributeError):
        return False


def _read_header(path: str, blob: bytes) -> dict:
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except Exception as e:
        raise ValueError(f"{path} is not a valid safetensors file (unreadable header: {e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a valid safetensors file (header is not a JSON object)")
    return header


def _read_blob(path: str) -> bytes:
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not a weights file")
    with open(path, "rb") as f:
        return f.read()


def _read_safetensors(path: str, verify: bool = True, blob: bytes | None = None):
    """(OrderedDict name -> array, header metadata) from a safetensors file, with clear errors."""
    import safetensors.numpy as stnp

    if blob is None:
        blob = _read_blob(path)
    try:
        arrays = stnp.load(blob)
    except Exception as e:
        raise ValueError(f"{path} is not a valid safetensors file ({len(blob)} bytes; truncated or "
                         f"corrupted?): {e}") from e
    meta = _read_header(path, blob).get("__metadata__") or {}
    order = list(arrays)
    if _KEYS_FIELD in meta:
        try:
            saved = json.loads(meta[_KEYS_FIELD])
            if sorted(saved) == sorted(order):
                order = saved
        except ValueError:
            pass
    if verify and _HASH_FIELD in meta and _digest([arrays[k] for k in sorted(arrays)]) != meta[_HASH_FIELD]:
        raise ValueError(f"{path} is corrupted: its tensor data does not match the checksum written with it; "
                         f"restore it from a backup or train again")
    return OrderedDict((k, arrays[k]) for k in order), meta


def load_weights(path):
    """Read ``save_weights`` output: ``(OrderedDict name -> NumPy array, metadata dict)``.

    A missing file raises ``FileNotFoundError``; a truncated, corrupted or
    foreign file raises ``ValueError`` naming it. No sidecar gives metadata ``{}``.
    """
    path = os.fspath(path)
    blob = _read_blob(path)
    side = sidecar_path(path)
    if not os.path.exists(side):
        return _read_safetensors(path, blob=blob)[0], {}
    try:
        with open(side, encoding="utf-8") as f:
            metadata = json.load(f)
    except ValueError as e:
        raise ValueError(f"metadata file {side} (beside {path}) is not valid JSON (damaged or cut short?): {e}; "
                         f"it should hold the weights' description as a JSON object") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata file {side} should hold a JSON object, got {type(metadata).__name__}")
    recorded = metadata.pop(FILE_FIELD, None)
    try:
        state, _ = _read_safetensors(path, blob=blob)
    except ValueError as e:
        written = recorded.get("bytes") if isinstance(recorded, dict) else None
        if written is not None and written != len(blob):
            raise ValueError(f"{e}; {side} records {written} bytes written and the file has {len(blob)}: it was "
                             f"{'cut short' if len(blob) < written else 'changed'}. Restore it from a backup or "
                             f"train again") from None
        raise
    check_file(path, blob, recorded, side)
    return state, metadata


def check_file(path: str, blob: bytes, recorded, side: str) -> None:
    """Compare ``blob`` (the bytes of ``path``) with the size and SHA-256 its sidecar recorded."""
    if not recorded:
        return                                  # a sidecar from before nabi recorded them
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        raise ValueError(f"metadata file {side} has a damaged '{FILE_FIELD}' entry (expected sha256 and bytes)")
    expected_bytes = recorded.get("bytes")
    if expected_bytes is not None and len(blob) < expected_bytes:
        raise ValueError(f"{path} is {len(blob)} bytes, but {expected_bytes} were written ({side} records its "
                         f"size and SHA-256): the file was cut short. Restore it from a backup or train again")
    found = hashlib.sha256(blob).hexdigest()
    if found != recorded["sha256"]:
        raise ValueError(f"{path} does not match the SHA-256 recorded in {side} (expected "
                         f"{recorded['sha256'][:16]}… of {expected_bytes} bytes, found {found[:16]}… of "
                         f"{len(blob)} bytes): the file was damaged or replaced after it was written. Restore it "
                         f"from a backup or train again")


def _nabi_version() -> str:
    try:
        from importlib.metadata import version
        return version("nabi")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def save_model(model, path, metadata: dict | None = None, overwrite: bool = False) -> None:
    """Save ``model``'s weights (``model.state_dict()``) to ``path`` (``.safetensors``) and ``metadata`` to
    the JSON sidecar beside it (``net.safetensors`` -> ``net.json``), adding ``nabi_version`` unless
    given. A ``net.json`` that is not a nabi sidecar is refused (``FileExistsError``) unless ``overwrite``.
    The model stays on its device (``state_dict`` returns host copies). ``nabi.save_model``."""
    metadata = dict(metadata or {})
    metadata.setdefault("nabi_version", _nabi_version())
    save_weights(path, model.state_dict(), metadata, overwrite=overwrite)


def load_model(model, path, strict: bool = True) -> dict:
    """Load a weight file into ``model`` (on the model's own device and dtype).

    Returns ``model.load_state_dict``'s report ``{'missing', 'unexpected', 'mismatched'}``
    plus ``'metadata'`` (the sidecar). With ``strict=True`` a file that does not fit
    raises ``KeyError`` naming the file and the keys, and the model is unchanged.
    """
    path = os.fspath(path)
    state, metadata = load_weights(path)
    try:
        report = model.load_state_dict(state, strict=strict)
    except KeyError as e:
        raise KeyError(f"{path}: {e.args[0] if e.args else e}") from e
    report = dict(report)
    report["metadata"] = metadata
    return report


# ---------------------------------------------------------------------------
# PyTorch files
# ---------------------------------------------------------------------------
def _torch_to_numpy(torch, k, v):
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu()
        if t.dtype == torch.bfloat16:  # NumPy has no bfloat16
            t = t.float()
        return t.numpy().copy()
    return None


def _unwrap(obj):
    """A checkpoint dict may hold the state dict under 'state_dict', 'model' or 'model_state_dict'."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            break
    return obj


def load_torch_state_dict(path) -> "OrderedDict[str, np.ndarray]":
    """A PyTorch state dict as ``OrderedDict`` name -> NumPy array.

    Reads ``.safetensors`` (with ``safetensors.numpy``; bfloat16 files through
    torch when it is installed) or ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` with
    ``torch.load(path, map_location='cpu', weights_only=True)``: files holding
    anything but tensors and plain containers are refused, never unpickled.
    A checkpoint that wraps the weights under ``'state_dict'`` or ``'model'`` is
    unwrapped; ``num_batches_tracked`` entries are dropped.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        try:
            raw, _ = _read_safetensors(path)
        except ValueError as e:
            if "bfloat16" not in str(e) and "BF16" not in str(e):
                raise
            try:
                import torch
                from safetensors.torch import load as st_torch_load
            except ImportError:
                raise ValueError(f"{path} holds bfloat16 tensors, which NumPy cannot read; "
                                 "install PyTorch to convert them") from e
            with open(path, "rb") as f:
                tensors = st_torch_load(f.read())
            raw = OrderedDict((k, _torch_to_numpy(torch, k, v)) for k, v in tensors.items())
    else:
        try:
            import torch
        except ImportError:
            raise ImportError(f"reading {path} needs PyTorch (pip install torch); or convert the file "
                              "to .safetensors where PyTorch is installed") from None
        import pickle
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            detail = msg.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0] if \
                "WeightsUnpickler error:" in msg else msg.split("\n")[0]
            if "Unsupported global" in msg:
                raise ValueError(
                    f"refusing to load {path}: it contains Python objects other than tensors ({detail}). "
                    "nabi reads PyTorch files only with torch.load(weights_only=True) and never runs "
                    "pickled code; save just the weights (torch.save(model.state_dict(), ...)) or "
                    "convert them to .safetensors") from e
            raise ValueError(f"{path} is not a loadable PyTorch weights file ({detail})") from e
        except Exception as e:
            raise ValueError(f"{path} is not a loadable PyTorch weights file (truncated or corrupted?): "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        obj = _unwrap(obj)
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path} does not hold a state dict (name -> tensor), but a {type(obj).__name__}")
        raw = OrderedDict()
        bad = []
        for k, v in obj.items():
            a = _torch_to_numpy(torch, k, v)
            if a is None:
                bad.append(f"{k} ({type(v).__name__})")
            else:
                raw[str(k)] = a
        if bad:
            raise ValueError(f"{path} does not hold a plain state dict: these entries are not tensors: "
                             + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
    return OrderedDict((k, v) for k, v in raw.items() if not k.endswith("num_batches_tracked"))
