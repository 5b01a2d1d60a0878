"""Local-feature matching that scales: one nearest-neighbour index over every gallery descriptor, LNBNN
scores per individual, and geometric verification of a shortlist.

Coat patterns (stripes, spots) are individual: two photos of one animal share keypoints that agree on
one geometric transform, photos of different animals few. Matching a query with every gallery photo
costs a ratio test and a RANSAC fit per pair; instead (HotSpotter, Crall et al. 2013, after McCann &
Lowe's local naive-Bayes nearest neighbour, 2012):

1. **Index.** The descriptors of every gallery photo (``nabi.reid.local_features``, stored with the
   gallery) go into one nearest-neighbour index (exact for small galleries, else OpenCV's FLANN
   randomised k-d trees).
2. **LNBNN.** For each query descriptor q, its k + 1 nearest gallery descriptors at distances
   d₁ ≤ … ≤ d_{k+1}. Each individual u among the first k gets the weight

       w_u(q) = d_{k+1} − d_u(q)          (d_u: the distance to u's closest of those k)

   — how much closer u's descriptor is than the (k+1)-th, a descriptor of "anybody". Habitat seen
   behind many individuals gives every one of them about the same distance, so it weighs little. A
   gallery photo's LNBNN score is the sum of the weights its descriptors won; the ``shortlist`` photos
   with the highest scores (and any photos the caller adds, e.g. the embedding's closest) are verified.
3. **Verification.** For each shortlisted photo g, the query's descriptors are matched with g's alone
   (nearest of g's descriptors, kept when closer than 0.8 × the second nearest: Lowe's ratio test), each
   correspondence weighed as LNBNN weighs it (d_{k+1} − d, d_{k+1} from the whole gallery), and checked
   geometrically: a homography is fitted by RANSAC (reprojection error ≤ 8 px), and g's verified score is
   the sum of the weights of the inlier correspondences — distinctive keypoints that agree on one transform
   (HotSpotter's spatially verified score). An individual's evidence is the sum of its ``top`` best
   verified photos (0 when none was shortlisted); ``nabi.reid.calibration`` turns it into a probability.

   Why g's own matches rather than the correspondences the LNBNN lists already hold (HotSpotter's way,
   ``verify="neighbours"``, the default before): in a gallery of a few animals every query descriptor's k
   nearest fall into those few photos, so each photo gets several times the correspondences it gets in a
   gallery of many, RANSAC finds more inliers by chance, and a stranger's evidence looks like a known
   animal's — a calibration fitted on a larger set of animals then calls strangers known. Matched within
   the photo, the correspondences do not depend on what else the gallery holds.

A query is therefore matched with ``shortlist`` photos, not the whole gallery: its cost grows with the
index lookup only (logarithmic with FLANN).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .local_features import Features, _cv2

CHANCE_INLIERS = 7          # inliers a RANSAC homography finds between unrelated photos (4 by construction)
EXACT_LIMIT = 50_000        # gallery descriptors up to which the index is exact (a matrix product)
TREES = 4                   # FLANN's randomised kd-trees


@dataclass(frozen=True)
class MatcherSettings:
    """k: neighbours per query descriptor (LNBNN); shortlist: photos verified per query; top: an individual's
    best photos its evidence sums; ratio: Lowe's ratio test; reprojection_px: RANSAC's inlier distance;
    index: 'auto' (exact up to EXACT_LIMIT descriptors, else 'flann'), 'exact' or 'flann'; checks: FLANN's
    leaves visited per lookup (more: closer to exact, slower); background: descriptors of other animals searched
    beside the gallery for LNBNN's (k + 1)-th neighbour, never voting (``nabi.reid.background``: 'none' or
    a RootSIFT background file's path); verify: the correspondences RANSAC checks in a shortlisted photo —
    'neighbours' (those the LNBNN lists hold) or 'pairwise' (the query's ratio-test matches within that photo alone,
    each weighed by its LNBNN weight; their number does not grow as the gallery shrinks); mutual: with 'pairwise',
    keep only matches that are each other's nearest neighbours both ways (measured, not the default)."""
    k: int = 4
    shortlist: int = 20
    top: int = 1
    ratio: float = 0.8
    reprojection_px: float = 8.0
    index: str = "auto"
    checks: int = 64
    background: str = "none"
    verify: str = "pairwise"
    mutual: bool = False

    def __post_init__(self):
        for name, low in (("k", 1), ("shortlist", 1), ("top", 1), ("checks", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"matcher {name} must be an integer ≥ {low}, got {v!r}")
        if not 0.0 < float(self.ratio) < 1.0:
            raise ValueError(f"matcher ratio must be in (0, 1), got {self.ratio!r}")
        if not float(self.reprojection_px) > 0:
            raise ValueError(f"matcher reprojection_px must be > 0, got {self.reprojection_px!r}")
        if self.index not in ("auto", "exact", "flann"):
            raise ValueError(f"matcher index must be auto, exact or flann, got {self.index!r}")
        if not isinstance(self.mutual, (bool, np.bool_)):
            raise ValueError(f"matcher mutual must be True or False, got {self.mutual!r}")
        if self.verify not in ("neighbours", "pairwise"):
            raise ValueError(f"matcher verify must be neighbours or pairwise, got {self.verify!r}")
        if not isinstance(self.background, str) or not self.background:
            raise ValueError(f"matcher background must be 'none' or a file's path, got {self.background!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d, where="the matcher settings"):
        """Settings stored by ``to_dict``; a field a stored dict lacks takes the value it had before the field
        existed (``BEFORE``), so galleries and calibrations made then are read as they were made."""
        try:
            return cls(**{k: d[k] if k in d else BEFORE[k]
                          for k in cls.__dataclass_fields__ if k in d or k in BEFORE})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where} are not usable: {e}") from None


BEFORE = {"background": "none", "verify": "neighbours", "mutual": False}    # what settings stored without them meant


# -- one pair of photos -------------------------------------------------------------------------------
def inliers(a: Features, b: Features, ratio=0.8, reprojection_px=5.0) -> int:
    """RANSAC homography inliers among the ratio-test matches of two photos' features."""
    cv2 = _cv2()
    if len(a) < 2 or len(b) < 2:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < ratio * n.distance]
    if len(good) < 4:
        return 0
    src = a.points[[m.queryIdx for m in good]].reshape(-1, 1, 2)
    dst = b.points[[m.trainIdx for m in good]].reshape(-1, 1, 2)
    cv2.setRNGSeed(0)                                   # the same photos give the same count
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, float(reprojection_px))
    return int(mask.sum()) if mask is not None else 0


