"""``nabi gallery``: enrol individuals for re-identification (build, add, calibrate, evaluate, explain, list,
rename); the library is ``nabi.reid.gallery.Gallery``."""
from __future__ import annotations

import sys
from pathlib import Path

from .command import Command, add_sub_commands, print_json


def model_flags(p):
    """``--run`` and ``--device``: the model a gallery is opened with."""
    p.add_argument("--run", help="the model's run folder or weights (default: the one the gallery was built "
                   "with; must have the same SHA-256)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the model runs (default: cpu)")


def matcher_flag(p):
    p.add_argument("--matcher", action="store_true", help="also match RootSIFT keypoints (RANSAC-verified) "
                   "with every enrolled individual and fuse with the embedding similarity, weight from "
                   "calibrate --matcher (OpenCV; default: off)")


def matcher(args):
    """The local-feature matcher when ``--matcher`` is given, else None."""
    if not getattr(args, "matcher", False):
        return None
    from ..reid.matcher import LocalMatcher
    return LocalMatcher()


def build(args):
    from ..reid.gallery import Gallery
    g = Gallery.build(args.run, args.photos, args.out, device=args.device,
                      log=lambda m: print(f"note: {m}", file=sys.stderr))
    people = g.individuals()
    bg = [n for n in g.names() if n not in people]
    print(f"gallery {args.out}: {len(g)} photos of {len(people)} individuals"
          + (f" and {len(bg)} background group(s)" if bg else "") + f"; model {g.embedder.weights}")
    if len(people) < 2:
        print("note: with fewer than two individuals identify cannot report a margin to a runner-up")
    print(f"next: nabi gallery calibrate {args.out} VALIDATION (sets the unknown threshold)")
    return 0


def add(args):
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    before = set(g.names())
    added = g.add(args.name, args.photos, merge=args.merge)
    name = added[0]["name"]
    what = "added to" if name in before else "enrolled as new individual"
    print(f"{len(added)} photo(s) {what} {name!r}; the gallery holds {len(g)} photos of "
          f"{len(g.individuals())} individuals")
    return 0


