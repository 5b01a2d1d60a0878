"""What a gallery save costs once it is large: enrolling one photo into a gallery of M photos with keypoints.

    python -m benchmarks.gallery_save                    # M = 1,000 photos of 2,000 keypoints
    python -m benchmarks.gallery_save --photos 10000     # about 5 GB of keypoints on disk: needs the space

A gallery's keypoints are about 250 KB a photo (2,000 keypoints: points float32, descriptors float16). The
gallery folder keeps them in chunks (``nabi.reid.store``) so that a save writes what changed. Measured here
with synthetic keypoints through the gallery's own writer (``store.write``, checksums and the atomic index
included), median of ``--repeats`` saves each:

- enrolling one photo into M (the chunks of the M photos kept; one small chunk written);
- the same save when every keypoint is written again (what a single keypoints file needs: the writer is
  given a folder whose index it cannot reuse).

Both report the seconds and the bytes written. Then what a process that opens the gallery pays before its
first keypoint search: building the FLANN trees over every keypoint, or loading the trees the gallery
folder caches (``store.load_keypoint_tree``, their SHA-256 checked).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _features(m, keypoints, seed=0):
    from nabi.reid.local_features import Features
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(m):
        d = rng.standard_normal((keypoints, 128)).astype(np.float32)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        out.append(Features(rng.uniform(0, 512, (keypoints, 2)).astype(np.float32), d))
    return out


def _entries(m, start=0):
    return [{"name": f"ind{j % 50:02d}", "photo": f"/photos/{j}.jpg",
             "sha256": hashlib.sha256(str(j).encode()).hexdigest(), "encounter": str(j)}
            for j in range(start, start + m)]


def _index(entries):
    return {"model": {"weights": "run/model.safetensors", "sha256": "0" * 64}, "entries": entries,
            "local_settings": {"nfeatures": 2000, "max_side": 512, "descriptor": "rootsift"}}


def _folder_bytes(folder):
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def main(argv=None):
    from nabi.reid import store
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=1000)
    ap.add_argument("--keypoints", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    m = args.photos
    local = _features(m, args.keypoints)
    extra = _features(args.repeats, args.keypoints, seed=1)
    emb = np.zeros((m + args.repeats, 128), np.float32)
    entries = _entries(m)
    new = _entries(args.repeats, start=m)
    result = {"photos": m, "keypoints_per_photo": args.keypoints}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gallery"
        t = time.perf_counter()
        store.write(folder, _index(entries), emb[:m], local)
        result["first_save_s"] = time.perf_counter() - t
        result["gallery_bytes"] = _folder_bytes(folder)
        chunked, written = [], []
        for k in range(args.repeats):             # one photo more each time, the chunks kept
            before = {p.name for p in folder.iterdir()}
            t = time.perf_counter()
            index = store.write(folder, _index(entries + new[:k + 1]), emb[:m + k + 1], local + extra[:k + 1])
            chunked.append(time.perf_counter() - t)
            written.append(sum((folder / p).stat().st_size for p in
                               {c["file"] for c in store.local_chunks(index)} - before))
        result["enrol_one_chunked_s"] = float(np.median(chunked))
        result["enrol_one_chunked_bytes_written"] = int(np.median(written))
        result["chunks_after"] = [c["photos"] for c in store.local_chunks(index)]
        whole = []
        for k in range(args.repeats):             # the same saves with nothing to reuse: every keypoint again
            other = Path(tmp) / f"whole-{k}"
            t = time.perf_counter()
            store.write(other, _index(entries + new[:1]), emb[:m + 1], local + extra[:1])
            whole.append(time.perf_counter() - t)
            result["enrol_one_whole_bytes_written"] = _folder_bytes(other)
            shutil.rmtree(other)
        result["enrol_one_whole_s"] = float(np.median(whole))
        from nabi.reid.matcher import LocalIndex, MatcherSettings
        settings = MatcherSettings(index="flann")
        feats, chunks = local + extra, store.local_chunks(index)
        t = time.perf_counter()
        built = LocalIndex(feats, settings)
        result["trees_build_s"] = time.perf_counter() - t
        store.save_keypoint_tree(folder, built, chunks)
        (_, meta), = store.saved_trees(folder)
        result["trees_cache_bytes"] = (folder / meta["file"]).stat().st_size
        t = time.perf_counter()
        loaded = store.load_keypoint_tree(folder, chunks, feats, settings)
        result["trees_load_s"] = time.perf_counter() - t
        q = np.ascontiguousarray(local[0].descriptors[:200])
        assert np.array_equal(built._neighbours(q, 5)[0], loaded._neighbours(q, 5)[0])
    print(f"gallery of {m} photos × {args.keypoints} keypoints: {result['gallery_bytes'] / 1e6:.0f} MB on disk, "
          f"first save {result['first_save_s']:.2f} s")
    print(f"enrol one photo, chunks kept:     {result['enrol_one_chunked_s']:.3f} s, "
          f"{result['enrol_one_chunked_bytes_written'] / 1e6:.2f} MB of keypoints written "
          f"(chunks now {result['chunks_after']})")
    print(f"enrol one photo, all written again: {result['enrol_one_whole_s']:.3f} s, "
          f"{result['enrol_one_whole_bytes_written'] / 1e6:.0f} MB written")
    print(f"open, keypoint trees over {sum(len(f) for f in local):,} keypoints: built {result['trees_build_s']:.1f} s, "
          f"loaded from the folder's cache {result['trees_load_s']:.1f} s ({result['trees_cache_bytes'] / 1e6:.0f} MB)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
