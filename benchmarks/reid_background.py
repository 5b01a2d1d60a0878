"""Make a file of background descriptors for LNBNN's normaliser (``MatcherSettings.background``).

    python -m benchmarks.reid_background PHOTOS OUT [--exclude DIR ...] [--individuals 80] [--per-individual 2]
        [--per-photo 300] [--limit 48000]

PHOTOS has one folder per individual; the individuals named by folders of each ``--exclude`` DIR (e.g. the
calibration individuals, whose own keypoints must not stand for "anybody") are left out, ``--individuals``
of the rest drawn at random (seeded), ``--per-individual`` photos of each, ``--per-photo`` keypoints of each
photo (nabi's default keypoint settings: RootSIFT on the animal), ``--limit`` in all. The figures in
docs/reidentification.md used::

    python -m benchmarks.reid_background nyala_more bg.safetensors --exclude cal22 --exclude ship40
"""
from __future__ import annotations

import argparse
import random
import shlex
import sys
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos")
    ap.add_argument("out")
    ap.add_argument("--exclude", action="append", default=[], help="a folder whose individual folders are left out")
    ap.add_argument("--individuals", type=int, default=80)
    ap.add_argument("--per-individual", type=int, default=2)
    ap.add_argument("--per-photo", type=int, default=300)
    ap.add_argument("--limit", type=int, default=48000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from nabi.reid.background import build_background, save_background
    from nabi.reid.folders import list_photos
    root = Path(args.photos)
    if not root.is_dir():
        raise SystemExit(f"{root} is not a folder of individual folders")
    excluded = {p.name for d in args.exclude for p in Path(d).iterdir() if p.is_dir()}
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in excluded)
    rng = random.Random(args.seed)
    rng.shuffle(names)
    paths = []
    for name in names[:args.individuals]:
        photos = sorted(list_photos(root / name))
        rng.shuffle(photos)
        paths += photos[:args.per_individual]
    print(f"{len(names)} individuals outside {len(excluded)} excluded; {len(paths)} photos of "
          f"{min(len(names), args.individuals)}")
    d, meta = build_background(paths, per_photo=args.per_photo, limit=args.limit, seed=args.seed, log=print)
    meta.update(individuals=min(len(names), args.individuals), excluded=len(excluded),
                command="python -m benchmarks.reid_background " + " ".join(
                    shlex.quote(Path(a).name if a.startswith("/") else a) for a in (argv or sys.argv[1:])))
    save_background(args.out, d, meta)
    print(f"written {args.out}: {d.shape[0]} descriptors")


if __name__ == "__main__":
    main()
