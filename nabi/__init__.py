"""nabi — convolutional neural networks from scratch, every gradient written out and proven.

    import nabi
    from nabi.layers import Conv2d, ReLU, MaxPool2d, Flatten, Linear, Sequential, CrossEntropyLoss
    from nabi.optim import SGD, Adam, AdamW          # and the learning-rate schedules
    nabi.save_model(net, "net.safetensors")          # weights + a JSON sidecar; nabi.load_model(net, ...)
"""
__version__ = "0.1.0"

import os as _os

# A CNN step alternates BLAS calls (OpenBLAS's thread pool) with nabi's compiled loops (numba's
# OpenMP pool). By default each pool keeps its idle threads spinning for a while, and on a
# machine with few cores they then fight the other pool for the CPU: measured on 2 cores, a
# cifar_cnn training step took ~1.5x as long. Idle threads are therefore made to sleep at once,
# unless the environment already says otherwise. (OpenBLAS reads its setting when NumPy is first
# imported, so it only applies when nabi is imported before NumPy, as by the `nabi` command.)
for _k, _v in (("OMP_WAIT_POLICY", "PASSIVE"), ("OPENBLAS_THREAD_TIMEOUT", "4")):
    _os.environ.setdefault(_k, _v)

from . import backend, functional, init, layers, optim  # noqa: E402
from .backend import get_array_module, seed  # noqa: E402
from .files.weight_files import load_model, save_model  # noqa: E402
from .layers import *  # noqa: E402,F401,F403
