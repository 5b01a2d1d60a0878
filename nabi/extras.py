"""Optional parts of nabi and the ``pip install "nabi[EXTRA]"`` that brings each.

``pip install nabi`` alone gives ``train``, ``eval``, ``predict``, ``summary``
and ``demo`` (NumPy, Pillow, tqdm, safetensors, numba,
threadpoolctl). The rest is in extras named by what they enable:

=============  ==============================================  =====================================
extra          enables                                         packages
=============  ==============================================  =====================================
plots          ``nabi explain``, curves.png, confusion PNG     matplotlib
experiments    ``nabi experiment`` and ``nabi ablate``         scipy, matplotlib
digits         the ``embedded:digits8x8`` data set             scikit-learn
onnx           ``nabi export``                                 onnx, onnxruntime
gpu            ``--device gpu``                                cupy-cuda12x
serve          ``nabi serve``, the web app                     fastapi, uvicorn, python-multipart
reid           keypoints, calibration, ``--matcher``           matplotlib, opencv-python-headless,
                                                               scikit-learn
ray            ``--executor ray`` for experiments, ablations   ray
sweep          ``nabi sweep``                                  ray[tune] (pandas, pyarrow, ...)
distributed    ``nabi train --replicas N``                     torch (gloo, as the transport only)
docs           ``mkdocs build --strict`` of docs/              mkdocs, mkdocs-material
all            every extra above except gpu, ray, sweep,
               distributed and docs
=============  ==============================================  =====================================

:func:`install_hint` turns a ``ModuleNotFoundError`` into the line to run.
"""
from __future__ import annotations

__all__ = ["EXTRA_OF_MODULE", "install_hint", "missing_module_message"]

# top-level module name -> the extra that installs it
EXTRA_OF_MODULE = {
    "matplotlib": "plots",
    "scipy": "experiments",
    "sklearn": "digits",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "cupy": "gpu",
    "cupy_backends": "gpu",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "ray": "ray",
    "cv2": "reid",
    # core packages: a broken install, fixed by reinstalling nabi
    "PIL": "", "tqdm": "", "safetensors": "", "numba": "", "threadpoolctl": "", "tomli": "",
}


def install_hint(module: str) -> str | None:
    """The ``pip install`` line that brings top-level ``module``, or None for a module nabi does not use."""
    top = (module or "").split(".")[0]
    if top not in EXTRA_OF_MODULE:
        return None
    extra = EXTRA_OF_MODULE[top]
    return f'pip install "nabi[{extra}]"' if extra else "pip install --force-reinstall nabi"


def missing_module_message(exc: ImportError) -> str | None:
    """``'onnx is not installed; run: pip install "nabi[onnx]"'`` for a missing optional module, else None."""
    name = getattr(exc, "name", None)
    hint = install_hint(name) if name else None
    if hint is None:
        return None
    return f"{name.split('.')[0]} is not installed; run: {hint}"
