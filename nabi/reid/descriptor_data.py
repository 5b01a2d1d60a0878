"""Training pairs for the patch descriptor, mined from a folder of photos with one sub-folder per individual.

A pair is two 32×32 patches (``nabi.reid.patches``) of one physical point seen twice. Every photo gets
SIFT keypoints (OpenCV, ``nfeatures`` strongest, the photo shrunk to ``max_side`` as the matcher does), and
pairs come from two sources:

* **warped** — the photo against ``warps`` copies of itself under a random homography (rotation ±25°,
  scale ×0.75–1.33, shear, perspective, shift) and a photometric change (gamma 0.5–2, contrast and
  brightness, a linear shading ramp, blur, noise, JPEG re-compression). SIFT runs again on each copy; a
  keypoint of the photo and one of the copy are a pair when the homography takes the first within
  1.5 px + 0.1·size of the second, their sizes agree within ×1.25 of the homography's local scale and
  their angles within 15° of its local rotation (one-to-one, nearest first), and both patches lie inside
  their images. Both patches come from the detector's own keypoints, so the pairs carry its noise in
  position, scale and orientation.
* **matched** — two photos of one individual (the folder says which): RootSIFT matches passing Lowe's
  ratio test (0.8) and a RANSAC homography (5 px); when at least ``min_inliers`` agree, the inlier
  matches are pairs, and so are the keypoints the homography brings within 3 px of another (sizes within
  ×1.4 of its local scale, angles within 20° of its local rotation) inside the inliers' convex hull —
  points the descriptor should match although SIFT's did not. These teach what one individual looks
  like on another day, in other light, from another side of the body.

Each source is capped per photo (``pairs_per_warp``) and per pair of photos (``pairs_per_match``). The
result (``PairSet``) is cached under ``cache_dir`` (default ``~/.cache/nabi-descriptor``) by a digest of the
photos (relative paths, sizes, modification times) and the settings, written atomically, so a second
run with the same photos reads it back in seconds.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.folder import IMG_EXTENSIONS
from .patches import MAGNIFICATION, PATCH_SIZE, extract_patches, keypoint_array

MINING_VERSION = 1                       # bump when the mining changes what a cache file holds
WARPED, MATCHED = 0, 1
SOURCES = ("warped", "matched")


def default_cache_dir() -> Path:
    return Path(os.environ.get("NABI_DESCRIPTOR_CACHE", Path.home() / ".cache" / "nabi-descriptor"))


@dataclass
class MiningSettings:
    """How pairs are mined (every field is part of the cache key)."""
    nfeatures: int = 2000
    max_side: int = 512
    warps: int = 2
    pairs_per_warp: int = 80
    pairs_per_match: int = 150
    min_inliers: int = 15
    ratio: float = 0.8
    seed: int = 0

    def check(self):
        for name in ("nfeatures", "max_side", "warps", "pairs_per_warp", "pairs_per_match", "min_inliers"):
            value = getattr(self, name)
            low = 4 if name == "min_inliers" else (0 if name in ("warps", "pairs_per_match") else 1)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"mining setting {name} must be an integer ≥ {low}, got {value!r}")
        if not 0.0 < float(self.ratio) < 1.0:
            raise ValueError(f"mining setting ratio must be in (0, 1), got {self.ratio!r}")
        return self


@dataclass
class PairSet:
    """n pairs: ``patches`` uint8 (n, 2, 32, 32); ``photos`` int32 (n, 2) indices into ``paths``
    (a warped pair names its photo twice); ``individual`` int32 (n,) into ``individuals``; ``source``
    uint8 (n,) (0 warped, 1 matched)."""
    patches: np.ndarray
    photos: np.ndarray
    individual: np.ndarray
    source: np.ndarray
    paths: list = field(default_factory=list)
    individuals: list = field(default_factory=list)

    def __len__(self):
        return len(self.patches)

    def subset(self, keep) -> "PairSet":
        return PairSet(self.patches[keep], self.photos[keep], self.individual[keep], self.source[keep],
                       self.paths, self.individuals)

    def counts(self) -> dict:
        return {name: int((self.source == k).sum()) for k, name in enumerate(SOURCES)}


def _cv2():
    from .local_features import _cv2 as cv2
    return cv2()


def list_photos(root, exclude=()) -> list:
    """``[(path, individual)]`` of the images in ``root/<individual>/``, sorted; ``ValueError`` when none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"photo folder {root} does not exist (give a folder with one sub-folder per individual)")
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name in set(exclude):
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS:
                out.append((f, folder.name))
    if not out:
        raise ValueError(f"photo folder {root} has no images in sub-folders (expected {root}/<individual>/<photos>)")
    return out


