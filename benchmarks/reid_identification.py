"""Leave-individuals-out identification with a trained run: enrol half of each individual's photos,
identify the other half.

    python -m benchmarks.reid_identification RUN PHOTOS [--seed 0] [--unknown N] [--matcher] [--json]
        [--nfeatures 2000] [--ratio 0.8] [--top 2] [--max-photos N]

PHOTOS has one folder per individual, none of them seen in training. Each individual's photos are
shuffled (seeded) and split in two: the first half is enrolled in a gallery (``Gallery.build``, in a
temporary folder, through symbolic links), the second half is queried (``Gallery.evaluate``): rank-1,
rank-5 and mAP. Files repeated within an individual's folder count once (a byte-identical copy on
both sides would be a free match). ``--unknown N`` leaves N individuals out of the gallery altogether, so their query
photos are unknowns: AUROC and the true-accept rate at 1 % and 5 % false accepts are added.

The gallery is calibrated on its own photos only (``Gallery.calibrate`` without a validation folder:
leave-one-out over the enrolled photos, target false-accept rate 1 %), never on the query photos; the
three-way accuracy uses that threshold. With ``--matcher`` the figures are printed for the embedding alone,
the local-feature matcher alone (``nabi.reid.matcher``: every enrolled individual ranked by its RANSAC
evidence) and their fusion (``nabi.reid.fusion``), whose weight and scales that calibration chose.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

FIGURES = ("rank1", "rank5", "mAP", "auroc", "tar_at_far_1pct", "tar_at_far_5pct")


def split_folder(photos, enrol_dir, query_dir, seed=0, unknown=0):
    from nabi.reid.gallery import individual_folders, unique_photos
    from nabi.reid.metrics import leave_individuals_out
    folders, copies = unique_photos(individual_folders(photos))       # a copy must not be query and gallery
    if copies:
        print(f"{len(copies)} repeated file(s) left out (same SHA-256 as another photo of the individual)")
    names = [n for n, _ in folders]
    if not 0 <= unknown < len(names):
        raise SystemExit(f"--unknown must be between 0 and {len(names) - 1} (the individuals of {photos} "
                         f"less one), got {unknown}")
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
    from nabi.reid.matcher import LocalMatcher
    defaults = LocalMatcher().settings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("photos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unknown", type=int, default=0, help="individuals left out of the gallery as unknowns")
    ap.add_argument("--matcher", action="store_true", help="also the RootSIFT + RANSAC matcher alone and fused "
                    "with the embedding over every enrolled individual")
    ap.add_argument("--nfeatures", type=int, default=defaults["nfeatures"], help="SIFT keypoints per photo")
    ap.add_argument("--ratio", type=float, default=defaults["ratio"], help="Lowe's ratio-test threshold")
    ap.add_argument("--top", type=int, default=defaults["top"], help="an individual's best photos its evidence sums")
    ap.add_argument("--max-photos", type=int, default=defaults["max_photos"],
                    help="photos matched per individual (default: all)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from nabi.reid.gallery import Gallery
    matcher = None
    if args.matcher:
        try:
            matcher = LocalMatcher(args.nfeatures, args.ratio, top=args.top, max_photos=args.max_photos)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        unknown = split_folder(args.photos, tmp / "enrol", tmp / "query", args.seed, args.unknown)
        g = Gallery.build(args.run, tmp / "enrol", tmp / "gallery")
        summary, _ = g.calibrate(None, target_far=0.01, matcher=matcher)
        res = g.evaluate(tmp / "query", matcher=matcher)
    res.update(unknown_individuals=unknown, gallery_photos=len(g), seed=args.seed, seconds=time.perf_counter() - t0)
    if matcher is not None:
        res.update(matcher_settings=matcher.settings(), fusion_selection=summary["fusion"]["selection"])
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{len(g)} gallery photos of {res['individuals_enrolled']} individuals; {res['known_queries']} known "
          f"and {res['unknown_queries']} unknown query photos (split seed {args.seed})")
    if matcher is not None:
        print(f"matcher {matcher.settings()}; fusion weight {res['fused']['weight']} chosen on the gallery's own "
              "photos (leave-one-out)")
    keys = [k for k in FIGURES if k in res]
    print(f"{'':<10}" + "".join(f"{k:>17}" for k in keys))
    rows = [("embedding", res)] + ([("matcher", res["matcher"]), ("fused", res["fused"])] if matcher else [])
    for label, figs in rows:
        print(f"{label:<10}" + "".join(f"{figs[k]:>17.4f}" for k in keys))
    print(f"three-way accuracy {res['three_way_accuracy']:.4f} (threshold from leave-one-out on the gallery, "
          f"{'fused' if matcher else 'embedding'} score); {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
