"""How the re-identification gallery scales: enrolling, identifying (keypoint matcher included) and
calibrating against galleries of 1,000 and 10,000 photos.

    python -m benchmarks.reid_scale RUN PHOTOS [--sizes 1000,10000] [--queries 20] [--calibrate-size 1000]

PHOTOS holds real photos (one folder per individual, e.g. the nyala photos; their encounters grouped by
the number in the file name). A gallery of N photos enrols them under their individuals and, beyond
their number, altered copies of them (a random crop of 80–95 %, a rotation of ±8°, a brightness change,
a mirror image for every other copy; written as JPEG to a temporary folder), each copy an individual of
its own. Queries are altered copies too. Timed, medians over repeats:

    enrol       Gallery.add of one new photo (embedding and keypoints; the index is rebuilt lazily)
    index       building the keypoint index of the whole gallery (once per change of the gallery)
    identify    one photo against the whole gallery, matcher and calibrated probabilities included
    calibrate   leave-one-encounter-out over the gallery (every photo a query), at --calibrate-size

The bars of nabi's re-identification work: identify ≤ 1 s at 1,000 photos and ≤ 2 s at 10,000; enrol
≤ 0.5 s; calibrate a 1,000-photo gallery ≤ 5 min — on the machine's cores (say which with ``lscpu``).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def altered_copies(photos, n, out, seed=0):
    """``n`` altered copies of the photos (cycled), each in its own individual folder under ``out``."""
    from PIL import Image, ImageEnhance, ImageOps
    rng = np.random.default_rng(seed)
    made = []
    for i in range(n):
        src = photos[i % len(photos)]
        with Image.open(src) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            w, h = im.size
            s = rng.uniform(0.8, 0.95)
            cw, ch = int(w * s), int(h * s)
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            im = im.crop((x, y, x + cw, y + ch)).rotate(float(rng.uniform(-8, 8)), resample=Image.BILINEAR)
            im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.8, 1.2)))
            if i % 2:
                im = ImageOps.mirror(im)
            d = Path(out) / f"copy{i:05d}"
            d.mkdir(parents=True, exist_ok=True)
            im.save(d / "0.jpg", quality=90)
            made.append(d / "0.jpg")
    return made


def timed(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("photos")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--queries", type=int, default=10, help="photos identified one at a time per size")
    ap.add_argument("--calibrate-size", type=int, default=1000, help="the gallery size calibrated (0: none)")
    ap.add_argument("--nfeatures", type=int, default=None, help="keypoints per photo (default: nabi's)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from nabi.reid.folders import individual_folders, unique_photos
    from nabi.reid.gallery import Gallery
    from nabi.reid.local_features import LocalSettings
    from nabi.data.encounters import encounter_keys
    folders, _ = unique_photos(individual_folders(args.photos))       # a repeated file is enrolled once
    real = [(name, p, k) for name, ps in folders for p, k in zip(ps, encounter_keys(ps, "name"))]
    np.random.default_rng(0).shuffle(real)
    sizes = [int(s) for s in args.sizes.split(",")]
    local = LocalSettings() if args.nfeatures is None else LocalSettings(nfeatures=args.nfeatures)
    results = {"cpu": os.cpu_count(), "local_settings": local.to_dict(), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        queries = altered_copies([p for _, p, _ in real[:args.queries + 2]], args.queries + 2, tmp / "queries", seed=99)
        extra = max(0, max(sizes) - len(real))
        pool = [(n, p, k) for n, p, k in real] + [(p.parent.name, p, "copy") for p in
                                                   altered_copies([p for _, p, _ in real], extra, tmp / "pool", seed=1)]
        for n in sizes:
            t0 = time.perf_counter()
            g = Gallery.create(args.run, None, local=local)
            chunk = 200
            for s in range(0, n, chunk):                 # enrolled a photo at a time, as a club's photos arrive
                for name, p, k in pool[s:min(n, s + chunk)]:
                    g.add(name, [p], save=False, encounters=k)
            build_s = time.perf_counter() - t0
            snap = g.snapshot()
            t = time.perf_counter()
            g._index = None
            g.local_index()
            index_s = time.perf_counter() - t
            g.identify([queries[0]], matcher=True)             # warm (kernels, caches)
            per_query = [timed(lambda q=q: g.identify([q], matcher=True), repeat=1)[0] for q in queries[1:]]
            enrol_s, _ = timed(lambda: None, 1)
            enrol = []
            for q in queries[-2:]:
                t = time.perf_counter()
                g.add(f"new-{q.parent.name}", [q], save=False)
                enrol.append(time.perf_counter() - t)
            row = {"photos": n, "descriptors": int(sum(len(f) for f in snap.local)), "enrol_all_s": build_s,
                   "index_build_s": index_s, "identify_median_s": float(np.median(per_query)),
                   "identify_max_s": float(np.max(per_query)), "enrol_one_s": float(np.median(enrol))}
            if n == args.calibrate_size:
                t = time.perf_counter()
                try:
                    g.calibrate(None, matcher=True)
                    row["calibrate_s"] = time.perf_counter() - t
                except ValueError as e:
                    row["calibrate_error"] = str(e)
            results["sizes"][n] = row
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
