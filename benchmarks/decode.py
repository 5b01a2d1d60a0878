"""ImageFolder decode throughput: is the data pipeline ever the bottleneck?

    python -m benchmarks.decode [FOLDER] [--size 336] [--n 400] [--workers 0 2]

Without FOLDER it writes ``--n`` random-noise JPEGs of ``--size``² (the size of the 2019 campus-cat report's photos;
noise is the worst case for JPEG decoding) into a temporary folder. It reports images/s of
``ImageFolder`` + ``DataLoader`` (decode, resize/crop, batch) for each worker count, to set beside
the training images/s that ``python -m benchmarks --suite train`` prints.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def write_jpegs(root: Path, n: int, size: int, classes: int = 4, seed: int = 0) -> Path:
    from PIL import Image
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
    return root


def measure(folder, image_size, workers, batch_size=32, repeats=2):
    from nabi.data import DataLoader, ImageFolder
    ds = ImageFolder(folder, image_size=image_size)
    best = 0.0
    for _ in range(repeats):
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, seed=0, num_workers=workers)
        t = time.perf_counter()
        n = sum(int(y.shape[0]) for _, y in loader)
        best = max(best, n / (time.perf_counter() - t))
    return len(ds), best


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?")
    p.add_argument("--size", type=int, default=336, help="written photos' size, and the decode target size")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else write_jpegs(Path(tmp), args.n, args.size)
        print(f"folder: {folder if args.folder else f'{args.n} random {args.size}×{args.size} JPEGs'}; "
              f"target size {args.size}×{args.size}")
        for w in args.workers:
            n, rate = measure(folder, (args.size, args.size), w)
            print(f"workers={w}: {rate:8.0f} images/s over {n} images")


if __name__ == "__main__":
    main()
