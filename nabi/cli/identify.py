"""``nabi identify``: who is in each photo (background, a known individual, or unknown), from a gallery."""
from __future__ import annotations

import sys

from .command import Command, print_json
from .gallery import matcher, matcher_flag, model_flags


def run(args):
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    results = g.identify(args.photos, topk=args.topk, matcher=matcher(args))
    for r, p in zip(results, args.photos):
        r["photo"] = str(p)
    if args.json:
        print_json(results)
        return 0
    if g.threshold is None:
        print("note: the gallery is not calibrated; every non-background photo is answered with its closest "
              "individual (nabi gallery calibrate sets the unknown threshold)", file=sys.stderr)
    for r in results:
        margin = "" if r["margin"] is None else f", margin {r['margin']:.3f} to the runner-up"
        if r["answer"] == "known":
            head = f"known: {r['name']} (similarity {r['similarity']:.3f}{margin})"
        elif r["answer"] == "unknown":
            head = f"unknown (best similarity {r['similarity']:.3f} ≤ threshold {r['threshold']:.3f})"
        else:
            head = "background"
        print(f"{r['photo']}: {head}")
        for c in r["candidates"]:
            extra = f"  {c['inliers']} inliers" if "inliers" in c else ""
            print(f"    {c['name']:<24} {c['similarity']:.3f}{extra}  {c['photo']}")
    return 0


def add_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("photos", nargs="+", help="one or more photos to identify")
    p.add_argument("--topk", type=int, default=5, help="candidates listed per photo")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    model_flags(p)
    matcher_flag(p)


COMMAND = Command(
    "identify", "who is in each photo: background, a known individual, or unknown", add_arguments, run,
    examples=("nabi identify gallery photo1.jpg photo2.jpg", "nabi identify gallery photo.jpg --json --matcher"))