# -- geometry ------------------------------------------------------------------------------------------------
def random_homography(rng, width, height):
    """A 3×3 homography about the image centre: rotation, log-uniform scale, shear, perspective, shift."""
    cx, cy, side = width / 2.0, height / 2.0, max(width, height)
    angle = math.radians(rng.uniform(-25, 25))
    scale = math.exp(rng.uniform(math.log(0.75), math.log(1.33)))
    shear = rng.uniform(-0.12, 0.12)
    aspect = math.exp(rng.uniform(-0.1, 0.1))
    c, s = math.cos(angle), math.sin(angle)
    A = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([scale * aspect, scale / aspect, 1.0])
    A = A @ np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1.0]])
    A[2, :2] = rng.uniform(-0.35, 0.35, 2) / side                         # perspective
    shift = rng.uniform(-0.08, 0.08, 2) * side
    to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]])
    back = np.array([[1, 0, cx + shift[0]], [0, 1, cy + shift[1]], [0, 0, 1.0]])
    return back @ A @ to_centre


def photometric(gray, rng):
    """A uint8 copy of ``gray`` in other light: gamma, contrast and brightness, a shading ramp, blur, noise, JPEG."""
    cv2 = _cv2()
    h, w = gray.shape
    x = gray.astype(np.float32) / 255.0
    x = x ** math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phi = rng.uniform(0, 2 * math.pi)
    ramp = ((xx - w / 2) * math.cos(phi) + (yy - h / 2) * math.sin(phi)) / max(h, w)
    x = x * (1.0 + rng.uniform(-0.8, 0.8) * ramp)
    x = x * rng.uniform(0.6, 1.3) + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.5))
    x = x + rng.normal(0, rng.uniform(0, 0.02), x.shape).astype(np.float32)
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 96))])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else out


def project(H, kp):
    """Keypoints (n, 4) through the homography H: their centres, the local scale and the angle their
    direction turns to: ``(xy (n, 2), scale (n,), angle (n,) degrees)``, from the Jacobian of H at each."""
    x, y = kp[:, 0], kp[:, 1]
    w = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    qx = (H[0, 0] * x + H[0, 1] * y + H[0, 2]) / w
    qy = (H[1, 0] * x + H[1, 1] * y + H[1, 2]) / w
    J = np.empty((len(kp), 2, 2))
    J[:, 0, 0], J[:, 0, 1] = (H[0, 0] - qx * H[2, 0]) / w, (H[0, 1] - qx * H[2, 1]) / w
    J[:, 1, 0], J[:, 1, 1] = (H[1, 0] - qy * H[2, 0]) / w, (H[1, 1] - qy * H[2, 1]) / w
    scale = np.sqrt(np.abs(np.linalg.det(J)))
    a = np.deg2rad(kp[:, 3])
    d = np.einsum("nij,nj->ni", J, np.stack([np.cos(a), np.sin(a)], 1))
    return np.stack([qx, qy], 1), scale, np.rad2deg(np.arctan2(d[:, 1], d[:, 0])) % 360.0


def inside(kp, width, height):
    """Whether each keypoint's whole patch square (side 6·size, rotated) lies inside a width × height image."""
    r = MAGNIFICATION * kp[:, 2] / 2.0 * math.sqrt(2.0)                   # the corners' distance from the centre
    return (kp[:, 0] - r >= 0) & (kp[:, 1] - r >= 0) & (kp[:, 0] + r <= width - 1) & (kp[:, 1] + r <= height - 1)


