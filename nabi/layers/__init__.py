"""Modules that hold parameters and compose the functional ops."""
from .activation import Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .container import Concat, Residual, Sequential
from .conv import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d
from .drop_path import DropPath
from .gem import GeM, GeneralizedMeanPool2d
from .embedding import ArcFaceLoss, CosFaceLoss, CosineLinear, EmbeddingHead, L2Normalize, TripletLoss
from .hardnet_loss import HardNetLoss
from .linear import Flatten, Linear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module, Parameter
from .weighted import WeightedLayer
from .norm import BatchNorm1d, BatchNorm2d, Dropout, LocalResponseNorm

__all__ = ["Module", "Parameter", "Sequential", "Residual", "Concat", "Conv2d", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "GeneralizedMeanPool2d", "GeM", "Linear", "Flatten", "ReLU", "LeakyReLU",
           "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Identity", "Dropout", "DropPath", "BatchNorm1d",
           "BatchNorm2d", "LocalResponseNorm", "CrossEntropyLoss", "MSELoss", "L2Normalize", "CosineLinear",
           "EmbeddingHead", "ArcFaceLoss", "CosFaceLoss", "TripletLoss", "HardNetLoss"]
from .blocks import *; from .blocks import __all__ as _blocks_all; __all__ += _blocks_all  # noqa: E402,E702,F401,F403
