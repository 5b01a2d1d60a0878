"""Files a user keeps: atomic writes, weight files (safetensors + JSON sidecar), ONNX export.

    from nabi import files
    files.save_model(model, "model.safetensors", metadata)     # + model.json beside it
    state, meta = files.load_weights("model.safetensors")       # checked against its SHA-256
"""
from .atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, ensure_writable_folder
from .digest import file_sha256
from .weights import (load_model_weights, load_torch_state_dict, load_weights, save_model, save_weights,
                      sidecar_path)

__all__ = ["file_sha256", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "ensure_writable_folder", "sidecar_path", "save_weights",
           "load_weights", "save_model", "load_model_weights", "load_torch_state_dict"]
