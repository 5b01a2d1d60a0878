"""``nabi gallery``: enrol individuals for re-identification (build, add, remove, calibrate, evaluate, explain,
list, rename); the library is ``nabi.reid.gallery.Gallery``."""
from __future__ import annotations

import sys
from pathlib import Path

from .command import Command, add_sub_commands, print_json


def note(message):
    print(f"note: {message}", file=sys.stderr)


def model_flags(p):
    """``--run`` and ``--device``: the model a gallery is opened with."""
    p.add_argument("--run", help="the model's run folder or weights (default: the one the gallery was built "
                   "with; must have the same SHA-256)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the model runs (default: cpu)")


def matcher_flag(p):
    m = p.add_mutually_exclusive_group()
    m.add_argument("--matcher", dest="matcher", action="store_true", default=None,
                   help="use the keypoint matcher (RootSIFT or learned descriptors, LNBNN over one index of the "
                        "gallery's keypoints, RANSAC on a shortlist) with the embedding (default: as the gallery is "
                        "calibrated)")
    m.add_argument("--no-matcher", dest="matcher", action="store_false", help="the embedding alone")


def matcher(args):
    """True/False from --matcher/--no-matcher; None (as the gallery is calibrated) when neither is given."""
    return getattr(args, "matcher", None)


def encounter_flags(p):
    p.add_argument("--encounters", default="auto", help="how an individual's photos are grouped into encounters "
                   "(photos taken together, never split between gallery and queries when evaluating or calibrating): "
                   "auto (sub-folders, else EXIF time, else each photo alone), folder, time, name (the first number "
                   "in the file name), name:REGEX, photo (default: auto)")
    p.add_argument("--gap", type=float, default=30.0, help="for --encounters time: the most minutes between two "
                   "photos of one encounter (default: 30)")


def _one_writer(folder_arg, create=False):
    """Run a sub-command that changes the gallery at ``args.<folder_arg>`` as its only writer
    (``nabi.reid.store.one_writer``: a second writer is refused with a clear message)."""
    def wrap(fn):
        def run(args):
            from ..reid.store import one_writer
            with one_writer(getattr(args, folder_arg), create=create):
                return fn(args)
        run.__name__, run.__doc__ = fn.__name__, fn.__doc__
        return run
    return wrap


@_one_writer("out", create=True)
def build(args):
    from ..reid.calibrate import calibrate_new_gallery, describe
    from ..reid.gallery import Gallery
    from ..reid.local_features import LocalSettings
    local = False if args.no_local_features else LocalSettings(descriptor=args.descriptor, foreground=args.foreground)
    g = Gallery.build(args.run, args.photos, args.out, device=args.device, log=note, local=local,
                      encounters=args.encounters, gap_minutes=args.gap, strict=args.strict, flip=args.flip)
    people = g.individuals()
    bg = [n for n in g.names() if n not in people]
    n_enc = len({(e["name"], e.get("encounter")) for e in g.entries if e["name"] in people})
    print(f"gallery {args.out}: {len(g)} photos of {len(people)} individuals in {n_enc} encounters"
          + (f" and {len(bg)} background group(s)" if bg else "") + f"; model {g.embedder.weights}"
          + ("; with keypoints for the matcher" if g.has_local_features else ""))
    if len(people) < 2:
        print("note: with fewer than two individuals identify cannot report a margin to a runner-up")
    if args.no_calibrate:
        print(f"next: nabi gallery calibrate {args.out} [CALIBRATION_PHOTOS] (answers with probabilities)")
        return 0
    summary, why = calibrate_new_gallery(g, args.calibration, log=lambda m: print(m, file=sys.stderr))
    if why:
        note(why)
    for line in describe(summary) if summary else ():
        print(line)
    print(f"next: nabi identify {args.out} PHOTO")
    return 0


@_one_writer("gallery")
def add(args):
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    before = set(g.names())
    added = g.add(args.name, args.photos, merge=args.merge, encounters=args.encounter)
    name = added[0]["name"]
    what = "added to" if name in before else "enrolled as new individual"
    print(f"{len(added)} photo(s) {what} {name!r}; the gallery holds {len(g)} photos of "
          f"{len(g.individuals())} individuals")
    return 0


@_one_writer("gallery")
def remove(args):
    from ..files.digest import file_sha256
    from ..reid.gallery import Gallery
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