def photo_evidence(n_inliers):
    """log(1 + max(0, n − 7)) of inlier counts (any shape; NaN, for a pair not matched, stays NaN)."""
    n = np.asarray(n_inliers, dtype=np.float64)
    return np.log1p(np.maximum(n - CHANCE_INLIERS, 0.0))


def individual_evidence(n_inliers, top=2):
    """The matcher's score of one individual from a query's inlier counts with its photos.

    n_inliers: (..., m) counts over the individual's m photos (NaN: photo not matched, e.g. the query itself).
    Returns (...,): log(1 + Σ of the ``top`` largest max(0, n − 7)); NaN where no photo was matched.
    """
    n = np.asarray(n_inliers, dtype=np.float64)
    if n.shape[-1] == 0:
        raise ValueError("an individual's evidence needs at least one of its photos")
    beyond = np.where(np.isnan(n), -1.0, np.maximum(n - CHANCE_INLIERS, 0.0))
    k = min(int(top), n.shape[-1])
    best = -np.sort(-beyond, axis=-1)[..., :k]
    out = np.log1p(np.maximum(best, 0.0).sum(axis=-1))
    return np.where(np.isnan(n).all(axis=-1), np.nan, out)


# -- the index --------------------------------------------------------------------------------------------
_BACKGROUND_TREES = {}


