"""Two augmented views of every photo in a folder tree, batched as SimCLR wants them.

``TwoViewImages(root, size)`` lists every image under ``root`` (recursively; sub-folder
names are not labels), decodes each at ``size`` × ``size`` (as ``fit`` says: by default the
shorter side resized and the centre cropped) and returns ``(views (2, C, H, W), -1)``: the
augmentation applied twice with successive draws from the batch's generator, so the two views
differ and the same (seed, epoch, batch) gives the same views again (a resumed run sees the same
batches).

``TwoViewBatches(loader)`` turns the loader's ``(N, 2, C, H, W)`` batches into
``x (2N, C, H, W)`` with view 1 of every image first, then view 2 — rows i and i + N are a
pair — and labels ``y (2N,) = −1``: there are no labels, and −1 never equals an argmax,
so the trainer's label accuracy adds nothing (the contrastive top-1 is counted instead).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import backend
from .. import data as D
from ..data.folder import IMG_EXTENSIONS, _list_images, check_fit

NO_LABEL = -1


def simclr_augmentation(hw, strength: float = 0.4):
    """SimCLR's augmentation from nabi's transforms: random resized crop (8–100 % of the area), horizontal
    flip, colour jitter of brightness, contrast and saturation by ± ``strength``."""
    return [D.RandomResizedCrop(hw, scale=(0.08, 1.0)), D.RandomHorizontalFlip(),
            D.ColorJitter(strength, strength, strength)]


class TwoViewImages:
    """Every image under ``root`` (recursive), as two augmented views ``(2, C, H, W)`` and the label −1.

    ``transforms``: each ``t(x, rng)``, applied in order to make one view (augmentation, then
    normalisation). ``cache``: keep the decoded photos in memory as uint8 after first use.
    """

    def __init__(self, root, image_size, transforms, channels=3, cache=False, fit="crop"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"photo folder {self.root} does not exist (give a folder of images; "
                                    f"sub-folders are searched, their names are ignored)")
        self.files = _list_images(self.root, IMG_EXTENSIONS)
        if len(self.files) < 2:
            raise ValueError(f"photo folder {self.root} holds {len(self.files)} image file(s) with extensions "
                             f"{', '.join(IMG_EXTENSIONS)}; contrastive pretraining needs at least 2")
        self.size = (int(image_size), int(image_size))
        self.fit = check_fit(fit)
        self.channels = int(channels)
        self.transforms = [t for t in transforms if t is not None]
        self.transform = self._one_view          # the loader hands a generator when a dataset has a transform
        self._cache = [None] * len(self.files) if cache else None

    def __len__(self):
        return len(self.files)

    def load(self, i):
        """Photo ``i`` decoded: float32 (C, H, W) in [0, 1]."""
        if self._cache is not None and self._cache[i] is not None:
            return self._cache[i].astype(np.float32) * np.float32(1 / 255)
        x = D.load_image(self.files[i], self.channels, self.size, self.fit)
        if self._cache is not None:
            self._cache[i] = np.round(x * 255).astype(np.uint8)
        return x

    def _one_view(self, x, rng):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def get(self, i, rng=None):
        rng = rng if rng is not None else backend.new_rng(None)
        x = self.load(i)
        return np.stack([self._one_view(x, rng), self._one_view(x, rng)]), NO_LABEL

    def __getitem__(self, i):
        return self.get(i, np.random.default_rng(i))


class TwoViewBatches(D.LoaderView):
    """Wrap a ``DataLoader`` over ``TwoViewImages``: batches ``(x (2N, C, H, W), y (2N,) = −1)`` with rows
    i and i + N the two views of image i. Length, state and resume are the loader's."""

    def __iter__(self):
        for views, _ in self.loader:
            xp = backend.get_array_module(views)
            n = views.shape[0]
            x = xp.ascontiguousarray(views.swapaxes(0, 1).reshape((2 * n,) + tuple(views.shape[2:])))
            yield x, xp.full((2 * n,), NO_LABEL, dtype=np.int64)