def _angle_gap(a, b):
    d = np.abs((a - b) % 360.0)
    return np.minimum(d, 360.0 - d)


def correspondences(kp1, kp2, H, radius_px, size_ratio, angle_deg, size_radius=0.0, candidates=None):
    """One-to-one pairs ``(i1, i2)`` of keypoints of image 1 and image 2 that H puts together: the centre
    within ``radius_px + size_radius·size`` pixels, the size within ×``size_ratio`` and the angle within
    ``angle_deg`` of what H predicts; nearest first. ``candidates`` limits i1 (a bool or index array)."""
    idx1 = np.arange(len(kp1)) if candidates is None else np.arange(len(kp1))[candidates]
    if not len(idx1) or not len(kp2):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    xy, scale, angle = project(H, kp1[idx1])
    size = kp1[idx1, 2] * scale
    dist = np.sqrt(((xy[:, None, :] - kp2[None, :, :2]) ** 2).sum(-1))                # (m, n2)
    ok = dist <= radius_px + size_radius * size[:, None]
    ok &= np.abs(np.log(kp2[None, :, 2] / size[:, None])) <= math.log(size_ratio)
    ok &= _angle_gap(angle[:, None], kp2[None, :, 3]) <= angle_deg
    r, c = np.nonzero(ok)
    order = np.argsort(dist[r, c], kind="stable")
    used1, used2, out1, out2 = set(), set(), [], []
    for k in order:
        i, j = int(r[k]), int(c[k])
        if i in used1 or j in used2:
            continue
        used1.add(i)
        used2.add(j)
        out1.append(idx1[i])
        out2.append(j)
    return np.array(out1, np.int64), np.array(out2, np.int64)


# -- one photo, one pair of photos ---------------------------------------------------------------------------
class _Photo:
    """A photo's grey image (shrunk to max_side), its keypoints (n, 4) and RootSIFT descriptors (n, 128)."""

    def __init__(self, path, settings):
        from .local_features import gray_image as _gray
        cv2 = _cv2()
        self.gray = _gray(path, settings.max_side)
        sift = cv2.SIFT_create(nfeatures=settings.nfeatures)
        kps, desc = sift.detectAndCompute(self.gray, None)
        self.kp = keypoint_array(kps)
        if desc is None:
            desc = np.zeros((0, 128), np.float32)
        desc = desc.astype(np.float32)
        desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-7)
        self.desc = np.sqrt(desc)


def warped_pairs(photo, settings, rng):
    """Patches (m, 2, 32, 32) of keypoints of ``photo`` and of its warped, relit copies."""
    cv2 = _cv2()
    h, w = photo.gray.shape
    sift = cv2.SIFT_create(nfeatures=settings.nfeatures)
    out = []
    for _ in range(settings.warps):
        H = random_homography(rng, w, h)
        warped = cv2.warpPerspective(photo.gray, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=int(photo.gray.mean()))
        warped = photometric(warped, rng)
        kp2 = keypoint_array(sift.detect(warped, None))
        if not len(photo.kp) or not len(kp2):
            continue
        xy, scale, angle = project(H, photo.kp)
        moved = np.column_stack([xy, photo.kp[:, 2] * scale, angle])
        keep = inside(photo.kp, w, h) & inside(moved, w, h) & np.isfinite(moved).all(1)
        i1, i2 = correspondences(photo.kp, kp2, H, 1.5, 1.25, 15.0, size_radius=0.1, candidates=keep)
        keep2 = inside(kp2[i2], w, h)
        i1, i2 = i1[keep2], i2[keep2]
        if len(i1) > settings.pairs_per_warp:
            pick = np.sort(rng.choice(len(i1), settings.pairs_per_warp, replace=False))
            i1, i2 = i1[pick], i2[pick]
        if len(i1):
            out.append(np.stack([extract_patches(photo.gray, photo.kp[i1]), extract_patches(warped, kp2[i2])], 1))
    return np.concatenate(out) if out else np.zeros((0, 2, PATCH_SIZE, PATCH_SIZE), np.uint8)


