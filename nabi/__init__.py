"""nabi — convolutional neural networks from scratch, every gradient written out and proven.

    import nabi
    from nabi.layers import Conv2d, ReLU, MaxPool2d, Flatten, Linear, Sequential, CrossEntropyLoss
"""
__version__ = "0.1.0"

from . import backend, functional, init, layers  # noqa: E402
from .backend import get_array_module, seed  # noqa: E402
from .layers import *  # noqa: E402,F401,F403
