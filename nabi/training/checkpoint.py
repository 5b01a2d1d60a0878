"""Checkpoints that survive a crash: everything needed to resume a run exactly.

A checkpoint is a folder ``checkpoints/ckpt-<iteration>/`` holding
``model.safetensors`` (+ sidecar), ``optimizer.safetensors`` (+ sidecar with the
optimiser's scalars) and ``state.json`` (counters, schedule, data-loader
position, every random generator's state, the run's config). The folder is
written under a temporary name, fsynced and renamed into place, and only then
is ``checkpoints/latest`` (a one-line text file) updated atomically; a crash at
any moment leaves the previous checkpoint intact and ``latest`` pointing at a
complete one. A checkpoint of an iteration already saved (the end-of-epoch
checkpoint after a ``checkpoint_every`` one) replaces it by two renames: the old
folder moves aside, the new one takes its name, the old one is deleted; a crash
between them leaves ``latest`` naming a missing folder, and ``latest_checkpoint``
falls back to the newest complete one. The last ``keep_last`` checkpoints are
kept. A checkpoint's weights that equal a file already in the run folder (``best.safetensors``)
are a hard link to it, not a second copy; nothing is ever rewritten in place, so a link never
changes under another name. No pickles anywhere.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .. import files
from .faults import fault_point

SEP = "::"


def _flatten_optimizer(state: dict):
    arrays, meta = {}, {k: v for k, v in state.items() if k != "state"}
    shapes = {}
    for pname, entries in state["state"].items():
        for key, value in entries.items():
            arr = np.asarray(value)
            arrays[f"{pname}{SEP}{key}"] = arr
            shapes[f"{pname}{SEP}{key}"] = list(arr.shape)
    meta["state_keys"] = sorted(arrays)
    return arrays, meta


def _unflatten_optimizer(arrays: dict, meta: dict) -> dict:
    out = {k: v for k, v in meta.items() if k != "state_keys"}
    state: dict = {name: {} for name in meta.get("param_names", [])}
    for flat, value in arrays.items():
        pname, key = flat.rsplit(SEP, 1)
        state.setdefault(pname, {})[key] = value
    out["state"] = {k: v for k, v in state.items() if v}
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platform
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir, model, optimizer, state: dict, model_metadata: dict | None = None,
                    keep_last: int = 3, same_as=()) -> Path:
    """Write ``checkpoints/ckpt-<state['iteration']>`` atomically and point ``latest`` at it.

    ``model``: the weights (name -> array) or an object with ``state_dict()``. ``same_as``: weight files
    (e.g. ``best.safetensors``) that the checkpoint's ``model.safetensors`` becomes a hard link to when
    it holds the same bytes (``nabi.files.save_weights``). The newest ``keep_last`` checkpoints are kept."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{int(state['iteration']):09d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        weights = model.state_dict() if hasattr(model, "state_dict") else model
        files.save_weights(tmp / "model.safetensors", weights, model_metadata or {}, same_as=same_as)
        arrays, meta = _flatten_optimizer(optimizer.state_dict())
        files.save_weights(tmp / "optimizer.safetensors", arrays, meta)
        files.atomic_write_json(tmp / "state.json", state)
        _fsync_dir(tmp)
        fault_point("checkpoint_written")
        old = None
        if final.exists():  # the same iteration saved twice (the end of an epoch, or Ctrl-C right after a save)
            old = ckpt_root / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
            fault_point("checkpoint_swapped")
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("checkpoint_renamed")
    files.atomic_write_text(ckpt_root / "latest", name + "\n")
    _prune(ckpt_root, keep_last, keep=name)
    fault_point("checkpoint_saved")
    return final


def _prune(ckpt_root: Path, keep_last: int, keep: str) -> None:
    found = sorted(p for p in ckpt_root.glob("ckpt-*") if p.is_dir())
    for old in found[:-keep_last] if keep_last > 0 else []:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".ckpt-*"):       # folders of a save that a crash cut short
        if f"-{os.getpid()}" not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)


def prune_checkpoints(run_dir, keep: int = 1) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints of a finished run; returns the deleted folders."""
    ckpt_root = Path(run_dir) / "checkpoints"
    newest = latest_checkpoint(run_dir)
    found = sorted(p for p in ckpt_root.glob("ckpt-*") if p.is_dir())
    doomed = [p for p in (found[:-keep] if keep > 0 else found) if p != newest]
    for old in doomed:
        shutil.rmtree(old, ignore_errors=True)
    return doomed


def checkpoints(run_dir) -> list[Path]:
    """The run's checkpoint folders, newest first: the one ``latest`` names, then the others by iteration."""
    ckpt_root = Path(run_dir) / "checkpoints"
    found = sorted((p for p in ckpt_root.glob("ckpt-*") if p.is_dir()), reverse=True)
    newest = latest_checkpoint(run_dir)
    if newest is not None and newest in found:
        found.remove(newest)
        found.insert(0, newest)
    return found


def latest_checkpoint(run_dir) -> Path | None:
    """The folder ``checkpoints/latest`` names, or the newest complete one, or None."""
    ckpt_root = Path(run_dir) / "checkpoints"
    pointer = ckpt_root / "latest"
    if pointer.is_file():
        candidate = ckpt_root / pointer.read_text(encoding="utf-8").strip()
        if (candidate / "state.json").is_file():
            return candidate
    found = sorted(p for p in ckpt_root.glob("ckpt-*") if (p / "state.json").is_file())
    return found[-1] if found else None


def load_checkpoint(path) -> dict:
    """Read a checkpoint folder: ``{'model': state, 'model_metadata', 'optimizer': state, 'state': dict}``."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a nabi checkpoint folder (no state.json)")
    import json
    model_state, model_meta = files.load_weights(path / "model.safetensors")
    opt_arrays, opt_meta = files.load_weights(path / "optimizer.safetensors")
    try:
        with open(path / "state.json", encoding="utf-8") as f:
            state = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path / 'state.json'} is not valid JSON (damaged checkpoint): {e}") from None
    if not isinstance(state, dict) or "iteration" not in state:
        raise ValueError(f"{path / 'state.json'} is not a nabi checkpoint state (expected an object with "
                         f"'iteration', 'epoch', ...)")
    return {"model": model_state, "model_metadata": model_meta,
            "optimizer": _unflatten_optimizer(opt_arrays, opt_meta), "state": state}
