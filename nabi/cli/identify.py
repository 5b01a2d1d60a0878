"""``nabi identify``: who is in each photo (background, a known individual, or unknown), from a gallery."""
from __future__ import annotations

import sys

from .command import Command, print_json
from .gallery import matcher, matcher_flag, model_flags, note


def answer_line(r) -> str:
    """One answer in words: the name and its probability, or why there is none."""
    if r["answer"] == "error":
        return f"not identified: {r['error']}"
    if r["answer"] == "background":
        return "background"
    cands = r.get("candidates") or []
    if r.get("calibrated"):
        if r["answer"] == "known":
            runner = f"; next {cands[1]['name']} at {100 * cands[1]['probability']:.0f} %" if len(cands) > 1 else ""
            return f"known: {r['name']} (probability {100 * r['probability']:.0f} %{runner})"
        best = f"; closest {cands[0]['name']} at {100 * cands[0]['probability']:.0f} %" if cands else ""
        return f"unknown: probably an animal not enrolled ({100 * r['probability']:.0f} %{best})"
    margin = "" if r.get("margin") is None else f", margin {r['margin']:.3f} to the runner-up"
    if r["answer"] == "known":
        return f"known: {r['name']} (similarity {r['similarity']:.3f}{margin}; not calibrated)"
    return f"unknown (best similarity {r['similarity']:.3f} ≤ threshold {r['threshold']:.3f})"


def run(args):
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    groups = ["sighting"] * len(args.photos) if args.sighting else None
    results = g.identify(args.photos, topk=args.topk, matcher=matcher(args), groups=groups)
    for r, p in zip(results, args.photos):
        r["photo"] = str(p)
    failed = sum(r["answer"] == "error" for r in results)
    if args.json:
        print_json(results)
        return 1 if failed else 0
    if not g.calibrated:
        note("the gallery is not calibrated: answers have no probability (nabi gallery calibrate GALLERY)")
    for r in results:
        print(f"{r['photo']}: {answer_line(r)}")
        for c in r.get("candidates", []):
            p = f"{100 * c['probability']:5.1f} %  " if "probability" in c else ""
            extra = f"  {c['inliers']} inliers" if "inliers" in c else ""
            print(f"    {c['name']:<24} {p}similarity {c['similarity']:.3f}{extra}  {c['photo']}")
    if failed:
        note(f"{failed} of {len(results)} photo(s) could not be read")
        return 1
    return 0


def add_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("photos", nargs="+", help="one or more photos to identify")
    p.add_argument("--topk", type=int, default=5, help="candidates listed per photo")
    p.add_argument("--sighting", action="store_true", help="the photos are one sighting of one animal: one answer "
                   "from all of them (default: each photo alone)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    model_flags(p)
    matcher_flag(p)


COMMAND = Command(
    "identify", "who is in each photo: background, a known individual, or unknown", add_arguments, run,
    examples=("nabi identify gallery photo1.jpg photo2.jpg", "nabi identify gallery left.jpg right.jpg --sighting",
              "nabi identify gallery photo.jpg --json"))