def _background_distances(bg, q, n, checks):
    """Distances (m, n) ascending from each row of ``q`` to its n nearest background descriptors (exact up to
    EXACT_LIMIT rows, else a FLANN tree built once per background)."""
    q = np.ascontiguousarray(q, np.float32)
    if len(bg) <= EXACT_LIMIT:
        return _exact_neighbours(q, bg, n)[1]
    tree = _BACKGROUND_TREES.get(id(bg))
    if tree is None or tree[0] is not bg:
        cv2 = _cv2()
        cv2.setRNGSeed(0)
        tree = _BACKGROUND_TREES[id(bg)] = (bg, cv2.flann_Index(np.ascontiguousarray(bg), dict(algorithm=1,
                                                                                                trees=TREES)))
    _, d2 = tree[1].knnSearch(q, min(n, len(bg)), params=dict(checks=int(checks)))
    return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32)


def _exact_neighbours(q, base, n):
    """(indices, distances) of the n nearest rows of ``base`` to each row of ``q``, by matrix products."""
    n = min(n, len(base))
    out_i = np.empty((len(q), n), np.int64)
    out_d = np.empty((len(q), n), np.float32)
    if n == 0:
        return out_i, out_d
    sq = (base ** 2).sum(axis=1)
    step = max(16, (1 << 23) // max(1, len(base)))      # about 32 MB of distances at a time
    for s in range(0, len(q), step):
        block = q[s:s + step]
        d2 = sq[None, :] - 2.0 * (block @ base.T) + (block ** 2).sum(axis=1)[:, None]
        part = np.argpartition(d2, n - 1, axis=1)[:, :n] if n < d2.shape[1] else np.tile(np.arange(n), (len(block), 1))
        dd = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(dd, axis=1, kind="stable")
        out_i[s:s + step] = np.take_along_axis(part, order, axis=1)
        out_d[s:s + step] = np.sqrt(np.maximum(np.take_along_axis(dd, order, axis=1), 0.0))
    return out_i, out_d


def _stack(features, dim):
    """(descriptors (n, dim) float32, points (n, 2) float32) of ``features`` one after the other."""
    features = [f for f in features if len(f)]
    if not features:
        return np.zeros((0, dim), np.float32), np.zeros((0, 2), np.float32)
    return (np.ascontiguousarray(np.concatenate([f.descriptors for f in features]), np.float32),
            np.ascontiguousarray(np.concatenate([f.points for f in features]), np.float32))


class LocalIndex:
    """Every gallery photo's descriptors in one nearest-neighbour index; ``match`` scores a query against all
    individuals.

    features   one ``Features`` per indexed photo (index photo ids 0 … P − 1)

    The index knows photos, not names: each call says which individual (a column 0 … U − 1, or −1: not
    searched, e.g. a photo taken out of the gallery) every indexed photo belongs to, so renaming, merging and
    removing never rebuild it. ``with_photos`` appends photos: the new ones are searched exactly beside the
    existing index until they outgrow a tenth of it, and only then is the index built again.
    """

    def __init__(self, features, settings: MatcherSettings = MatcherSettings(), _base=None, tree_file=None):
        self.settings = settings
        self.features = list(features)
        counts = np.array([len(f) for f in self.features], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.row_photo = np.repeat(np.arange(len(self.features)), counts)
        dim = next((f.descriptors.shape[1] for f in self.features if len(f)), 128)
        if _base is not None:           # share the base's tree and its rows (never copied), search the rest exactly
            self.kind, self._flann, self.n_tree = _base.kind, _base._flann, _base.n_tree
            self._head_desc, self._head_pts = _base._head_desc, _base._head_pts
            first = int(np.searchsorted(self.offsets, len(self._head_desc)))
            self._tail_desc, self._tail_pts = _stack(self.features[first:], dim)
            return
        self._head_desc, self._head_pts = _stack(self.features, dim)
        self._tail_desc, self._tail_pts = _stack([], dim)
        kind = settings.index
        if kind == "auto":
            kind = "exact" if len(self._head_desc) <= EXACT_LIMIT else "flann"
        self.kind, self._flann, self.n_tree = kind, None, 0
        if kind == "flann" and len(self._head_desc):
            cv2 = _cv2()
            if tree_file is not None:                   # the trees saved for exactly these descriptors
                self._flann = cv2.flann_Index()
                if not self._flann.load(self._head_desc, str(tree_file)):
                    raise ValueError(f"the keypoint tree file {tree_file} could not be loaded")
            else:
                cv2.setRNGSeed(0)                       # the kd-trees' random splits: the same photos, the same index
                self._flann = cv2.flann_Index(self._head_desc, dict(algorithm=1, trees=TREES))
            self.n_tree = len(self._head_desc)

    @property
    def whole_tree(self) -> bool:
        """True when one FLANN tree covers every indexed descriptor (what ``save_tree`` writes)."""
        return self._flann is not None and self.n_tree == self.n_rows

    def save_tree(self, path) -> None:
        """Write the FLANN trees (OpenCV's format) to ``path``; ``LocalIndex(features, settings, tree_file=path)``
        loads them again for the same features, without building them."""
        if not self.whole_tree:
            raise ValueError("only an index whose one tree covers every descriptor can be saved")
        self._flann.save(str(path))

    @property
    def n_rows(self) -> int:
        """Descriptors in the index (every indexed photo's)."""
        return int(self.offsets[-1])

    @property
    def descriptors(self) -> np.ndarray:
        """Every indexed descriptor (n_rows, D) float32, in photo order."""
        if not len(self._tail_desc):
            return self._head_desc
        return np.concatenate([self._head_desc, self._tail_desc])

    def _points_of(self, rows):
        """The keypoints (…, 2) of index rows ``rows``."""
        rows = np.asarray(rows, np.int64)
        n_head = len(self._head_pts)
        if not len(self._tail_pts):
            return self._head_pts[rows]
        head = self._head_pts[np.minimum(rows, max(n_head - 1, 0))] if n_head else np.zeros(rows.shape + (2,),
                                                                                            np.float32)
        tail = self._tail_pts[np.clip(rows - n_head, 0, len(self._tail_pts) - 1)]
        return np.where((rows < n_head)[..., None], head, tail)

    def __len__(self):
        return len(self.features)

    def with_photos(self, features) -> "LocalIndex":
        """A new index with ``features`` appended (their photo ids follow the existing ones)."""
        features = list(features)
        if not features:
            return self
        allf = self.features + features
        extra = sum(len(f) for f in allf) - self.n_tree
        if self._flann is not None and extra <= max(EXACT_LIMIT // 5, self.n_tree // 10):
            return LocalIndex(allf, self.settings, _base=self)
        return LocalIndex(allf, self.settings)

    def _neighbours(self, q, n):
        """(indices (m, n) into the index rows, distances (m, n) ascending) of the n nearest descriptors."""
        n = min(n, self.n_rows)
        if self._flann is None:
            return _exact_neighbours(q, self._head_desc, n)
        i1, d2 = self._flann.knnSearch(q, min(n, self.n_tree), params=dict(checks=int(self.settings.checks)))
        i1, d1 = i1.astype(np.int64), np.sqrt(np.maximum(d2, 0.0))
        if self.n_tree == self.n_rows:
            return i1, d1
        i2, d2 = _exact_neighbours(q, self._tail_desc, n)                   # photos added since the tree
        idx, dist = np.concatenate([i1, i2 + self.n_tree], axis=1), np.concatenate([d1, d2], axis=1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :n]
        return np.take_along_axis(idx, order, axis=1), np.take_along_axis(dist, order, axis=1)

    def weights(self, query: Features, skip=None):
        """The LNBNN weights of a query's descriptors: ``(query rows (m,), neighbour rows (m, k), weights (m, k))``
        with weights[i, j] = d_{k+1} − d_j ≥ 0 for the j-th nearest gallery descriptor of query descriptor i.

        ``skip``: photos (index photo ids) left out, as if not in the gallery (the query's own encounter when the
        gallery is scored leave-one-out, photos taken out of it); their descriptors are passed over."""
        return self._lists(query, skip)[:3]

    def _lists(self, query: Features, skip=None):
        """``weights``' three arrays and each kept query descriptor's normaliser d_{k+1} (m,)."""
        k = self.settings.k
        empty = (np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k)), np.zeros(0))
        if not len(query) or not self.n_rows:
            return empty
        skip_rows = None
        extra = 0
        if skip is not None and len(skip):
            skip_rows = np.zeros(self.n_rows, bool)
            for j in np.asarray(skip, np.int64):
                skip_rows[self.offsets[j]:self.offsets[j + 1]] = True
            if skip_rows.any():
                extra = int(min(64, max(8, 2 * k)))
            else:
                skip_rows = None
        idx, dist = self._neighbours(np.ascontiguousarray(query.descriptors, np.float32), k + 1 + extra)
        rows = np.arange(len(idx))
        if skip_rows is not None:                         # keep the first k + 1 neighbours that are not skipped
            ok = ~skip_rows[idx]
            order = np.argsort(~ok, axis=1, kind="stable")[:, :k + 1]
            idx, dist = np.take_along_axis(idx, order, axis=1), np.take_along_axis(dist, order, axis=1)
            valid = np.take_along_axis(ok, order, axis=1).all(axis=1)
            idx, dist, rows = idx[valid], dist[valid], rows[valid]
        if idx.shape[1] < k + 1:                          # fewer gallery descriptors than k + 1
            k = idx.shape[1] - 1
        if k < 1 or not len(idx):
            return empty
        norm = dist[:, k]
        bg = self._background()
        if bg is not None:                                # the (k + 1)-th over the gallery and the background
            bd = _background_distances(bg, query.descriptors[rows], k + 1, self.settings.checks)
            norm = np.sort(np.concatenate([dist[:, :k + 1], bd], axis=1), axis=1)[:, k]
        w = np.maximum(norm[:, None] - dist[:, :k], 0.0)
        return rows, idx[:, :k], w, norm

    def _background(self):
        from .background import load_background
        bg = load_background(self.settings.background)
        dim = self._head_desc.shape[1]
        if bg is not None and bg.shape[1] != dim:
            raise ValueError(f"the background {self.settings.background} holds {bg.shape[1]}-d descriptors and the "
                             f"gallery {dim}-d ones: make the background with the gallery's descriptor")
        return bg

    def lnbnn(self, query: Features, owners, n_owners, skip=None, _weights=None):
        """LNBNN scores of a query: ``(per individual (U,), per photo (P,))``. An individual's score sums, over the
        query's descriptors, the weight of its closest descriptor among the k nearest; a photo's sums every
        weight its descriptors won. ``owners`` (P,): each photo's individual column (−1: not searched)."""
        owners = np.asarray(owners, np.int64)
        U, P = int(n_owners), len(self.features)
        rows, idx, w = _weights if _weights is not None else self.weights(query, self._skip(owners, skip))
        if not len(rows):
            return np.zeros(U), np.zeros(P)
        per_owner = np.zeros((len(idx), U + 1))           # column U: photos of nobody (never searched, kept 0)
        r = np.arange(len(idx))
        for j in range(idx.shape[1] - 1, -1, -1):         # nearest last, so it wins ties per individual
            o = owners[self.row_photo[idx[:, j]]]
            o = np.where(o < 0, U, o)
            better = w[:, j] >= per_owner[r, o]
            per_owner[r[better], o[better]] = w[better, j]
        per_photo = np.bincount(self.row_photo[idx].ravel(), w.ravel(), minlength=P)
        return per_owner[:, :U].sum(axis=0), per_photo

    def verify(self, query: Features, photo, rows, idx, w, norm=None):
        """Spatial verification of one gallery photo: a homography fitted by RANSAC to the query's nearest-
        neighbour correspondences into that photo (``settings.verify``: from the LNBNN lists, or the ratio-test
        matches with that photo alone); returns ``(inliers, Σ of the inliers' LNBNN weights)``."""
        if self.settings.verify == "pairwise":
            if norm is None:
                rows, _, _, norm = self._lists(query)
            return self._verify_pairwise(query, photo, rows, norm)
        sel = (self.row_photo[idx] == photo) & (w > 0)
        qi, kk = np.nonzero(sel)
        if len(qi) < 4:
            return 0, 0.0
        return self._ransac(query.points[rows[qi]], self._points_of(idx[qi, kk]), w[qi, kk])

    def _verify_pairwise(self, query: Features, photo, rows, norm):
        """Lowe's ratio-test matches of the query's descriptors (those LNBNN weighed: ``rows``) within ``photo``
        alone, each weighed as LNBNN weighs it: d_{k+1} − d (the query descriptor's (k + 1)-th neighbour over
        the whole gallery and background), kept when positive."""
        g = self.features[photo]
        if len(g) < 2 or len(rows) < 4:
            return 0, 0.0
        q = np.ascontiguousarray(query.descriptors[rows], np.float32)
        i2, d2 = _exact_neighbours(q, np.ascontiguousarray(g.descriptors, np.float32), 2)
        ok = d2[:, 0] < float(self.settings.ratio) * d2[:, 1]
        w = np.maximum(norm - d2[:, 0], 0.0)
        ok &= w > 0
        if self.settings.mutual and ok.any():             # the photo's descriptor's nearest query descriptor is it
            kept = np.flatnonzero(ok)
            back, _ = _exact_neighbours(np.ascontiguousarray(g.descriptors[i2[kept, 0]], np.float32), q, 1)
            ok[kept] = back[:, 0] == kept
        if ok.sum() < 4:
            return 0, 0.0
        return self._ransac(query.points[rows[ok]], g.points[i2[ok, 0]], w[ok])

    def _ransac(self, src, dst, w):
        """(inliers, Σ of their weights) of a RANSAC homography between matched points ``src`` → ``dst``."""
        cv2 = _cv2()
        src = np.asarray(src, np.float32).reshape(-1, 1, 2)
        dst = np.asarray(dst, np.float32).reshape(-1, 1, 2)
        cv2.setRNGSeed(0)                                 # the same photos give the same answer
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, float(self.settings.reprojection_px))
        if mask is None:
            return 0, 0.0
        keep = mask.ravel() > 0
        return int(keep.sum()), float(np.asarray(w)[keep].sum())

    @staticmethod
    def _skip(owners, skip):
        dead = np.flatnonzero(np.asarray(owners) < 0)
        if skip is None or not len(skip):
            return dead
        return np.union1d(dead, np.asarray(skip, np.int64))

    def match(self, query: Features, owners, n_owners, skip=None, also=None):
        """Score a query against every individual; returns a dict:

        lnbnn     (U,) LNBNN score per individual (NaN: none of its photos searched)
        inliers   (P,) RANSAC inliers with each verified photo, NaN for photos not verified
        verified  (P,) the LNBNN weight of those inliers (the spatially verified score of a photo)
        evidence  (U,) the sum of an individual's ``top`` best verified photo scores (0 when none verified)

        ``owners`` (P,): each indexed photo's individual column 0 … U − 1, or −1 (not searched). The
        ``shortlist`` photos with the highest LNBNN scores are verified, and ``also`` (e.g. the embedding's
        closest photos) besides; ``skip``: photos left out (see ``weights``)."""
        s = self.settings
        owners = np.asarray(owners, np.int64)
        if len(owners) != len(self.features):
            raise ValueError(f"one owner per indexed photo is needed, got {len(owners)} for {len(self.features)}")
        P = len(self.features)
        skipped = np.zeros(P, bool)
        skipped[self._skip(owners, skip)] = True
        *wts, norm = self._lists(query, np.flatnonzero(skipped))
        per_owner, per_photo = self.lnbnn(query, owners, n_owners, _weights=wts)
        ranked = [int(j) for j in np.argsort(-per_photo, kind="stable") if not skipped[j] and per_photo[j] > 0]
        chosen = list(dict.fromkeys(ranked[:s.shortlist] + [int(j) for j in (also if also is not None else [])
                                                           if not skipped[int(j)]]))
        n = np.full(P, np.nan)
        v = np.full(P, np.nan)
        for j in chosen:
            n[j], v[j] = self.verify(query, j, *wts, norm=norm)
        evidence = np.full(int(n_owners), np.nan)
        filled = np.where(np.isnan(v), 0.0, v)
        for u in range(int(n_owners)):
            cols = np.flatnonzero((owners == u) & ~skipped)
            if len(cols):
                evidence[u] = np.sort(filled[cols])[::-1][:s.top].sum()
        return {"lnbnn": np.where(np.isnan(evidence), np.nan, per_owner), "inliers": n, "verified": v,
                "evidence": evidence}