def calibrate(args):
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    plot = Path(args.plot) if args.plot else Path(args.gallery) / "far_frr.png"
    summary, curve = g.calibrate(args.validation, target_far=args.target_far, plot=plot, matcher=matcher(args))
    if args.json:
        print_json({"summary": summary, "curve": curve})
        return 0
    print(f"{'threshold':>10} {'FAR':>7} {'FRR':>7} {'TAR':>7}")
    step = max(1, len(curve) // 20)
    for r in curve[::step]:
        print(f"{r['threshold']:10.4f} {r['far']:7.3f} {r['frr']:7.3f} {r['tar']:7.3f}")
    print(f"operating point at target FAR {summary['target_far']:.3f}: threshold {summary['threshold']:.4f}, "
          f"FAR {summary['far']:.3f}, FRR {summary['frr']:.3f}, TAR {summary['tar']:.3f} "
          f"({summary['known_queries']} known, {summary['unknown_queries']} unknown queries)")
    if "fusion" in summary:
        fu = summary["fusion"]
        print(f"with local-feature matching: weight {fu['weight']}, AUROC {fu['auroc']:.4f}, threshold "
              f"{fu['threshold']:.4f}, FAR {fu['far']:.3f}, FRR {fu['frr']:.3f}, TAR {fu['tar']:.3f}")
    if "auroc" in summary:
        print(f"AUROC known vs unknown {summary['auroc']:.4f}; TAR at FAR 1 % {summary['tar_at_far_1pct']:.3f}, "
              f"at 5 % {summary['tar_at_far_5pct']:.3f}")
    print(f"written: {plot}; threshold saved in {Path(args.gallery) / 'index.json'}")
    return 0


def evaluate(args):
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    res = g.evaluate(args.queries, matcher=matcher(args))
    if args.json:
        print_json(res)
        return 0
    print(f"{res['queries']} query photos: {res['known_queries']} of enrolled individuals, "
          f"{res['unknown_queries']} of others ({res['individuals_enrolled']} individuals enrolled)")
    figures = (("rank1", "rank-1"), ("rank5", "rank-5"), ("mAP", "mAP"), ("auroc", "AUROC known vs unknown"),
               ("tar_at_far_1pct", "TAR at FAR 1 %"), ("tar_at_far_5pct", "TAR at FAR 5 %"))
    for part, title in ((res, None), (res.get("matcher"), "local-feature matcher alone"),
                        (res.get("fused"), "embedding and matcher fused")):
        if part is None:
            continue
        if title:
            print(title + (f" (weight {part['weight']})" if "weight" in part else "") + ":")
        for key, label in figures:
            if key in part:
                print(f"{label:<28} {part[key]:.4f}")
    if "matcher" in res and "fused" not in res:
        print("(fused figures need a calibration with --matcher: nabi gallery calibrate GALLERY VALIDATION --matcher)")
    print(f"{'three-way answer accuracy':<28} {res['three_way_accuracy']:.4f}")
    if res["threshold"] is None:
        print("(not calibrated: every non-background photo was answered with its closest individual)")
    return 0


def explain(args):
    from ..reid.explain import describe_habitat, explain_match
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    out = Path(args.out) if args.out else Path(args.gallery) / "explain"
    res = explain_match(g, args.photo, out, layer=args.layer, mask=args.mask, match_mask=args.match_mask)
    if args.json:
        print_json(res)
        return 0
    print(f"{args.photo}: {res['answer']}; explaining the match with {res['explained']} "
          f"(similarity {res['similarity_explained']:.3f}, photo {res['candidates'][0]['photo']})")
    for which, share in res.get("habitat", {}).items():
        print(f"habitat reliance, {which} photo: {describe_habitat(share)} (mask {share['mask']})")
    for f in res["files"]:
        print(f"written: {f}")
    return 0


def list_(args):
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    counts = {}
    for e in g.entries:
        counts[e["name"]] = counts.get(e["name"], 0) + 1
    if args.json:
        print_json({"names": counts, "threshold": g.threshold, "model": g.embedder.identity()})
    else:
        for n in sorted(counts):
            print(f"{n}\t{counts[n]} photo(s)")
        print(f"threshold: {'not calibrated' if g.threshold is None else f'{g.threshold:.4f}'}")
    return 0


def rename(args):
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    g.rename(args.old, args.new, merge=args.merge)
    print(f"renamed {args.old!r} to {args.new!r}")
    return 0


def _build_arguments(p):
    p.add_argument("run", help="a run folder (an embedding or a classifier run)")
    p.add_argument("photos", help="a folder with one sub-folder per individual (and optionally background/)")
    p.add_argument("--out", required=True, help="the gallery folder to write")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the model runs (default: cpu)")


def _add_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("name", help="the individual's name ('background' or 'background/<kind>' for empty scenes)")
    p.add_argument("photos", nargs="+", help="one or more photos")
    p.add_argument("--merge", action="store_true", help="accept a name that differs from an enrolled one only "
                   "in letter case, adding to that individual")
    model_flags(p)


def _calibrate_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("validation", help="one folder per individual: enrolled names are known queries, the "
                   "others unknowns")
    p.add_argument("--target-far", type=float, default=0.01, help="false-accept rate to allow (default 0.01)")
    p.add_argument("--plot", help="where to write the FAR/FRR curve (default GALLERY/far_frr.png)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    model_flags(p)
    matcher_flag(p)


def _evaluate_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("queries", help="one folder per individual: enrolled names are known, others unknown")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    model_flags(p)
    matcher_flag(p)


def _explain_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("photo", help="the photo to explain")
    p.add_argument("--mask", help="black/white image of the photo, white = animal, any size: report the share of "
                   "the heat on the habitat (black) against the habitat's share of the photo (default: none)")
    p.add_argument("--match-mask", help="the same for the matched gallery photo (default: none)")
    p.add_argument("--layer", help="the conv layer for Grad-CAM (default: the last spatial one)")
    p.add_argument("--out", help="folder for the PNGs (default GALLERY/explain)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    model_flags(p)


def _list_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    model_flags(p)


def _rename_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("old", help="the enrolled name")
    p.add_argument("new", help="the new name")
    p.add_argument("--merge", action="store_true", help="allow renaming onto an enrolled name: the two become one "
                   "individual (default: off)")
    model_flags(p)


ACTIONS = (
    Command("build", "embed every photo of PHOTOS (one folder per individual, optional background/) with RUN's model",
            _build_arguments, build),
    Command("add", "enrol a new individual, or add photos to one, without retraining", _add_arguments, add),
    Command("calibrate", "choose the unknown threshold from individuals held out of the gallery",
            _calibrate_arguments, calibrate),
    Command("evaluate", "rank-1, rank-5, mAP and open-set figures on labelled query photos", _evaluate_arguments,
            evaluate),
    Command("explain", "Grad-CAM of a photo's similarity to its best match, in both photos", _explain_arguments,
            explain, examples=("nabi gallery explain gallery photo.jpg",
                               "nabi gallery explain gallery photo.jpg --mask photo_mask.png")),
    Command("list", "enrolled names, photo counts and the threshold", _list_arguments, list_),
    Command("rename", "rename an individual (onto an enrolled name only with --merge)", _rename_arguments, rename),
)


def add_arguments(p):
    add_sub_commands(p, "gallery_command", "ACTION", "what to do with the gallery (nabi gallery ACTION --help)",
                     ACTIONS)


COMMAND = Command(
    "gallery", "enrol individuals for re-identification: build, add, calibrate, list", add_arguments, None,
    examples=("nabi gallery build runs/emb known/ --out gallery     # known/<name>/<photos>",
              "nabi gallery add gallery Nala new1.jpg new2.jpg",
              "nabi gallery calibrate gallery validation/ --target-far 0.01"))
