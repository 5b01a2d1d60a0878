"""Model zoo: LeNet-5, a small CIFAR CNN, AlexNet (paper, torchvision, and the 336×336 network of
the 2019 campus-cat report),
VGG A–E, ResNet 18–152 and CIFAR ResNets, GoogLeNet — built from nabi layers and the
generic containers, with torchvision's parameter names where torchvision has the model.

    import nabi.models as zoo
    model = zoo.get("resnet18", num_classes=10)
    zoo.names()                     # every registered name
    zoo.count_parameters("vgg16")   # 138,357,544, without allocating the weights
    model.arch                      # {'name': 'resnet18', 'kwargs': {...}}; model.input_size (C, H, W)

New models register with ``@nabi.models.register("name")``.
"""
from .registry import (Network, builder, count_parameters, get, names, register, same_architecture,  # noqa: F401
                       with_defaults)
from . import alexnet as _alexnet, googlenet as _googlenet, lenet as _lenet  # noqa: E402,F401
from . import resnet as _resnet, simple as _simple, vgg as _vgg  # noqa: E402,F401
from .alexnet import alexnet, alexnet336, alexnet_tv  # noqa: E402,F401
from .googlenet import GoogLeNet, googlenet  # noqa: E402,F401
from .lenet import lenet5  # noqa: E402,F401
from .resnet import (resnet, resnet18, resnet18_cifar, resnet20, resnet32, resnet34, resnet44, resnet50,  # noqa
                     resnet56, resnet101, resnet152)
from .simple import cifar_cnn  # noqa: E402,F401
from .vgg import (vgg, vgg11, vgg11_bn, vgg11_lrn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg16_c, vgg19,  # noqa
                  vgg19_bn)

__all__ = ["get", "names", "register", "builder", "count_parameters", "Network", "GoogLeNet", "lenet5", "cifar_cnn",
           "alexnet", "alexnet_tv", "alexnet336", "vgg", "vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19",
           "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "resnet", "resnet18", "resnet34", "resnet50", "resnet101",
           "resnet152", "resnet20", "resnet32", "resnet44", "resnet56", "resnet18_cifar", "googlenet"]
from . import densenet as _densenet, senet as _senet  # noqa: E402,F401
from . import embedding as _embedding  # noqa: E402,F401  (registers embedding_net)
from . import hardnet as _hardnet  # noqa: E402,F401  (registers hardnet, the local-descriptor network)