@_one_writer("gallery")
def calibrate(args):
    from ..reid.calibrate import describe
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    summary = g.calibrate(args.calibration, matcher=matcher(args), prior_known=args.prior_known,
                          kind=args.kind, fusion=args.fusion, answer=args.answer,
                          log=lambda m: print(m, file=sys.stderr))
    plot = Path(args.plot) if args.plot else Path(args.gallery) / "reliability.png"
    written = None
    if (summary.get("check") or {}).get("reliability"):
        try:
            from ..reid.plots import plot_reliability
            written = plot_reliability(summary["check"]["reliability"], plot)
        except ImportError as e:
            note(f"reliability diagram skipped: {e}")
    if args.json:
        print_json(summary)
        return 0
    for line in describe(summary):
        print(line)
    print(f"written: the calibration in {Path(args.gallery) / 'index.json'}" + (f"; {written}" if written else ""))
    return 0


def evaluate(args):
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    res = g.evaluate(args.queries, matcher=matcher(args), groups=None if args.per_photo else "encounter", log=note)
    if args.json:
        print_json(res)
        return 0
    print(f"{res['queries']} query photos: {res['known_queries']} of enrolled individuals, "
          f"{res['unknown_queries']} of others ({res['individuals_enrolled']} individuals enrolled)")
    if res.get("note"):
        print(f"({res['note']})")
    figures = (("rank1", "rank-1"), ("rank5", "rank-5"), ("mAP", "mAP"), ("auroc", "AUROC known vs unknown"),
               ("tar_at_far_1pct", "TAR at FAR 1 %"), ("tar_at_far_5pct", "TAR at FAR 5 %"))
    titles = {"embedding": "embedding alone", "matcher": "keypoint matcher alone",
              "fused": "the answer (calibrated fusion" + (")" if args.per_photo else
                                                          ", a query encounter's photos together)")}
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
    counts, encounters = {}, {}
    for e in g.entries:
        counts[e["name"]] = counts.get(e["name"], 0) + 1
        encounters.setdefault(e["name"], set()).add(e.get("encounter"))
    cal = g.calibration or {}
    if args.json:
        print_json({"names": counts, "encounters": {n: len(v) for n, v in encounters.items()},
                    "calibrated": g.calibrated, "calibration_source": cal.get("source") if g.calibrated else None,
                    "threshold": g.threshold, "model": g.embedder.identity(), "local_features": g.has_local_features})
        return 0
    for n in sorted(counts):
        print(f"{n}\t{counts[n]} photo(s)\t{len(encounters[n])} encounter(s)")
    if g.calibrated:
        print(f"calibrated: answers carry probabilities ({cal.get('source')})")
    elif g.threshold is not None:
        print(f"threshold {g.threshold:.4f} (an older calibration without probabilities: nabi gallery calibrate)")
    else:
        print("not calibrated (nabi gallery calibrate)")
    return 0


@_one_writer("gallery")
def rename(args):
    from ..reid.gallery import Gallery
    g = Gallery.open(args.gallery, run=args.run, device=args.device)
    g.rename(args.old, args.new, merge=args.merge)
    print(f"renamed {args.old!r} to {args.new!r}")
    return 0


def _build_arguments(p):
    p.add_argument("run", help="a run folder (an embedding or a classifier run)")
    p.add_argument("photos", help="a folder with one sub-folder per individual (its photos in it, or in one sub-folder "
                   "per encounter; optionally background/)")
    p.add_argument("--out", required=True, help="the gallery folder to write")
    p.add_argument("--calibration", metavar="PHOTOS", help="photos of other individuals (one folder each, neither "
                   "enrolled nor to be identified) to calibrate the probabilities on (default: leave-one-encounter-"
                   "out over the gallery's own photos)")
    p.add_argument("--no-calibrate", action="store_true", help="do not calibrate now (default: calibrate)")
    encounter_flags(p)
    p.add_argument("--descriptor", default="rootsift", help="the keypoints' descriptor: rootsift, learned (the one "
                   "shipped with nabi) or learned:PATH (default: rootsift)")
    p.add_argument("--foreground", default="grabcut", choices=["none", "grabcut"], help="grabcut: keep only the "
                   "keypoints on the animal (OpenCV's GrabCut from the photo's frame; about 0.2 s a photo), so the "
                   "habitat cannot vote; none: the whole photo, e.g. for close-ups the animal fills "
                   "(default: grabcut)")
    p.add_argument("--no-local-features", action="store_true", help="no keypoints: the embedding alone, no matcher")
    p.add_argument("--flip", action="store_true", help="embed each photo and its mirror image, averaged "
                   "(test-time augmentation; default: off)")
    p.add_argument("--strict", action="store_true", help="stop at a photo that cannot be read (default: leave it "
                   "out with a line)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the model runs (default: cpu)")


