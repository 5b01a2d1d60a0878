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
    """True/False from --matcher/--no-matcher, None (as the gallery is calibrated) when neither is given."""
    return getattr(args, "matcher", None)


def _note(message):
    print(f"note: {message}", file=sys.stderr)


def _describe_calibration(summary):
    c = summary.get("check") or {}
    pairs = summary.get("pairs", {})
    auroc = ", ".join(f"{k} {v:.3f}" for k, v in (summary.get("auroc_pairs") or {}).items())
    lines = [f"calibrated on {summary.get('source')}: {summary.get('individuals')} individuals, {summary.get('photos')} "
             f"photos in {summary.get('encounters')} encounters; {pairs.get('same')} same-individual and "
             f"{pairs.get('different')} other pairs (AUROC of the pairs: {auroc})"]
    if c.get("known_photos"):
        lines.append(f"on those photos: {100 * c['known_named_correctly']:.0f} % of known photos named correctly, "
                     f"{100 * c['known_called_unknown']:.0f} % called unknown; {100 * c['strangers_called_new']:.0f} % "
                     f"of strangers called new; expected calibration error {c.get('ece_mixed', float('nan')):.3f}")
    lines.append(f"prior that a photo shows an enrolled individual: {summary.get('prior_known')} (--prior-known)")
    return lines


def auto_calibrate(g, calibration=None, log=None):
    """Calibrate a freshly built gallery: from ``calibration`` photos, else leave-one-encounter-out over the
    gallery, else the run's and nabi's shipped calibration (``nabi.reid.calibrate.default_calibration``);
    returns the summary or None (with a note) when none could be made."""
    from .calibrate import default_calibration
    from .calibration import CalibrationError
    try:
        return g.calibrate(calibration, log=log)
    except CalibrationError as e:
        if calibration is not None:
            raise
        fallback = default_calibration(g)
        if fallback is not None:
            g.calibration = fallback
            g.save()
            _note(f"too few photos to calibrate on the gallery itself ({e}); using {fallback['source']}")
            return fallback
        _note(f"the gallery is not calibrated: {e}. It answers with the closest individual until it is "
              "(nabi gallery calibrate GALLERY [CALIBRATION_PHOTOS])")
        return None


def cmd_gallery_build(args):
    from .gallery import Gallery
    from .local_features import LocalSettings
    local = False if args.no_local_features else LocalSettings(descriptor=args.descriptor)
    log = (lambda m: print(m, file=sys.stderr))
    g = Gallery.build(args.run, args.photos, args.out, device=args.device, log=lambda m: _note(m), local=local,
                      encounters=args.encounters, gap_minutes=args.gap, strict=args.strict, flip=args.flip)
    people = g.individuals()
    bg = [n for n in g.names() if n not in people]
    n_enc = len({(e["name"], e.get("encounter")) for e in g.entries if e["name"] in people})
    print(f"gallery {args.out}: {len(g)} photos of {len(people)} individuals in {n_enc} encounters"
          + (f" and {len(bg)} background group(s)" if bg else "") + f"; model {g.embedder.weights}"
          + ("; with local features for the keypoint matcher" if g.has_local_features else ""))
    if len(people) < 2:
        print("note: with fewer than two individuals identify cannot report a margin to a runner-up")
    if args.no_calibrate:
        print(f"next: nabi gallery calibrate {args.out} [CALIBRATION_PHOTOS] (answers with probabilities)")
        return 0
    summary = auto_calibrate(g, args.calibration, log)
    if summary is not None:
        for line in _describe_calibration(summary):
            print(line)
    print(f"next: nabi identify {args.out} PHOTO")
    return 0


