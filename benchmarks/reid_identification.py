"""Identification of never-seen individuals on paired, encounter-kept splits.

    python -m benchmarks.reid_identification RUN PHOTOS [--splits 6] [--unknown 4] [--calibration CAL]
        [--calibration-file FILE] [--answer platt|temperature|none] [--scores-cache DIR] [--no-matcher]
        [--encounters name] [--by-photo] [--json OUT]

PHOTOS has one folder per individual, none of them seen in training. For each split seed 0 … n − 1,
about half of each individual's *encounters* (photos taken together, ``nabi.data.encounters``: for the
nyala photos the number in the file name) are enrolled in a gallery and the rest identified — an
encounter is never on both sides. ``--unknown N`` leaves N individuals (chosen by the seed) out of the
gallery altogether, so their photos are strangers. Every variant run with the same ``--splits`` sees the
same splits (paired).

Calibration (the probabilities the answer carries): from ``--calibration CAL``, photos of individuals
that are neither enrolled nor queried (done once, reused for every split, and written to
``--save-calibration FILE``), from a ``--calibration-file`` written earlier, or — without either —
leave-one-encounter-out over each split's gallery. ``--answer`` picks the answer's own calibration
(``nabi.reid.calibrate``: a map of the shown probability, the default, or a temperature, fitted on the
calibration queries out of individual). ``--scores-cache DIR`` keeps each split's scores (a split is scored
once, then answered per photo and per sighting) and the calibration photos'; a later run with the same model
and settings answers from them, so a variant of the calibration costs seconds (a cache made with other
settings is refused).

Printed per split and as mean ± standard deviation over the splits: rank-1, rank-5, mAP, AUROC and the
true-accept rate at 1 % / 5 % false accepts for the embedding alone, the keypoint matcher alone and the
calibrated fusion; the three-way accuracy and the expected calibration error (ECE) of the shown
probability, per photo and with the photos of one query encounter answered together (``encounter``).
``--by-photo`` splits photos at random instead (the older, flattering protocol) for comparison.
``--features-cache DIR`` keeps each photo's keypoints (by its bytes and the keypoint settings), so variants of
the matcher (``--verify``, ``--background``, ``--k`` …) do not detect them again.
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


def split_folder(photos, enrol_dir, query_dir, seed=0, unknown=0, encounters="name", by_photo=False):
    """Link about half of each individual's encounters into ``enrol_dir`` and the rest into ``query_dir``
    (``unknown`` individuals, chosen by ``seed``, entirely into ``query_dir``); returns the unknown names.

    Each encounter (``nabi.data.encounters``, grouped by the rule ``encounters``) lies wholly on one side;
    ``by_photo`` splits the photos themselves at random instead (the older, flattering protocol)."""
    from nabi.data.encounters import encounter_keys, split_by_encounter
    from nabi.reid.folders import individual_folders, unique_photos
    from nabi.reid.metrics import leave_individuals_out
    folders, copies = unique_photos(individual_folders(photos))       # a copy must not be query and gallery
    if copies:
        print(f"{len(copies)} repeated file(s) left out (same SHA-256 as another photo of the individual)")
    names = [n for n, _ in folders]
    if not 0 <= unknown < len(names):
        raise SystemExit(f"--unknown must be between 0 and {len(names) - 1} (the individuals of {photos} "
                         f"less one), got {unknown}")
    out = set(leave_individuals_out(names, unknown / len(names), seed)[1]) if unknown else set()
    paths = [p for _, ps in folders for p in ps]
    labels = [n for n, ps in folders for _ in ps]
    if by_photo:
        keys = [f"photo:{p}" for p in paths]
    else:
        keys = [k for n, ps in folders for k in encounter_keys(ps, encounters, individual_dir=Path(photos) / n)]
    enrol, _ = split_by_encounter(labels, keys, (0.5, 0.5), seed)
    enrol = set(enrol.tolist())
    for i, (name, path) in enumerate(zip(labels, paths)):
        dest = (enrol_dir if i in enrol and name not in out else query_dir) / name
        dest.mkdir(parents=True, exist_ok=True)
        os.symlink(Path(path).resolve(), dest / Path(path).name)
    return sorted(out)


def _state(g):
    """What a cached gallery needs to answer again from stored scores (no embedder, no local features)."""
    return {"entries": g.entries, "embeddings": g.embeddings,
            "local_settings": g.local_settings.to_dict() if g.local_settings is not None else None,
            "matcher_settings": g.matcher_settings.to_dict(), "encounter_rule": g.encounter_rule,
            "gap_minutes": g.gap_minutes}


def _from_state(st):
    from nabi.reid.gallery import Gallery
    return Gallery(None, entries=st["entries"], embeddings=st["embeddings"], local_settings=st["local_settings"],
                   matcher_settings=st["matcher_settings"], encounter_rule=st["encounter_rule"],
                   gap_minutes=st["gap_minutes"])


def _cache_key(args, what):
    """What the stored scores depend on: a cache made with other settings is refused, not reused."""
    from nabi.files.digest import file_sha256
    from nabi.runs import find_weights
    keep = ("photos", "nfeatures", "max_side", "descriptor", "foreground", "k", "shortlist", "top",
            "reprojection_px", "background", "verify", "ratio", "mutual", "flip", "encounters", "by_photo", "no_matcher")
    return {"weights": file_sha256(find_weights(args.run)), "what": what,
            **{k: str(getattr(args, k)) for k in keep}}


def _cache_load(args, name, key):
    import pickle
    if not args.scores_cache:
        return None
    path = Path(args.scores_cache) / name
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        data = pickle.load(f)
    if data.get("key") != key:
        raise SystemExit(f"{path} holds scores made with other settings ({data.get('key')}, not {key}): "
                         "use another --scores-cache folder")
    return data


def _cache_save(args, name, data):
    import pickle
    if args.scores_cache:
        Path(args.scores_cache).mkdir(parents=True, exist_ok=True)
        with open(Path(args.scores_cache) / name, "wb") as f:
            pickle.dump(data, f)


def run_split(args, seed, calibration, log):
    from nabi.reid.evaluation import score_queries
    from nabi.reid.gallery import Gallery
    local = False if args.no_matcher else _local_settings(args)
    name = f"split-{seed}-unknown-{args.unknown}.pkl"
    key = _cache_key(args, ("split", seed, args.unknown))
    cached = _cache_load(args, name, key)
    if cached is not None:
        g, bundle, unknown = _from_state(cached["gallery"]), cached["bundle"], cached["unknown"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            unknown = split_folder(args.photos, tmp / "enrol", tmp / "query", seed, args.unknown, args.encounters,
                                   args.by_photo)
            g = Gallery.build(args.run, tmp / "enrol", tmp / "gallery", local=local, encounters=args.encounters,
                              log=log, matcher_settings=_matcher_settings(args), flip=args.flip)
            bundle = score_queries(g, tmp / "query", None if args.no_matcher else True, log)
        _cache_save(args, name, {"key": key, "gallery": _state(g), "bundle": bundle, "unknown": unknown})
    alpha = "auto" if args.prior_known == "auto" else float(args.prior_known)
    if calibration is None:
        if cached is not None:
            raise SystemExit("--scores-cache with a split's own calibration is not supported: give --calibration "
                             "or --calibration-file")
        summary = g.calibrate(None, fusion=args.fusion, kind=args.kind, answer=args.answer, log=log)
    else:
        g.calibration = dict(calibration)
        summary = g.calibration
    res = {"per_photo": g.evaluate(groups=None, log=log, prior_known=alpha, scored=bundle),
           "encounter": g.evaluate(groups="encounter", log=log, prior_known=alpha, scored=bundle)}
    res.update(seed=seed, unknown_individuals=unknown, gallery_photos=len(g), calibration_check=summary.get("check"))
    return res, summary


def calibrate_on(args, log):
    """The calibration fitted on ``--calibration``'s photos (their scores stored in ``--scores-cache``)."""
    from nabi.reid.calibrate import calibration_from_scores, fit_pairs
    from nabi.reid.gallery import Gallery
    local = False if args.no_matcher else _local_settings(args)
    g = Gallery.create(args.run, None, local=local, encounters=args.encounters,
                       matcher_settings=_matcher_settings(args), flip=args.flip)
    matcher = not args.no_matcher
    key = _cache_key(args, ("calibration", str(Path(args.calibration).resolve())))
    cached = _cache_load(args, "calibration.pkl", key)
    if cached is None:
        _, _, _, facts, (source, scored, truth) = fit_pairs(g, args.calibration, matcher, log)
        cached = {"key": key, "source": _state(source), "scored": scored, "truth": truth, "facts": facts}
        _cache_save(args, "calibration.pkl", cached)
    source = _from_state(cached["source"])
    source.local_settings = g.local_settings
    return calibration_from_scores(source, cached["scored"], cached["truth"], matcher, float(args.prior_known)
                                   if args.prior_known != "auto" else 0.5, args.kind, args.fusion, args.answer,
                                   cached["facts"], g.local_settings if matcher else None,
                                   g.matcher_settings if matcher else None, answer_folds=args.answer_folds)


