"""Data: image folders, standard data sets, embedded samples, splits, loaders, transforms.

Images are float32 arrays shaped (C, H, W) per example with values in [0, 1]
(pixel/255); batches are (N, C, H, W) float32 with int64 labels (N,).
"""
from .folder import (FITS, IMG_EXTENSIONS, ImageDecodeError, ImageFolder, array_to_pil, fit_image, load_image,
                     open_image, pil_to_array, save_image)
from .standard import (CIFAR10_CLASSES, FASHION_MNIST_CLASSES, MNIST_CLASSES, RestrictedUnpickler,
                       cifar_class_names, load_cifar10, load_cifar100, load_fashion_mnist, load_mnist,
                       read_cifar_bin, read_cifar_pickle, read_idx, safe_unpickle)
from .split import ArrayDataset, Subset, find_splits, stratified_split
from .embedded import (DIGIT_CLASSES, embedded_dataset, load_digits_mnist, load_digits_sklearn,
                       write_image_folder)
from .loader import DataLoader, LoaderView, collate
from .transforms import (CenterCrop, ColorJitter, Compose, Lambda, Normalize, RandomCrop, RandomHorizontalFlip,
                         RandomResizedCrop, RandomRotate90, RandomRotation, RandomVerticalFlip, Resize, Scale,
                         Pixel256Scale, expand_offline)
from . import transforms

__all__ = [
    "FITS", "IMG_EXTENSIONS", "ImageDecodeError", "ImageFolder", "array_to_pil", "fit_image", "load_image",
    "open_image",
    "pil_to_array", "save_image",
    "CIFAR10_CLASSES", "FASHION_MNIST_CLASSES", "MNIST_CLASSES", "RestrictedUnpickler", "cifar_class_names",
    "load_cifar10", "load_cifar100", "load_fashion_mnist", "load_mnist", "read_cifar_bin", "read_cifar_pickle",
    "read_idx", "safe_unpickle",
    "ArrayDataset", "Subset", "find_splits", "stratified_split",
    "DIGIT_CLASSES", "embedded_dataset", "load_digits_mnist", "load_digits_sklearn", "write_image_folder",
    "DataLoader", "collate",
    "CenterCrop", "ColorJitter", "Compose", "Lambda", "Normalize", "RandomCrop", "RandomHorizontalFlip",
    "RandomResizedCrop", "RandomRotate90", "RandomRotation", "RandomVerticalFlip", "Resize", "Scale",
    "Pixel256Scale", "expand_offline", "transforms",
]


def __getattr__(name):
    """Old names, kept as aliases that warn: ``SeedScale`` is ``Pixel256Scale``."""
    if name == "SeedScale":
        return transforms.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