def cmd_gallery_add(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    before = set(g.names())
    added = g.add(args.name, args.photos, merge=args.merge, encounters=args.encounter)
    name = added[0]["name"]
    what = "added to" if name in before else "enrolled as new individual"
    print(f"{len(added)} photo(s) {what} {name!r}; the gallery holds {len(g)} photos of "
          f"{len(g.individuals())} individuals")
    return 0


def cmd_gallery_remove(args):
    from ..files.digest import file_sha256
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    by_path = {str(Path(e["photo"])): e["sha256"] for e in g.entries}
    hashes = []
    for p in args.photos:
        if Path(p).is_file():
            hashes.append(file_sha256(p))
        elif str(Path(p).resolve()) in by_path:
            hashes.append(by_path[str(Path(p).resolve())])
        else:
            raise ValueError(f"{p} is neither a photo file nor a photo enrolled in the gallery")
    removed = g.remove(hashes)
    print(f"{len(removed)} photo(s) removed; the gallery holds {len(g)} photos of {len(g.individuals())} individuals")
    return 0


def cmd_gallery_calibrate(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    summary = g.calibrate(args.calibration, matcher=_matcher(args), prior_known=args.prior_known,
                          kind=args.kind, fusion=args.fusion, log=lambda m: print(m, file=sys.stderr))
    plot = Path(args.plot) if args.plot else Path(args.gallery) / "reliability.png"
    written = None
    if (summary.get("check") or {}).get("reliability"):
        try:
            from .plots import plot_reliability
            plot_reliability(summary["check"]["reliability"], plot)
            written = plot
        except ImportError as e:
            _note(f"reliability diagram skipped: {e}")
    if args.json:
        _print_json(summary)
        return 0
    for line in _describe_calibration(summary):
        print(line)
    print(f"written: calibration in {Path(args.gallery) / 'index.json'}" + (f"; {written}" if written else ""))
    return 0


def cmd_gallery_evaluate(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    res = g.evaluate(args.queries, matcher=_matcher(args), groups=None if args.per_photo else "encounter",
                     log=_note)
    if args.json:
        _print_json(res)
        return 0
    print(f"{res['queries']} query photos: {res['known_queries']} of enrolled individuals, "
          f"{res['unknown_queries']} of others ({res['individuals_enrolled']} individuals enrolled)")
    if res.get("note"):
        print(f"({res['note']})")
    figures = (("rank1", "rank-1"), ("rank5", "rank-5"), ("mAP", "mAP"), ("auroc", "AUROC known vs unknown"),
               ("tar_at_far_1pct", "TAR at FAR 1 %"), ("tar_at_far_5pct", "TAR at FAR 5 %"))
    titles = {"embedding": "embedding alone", "matcher": "keypoint matcher alone",
              "fused": "the answer (calibrated fusion" + (", a query encounter's photos together)" if not args.per_photo
                                                         else ")")}
    for scorer in res["scorers"]:
        print(titles[scorer] + ":")
        for key, label in figures:
            if res[scorer].get(key) is not None:
                print(f"  {label:<26} {res[scorer][key]:.4f}")
    print(f"{'three-way answer accuracy':<28} {res['three_way_accuracy']:.4f}  (answered {res['answered']})")
    if res.get("ece") is not None:
        print(f"{'expected calibration error':<28} {res['ece']:.4f}  (of the probability shown with each answer)")
    if not res["calibrated"]:
        print("(not calibrated: every non-background photo was answered with its closest individual; "
              "nabi gallery calibrate)")
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
    counts, encounters = {}, {}
    for e in g.entries:
        counts[e["name"]] = counts.get(e["name"], 0) + 1
        encounters.setdefault(e["name"], set()).add(e.get("encounter"))
    cal = g.calibration or {}
    state = ("calibrated: answers carry probabilities" if g.calibrated else
             f"threshold {g.threshold:.4f} (an older calibration, no probabilities)" if g.threshold is not None
             else "not calibrated")
    if args.json:
        _print_json({"names": counts, "encounters": {n: len(v) for n, v in encounters.items()},
                     "calibrated": g.calibrated, "calibration_source": cal.get("source"), "threshold": g.threshold,
                     "model": g.embedder.identity(), "local_features": g.has_local_features})
    else:
        for n in sorted(counts):
            print(f"{n}\t{counts[n]} photo(s)\t{len(encounters[n])} encounter(s)")
        print(state + (f" ({cal.get('source')})" if g.calibrated else ""))
    return 0


def cmd_gallery_rename(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    g.rename(args.old, args.new, merge=args.merge)
    print(f"renamed {args.old!r} to {args.new!r}")
    return 0


def _answer_line(r):
    if r["answer"] == "error":
        return f"not identified: {r['error']}"
    if r["answer"] == "background":
        return "background"
    cands = r["candidates"]
    if r.get("calibrated"):
        if r["answer"] == "known":
            runner = f"; next {cands[1]['name']} at {100 * cands[1]['probability']:.0f} %" if len(cands) > 1 else ""
            return f"known: {r['name']} (probability {100 * r['probability']:.0f} %{runner})"
        best = f"; closest {cands[0]['name']} at {100 * cands[0]['probability']:.0f} %" if cands else ""
        return f"unknown: probably an animal not enrolled ({100 * r['probability']:.0f} %{best})"
    margin = "" if r["margin"] is None else f", margin {r['margin']:.3f} to the runner-up"
    if r["answer"] == "known":
        return f"known: {r['name']} (similarity {r['similarity']:.3f}{margin}; not calibrated)"
    return f"unknown (best similarity {r['similarity']:.3f} ≤ threshold {r['threshold']:.3f})"


def cmd_identify(args):
    from .gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    groups = ["sighting"] * len(args.photos) if args.sighting else None
    results = g.identify(args.photos, topk=args.topk, matcher=_matcher(args), groups=groups)
    for r, p in zip(results, args.photos):
        r["photo"] = str(p)
    if args.json:
        _print_json(results)
        return 0 if all(r["answer"] != "error" for r in results) else 1
    if not g.calibrated:
        _note("the gallery is not calibrated: answers have no probability (nabi gallery calibrate GALLERY)")
    for r in results:
        print(f"{r['photo']}: {_answer_line(r)}")
        for c in r.get("candidates", []):
            p = f"{100 * c['probability']:5.1f} %  " if "probability" in c else ""
            extra = f"  {c['inliers']} inliers" if "inliers" in c else ""
            print(f"    {c['name']:<24} {p}similarity {c['similarity']:.3f}{extra}  {c['photo']}")
    failed = sum(r["answer"] == "error" for r in results)
    if failed:
        _note(f"{failed} of {len(results)} photo(s) could not be read")
        return 1
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
        m = p.add_mutually_exclusive_group()
        m.add_argument("--matcher", dest="matcher", action="store_true", default=None,
                       help="use the keypoint matcher (RootSIFT or learned descriptors, LNBNN over one index, RANSAC "
                            "on a shortlist) with the embedding (default: as the gallery is calibrated)")
        m.add_argument("--no-matcher", dest="matcher", action="store_false", help="the embedding alone")

    gal = sub.add_parser("gallery", help="enrol individuals for re-identification: build, add, calibrate, evaluate",
                         epilog=_examples(
                             "nabi gallery build runs/emb known/ --out gallery     # known/<name>/<photos>",
                             "nabi gallery add gallery Nala new1.jpg new2.jpg",
                             "nabi gallery calibrate gallery other-animals/      # or leave-one-encounter-out",
                             "nabi gallery evaluate gallery queries/"))
    gsub = gal.add_subparsers(dest="gallery_command", metavar="ACTION", required=True,
                              help="what to do with the gallery (nabi gallery ACTION --help)")

    def encounter_flags(p):
        p.add_argument("--encounters", default="auto", help="how an individual's photos are grouped into encounters "
                       "(photos taken together, never split between gallery and queries when evaluating or "
                       "calibrating): auto (sub-folders, else EXIF time, else each photo alone), folder, time, name "
                       "(the first number in the file name), name:REGEX, photo (default: auto)")
        p.add_argument("--gap", type=float, default=30.0, help="for --encounters time: minutes between two photos "
                       "of one encounter at most (default: 30)")

    p = gsub.add_parser("build", help="embed every photo of PHOTOS (one folder per individual, optional "
                        "background/) with RUN's model, compute its keypoints, and calibrate",
                        epilog=_examples("nabi gallery build runs/emb known/ --out gallery",
                                         "nabi gallery build runs/emb known/ --out gallery --calibration others/",
                                         "nabi gallery build runs/emb known/ --out gallery --encounters time --gap 60"))
    p.add_argument("run", help="a run folder (an embedding or a classifier run)")
    p.add_argument("photos", help="a folder with one sub-folder per individual (photos in it or in one sub-folder "
                   "per encounter; optionally background/)")
    p.add_argument("--out", required=True, help="the gallery folder to write")
    p.add_argument("--calibration", metavar="PHOTOS", help="photos of other individuals (one folder each, neither "
                   "enrolled nor to be identified) to calibrate the probabilities on (default: leave-one-encounter-"
                   "out over the gallery's own photos)")
    p.add_argument("--no-calibrate", action="store_true", help="do not calibrate now (default: calibrate)")
    encounter_flags(p)
    p.add_argument("--descriptor", default="rootsift", help="local descriptor: rootsift, learned (the one shipped "
                   "with nabi) or learned:PATH (default: rootsift)")
    p.add_argument("--no-local-features", action="store_true", help="no keypoints: the embedding alone, no matcher")
    p.add_argument("--flip", action="store_true", help="embed each photo and its mirror image, averaged "
                   "(test-time augmentation; default: off)")
    p.add_argument("--strict", action="store_true", help="stop at a photo that cannot be read (default: leave it "
                   "out with a line)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the model runs (default: cpu)")
    p.set_defaults(func=cmd_gallery_build)

    p = gsub.add_parser("add", help="enrol a new individual, or add photos to one, without retraining")
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("name", help="the individual's name ('background' or 'background/<kind>' for empty scenes)")
    p.add_argument("photos", nargs="+", help="one or more photos")
    p.add_argument("--merge", action="store_true", help="accept a name that differs from an enrolled one only "
                   "in letter case, adding to that individual")
    p.add_argument("--encounter", help="the photos are one encounter with this key (default: grouped by the "
                   "gallery's encounter rule)")
    common(p)
    p.set_defaults(func=cmd_gallery_add)

    p = gsub.add_parser("remove", help="take photos out of the gallery (by file, or by the enrolled path)")
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("photos", nargs="+", help="photo files (matched by content) or enrolled photo paths")
    common(p)
    p.set_defaults(func=cmd_gallery_remove)

    p = gsub.add_parser("calibrate", help="fit the probability that a photo shows each enrolled individual",
                        epilog=_examples("nabi gallery calibrate gallery                 # leave-one-encounter-out",
                                         "nabi gallery calibrate gallery other-animals/  # individuals not enrolled",
                                         "nabi gallery calibrate gallery --prior-known 0.8"))
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("calibration", nargs="?", help="photos of individuals that are neither enrolled nor to be "
                   "identified, one folder each, several encounters each (default: leave-one-encounter-out over the "
                   "gallery's own photos)")
    p.add_argument("--prior-known", type=float, help="the prior probability that a photo shows an enrolled "
                   "individual rather than a stranger (default: the gallery's, else 0.5)")
    p.add_argument("--kind", choices=["isotonic", "logistic"], default="isotonic", help="the calibration of each "
                   "score (default: isotonic)")
    p.add_argument("--fusion", choices=["logistic", "mean"], default="logistic", help="how the scores' "
                   "probabilities are combined (default: logistic)")
    p.add_argument("--plot", help="where to write the reliability diagram (default GALLERY/reliability.png)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    common(p)
    matcher_flag(p)
    p.set_defaults(func=cmd_gallery_calibrate)

    p = gsub.add_parser("evaluate", help="rank-1, rank-5, mAP, open-set figures and calibration on labelled photos")
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("queries", help="one folder per individual: enrolled names are known, others unknown")
    p.add_argument("--per-photo", action="store_true", help="answer each photo alone (default: the photos of one "
                   "query encounter together)")
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

    p = gsub.add_parser("list", help="enrolled names, photo and encounter counts, the calibration")
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
                                        "nabi identify gallery left.jpg right.jpg --sighting",
                                        "nabi identify gallery photo.jpg --json"))
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("photos", nargs="+", help="one or more photos to identify")
    p.add_argument("--topk", type=int, default=5, help="candidates listed per photo")
    p.add_argument("--sighting", action="store_true", help="the photos are one sighting of one animal: one answer "
                   "from all of them (default: each photo alone)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    common(p)
    matcher_flag(p)
    p.set_defaults(func=cmd_identify)
