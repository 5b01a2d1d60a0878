"""A worked example of nabi's paired background-class experiment on real photos.

The 2019 campus-cat report ("CNN을 이용한 고려대학교 길고양이 분류 및 배경 학습을 통한
성능 개선", COSE362, Korea University, 2019) told four campus cats apart and asked whether adding a fifth
class, "background" (photos of the cats' habitat), helps. This example builds
a small stand-in data set from photographs that ship inside scikit-image (and,
when installed, scikit-learn), then runs the same paired experiment end to end
with the ``tiny`` recipe and prints the Table 1 style report.

The "individuals" are four photographed subjects, each cut out many times with a
jittered square crop around it (position, size, mirror, brightness), so every
crop shows the subject in its own surroundings, as a cat photo shows the cat
in its territory:

=========  ==========================  =========================================================
name       scikit-image photo          licence (from ``skimage.data``'s docstrings)
=========  ==========================  =========================================================
chelsea    ``chelsea()`` (a cat)        CC0, photographer Stefan van der Walt
coffee     ``coffee()`` (a cup)         CC0, photographer Rachel Michetti (Pikolo Espresso Bar)
astronaut  ``astronaut()``              NASA, public domain (no known copyright restrictions)
rocket     ``rocket()`` (Falcon 9)      SpaceX, released into the public domain
=========  ==========================  =========================================================

The "background" class is crops of those photos that avoid the subject (as seed
000 cut backgrounds out of its cat photos), plus crops of the CC0 textures
``grass()``, ``gravel()`` and ``brick()`` (CC0Textures / DeviantArt, CC0) and,
when scikit-learn is installed, of its sample photos ``china.jpg`` (Flickr user
danielbuechele) and ``flower.jpg`` (Flickr user vultilion), both CC BY 2.0.

Train and test crops are drawn independently, but from the same few source
photos: this demonstrates the machinery (paired initialisation and order,
resume, P1–P4, the paired tests), not how well a model generalises.

    pip install scikit-image            # the photos
    python examples/campus_cats_example.py --out runs/campus-cats-example
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# name: (skimage.data function, subject box (x0, y0, x1, y1) in pixels)
SUBJECTS = {
    "chelsea": ("chelsea", (110, 40, 370, 290)),
    "coffee": ("coffee", (170, 15, 425, 315)),
    "astronaut": ("astronaut", (110, 10, 310, 300)),
    "rocket": ("rocket", (270, 110, 370, 420)),
}
TEXTURES = ("grass", "gravel", "brick")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def _rgb(a):
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3]).astype(np.uint8)


def load_photos():
    """``(subjects, backgrounds)``: name -> (RGB uint8 array, box) and a list of (name, array, box or None)."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise SystemExit("this example needs the photos in scikit-image: pip install scikit-image") from None
    subjects = {name: (_rgb(getattr(skdata, fn)()), box) for name, (fn, box) in SUBJECTS.items()}
    backgrounds = [(name, img, box) for name, (img, box) in subjects.items()]
    backgrounds += [(t, _rgb(getattr(skdata, t)()), None) for t in TEXTURES]
    try:
        from sklearn.datasets import load_sample_image
        backgrounds += [(p, _rgb(load_sample_image(p)), None) for p in SKLEARN_PHOTOS]
    except ImportError:
        pass
    return subjects, backgrounds


def _save(arr, path, size):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).resize((size, size), Image.BILINEAR).save(path)


def _subject_crop(img, box, rng):
    H, W = img.shape[:2]
    x0, y0, x1, y1 = box
    side = int(max(x1 - x0, y1 - y0) * rng.uniform(0.85, 1.25))
    side = min(side, H, W)
    cx = (x0 + x1) / 2 + rng.uniform(-0.15, 0.15) * (x1 - x0)
    cy = (y0 + y1) / 2 + rng.uniform(-0.15, 0.15) * (y1 - y0)
    left = int(np.clip(cx - side / 2, 0, W - side))
    top = int(np.clip(cy - side / 2, 0, H - side))
    crop = img[top:top + side, left:left + side].astype(np.float64)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop *= rng.uniform(0.85, 1.15)
    return np.clip(crop, 0, 255).astype(np.uint8)


def _overlap(a, b):
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h


def _background_crop(sources, rng):
    for _ in range(100):
        name, img, box = sources[int(rng.integers(len(sources)))]
        H, W = img.shape[:2]
        side = int(rng.uniform(0.2, 0.45) * min(H, W))
        left, top = int(rng.integers(0, W - side + 1)), int(rng.integers(0, H - side + 1))
        if box is not None and _overlap((left, top, left + side, top + side), box) > 0.1 * side * side:
            continue  # shows too much of the subject
        crop = img[top:top + side, left:left + side]
        return crop[:, ::-1] if rng.random() < 0.5 else crop
    raise RuntimeError("no background crop found")  # pragma: no cover - the textures always fit


def build_dataset(root, n_train=24, n_test=8, n_background_train=32, n_background_test=8, size=64, seed=2019,
                  background="background"):
    """Write ``root/train/<name>/*.png`` and ``root/test/<name>/*.png``; returns ``root``."""
    root = Path(root)
    subjects, backgrounds = load_photos()
    for split, n_ind, n_bg, stream in (("train", n_train, n_background_train, 0),
                                       ("test", n_test, n_background_test, 1)):
        rng = np.random.default_rng([seed, stream])
        for name, (img, box) in subjects.items():
            for j in range(n_ind):
                _save(_subject_crop(img, box, rng), root / split / name / f"{name}-{j:03d}.png", size)
        for j in range(n_bg):
            _save(_background_crop(backgrounds, rng), root / split / background / f"{background}-{j:03d}.png", size)
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/campus-cats-example", help="folder for the photos and the experiment")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--iterations-per-class", type=int, default=4,
                   help="short on purpose: B then calls some animal photos background, and P2 and P3/P4 part")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from nabi.studies.experiment import run_experiment
    out = Path(args.out)
    data = out / "data"
    if not (data / "test").is_dir():
        print(f"writing the example photos to {data}")
        build_dataset(data)
    report = run_experiment(data, out / "experiment", runs=args.runs, recipe="tiny", jobs=args.jobs,
                            seed=args.seed, overrides={"iterations_per_class": args.iterations_per_class})
    print()
    print(report["markdown"])
    print("files:", *[v for v in report["files"].values() if v], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