def _cell(figs, key):
    v = figs.get(key) if figs else None
    return "" if v is None else f"{v:.3f}"


def summarise(results):
    """Mean and standard deviation of every figure over the splits."""
    out = {}
    for mode in ("per_photo", "encounter"):
        out[mode] = {}
        for scorer in ("embedding", "matcher", "fused"):
            vals = {}
            for k in FIGURES:
                xs = [r[mode][scorer][k] for r in results if scorer in r[mode] and r[mode][scorer].get(k) is not None]
                if xs:
                    vals[k] = (float(np.mean(xs)), float(np.std(xs)))
            if vals:
                out[mode][scorer] = vals
        for k in ("three_way_accuracy", "ece"):
            xs = [r[mode][k] for r in results if r[mode].get(k) is not None]
            if xs:
                out[mode][k] = (float(np.mean(xs)), float(np.std(xs)))
    return out


def _given(args, names):
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _local_settings(args):
    from nabi.reid.local_features import LocalSettings
    return LocalSettings(**_given(args, ("nfeatures", "max_side", "descriptor", "foreground")))


def _matcher_settings(args):
    from nabi.reid.matcher import MatcherSettings
    return MatcherSettings(**_given(args, ("k", "shortlist", "top", "reprojection_px", "background", "verify",
                                              "ratio", "mutual")))


