"""RootSIFT against nabi's learned patch descriptor at the same SIFT keypoints, on photos from different encounters.

    python -m benchmarks.descriptor_matching [--data ~/.cache/nabi-data/nyala_dev] [--descriptor FILE]
                                             [--kinds rootsift,learned,concat] [--nfeatures 2000] [--workers 2]
                                             [--limit N] [--cache DIR] [--out FILE.json]

DATA has one folder per individual; the number in a file name (``275_leftphoto.jpg``; ``train_275_…``) is one
encounter — both flanks photographed at one place and moment — so pairs of photos of one encounter are
left out everywhere. Every photo gets its ``nfeatures`` strongest SIFT keypoints (OpenCV, the photo shrunk
to 512 px as ``nabi.reid.matcher`` does); at those same keypoints:

    rootsift   RootSIFT (``nabi.reid.matcher.rootsift``)
    learned    the patch descriptor (``nabi.reid.descriptors``; default: the one shipped with nabi)
    concat     both unit descriptors side by side, / √2 (squared distance = the sum of the two squared distances)

For every pair of photos from different encounters, the RANSAC inlier count of ``nabi.reid.matcher.inliers``
(ratio test 0.8, homography, 5 px). Reported per descriptor:

    auroc      P(inliers of a same-individual pair > inliers of a different-individual pair), ties ½
    rank1      each photo as a query against every other photo outside its encounter: right when its own
               individual has the photo with the most inliers (a tie among k individuals counts 1/k)
    rank1_evidence  the same with the matcher's score per individual (log(1 + Σ of the top 2 photos' inliers
               beyond 7), ``nabi.reid.matcher.individual_evidence``)
    median inliers of same- and different-individual pairs

and per photo the median time of detection, RootSIFT, and the learned descriptor (patches + network), with
the same network's forward in PyTorch (same weights, same patches; on the first 20 photos) for the ratio.
Pair matching runs in ``--workers`` processes (one OpenCV thread each). Each descriptor's inlier counts are
kept in ``--cache`` (default ``~/.cache/nabi-descriptor/benchmark``) under a digest of the photos, the
settings and the descriptor file, so a run that adds a kind matches only the new one.
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

_FEATURES = {}


def encounter_of(path: Path) -> str:
    """``individual/number`` from a nyala file name (``275_leftphoto.jpg``, ``train_275_rightphoto.jpg``)."""
    m = re.search(r"(\d+)_(left|right)", path.name) or re.search(r"(\d+)", path.stem)
    return f"{path.parent.name}/{m.group(1) if m else path.stem}"


def describe_all(paths, descriptor, nfeatures, torch_photos=20, log=print):
    """Per photo a dict of points and descriptors (``rootsift``; ``learned`` and ``concat`` with a
    ``descriptor``), and the per-photo times of each step."""
    import cv2

    from nabi.reid.local_features import gray_image as _gray
    sift = cv2.SIFT_create(nfeatures=nfeatures)
    out, times = [], {"detect": [], "rootsift": [], "learned": [], "learned_torch": []}
    torch_net = _torch_twin(descriptor) if descriptor is not None else None
    for k, path in enumerate(paths):
        gray = _gray(path, 512)
        t0 = time.perf_counter()
        kps = sift.detect(gray, None)
        t1 = time.perf_counter()
        _, d = sift.compute(gray, kps)
        d = d.astype(np.float32) if d is not None else np.zeros((0, 128), np.float32)
        d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-7)
        f = {"points": np.array([kp.pt for kp in kps], np.float32).reshape(-1, 2), "rootsift": np.sqrt(d)}
        times["detect"].append(t1 - t0)
        times["rootsift"].append(time.perf_counter() - t1)
        if descriptor is not None:
            t2 = time.perf_counter()
            f["learned"] = descriptor.describe(gray, kps)
            times["learned"].append(time.perf_counter() - t2)
            f["concat"] = (np.hstack([f["rootsift"], f["learned"]]) / np.sqrt(2.0)).astype(np.float32)
            if torch_net is not None and len(kps) and k < torch_photos:
                from nabi.reid.patches import extract_patches, standardise
                import torch
                t4 = time.perf_counter()
                x = standardise(extract_patches(gray, kps, descriptor.patch_size, descriptor.magnification))
                with torch.inference_mode():
                    got = np.concatenate([torch_net(torch.from_numpy(x[s:s + descriptor.batch_size])).numpy()
                                          for s in range(0, len(x), descriptor.batch_size)])
                times["learned_torch"].append(time.perf_counter() - t4)
                assert np.abs(got - f["learned"]).max() < 1e-3, "the PyTorch twin computes other descriptors"
        out.append(f)
        if (k + 1) % 20 == 0:
            log(f"  described {k + 1}/{len(paths)} photos", flush=True)
    return out, times


def _torch_twin(descriptor):
    """The descriptor network in PyTorch with the same weights (None without torch)."""
    try:
        import torch
        import torch.nn as tnn
    except ImportError:
        return None
    kw = descriptor.model.arch["kwargs"]
    w, dim = kw["width"], kw["embedding_dim"]
    layers = []
    for c_in, c_out, stride in [(1, w, 1), (w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2),
                                (4 * w, 4 * w, 1)]:
        layers += [tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), tnn.BatchNorm2d(c_out, affine=False), tnn.ReLU()]
    layers += [tnn.Dropout(kw["dropout"]), tnn.Conv2d(4 * w, dim, 8, bias=False), tnn.BatchNorm2d(dim, affine=False)]
    features = tnn.Sequential(*layers)

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.features = features

        def forward(self, x):
            return tnn.functional.normalize(self.features(x).flatten(1), dim=1)
    net = Net()
    state = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in descriptor.model.state_dict().items()}
    net.load_state_dict(state, strict=False)
    return net.eval()


def ratio_inliers(features_a, features_b, ratio=0.8, reprojection_px=5.0) -> int:
    """``nabi.reid.matcher.inliers`` with the two nearest neighbours found by one matrix product instead of
    OpenCV's brute-force matcher (about 15× faster here; the same pairs up to float rounding at the ratio's edge,
    checked against ``inliers`` on the first photos): ratio test, then the same RANSAC homography (seed 0)."""
    import cv2
    (pa, da), (pb, db) = features_a, features_b
    if len(da) < 2 or len(db) < 2:
        return 0
    d2 = (da * da).sum(1)[:, None] + (db * db).sum(1)[None, :] - 2.0 * (da @ db.T)
    two = np.argpartition(d2, 1, axis=1)[:, :2]
    rows = np.arange(len(da))
    first = np.where(d2[rows, two[:, 0]] <= d2[rows, two[:, 1]], two[:, 0], two[:, 1])
    second = np.where(first == two[:, 0], two[:, 1], two[:, 0])
    dist = np.sqrt(np.maximum(d2, 0.0))
    good = dist[rows, first] < ratio * dist[rows, second]
    if good.sum() < 4:
        return 0
    src = pa[rows[good]].reshape(-1, 1, 2)
    dst = pb[first[good]].reshape(-1, 1, 2)
    cv2.setRNGSeed(0)
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, reprojection_px)
    return int(mask.sum()) if mask is not None else 0


def _init(features):
    import cv2
    cv2.setNumThreads(1)
    _FEATURES["all"] = features


def _match_row(i, js, kinds):
    f = _FEATURES["all"]
    return i, js, [[ratio_inliers((f[i]["points"], f[i][k]), (f[j]["points"], f[j][k])) for k in kinds] for j in js]


def _cache_key(paths, nfeatures, kind, descriptor_path):
    import hashlib
    from nabi.files import file_sha256
    listing = [[str(p.parent.name + "/" + p.name), p.stat().st_size] for p in paths]
    extra = file_sha256(descriptor_path) if kind != "rootsift" else None
    text = json.dumps({"photos": listing, "nfeatures": nfeatures, "kind": kind, "descriptor": extra,
                       "matcher": "ratio 0.8, homography RANSAC 5 px, seed 0"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def rank1(counts, individual, encounter):
    """Rank-1 (ties shared) by best photo and by the matcher's evidence, each photo a query against all photos
    outside its encounter; ``counts`` (P, P) symmetric inlier counts."""
    from nabi.reid.matcher import individual_evidence
    names = sorted(set(individual))
    ind = np.array([names.index(n) for n in individual])
    best_hits, evidence_hits = [], []
    for q in range(len(individual)):
        usable = np.array([encounter[g] != encounter[q] for g in range(len(individual))])
        best = np.full(len(names), -1.0)
        evidence = np.full(len(names), -1.0)
        for k in range(len(names)):
            cols = usable & (ind == k)
            if cols.any():
                best[k] = counts[q, cols].max()
                evidence[k] = individual_evidence(counts[q, cols])
        for scores, hits in ((best, best_hits), (evidence, evidence_hits)):
            top = np.flatnonzero(scores == scores.max())
            hits.append(1.0 / len(top) if ind[q] in top else 0.0)
    return np.array(best_hits), np.array(evidence_hits)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path.home() / ".cache" / "nabi-data" / "nyala_dev"))
    ap.add_argument("--descriptor", help="a descriptor file (default: the one shipped with nabi)")
    ap.add_argument("--kinds", default="rootsift,learned,concat", help="descriptors to compare (comma-separated)")
    ap.add_argument("--nfeatures", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, help="only the first N photos (a quick look)")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "nabi-descriptor" / "benchmark"),
                    help="where each descriptor's inlier counts are kept")
    ap.add_argument("--out", help="write the figures as JSON here too")
    args = ap.parse_args(argv)
    from nabi.data.folder import IMG_EXTENSIONS
    from nabi.files import atomic_write_json
    from nabi.reid.descriptors import PatchDescriptor, default_path
    from nabi.reid.matcher import inliers
    from nabi.reid.metrics import auroc

    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - {"rootsift", "learned", "concat"}:
        raise SystemExit(f"--kinds takes rootsift, learned and concat, got {args.kinds!r}")
    root = Path(args.data).expanduser()
    paths = sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMG_EXTENSIONS)
    if args.limit:
        paths = paths[:args.limit]
    if len(paths) < 4:
        raise SystemExit(f"{root}: need at least 4 photos in sub-folders, found {len(paths)}")
    individual = [p.parent.name for p in paths]
    encounter = [encounter_of(p) for p in paths]
    learned = any(k != "rootsift" for k in kinds)
    descriptor_path = Path(args.descriptor) if args.descriptor else default_path()
    descriptor = PatchDescriptor.load(descriptor_path) if learned else None
    print(f"{len(paths)} photos of {len(set(individual))} individuals, {len(set(encounter))} encounters; kinds "
          f"{kinds}" + (f"; descriptor {descriptor_path} ({descriptor.model.arch})" if learned else ""), flush=True)
    t0 = time.perf_counter()
    n = len(paths)
    todo = {i: [j for j in range(i + 1, n) if encounter[i] != encounter[j]] for i in range(n)}
    iu = np.array([(i, j) for i in range(n) for j in todo[i]])
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    keys = {k: _cache_key(paths, args.nfeatures, k, descriptor_path) for k in kinds}
    counts = {}
    for k in kinds:
        f = cache / f"{keys[k]}.{k}.npy"
        if f.exists():
            counts[k] = np.load(f)
            print(f"{k}: inlier counts read from {f}", flush=True)
    missing = [k for k in kinds if k not in counts]
    described = cache / f"{_cache_key(paths, args.nfeatures, 'learned' if learned else 'rootsift', descriptor_path)}.features.npz"
    if described.exists():
        with np.load(described) as z:
            features = [{k: z[f"{i}/{k}"] for k in ("points", "rootsift", "learned", "concat") if f"{i}/{k}" in z}
                        for i in range(n)]
            times = {k: list(z[f"times/{k}"]) for k in ("detect", "rootsift", "learned", "learned_torch")}
        print(f"features read from {described} (and the description times measured when they were made)", flush=True)
    else:
        features, times = describe_all(paths, descriptor, args.nfeatures)
        arrays = {f"{i}/{k}": v for i, f in enumerate(features) for k, v in f.items()}
        arrays.update({f"times/{k}": np.asarray(v, np.float64) for k, v in times.items()})
        tmp = cache / f".{described.name}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(described)
    agree = [(inliers((features[i]["points"], features[i]["rootsift"]), (features[j]["points"], features[j]["rootsift"])),
              ratio_inliers((features[i]["points"], features[i]["rootsift"]), (features[j]["points"], features[j]["rootsift"])))
             for i in range(min(n, 6)) for j in range(min(n, 6)) if i != j]
    print(f"the matrix-product matcher agrees with nabi.reid.matcher.inliers on {sum(a == b for a, b in agree)} of "
          f"{len(agree)} pairs (RootSIFT): {agree}", flush=True)
    match_s = None
    if missing:
        for k in missing:
            counts[k] = np.full((n, n), -1.0)
        total, done = int(len(iu)), 0
        t_match = time.perf_counter()
        import multiprocessing
        spawn = multiprocessing.get_context("spawn")     # a forked child can inherit a BLAS/OpenCV lock held by a thread
        with ProcessPoolExecutor(args.workers, mp_context=spawn, initializer=_init, initargs=(features,)) as pool:
            for i, js, got in pool.map(_match_row, todo.keys(), todo.values(), [missing] * n, chunksize=1):
                for j, row in zip(js, got):
                    for k, c in zip(missing, row):
                        counts[k][i, j] = counts[k][j, i] = c
                done += len(js)
                if i % 10 == 0:
                    print(f"  matched {done}/{total} pairs ({missing})", flush=True)
        match_s = time.perf_counter() - t_match
        for k in missing:
            tmp = cache / f".{keys[k]}.{k}.tmp.npy"
            np.save(tmp, counts[k])
            tmp.replace(cache / f"{keys[k]}.{k}.npy")
    same = np.array([individual[i] == individual[j] for i, j in iu])
    results = {"photos": n, "individuals": len(set(individual)), "encounters": len(set(encounter)),
               "pairs": int(len(iu)), "same_individual_pairs": int(same.sum()), "nfeatures": args.nfeatures,
               "command": "python -m benchmarks.descriptor_matching " + " ".join(argv if argv is not None else
                                                                                 __import__("sys").argv[1:])}
    if learned:
        results.update(descriptor=str(descriptor_path), descriptor_arch=descriptor.model.arch)
    hits = {}
    for k in kinds:
        c = counts[k][iu[:, 0], iu[:, 1]]
        best, evidence = rank1(counts[k], individual, encounter)
        hits[k] = best
        results[k] = {"auroc": auroc(c[same], c[~same]), "rank1": float(best.mean()),
                      "rank1_evidence": float(evidence.mean()),
                      "median_inliers_same": float(np.median(c[same])),
                      "median_inliers_different": float(np.median(c[~same])),
                      "mean_inliers_same": float(c[same].mean()), "mean_inliers_different": float(c[~same].mean())}
    if "rootsift" in kinds:
        results["queries_right_only_with"] = {k: int(((hits[k] == 1) & (hits["rootsift"] < 1)).sum())
                                              for k in kinds if k != "rootsift"}
        results["queries_right_only_with_rootsift_not"] = {k: int(((hits["rootsift"] == 1) & (hits[k] < 1)).sum())
                                                           for k in kinds if k != "rootsift"}
    results["seconds_per_photo_median"] = {k: float(np.median(v)) for k, v in times.items() if v}
    if times["learned_torch"]:
        k = len(times["learned_torch"])
        results["learned_nabi_over_torch_first_photos"] = float(np.median(times["learned"][:k])
                                                                / np.median(times["learned_torch"]))
    results["matching_seconds"] = match_s
    results["total_seconds"] = time.perf_counter() - t0
    print(json.dumps(results, indent=2))
    print(f"\n{'descriptor':10} {'AUROC':>7} {'rank-1':>7} {'rank-1 ev':>9} {'inliers same/diff (median)':>28}")
    for k in kinds:
        r = results[k]
        print(f"{k:10} {r['auroc']:7.3f} {r['rank1']:7.3f} {r['rank1_evidence']:9.3f} "
              f"{r['median_inliers_same']:>14.0f} / {r['median_inliers_different']:<10.0f}")
    s = results["seconds_per_photo_median"]
    print(f"per photo (median): SIFT detection {s['detect']:.3f} s, RootSIFT {s['rootsift']:.3f} s"
          + (f", learned {s['learned']:.3f} s" if "learned" in s else "")
          + (f" (PyTorch, same network and patches: {s['learned_torch']:.3f} s; nabi/PyTorch "
             f"{results['learned_nabi_over_torch_first_photos']:.2f} on the same photos)" if "learned_torch" in s else ""))
    if args.out:
        atomic_write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
