"""Run folders: what a run wrote and how to rebuild its model.

A run folder always says how to rebuild its model: ``model.json`` (the weights'
sidecar) holds the architecture and its arguments, the class names, the input size
and the normalisation, and ``load_run`` rebuilds the model from it.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import __version__, files
from .models.registry import model_input_size


def model_metadata(model, classes, norm_spec, config=None) -> dict:
    arch = getattr(model, "arch", None) or {"name": type(model).__name__, "kwargs": {}}
    return {"format": "nabi-model", "nabi_version": __version__, "arch": arch, "classes": list(classes),
            "input_size": list(model_input_size(model)), "normalization": norm_spec, "config": config or {}}


# -- loading a run -------------------------------------------------------------------------------------
def find_weights(run) -> Path:
    """A run folder (its best, else final weights) or a ``.safetensors`` file."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise FileNotFoundError(f"run {run} does not exist")
    for name in ("best.safetensors", "model.safetensors"):
        if (run / name).is_file():
            return run / name
    raise FileNotFoundError(f"{run} holds no best.safetensors or model.safetensors: is it a nabi run folder?")


def load_run(run, device="cpu"):
    """Rebuild the model a run saved: ``(model, metadata)``; the model is in eval mode."""
    path = find_weights(run)
    state, meta = files.load_weights(path)
    if meta.get("format") != "nabi-model" or "arch" not in meta:
        raise ValueError(f"{path} has no nabi model sidecar ({files.sidecar_path(path)}) naming its architecture")
    from . import models
    arch = meta["arch"]
    model = models.get(arch["name"], **arch.get("kwargs", {}))
    model.load_state_dict(state)
    model.to(device)
    model.eval()
    return model, meta


def write_config(out_dir, cfg, extra=None):
    """Write ``config.json``: the ``TrainConfig`` ``cfg`` and ``extra`` (what the run resolved); returns it."""
    d = cfg.to_dict()
    d.update(extra or {})
    files.atomic_write_json(Path(out_dir) / "config.json", d)
    return d


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
