"""Command-line glue for re-identification: ``nabi gallery …``, ``nabi identify`` and ``nabi train --head``.

``add_commands(subparsers)`` registers the commands on nabi's parser and gives ``nabi train`` the options
``--head {softmax,arcface,subcenter_arcface,cosface,triplet}`` and ``--embedding-dim`` (plus
``--margin``, ``--scale``, ``--k``); with ``--head softmax`` (the default) training is unchanged.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HEAD_CHOICES = ["softmax", "arcface", "subcenter_arcface", "cosface", "triplet"]


def _print_json(obj):
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def _matcher(args):
    if not getattr(args, "matcher", False):
        return None
    from .matcher import LocalMatcher
    return LocalMatcher()


def cmd_gallery_build(args):
    from .gallery import Gallery
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


def cmd_gallery_add(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    before = set(g.names())
    added = g.add(args.name, args.photos, merge=args.merge)
    name = added[0]["name"]
    what = "added to" if name in before else "enrolled as new individual"
    print(f"{len(added)} photo(s) {what} {name!r}; the gallery holds {len(g)} photos of "
          f"{len(g.individuals())} individuals")
    return 0


def cmd_gallery_calibrate(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    plot = Path(args.plot) if args.plot else Path(args.gallery) / "far_frr.png"
    summary, curve = g.calibrate(args.validation, target_far=args.target_far, plot=plot, matcher=_matcher(args))
    if args.json:
        _print_json({"summary": summary, "curve": curve})
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


def cmd_gallery_evaluate(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    res = g.evaluate(args.queries, matcher=_matcher(args))
    if args.json:
        _print_json(res)
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


def cmd_gallery_explain(args):
    from .explain import describe_habitat, explain_match
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    out = Path(args.out) if args.out else Path(args.gallery) / "explain"
    res = explain_match(g, args.photo, out, layer=args.layer, mask=args.mask, match_mask=args.match_mask)
    if args.json:
        _print_json(res)
        return 0
    print(f"{args.photo}: {res['answer']}; explaining the match with {res['explained']} "
          f"(similarity {res['similarity_explained']:.3f}, photo {res['candidates'][0]['photo']})")
    for which, share in res.get("habitat", {}).items():
        print(f"habitat reliance, {which} photo: {describe_habitat(share)} (mask {share['mask']})")
    for f in res["files"]:
        print(f"written: {f}")
    return 0


def cmd_gallery_list(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    counts = {}
    for e in g.entries:
        counts[e["name"]] = counts.get(e["name"], 0) + 1
    if args.json:
        _print_json({"names": counts, "threshold": g.threshold, "model": g.embedder.identity()})
    else:
        for n in sorted(counts):
            print(f"{n}\t{counts[n]} photo(s)")
        print(f"threshold: {'not calibrated' if g.threshold is None else f'{g.threshold:.4f}'}")
    return 0


def cmd_gallery_rename(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    g.rename(args.old, args.new, merge=args.merge)
    print(f"renamed {args.old!r} to {args.new!r}")
    return 0


def cmd_identify(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    results = g.identify(args.photos, topk=args.topk, matcher=_matcher(args))
    for r, p in zip(results, args.photos):
        r["photo"] = str(p)
    if args.json:
        _print_json(results)
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


def _train_with_head(original):
    def cmd(args):
        head = getattr(args, "head", None) or "softmax"
        if head == "softmax":
            if args.embedding_dim is not None:
                raise ValueError("--embedding-dim needs an embedding head (--head arcface, cosface, triplet …)")
            return original(args)
        from ..runs import open_run_folder
        from .train import run_embedding_training
        helpers = original.__globals__                  # the train command's own helpers (nabi.cli.main)
        cfg = helpers["_config_from_args"](args)
        if cfg.data is None:
            raise ValueError("give a data folder with one sub-folder per individual")
        from ..cli.checks import check_train_config
        check_train_config(cfg)
        with open_run_folder(cfg.out, resume=args.resume, overwrite=getattr(args, "overwrite", False)):
            trainer, info = run_embedding_training(cfg, head=head, embedding_dim=args.embedding_dim or 128,
                                                   margin=args.margin, scale=args.scale, k=args.k,
                                                   resume=args.resume)
            if "_finish_run" in helpers:
                helpers["_finish_run"](cfg.out, getattr(args, "keep_checkpoints", False))
        if trainer.best_epoch is not None and info["validation_individuals"]:
            print(f"best rank-1 on {len(info['validation_individuals'])} held-out individuals: "
                  f"{trainer.best_acc:.4f} (epoch {trainer.best_epoch})")
        print(f"next: nabi gallery build {cfg.out} PHOTOS --out GALLERY")
        return 0
    cmd.__doc__ = original.__doc__
    return cmd


def _extend_train(sub):
    train = sub.choices.get("train")
    if train is None:
        return
    g = train.add_argument_group("embedding (re-identification)")
    g.add_argument("--head", choices=HEAD_CHOICES, help="softmax (default): a classifier; the others train an "
                   "identity embedding on held-in individuals and validate by rank-1 on held-out ones")
    g.add_argument("--embedding-dim", type=int, help="embedding size of an embedding head (default 128)")
    g.add_argument("--margin", type=float, help="margin (radians for arcface; default 0.5 arcface, 0.35 "
                   "cosface, 0.3 triplet)")
    g.add_argument("--scale", type=float, default=30.0, help="logit scale s of arcface/cosface (default 30)")
    g.add_argument("--k", type=int, default=4, help="photos per individual in a P×K batch (P = batch size / K)")
    train.set_defaults(func=_train_with_head(train.get_default("func")))


def _examples(*lines):
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_commands(sub):
    """Register ``gallery`` and ``identify`` on nabi's sub-parsers and the embedding options of ``train``."""
    _extend_train(sub)

    def common(p):
        p.add_argument("--run", help="the model's run folder or weights (default: the one the gallery was built "
                       "with; must have the same SHA-256)")
        p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the model runs (default: cpu)")

    def matcher_flag(p):
        p.add_argument("--matcher", action="store_true", help="also match RootSIFT keypoints (RANSAC-verified) "
                       "with every enrolled individual and fuse with the embedding similarity, weight from "
                       "calibrate --matcher (OpenCV; default: off)")

    gal = sub.add_parser("gallery", help="enrol individuals for re-identification: build, add, calibrate, list",
                         epilog=_examples(
                             "nabi gallery build runs/emb known/ --out gallery     # known/<name>/<photos>",
                             "nabi gallery add gallery Nala new1.jpg new2.jpg",
                             "nabi gallery calibrate gallery validation/ --target-far 0.01"))
    gsub = gal.add_subparsers(dest="gallery_command", metavar="ACTION", required=True,
                              help="what to do with the gallery (nabi gallery ACTION --help)")

    p = gsub.add_parser("build", help="embed every photo of PHOTOS (one folder per individual, optional "
                        "background/) with RUN's model")
    p.add_argument("run", help="a run folder (an embedding or a classifier run)")
    p.add_argument("photos", help="a folder with one sub-folder per individual (and optionally background/)")
    p.add_argument("--out", required=True, help="the gallery folder to write")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the model runs (default: cpu)")
    p.set_defaults(func=cmd_gallery_build)

    p = gsub.add_parser("add", help="enrol a new individual, or add photos to one, without retraining")
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("name", help="the individual's name ('background' or 'background/<kind>' for empty scenes)")
    p.add_argument("photos", nargs="+", help="one or more photos")
    p.add_argument("--merge", action="store_true", help="accept a name that differs from an enrolled one only "
                   "in letter case, adding to that individual")
    common(p)
    p.set_defaults(func=cmd_gallery_add)

    p = gsub.add_parser("calibrate", help="choose the unknown threshold from individuals held out of the gallery")
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("validation", help="one folder per individual: enrolled names are known queries, the "
                   "others unknowns")
    p.add_argument("--target-far", type=float, default=0.01, help="false-accept rate to allow (default 0.01)")
    p.add_argument("--plot", help="where to write the FAR/FRR curve (default GALLERY/far_frr.png)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    common(p)
    matcher_flag(p)
    p.set_defaults(func=cmd_gallery_calibrate)

    p = gsub.add_parser("evaluate", help="rank-1, rank-5, mAP and open-set figures on labelled query photos")
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("queries", help="one folder per individual: enrolled names are known, others unknown")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    common(p)
    matcher_flag(p)
    p.set_defaults(func=cmd_gallery_evaluate)

    p = gsub.add_parser("explain", help="Grad-CAM of a photo's similarity to its best match, in both photos",
                        epilog=_examples("nabi gallery explain gallery photo.jpg",
                                         "nabi gallery explain gallery photo.jpg --mask photo_mask.png"))
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("photo", help="the photo to explain")
    p.add_argument("--mask", help="black/white image of the photo, white = animal, any size: report the share of "
                   "the heat on the habitat (black) against the habitat's share of the photo (default: none)")
    p.add_argument("--match-mask", help="the same for the matched gallery photo (default: none)")
    p.add_argument("--layer", help="the conv layer for Grad-CAM (default: the last spatial one)")
    p.add_argument("--out", help="folder for the PNGs (default GALLERY/explain)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    common(p)
    p.set_defaults(func=cmd_gallery_explain)

    p = gsub.add_parser("list", help="enrolled names, photo counts and the threshold")
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    common(p)
    p.set_defaults(func=cmd_gallery_list)

    p = gsub.add_parser("rename", help="rename an individual (onto an enrolled name only with --merge)")
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("old", help="the enrolled name")
    p.add_argument("new", help="the new name")
    p.add_argument("--merge", action="store_true", help="allow renaming onto an enrolled name: the two become one individual (default: off)")
    common(p)
    p.set_defaults(func=cmd_gallery_rename)

    p = sub.add_parser("identify", help="who is in each photo: background, a known individual, or unknown",
                       epilog=_examples("nabi identify gallery photo1.jpg photo2.jpg",
                                        "nabi identify gallery photo.jpg --json --matcher"))
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("photos", nargs="+", help="one or more photos to identify")
    p.add_argument("--topk", type=int, default=5, help="candidates listed per photo")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    common(p)
    matcher_flag(p)
    p.set_defaults(func=cmd_identify)
