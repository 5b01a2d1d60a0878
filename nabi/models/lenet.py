"""LeNet-5 (LeCun et al., 1998) for 1×32×32 images.

    input 1×32×32
    c1   conv 1→6, 5×5          → 6×28×28    act
    s2   pool 2×2 / 2           → 6×14×14
    c3   conv 6→16, 5×5         → 16×10×10   act   (every C3 map sees all six S2 maps)
    s4   pool 2×2 / 2           → 16×5×5
    c5   conv 16→120, 5×5       → 120×1×1    act
    flatten                     → 120
    f6   linear 120→84                       act
    output linear 84→num_classes

61,706 parameters at 10 classes. The 1998 network used tanh-like squashing and
trainable average subsampling; here S2/S4 are plain (parameter-free) average or
max pools and the output layer is a linear classifier (not RBF units).
"""
from __future__ import annotations

from collections import OrderedDict

from ..layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Tanh
from .registry import Network, register

_ACTS = {"tanh": Tanh, "relu": ReLU}
_POOLS = {"avg": AvgPool2d, "max": MaxPool2d}


@register("lenet5")
def lenet5(num_classes=10, activation="tanh", pool="avg", in_channels=1, init=None):
    """LeNet-5: (N, in_channels, 32, 32) → (N, num_classes) logits.

    ``activation`` 'tanh' (classic) or 'relu'; ``pool`` 'avg' (classic subsampling) or
    'max'. ``init`` defaults to 'xavier_uniform' for tanh and 'he_uniform' for relu.
    """
    if activation not in _ACTS:
        raise ValueError(f"lenet5: activation must be one of {sorted(_ACTS)}, got {activation!r}")
    if pool not in _POOLS:
        raise ValueError(f"lenet5: pool must be one of {sorted(_POOLS)}, got {pool!r}")
    act, pl = _ACTS[activation], _POOLS[pool]
    init = init or ("xavier_uniform" if activation == "tanh" else "he_uniform")
    model = Network(OrderedDict([
        ("c1", Conv2d(in_channels, 6, 5, init=init)), ("act1", act()), ("s2", pl(2, 2)),
        ("c3", Conv2d(6, 16, 5, init=init)), ("act3", act()), ("s4", pl(2, 2)),
        ("c5", Conv2d(16, 120, 5, init=init)), ("act5", act()),
        ("flatten", Flatten()),
        ("f6", Linear(120, 84, init=init)), ("act6", act()),
        ("output", Linear(84, num_classes, init=init)),
    ]))
    model.input_size = (in_channels, 32, 32)
    return model