def matched_pairs(a, b, settings, rng):
    """Patches (m, 2, 32, 32) of points of photos ``a`` and ``b`` that RANSAC verifies (see the module docstring),
    and the inlier count."""
    cv2 = _cv2()
    empty = np.zeros((0, 2, PATCH_SIZE, PATCH_SIZE), np.uint8)
    if len(a.desc) < 2 or len(b.desc) < 2:
        return empty, 0
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.desc, b.desc, k=2)
    good = [m for m, n in (p for p in knn if len(p) == 2) if m.distance < settings.ratio * n.distance]
    if len(good) < settings.min_inliers:
        return empty, 0
    ia = np.array([m.queryIdx for m in good])
    ib = np.array([m.trainIdx for m in good])
    cv2.setRNGSeed(int(rng.integers(2**31)))
    H, mask = cv2.findHomography(a.kp[ia, :2].reshape(-1, 1, 2), b.kp[ib, :2].reshape(-1, 1, 2), cv2.RANSAC, 5.0)
    if H is None or mask is None or int(mask.sum()) < settings.min_inliers:
        return empty, 0
    inl = mask.ravel().astype(bool)
    ia, ib = ia[inl], ib[inl]
    hull = cv2.convexHull(a.kp[ia, :2].astype(np.float32))
    in_hull = np.array([cv2.pointPolygonTest(hull, (float(x), float(y)), False) >= 0 for x, y in a.kp[:, :2]])
    ga, gb = correspondences(a.kp, b.kp, H, 3.0, 1.4, 20.0, candidates=in_hull)
    pairs = {}
    for i, j in zip(np.concatenate([ia, ga]), np.concatenate([ib, gb])):
        pairs.setdefault(int(i), int(j))                                  # one pair per keypoint of a
    seen_b, ia, ib = set(), [], []
    for i, j in pairs.items():
        if j not in seen_b:
            seen_b.add(j)
            ia.append(i)
            ib.append(j)
    ia, ib = np.array(ia, np.int64), np.array(ib, np.int64)
    hb, wb = b.gray.shape
    ha, wa = a.gray.shape
    keep = inside(a.kp[ia], wa, ha) & inside(b.kp[ib], wb, hb)
    ia, ib = ia[keep], ib[keep]
    if len(ia) > settings.pairs_per_match:
        pick = np.sort(rng.choice(len(ia), settings.pairs_per_match, replace=False))
        ia, ib = ia[pick], ib[pick]
    if not len(ia):
        return empty, int(inl.sum())
    return np.stack([extract_patches(a.gray, a.kp[ia]), extract_patches(b.gray, b.kp[ib])], 1), int(inl.sum())


def mine_individual(paths, settings, seed):
    """The pairs of one individual's photos: ``(patches (m, 2, 32, 32), photos (m, 2) local indices, source (m,))``."""
    rng = np.random.default_rng(seed)
    photos = [_Photo(p, settings) for p in paths]
    patches, which, source = [], [], []
    for i, photo in enumerate(photos):
        got = warped_pairs(photo, settings, rng)
        patches.append(got)
        which.append(np.full((len(got), 2), i))
        source.append(np.full(len(got), WARPED))
    if settings.pairs_per_match:
        for i in range(len(photos)):
            for j in range(i + 1, len(photos)):
                got, _ = matched_pairs(photos[i], photos[j], settings, rng)
                patches.append(got)
                which.append(np.tile([i, j], (len(got), 1)))
                source.append(np.full(len(got), MATCHED))
    return (np.concatenate(patches), np.concatenate(which).astype(np.int32).reshape(-1, 2),
            np.concatenate(source).astype(np.uint8))


