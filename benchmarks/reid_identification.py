"""Leave-individuals-out identification with a trained run: enrol half of each individual's photos,
identify the other half.

    python -m benchmarks.reid_identification RUN PHOTOS [--seed 0] [--unknown N] [--matcher] [--json]

PHOTOS has one folder per individual, none of them seen in training. Each individual's photos are
shuffled (seeded) and split in two: the first half is enrolled in a gallery (``Gallery.build``, in a
temporary folder, through symbolic links), the second half is queried (``Gallery.evaluate``): rank-1,
rank-5 and mAP. Files repeated within an individual's folder count once (a byte-identical copy on
both sides would be a free match). ``--unknown N`` leaves N individuals out of the gallery altogether, so their query
photos are unknowns: AUROC and the true-accept rate at 1 % and 5 % false accepts are added.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def split_folder(photos, enrol_dir, query_dir, seed=0, unknown=0):
    from nabi.reid.gallery import individual_folders, unique_photos
    from nabi.reid.metrics import leave_individuals_out
    folders, copies = unique_photos(individual_folders(photos))       # a copy must not be query and gallery
    if copies:
        print(f"{len(copies)} repeated file(s) left out (same SHA-256 as another photo of the individual)")
    names = [n for n, _ in folders]
    out = set(leave_individuals_out(names, unknown / len(names), seed)[1]) if unknown else set()
    rng = np.random.default_rng(seed)
    for name, paths in folders:
        order = rng.permutation(len(paths))
        half = max(1, len(paths) // 2)
        for k, i in enumerate(order):
            dest = (query_dir if (k >= half or name in out) else enrol_dir) / name
            dest.mkdir(parents=True, exist_ok=True)
            os.symlink(Path(paths[i]).resolve(), dest / Path(paths[i]).name)
    return sorted(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("photos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unknown", type=int, default=0, help="individuals left out of the gallery as unknowns")
    ap.add_argument("--matcher", action="store_true", help="re-rank the top 5 with RootSIFT + RANSAC inliers "
                    "(fusion weight 0.2: no calibration here)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from nabi.reid.gallery import Gallery
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        unknown = split_folder(args.photos, tmp / "enrol", tmp / "query", args.seed, args.unknown)
        g = Gallery.build(args.run, tmp / "enrol", tmp / "gallery")
        matcher = None
        if args.matcher:
            from nabi.reid.matcher import LocalMatcher
            matcher = LocalMatcher()
        res = g.evaluate(tmp / "query", matcher=matcher)
    res.update(unknown_individuals=unknown, gallery_photos=len(g), seed=args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{len(g)} gallery photos of {res['individuals_enrolled']} individuals; {res['known_queries']} known "
          f"and {res['unknown_queries']} unknown query photos")
    for key in ("rank1", "rank5", "mAP", "rank1_with_matcher", "auroc", "tar_at_far_1pct", "tar_at_far_5pct"):
        if key in res:
            print(f"{key:<16} {res[key]:.4f}")


if __name__ == "__main__":
    main()