def _remember_features(folder):
    """Keep each photo's keypoints (by the photo's SHA-256 and the settings) in ``folder``, so later splits and
    runs do not detect them again; the matcher settings are not in the key (they do not change the keypoints)."""
    import hashlib
    import nabi.reid.local_features as lf
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extract = lf.extract

    def remembered(item, settings=lf.LocalSettings()):
        if not isinstance(item, (str, os.PathLike)):
            return extract(item, settings)
        digest = hashlib.sha256(Path(item).read_bytes() + repr(settings).encode()).hexdigest()[:32]
        path = folder / f"{digest}.npz"
        if path.is_file():
            with np.load(path) as z:
                return lf.Features(z["points"], z["descriptors"])
        f = extract(item, settings)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, points=f.points, descriptors=f.descriptors)
        os.replace(tmp, path)
        return f
    lf.extract = remembered


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("photos")
    ap.add_argument("--splits", type=int, default=6, help="split seeds 0 … N − 1 (paired across variants)")
    ap.add_argument("--seeds", help="or a comma-separated list of split seeds")
    ap.add_argument("--unknown", type=int, default=0, help="individuals left out of the gallery as strangers")
    ap.add_argument("--calibration", help="photos of other individuals to calibrate on (once, for every split)")
    ap.add_argument("--calibration-file", help="a calibration JSON written by --save-calibration")
    ap.add_argument("--save-calibration", help="write the calibration made from --calibration here")
    ap.add_argument("--no-matcher", action="store_true", help="the embedding alone (no local features)")
    # Left out, each of these is nabi's default (LocalSettings, MatcherSettings): the figures are the product's.
    ap.add_argument("--nfeatures", type=int, help="SIFT keypoints per photo")
    ap.add_argument("--max-side", type=int, help="photos are shrunk to this longer side before the detector")
    ap.add_argument("--descriptor", help="rootsift, learned or learned:PATH")
    ap.add_argument("--foreground", choices=["none", "grabcut"], help="keypoints only on the animal (GrabCut)")
    ap.add_argument("--k", type=int, help="LNBNN neighbours")
    ap.add_argument("--shortlist", type=int, help="photos verified by RANSAC per query")
    ap.add_argument("--top", type=int, help="an individual's best verified photos its evidence sums")
    ap.add_argument("--reprojection-px", type=float, help="RANSAC's inlier distance in pixels")
    ap.add_argument("--ratio", type=float, help="Lowe's ratio test of the matches verified")
    ap.add_argument("--mutual", action="store_true", default=None, help="keep only mutual nearest-neighbour "
                    "matches between the query and a shortlisted photo")
    ap.add_argument("--background", help="LNBNN's background descriptors: none, or a "
                    "file made by benchmarks.reid_background")
    ap.add_argument("--verify", choices=["neighbours", "pairwise"], help="the correspondences RANSAC checks: from "
                    "the LNBNN lists, or the ratio-test matches with each shortlisted photo alone")
    ap.add_argument("--features-cache", help="a folder keeping each photo's keypoints across splits and runs")
    ap.add_argument("--flip", action="store_true", help="test-time flip of the embedding")
    ap.add_argument("--fusion", default="logistic", choices=["logistic", "mean"])
    ap.add_argument("--kind", default="isotonic", choices=["isotonic", "logistic"], help="each scorer's calibration")
    ap.add_argument("--answer", default="platt", choices=["temperature", "platt", "none"],
                    help="platt (the default): the shown probability mapped to how often such answers were right on "
                    "the calibration queries; temperature: the posterior's temperature fitted there; none")
    ap.add_argument("--answer-folds", type=int, default=0, help="groups of calibration individuals the answer's "
                    "calibration is fitted across (0: one per individual; 1: in sample)")
    ap.add_argument("--scores-cache", help="a folder keeping each split's scores (and the calibration photos'): a "
                    "later run with the same settings reuses them, so variants of the calibration cost seconds")
    ap.add_argument("--prior-known", default="0.5", help="α, the prior that a query shows an enrolled individual, "
                    "or 'auto' (estimated from each split's queries, without their truth)")
    ap.add_argument("--encounters", default="name", help="how photos are grouped into encounters, each kept on one "
                    "side of the split (nabi.data.encounters: name, folder, time, photo, auto or name:REGEX)")
    ap.add_argument("--by-photo", action="store_true", help="split the photos at random instead, encounters ignored "
                    "(the older protocol, flattered by encounters on both sides)")
    ap.add_argument("--json", help="write every split's figures and the summary to this file")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    log = (lambda m: None) if args.quiet else (lambda m: print(f"  {m}", flush=True))
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(args.splits))
    if args.features_cache:
        _remember_features(args.features_cache)
    calibration = None
    t0 = time.perf_counter()
    if args.calibration_file:
        calibration = json.loads(Path(args.calibration_file).read_text())
    elif args.calibration:
        calibration = calibrate_on(args, log)
        print(f"calibrated on {args.calibration}: {calibration['pairs']}, AUROC on the pairs "
              f"{calibration['auroc_pairs']}, check {calibration['check']} ({time.perf_counter() - t0:.0f} s)")
        if args.save_calibration:
            Path(args.save_calibration).write_text(json.dumps(calibration, indent=1))
    results = []
    for seed in seeds:
        t = time.perf_counter()
        res, _ = run_split(args, seed, calibration, log)
        res["seconds"] = time.perf_counter() - t
        results.append(res)
        pp, en = res["per_photo"], res["encounter"]
        print(f"split {seed}: {pp['known_queries']} known, {pp['unknown_queries']} unknown queries, "
              f"{res['gallery_photos']} gallery photos ({res['seconds']:.0f} s)")
        for mode, r in (("photo", pp), ("encounter", en)):
            for scorer in r["scorers"]:
                print(f"  {mode:<9} {scorer:<9} " + " ".join(f"{k} {_cell(r[scorer], k):>5}" for k in FIGURES
                                                             if r[scorer].get(k) is not None))
            print(f"  {mode:<9} answer    three-way {r['three_way_accuracy']:.3f}  ECE {_cell(r, 'ece')}  "
                  f"α {_cell(r, 'prior_known')}  answered {r['answered']}")
    summary = summarise(results)
    print(f"\nmean ± sd over {len(seeds)} split(s) ({'random photos' if args.by_photo else 'encounters kept whole'}; "
          f"{args.unknown} unknown individual(s)):")
    for mode, rows in summary.items():
        for scorer in ("embedding", "matcher", "fused"):
            if scorer in rows:
                print(f"  {mode:<9} {scorer:<9} " + "  ".join(f"{k} {m:.3f}±{s:.3f}" for k, (m, s) in rows[scorer].items()))
        for k in ("three_way_accuracy", "ece"):
            if k in rows:
                print(f"  {mode:<9} {k} {rows[k][0]:.3f}±{rows[k][1]:.3f}")
    print(f"{time.perf_counter() - t0:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "splits": results, "summary": summary,
                                               "calibration": calibration}, indent=1, default=str))


if __name__ == "__main__":
    main()