def mine_pairs(photos, settings, progress=None, log=print) -> PairSet:
    """Mine the pairs of ``photos`` (``[(path, individual)]``, e.g. ``list_photos``'s), one individual at a time.
    ``progress``: a ``nabi.training.progress.Progress`` (its bar counts individuals)."""
    settings.check()
    individuals = sorted({name for _, name in photos})
    paths = [str(p) for p, _ in photos]
    by_individual = {name: [k for k, (_, n) in enumerate(photos) if n == name] for name in individuals}
    bar = progress.epoch(len(individuals), 0, "mining pairs") if progress is not None else None
    parts = []
    total = 0
    for k, name in enumerate(individuals):
        idx = by_individual[name]
        seed = int(np.random.SeedSequence([settings.seed, k]).generate_state(1)[0])
        try:
            patches, local, source = mine_individual([paths[i] for i in idx], settings, seed)
        except ValueError as e:
            raise ValueError(f"individual {name}: {e}") from None
        parts.append((patches, np.asarray(idx, np.int32)[local], np.full(len(patches), k, np.int32), source))
        total += len(patches)
        if bar is not None:
            bar.update(1, pairs=total)
    if bar is not None:
        bar.close()
    pairs = PairSet(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).reshape(-1, 2),
                    np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]), paths, individuals)
    if not len(pairs):
        raise ValueError("no training pairs were found in the photos (too small or too plain for SIFT keypoints?)")
    return pairs


# -- the cache -----------------------------------------------------------------------------------------------
def cache_key(root, photos, settings) -> str:
    root = Path(root)
    listing = []
    for path, _ in photos:
        st = Path(path).stat()
        listing.append([str(Path(path).relative_to(root)), st.st_size, st.st_mtime_ns])
    text = json.dumps({"version": MINING_VERSION, "settings": asdict(settings), "photos": listing}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _save_npy(path: Path, array) -> None:
    from ..files.atomic import _fsync_dir
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(str(path.parent))
    finally:
        tmp.unlink(missing_ok=True)


def save_pairs(folder, key, pairs: PairSet, settings) -> Path:
    """Write ``pairs`` as ``<key>.patches.npy``, ``<key>.index.npy`` and, last, ``<key>.json`` in ``folder``."""
    from ..files import atomic_write_json
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _save_npy(folder / f"{key}.patches.npy", pairs.patches)
    index = np.column_stack([pairs.photos, pairs.individual, pairs.source.astype(np.int32)])
    _save_npy(folder / f"{key}.index.npy", index)
    atomic_write_json(folder / f"{key}.json", {"format": "nabi-descriptor-pairs", "version": MINING_VERSION,
                                               "settings": asdict(settings), "paths": pairs.paths,
                                               "individuals": pairs.individuals, "pairs": len(pairs),
                                               "counts": pairs.counts()})
    return folder / f"{key}.json"


def load_pairs(folder, key) -> PairSet | None:
    """The cached pairs, or None when there are none (or they cannot be read back whole: mined again)."""
    folder = Path(folder)
    meta_path = folder / f"{key}.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        patches = np.load(folder / f"{key}.patches.npy", mmap_mode="r")
        index = np.load(folder / f"{key}.index.npy")
        n = int(meta["pairs"])
        if patches.shape != (n, 2, PATCH_SIZE, PATCH_SIZE) or index.shape != (n, 4):
            return None
    except (OSError, ValueError, KeyError):
        return None
    return PairSet(patches, index[:, :2].astype(np.int32), index[:, 2].astype(np.int32),
                   index[:, 3].astype(np.uint8), list(meta["paths"]), list(meta["individuals"]))


def cached_pairs(root, settings, cache_dir=None, exclude=(), progress=None, log=print):
    """The pairs of the photos under ``root``: read from the cache when mined before, else mined and cached.
    Returns ``(pairs, cache_file)``."""
    settings.check()
    photos = list_photos(root, exclude)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(root, photos, settings)
    pairs = load_pairs(folder, key)
    if pairs is not None:
        log(f"training pairs: {len(pairs)} read from {folder / (key + '.json')} ({pairs.counts()})")
        return pairs, folder / f"{key}.json"
    log(f"mining training pairs from {len(photos)} photos of {len({n for _, n in photos})} individuals in {root} "
        f"(cached in {folder})")
    pairs = mine_pairs(photos, settings, progress, log)
    path = save_pairs(folder, key, pairs, settings)
    log(f"training pairs: {len(pairs)} ({pairs.counts()}), cached in {path}")
    return load_pairs(folder, key) or pairs, path