def _add_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("name", help="the individual's name ('background' or 'background/<kind>' for empty scenes)")
    p.add_argument("photos", nargs="+", help="one or more photos")
    p.add_argument("--merge", action="store_true", help="accept a name that differs from an enrolled one only "
                   "in letter case, adding to that individual")
    p.add_argument("--encounter", help="the photos are one encounter with this key (default: grouped by the "
                   "gallery's encounter rule)")
    model_flags(p)


def _remove_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("photos", nargs="+", help="photo files (matched by content) or enrolled photo paths")
    model_flags(p)


def _calibrate_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("calibration", nargs="?", help="photos of individuals that are neither enrolled nor to be "
                   "identified, one folder each, several encounters each (default: leave-one-encounter-out over the "
                   "gallery's own photos)")
    p.add_argument("--prior-known", type=float, help="the prior probability that a photo shows an enrolled "
                   "individual rather than a stranger (default: the gallery's, else 0.5)")
    p.add_argument("--kind", choices=["isotonic", "logistic"], default="isotonic", help="how each score is "
                   "calibrated (default: isotonic)")
    p.add_argument("--fusion", choices=["logistic", "mean"], default="logistic", help="how the scores' "
                   "probabilities are combined (default: logistic)")
    p.add_argument("--answer", choices=["platt", "temperature", "none"], default="platt", help="fitted on the "
                   "calibration queries, each once known and once a stranger, out of individual: platt: the shown "
                   "probability is mapped to how often such answers were right (Platt 1999), the posterior's kept as "
                   "posterior_probability; temperature: the posterior is temperature-scaled (Guo et al. 2017); none: "
                   "Bayes' rule as it is (default: platt)")
    p.add_argument("--plot", help="where to write the reliability diagram (default GALLERY/reliability.png)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    model_flags(p)
    matcher_flag(p)


def _evaluate_arguments(p):
    p.add_argument("gallery", help="a gallery folder (nabi gallery build)")
    p.add_argument("queries", help="one folder per individual: enrolled names are known, others unknown")
    p.add_argument("--per-photo", action="store_true", help="answer each photo alone (default: the photos of one "
                   "query encounter together)")
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
    Command("build", "embed every photo of PHOTOS (one folder per individual, optional background/) with RUN's model, "
            "compute its keypoints and calibrate", _build_arguments, build,
            examples=("nabi gallery build runs/emb known/ --out gallery",
                      "nabi gallery build runs/emb known/ --out gallery --calibration others/",
                      "nabi gallery build runs/emb known/ --out gallery --encounters time --gap 60")),
    Command("add", "enrol a new individual, or add photos to one, without retraining", _add_arguments, add),
    Command("remove", "take photos out of the gallery (by file, or by the enrolled path)", _remove_arguments, remove),
    Command("calibrate", "fit the probability that a photo shows each enrolled individual", _calibrate_arguments,
            calibrate, examples=("nabi gallery calibrate gallery                  # leave-one-encounter-out",
                                 "nabi gallery calibrate gallery other-animals/   # individuals not enrolled",
                                 "nabi gallery calibrate gallery --prior-known 0.8")),
    Command("evaluate", "rank-1, rank-5, mAP, open-set figures and calibration on labelled query photos",
            _evaluate_arguments, evaluate),
    Command("explain", "Grad-CAM of a photo's similarity to its best match, in both photos", _explain_arguments,
            explain, examples=("nabi gallery explain gallery photo.jpg",
                               "nabi gallery explain gallery photo.jpg --mask photo_mask.png")),
    Command("list", "enrolled names, photo and encounter counts, the calibration", _list_arguments, list_),
    Command("rename", "rename an individual (onto an enrolled name only with --merge)", _rename_arguments, rename),
)


def add_arguments(p):
    add_sub_commands(p, "gallery_command", "ACTION", "what to do with the gallery (nabi gallery ACTION --help)",
                     ACTIONS)


COMMAND = Command(
    "gallery", "enrol individuals for re-identification: build, add, calibrate, evaluate", add_arguments, None,
    examples=("nabi gallery build runs/emb known/ --out gallery     # known/<name>/<photos>",
              "nabi gallery add gallery Nala new1.jpg new2.jpg",
              "nabi gallery evaluate gallery queries/             # rank-1, open set, calibration"))
