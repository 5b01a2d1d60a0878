"""Checkpoints that survive a crash: everything needed to resume a run exactly.

A checkpoint is a folder ``checkpoints/ckpt-<iteration>/`` holding
``model.safetensors`` (+ sidecar), ``optimizer.safetensors`` (+ sidecar with the
optimiser's scalars) and ``state.json`` (counters, schedule, data-loader
position, every random generator's state, the run's config). The folder is
written under a temporary name, fsynced and renamed into place, and only then
is ``checkpoints/latest`` (a one-line text file) updated atomically; a crash at
any moment leaves the previous checkpoint intact and ``latest`` pointing at a
complete one. The last ``keep_last`` checkpoints are kept. No pickles anywhere.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .. import files

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
                    keep_last: int = 3) -> Path:
    """Write ``checkpoints/ckpt-<state['iteration']>`` atomically and point ``latest`` at it."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{int(state['iteration']):09d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        files.save_weights(tmp / "model.safetensors", model.state_dict(), model_metadata or {})
        arrays, meta = _flatten_optimizer(optimizer.state_dict())
        files.save_weights(tmp / "optimizer.safetensors", arrays, meta)
        files.atomic_write_json(tmp / "state.json", state)
        _fsync_dir(tmp)
        if final.exists():  # the same iteration saved twice (e.g. Ctrl-C right after a save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files.atomic_write_text(ckpt_root / "latest", name + "\n")
    _prune(ckpt_root, keep_last, keep=name)
    return final


def _prune(ckpt_root: Path, keep_last: int, keep: str) -> None:
    found = sorted(p for p in ckpt_root.glob("ckpt-*") if p.is_dir())
    for old in found[:-keep_last] if keep_last > 0 else []:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


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
    with open(path / "state.json", encoding="utf-8") as f:
        state = json.load(f)
    return {"model": model_state, "model_metadata": model_meta,
            "optimizer": _unflatten_optimizer(opt_arrays, opt_meta), "state": state}
