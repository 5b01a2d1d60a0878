"""Files a user keeps: atomic writes, weight files (safetensors + JSON sidecar), ONNX export.

    from nabi import files
    nabi.save_model(model, "model.safetensors", metadata)      # + model.json beside it
    nabi.load_model(model, "model.safetensors")                 # checked, then loaded into the model
    state, meta = files.load_weights("model.safetensors")       # checked against its SHA-256
"""
from .atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, ensure_writable_folder
from .digest import file_sha256
from .weight_files import load_model, load_torch_state_dict, load_weights, save_model, save_weights, sidecar_path

__all__ = ["file_sha256", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "ensure_writable_folder", "sidecar_path", "save_weights",
           "load_weights", "save_model", "load_model", "load_torch_state_dict"]


def __getattr__(name):
    if name == "load_model_weights":         # its old name
        import warnings
        warnings.warn("nabi.files.load_model_weights is now nabi.load_model (the old name will be removed)",
                      DeprecationWarning, stacklevel=2)
        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
