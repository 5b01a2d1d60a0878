"""Make the keypoint matcher's calibration that nabi ships (``nabi/reid/data/matcher-calibration.json``).

    python -m benchmarks.reid_default_calibration RUN PHOTOS [--encounters name] [--out FILE]

PHOTOS: individuals never used to judge nabi (for the shipped file: the 217 nyala of ``nyala_more``, Dlamini &
van Zyl 2020; none of them is in ``nyala_dev``, on which the re-identification figures are measured). Every
encounter is scored against all the others (leave-one-encounter-out) with nabi's default keypoint settings
(keypoints on the animal only: GrabCut),
and the matcher's evidence is calibrated on those (query, individual) pairs
(``nabi.reid.calibration.PairCalibration``, isotonic). The file records its provenance: the command, the
data, the nabi commit and the date. A gallery uses it only when it has too few photos to calibrate on its
own (``nabi.reid.calibrate.default_calibration``) — the matcher's evidence depends on the species, the
camera and the gallery's size, so a gallery's own calibration is better.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="an embedding run (its model embeds the photos; only the matcher is shipped)")
    ap.add_argument("photos", help="one folder per individual, several encounters each")
    ap.add_argument("--encounters", default="name", help="how photos are grouped into encounters")
    ap.add_argument("--descriptor", default="rootsift")
    ap.add_argument("--foreground", default="grabcut", choices=["none", "grabcut"])
    ap.add_argument("--about", help="what PHOTOS are, for the file's provenance (default: the folder's path)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "nabi" / "reid" / "data" /
                                         "matcher-calibration.json"))
    args = ap.parse_args(argv)
    from nabi.files import atomic_write_json
    from nabi.reid.calibrate import leave_encounter_out_scores, pairs_from_scores
    from nabi.reid.calibration import PairCalibration
    from nabi.reid.folders import individual_folders, unique_photos
    from nabi.reid.gallery import Gallery
    from nabi.reid.local_features import LocalSettings
    from nabi.data.encounters import encounter_keys
    from nabi.reid import metrics as M
    t0 = time.perf_counter()
    local = LocalSettings(descriptor=args.descriptor, foreground=args.foreground)
    g = Gallery.create(args.run, None, local=local, encounters=args.encounters)
    folders, _ = unique_photos(individual_folders(args.photos))
    for name, photos in folders:
        g.add(name, photos, save=False, encounters=encounter_keys(photos, args.encounters,
                                                                   individual_dir=Path(args.photos) / name))
    print(f"{len(g)} photos of {len(folders)} individuals ({time.perf_counter() - t0:.0f} s)", flush=True)
    scored, truth, rows = leave_encounter_out_scores(g, matcher=True, log=print)
    pairs, same, _ = pairs_from_scores(scored, truth, matcher=True)
    cal = PairCalibration.fit(pairs["matcher"], same, "isotonic", scorer="matcher")
    ev = pairs["matcher"]
    auroc = M.auroc(ev[same & ~np.isnan(ev)], ev[~same & ~np.isnan(ev)])
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    out = {"version": 2, "fusion": {"method": "logistic", "weights": {"matcher": 1.0}, "bias": 0.0,
                                    "prior": cal.prior, "eps": cal.eps, "scorers": {"matcher": cal.to_dict()}},
           "local_settings": local.to_dict(), "matcher_settings": g.matcher_settings.to_dict(),
           "auroc_pairs": {"matcher": auroc}, "pairs": cal.pairs,
           "provenance": {"data": args.about or str(args.photos),
                          "command": "python -m benchmarks.reid_default_calibration " + " ".join(
                              shlex.quote(a if not a.startswith("/") else Path(a).name) for a in (argv or sys.argv[1:])),
                          "nabi_commit": commit, "date": date.today().isoformat(),
                          "photos": len(g), "individuals": len(folders)}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    print(f"written {args.out}: {cal.pairs} pairs, AUROC {auroc:.3f} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
