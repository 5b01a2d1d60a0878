"""Keypoint matching: RootSIFT features, the LNBNN index over a gallery's descriptors, RANSAC on a shortlist, and
the matcher inside a gallery (calibrated with the embedding)."""
import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from nabi.reid import matcher as LM  # noqa: E402
from nabi.reid.local_features import Features, LocalSettings, extract, pack, unpack  # noqa: E402


def coat(i, size=160):
    """Individual i's coat: a fixed random blob texture (seeded by i), uint8 grey."""
    rng = np.random.default_rng(1000 + i)
    img = np.zeros((size, size), np.uint8)
    for _ in range(60):
        x, y = rng.integers(0, size, 2)
        cv2.ellipse(img, (int(x), int(y)), tuple(int(v) for v in rng.integers(3, 12, 2)), float(rng.uniform(0, 180)),
                    0, 360, int(rng.integers(80, 255)), -1)
    return img


def view(i, j, size=128):
    """Photo j of individual i: the coat rotated, scaled and shifted a little, plus noise; (H, W, 3) uint8."""
    rng = np.random.default_rng([i, j])
    src = coat(i)
    M = cv2.getRotationMatrix2D((80, 80), float(rng.uniform(-15, 15)), float(rng.uniform(0.9, 1.1)))
    M[:, 2] += rng.uniform(-8, 8, 2) - 16
    img = cv2.warpAffine(src, M, (size, size), borderMode=cv2.BORDER_REFLECT)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2)


def test_rootsift_descriptors_are_hellinger_normalised():
    f = extract(view(0, 0))
    assert len(f) > 20 and f.descriptors.shape == (len(f), 128) and f.points.shape == (len(f), 2)
    np.testing.assert_allclose((f.descriptors ** 2).sum(1), 1.0, rtol=1e-5)     # √(d/‖d‖₁) has unit L2 norm


def test_points_are_in_the_original_photo_pixels():
    big = cv2.resize(view(1, 0), (512, 512), interpolation=cv2.INTER_CUBIC)
    f = extract(big, LocalSettings(nfeatures=300, max_side=128))           # detected on a 128 px copy
    assert f.points[:, 0].max() > 200 and f.points.max() <= 512


def test_same_individual_has_more_inliers():
    whole = LocalSettings(foreground="none")            # a coat filling the frame: no habitat to leave out
    f = {(i, j): extract(view(i, j), whole) for i in range(3) for j in range(2)}
    same = [LM.inliers(f[i, 0], f[i, 1]) for i in range(3)]
    other = [LM.inliers(f[i, 0], f[(i + 1) % 3, 1]) for i in range(3)]
    assert min(same) >= 20 and max(other) <= 10, (same, other)      # chance RANSAC fits stay small


def test_inliers_of_featureless_photos_is_zero():
    blank = extract(np.zeros((64, 64), np.uint8))
    assert len(blank) == 0 and LM.inliers(blank, extract(view(0, 0))) == 0


def test_individual_evidence_sums_the_best_photos_beyond_chance():
    n = np.array([[3.0, 17.0, 12.0, np.nan], [np.nan, np.nan, np.nan, np.nan]])
    ev = LM.individual_evidence(n, top=2)
    assert ev[0] == pytest.approx(np.log1p((17 - 7) + (12 - 7))) and np.isnan(ev[1])
    assert LM.individual_evidence(n[:1], top=1)[0] == pytest.approx(np.log1p(10))
    assert LM.individual_evidence([[4.0, 6.0]])[0] == 0.0                    # chance-level fits are no evidence
    np.testing.assert_allclose(LM.photo_evidence([0, 7, 8]), [0, 0, np.log(2)])


def test_settings_are_checked():
    with pytest.raises(ValueError, match="ratio must be in"):
        LM.MatcherSettings(ratio=1.5)
    with pytest.raises(ValueError, match="shortlist must be an integer ≥ 1, got 0"):
        LM.MatcherSettings(shortlist=0)
    with pytest.raises(ValueError, match="index must be auto, exact or flann"):
        LM.MatcherSettings(index="faiss")
    with pytest.raises(ValueError, match="nfeatures must be an integer ≥ 1, got 0"):
        LocalSettings(nfeatures=0)
    with pytest.raises(ValueError, match="unknown descriptor 'surf'"):
        LocalSettings(descriptor="surf")
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4, 5\)"):
        extract(np.zeros((2, 3, 4, 5), np.uint8))


def _random_features(rng, n_photos, per_photo=30, dim=16):
    feats = []
    for _ in range(n_photos):
        d = rng.normal(size=(per_photo, dim)).astype(np.float32)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        feats.append(Features(rng.uniform(0, 100, (per_photo, 2)).astype(np.float32), d))
    return feats


def _naive_lnbnn(query, feats, owners, n_owners, k, skip=()):
    """LNBNN by its definition, one query descriptor at a time: (per individual, per photo)."""
    rows = [(j, d) for j, f in enumerate(feats) if j not in set(skip) for d in f.descriptors]
    per_owner = np.zeros(n_owners)
    per_photo = np.zeros(len(feats))
    for q in query.descriptors:
        dist = np.array([np.linalg.norm(q - d) for _, d in rows])
        order = np.argsort(dist, kind="stable")
        norm = dist[order[k]]
        won = {}
        for r in order[:k]:
            j = rows[r][0]
            w = max(norm - dist[r], 0.0)
            per_photo[j] += w                                   # a photo: every weight its descriptors won
            won[owners[j]] = max(won.get(owners[j], 0.0), w)    # an individual: its closest descriptor's
        for o, w in won.items():
            per_owner[o] += w
    return per_owner, per_photo


def _animal_on_habitat(i, size=160):
    """An orange animal with its coat's texture in the middle of the photo, on grey-green textured habitat."""
    rng = np.random.default_rng(50 + i)
    hab = np.clip(rng.normal(0, 1, (size // 8, size // 8)) * 40 + 110, 0, 255).astype(np.uint8)
    hab = cv2.resize(hab, (size, size), interpolation=cv2.INTER_NEAREST)
    img = np.stack([hab * 0.8, hab, hab * 0.7], axis=2).astype(np.uint8)        # RGB
    c = cv2.resize(coat(i), (size // 2, size // 2))
    body = np.stack([np.full_like(c, 200), 90 + c // 4, 30 + c // 8], axis=2)  # orange, the coat's pattern in it
    q = size // 4
    img[q:q + size // 2, q:q + size // 2] = body
    return img, (q, q + size // 2)


def test_grabcut_foreground_keeps_only_the_animals_keypoints():
    img, (lo, hi) = _animal_on_habitat(0)
    whole = extract(img, LocalSettings(foreground="none"))
    animal = extract(img)                                  # the default: GrabCut
    inside = lambda f: (f.points >= lo - 8).all(1) & (f.points < hi + 8).all(1)       # noqa: E731 (the mask grows)
    on_habitat = (~inside(whole)).sum()
    assert on_habitat >= 20                               # the habitat has keypoints of its own
    assert (~inside(animal)).sum() <= 0.15 * on_habitat   # hardly any of them is kept (one GrabCut round: 11 of 107),
    assert inside(animal).sum() >= 0.8 * inside(whole).sum()      # the animal's are
    assert extract(img, LocalSettings(foreground="grabcut")).points.tolist() == animal.points.tolist()  # the same
    flat = np.full((96, 96, 3), 128, np.uint8)           # nothing to separate: GrabCut finds no animal,
    flat[30:60, 30:60] = 128 + np.random.default_rng(1).integers(0, 2, (30, 30, 1)).astype(np.uint8) * 60
    assert len(extract(flat)) == len(extract(flat, LocalSettings(foreground="none")))     # …or the whole photo


def test_foreground_setting_is_checked_and_stored_only_when_used():
    with pytest.raises(ValueError, match="unknown foreground 'sam'; expected none or grabcut"):
        LocalSettings(foreground="sam")
    assert "foreground" not in LocalSettings(foreground="none").to_dict()     # as galleries wrote it before
    d = LocalSettings().to_dict()
    assert d["foreground"] == "grabcut" and LocalSettings.from_dict(d) == LocalSettings()
    old = LocalSettings.from_dict({"nfeatures": 2000, "max_side": 512, "descriptor": "rootsift"})
    assert old == LocalSettings(foreground="none")                # a gallery made before the option: whole photos


def test_lnbnn_index_equals_its_definition():
    rng = np.random.default_rng(0)
    feats = _random_features(rng, 9)
    owners = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    index = LM.LocalIndex(feats, LM.MatcherSettings(k=3, index="exact"))
    query = _random_features(rng, 1)[0]
    got = index.lnbnn(query, owners, 3)
    want = _naive_lnbnn(query, feats, owners, 3, 3)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    # leaving photos out (skipped, or owned by nobody) is the same as an index without them
    for got in (index.lnbnn(query, owners, 3, skip=[0, 4]), index.lnbnn(query, [-1, 0, 0, 1, -1, 1, 2, 2, 2], 3)):
        want = _naive_lnbnn(query, feats, owners, 3, 3, skip=[0, 4])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
        assert got[1][0] == 0 and got[1][4] == 0


def test_flann_index_agrees_with_the_exact_one_and_grows_without_a_rebuild():
    rng = np.random.default_rng(1)
    feats = _random_features(rng, 40, per_photo=50, dim=32)
    owners = np.repeat(np.arange(10), 4)
    exact = LM.LocalIndex(feats, LM.MatcherSettings(index="exact"))
    flann = LM.LocalIndex(feats[:36], LM.MatcherSettings(index="flann", checks=2048))
    grown = flann.with_photos(feats[36:])                      # appended photos: searched beside the tree
    assert grown._flann is flann._flann and grown.n_tree == 36 * 50 and len(grown) == 40
    assert grown._head_desc is flann._head_desc                # the tree's rows are shared, never copied
    again = grown.with_photos(_random_features(rng, 1, per_photo=50, dim=32))
    assert again._head_desc is flann._head_desc and again.n_rows == 41 * 50 and len(again._tail_desc) == 5 * 50
    for q in _random_features(rng, 5, per_photo=50, dim=32):
        a, b = exact.lnbnn(q, owners, 10)[0], grown.lnbnn(q, owners, 10)[0]
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)      # enough checks: the same neighbours
        ma, mb = exact.match(q, owners, 10), grown.match(q, owners, 10)     # keypoints of the tree and the tail
        np.testing.assert_array_equal(ma["inliers"], mb["inliers"])
    big = flann.with_photos(_random_features(rng, 30, per_photo=400, dim=32))      # 12,000 new descriptors
    assert big._flann is not flann._flann and big.n_tree == len(big.descriptors)      # outgrown: rebuilt


def test_match_verifies_a_shortlist_and_scores_every_individual():
    gallery = [(i, j) for i in range(4) for j in range(2)]
    feats = [extract(view(i, j)) for i, j in gallery]
    owners = [i for i, _ in gallery]
    index = LM.LocalIndex(feats, LM.MatcherSettings(shortlist=3))
    m = index.match(extract(view(2, 5)), owners, 4)
    assert np.argmax(m["lnbnn"]) == 2 and np.argmax(m["evidence"]) == 2
    assert (~np.isnan(m["inliers"])).sum() <= 3                        # only the shortlist is verified by RANSAC
    assert m["inliers"][4] >= 20 or m["inliers"][5] >= 20              # coat 2's photos: many inliers
    assert m["verified"][4] > 0 or m["verified"][5] > 0
    skipped = index.match(extract(view(2, 5)), owners, 4, skip=[4, 5])  # coat 2 left out: no evidence for it
    assert np.isnan(skipped["evidence"][2]) and np.all(np.isnan(skipped["inliers"][[4, 5]]))
    blank = index.match(extract(np.zeros((64, 64), np.uint8)), owners, 4)     # a query without keypoints
    assert np.all(blank["lnbnn"] == 0) and np.all(blank["evidence"] == 0)
    with_blank = LM.LocalIndex(feats + [Features.empty()])
    assert np.argmax(with_blank.match(extract(view(1, 6)), owners + [3], 4)["evidence"]) == 1   # a photo w/o keypoints


def test_packed_features_round_trip_and_damage_is_refused():
    feats = [extract(view(0, 0)), Features.empty(), extract(view(1, 0))]
    back = unpack(pack(feats))
    assert [len(f) for f in back] == [len(f) for f in feats]
    np.testing.assert_array_equal(back[2].points, feats[2].points)
    np.testing.assert_allclose(back[0].descriptors, feats[0].descriptors, atol=1e-3)      # stored as float16
    arrays = pack(feats)
    arrays["offsets"] = arrays["offsets"][::-1].copy()
    with pytest.raises(ValueError, match="do not agree"):
        unpack(arrays)


def write_coats(root, ids, js):
    from PIL import Image
    for i in ids:
        d = root / f"coat{i}"
        d.mkdir(parents=True, exist_ok=True)
        for j in js:
            Image.fromarray(view(i, j)).save(d / f"{j}.png")
    return root


@pytest.fixture(scope="module")
def coat_gallery(tmp_path_factory):
    """A gallery of six coats, five photos each, with an embedding barely trained (one step): the coats are
    told apart by their keypoints, hardly by the embedding."""
    from nabi.cli import main
    from nabi.reid.gallery import Gallery
    root = tmp_path_factory.mktemp("coats")
    train = write_coats(root / "train", range(10, 14), range(3))
    assert main(["--threads", "1", "train", str(train), "--model", "cifar_cnn", "--head", "arcface",
                 "--embedding-dim", "8", "--iterations", "1", "--batch-size", "8", "--k", "2", "--image-size", "32",
                 "--out", str(root / "run"), "--no-progress", "--val-ratio", "0"]) == 0
    g = Gallery.build(root / "run", write_coats(root / "enrol", range(6), range(5)), root / "g")
    return root, g


def test_matcher_alone_ranks_every_individual(coat_gallery):
    root, g = coat_gallery
    queries = write_coats(root / "queries", range(6), [5, 6])
    write_coats(queries, [7, 8], [0])
    res = g.evaluate(queries, matcher=True, groups=None)
    assert res["matcher"]["rank1"] == 1.0 and res["matcher"]["auroc"] == 1.0     # keypoints alone, all 6 ranked
    assert res["matcher"]["mAP"] > 0.9


def test_calibrated_gallery_answers_with_probabilities(coat_gallery):
    root, g = coat_gallery
    summary = g.calibrate(None, matcher=True)                         # leave-one-encounter-out, 30 photos
    assert summary["source"].startswith("leave-one-encounter-out") and summary["pairs"]["same"] == 30
    assert summary["auroc_pairs"]["matcher"] > 0.95
    assert summary["check"]["known_named_correctly"] > 0.9 and summary["check"]["strangers_called_new"] > 0.9
    out = g.identify([view(2, 9), view(9, 0)])
    assert out[0]["answer"] == "known" and out[0]["name"] == "coat2" and out[0]["probability"] > 0.8
    assert out[0]["candidates"][0]["inliers"] >= 10 and len(out[0]["candidates"]) == 5
    assert out[1]["answer"] == "unknown" and out[1]["probability"] > 0.5
    assert sum(c["probability"] for c in out[0]["candidates"]) <= 1.0
    queries = write_coats(root / "queries2", range(6), [7])
    write_coats(queries, [8, 9], [1])
    res = g.evaluate(queries, groups=None)
    assert res["fused"]["rank1"] == 1.0 and res["fused"]["auroc"] == 1.0 and res["three_way_accuracy"] == 1.0
    assert res["ece"] < 0.2


def test_cli_evaluate_prints_each_scorer(coat_gallery, capsys):
    from nabi.cli import main
    root, g = coat_gallery
    assert main(["gallery", "calibrate", str(g.path), "--matcher"]) == 0
    assert "of known photos named correctly" in capsys.readouterr().out
    queries = write_coats(root / "queries_cli", range(6), [13])
    assert main(["gallery", "evaluate", str(g.path), str(queries)]) == 0
    out = capsys.readouterr().out
    assert "keypoint matcher alone:" in out and "the answer (calibrated fusion" in out
    assert out.count("rank-1") == 3 and "expected calibration error" in out


def test_the_same_photos_build_the_same_flann_index():
    """FLANN's kd-trees split at random: the index is seeded, so a gallery answers the same on every run."""
    rng = np.random.default_rng(3)
    feats = _random_features(rng, 30, per_photo=60, dim=32)
    a, b = (LM.LocalIndex(feats, LM.MatcherSettings(index="flann", checks=16)) for _ in range(2))
    q = _random_features(rng, 1, per_photo=200, dim=32)[0].descriptors
    for x, y in zip(a._neighbours(q, 5), b._neighbours(q, 5)):
        np.testing.assert_array_equal(x, y)


def test_cli_builds_a_gallery_with_keypoints_on_the_animal_only(coat_gallery, tmp_path):
    from PIL import Image
    from nabi.cli import main
    from nabi.reid.gallery import Gallery
    root, _ = coat_gallery
    photos = tmp_path / "animals"
    for i in range(2):
        (photos / f"animal{i}").mkdir(parents=True)
        for j in range(2):
            Image.fromarray(_animal_on_habitat(i + 2 * j)[0]).save(photos / f"animal{i}" / f"{j}.png")
    out = tmp_path / "g"
    assert main(["gallery", "build", str(root / "run"), str(photos), "--out", str(out), "--foreground", "grabcut",
                 "--no-calibrate"]) == 0
    g = Gallery.open(out)
    assert g.local_settings.foreground == "grabcut"
    lo, hi = _animal_on_habitat(0)[1]
    pts = np.concatenate([f.points for f in g.local])
    assert ((pts >= lo - 8) & (pts < hi + 8)).all(1).mean() > 0.9     # the habitat's keypoints were not enrolled


def test_pairwise_verification_checks_the_ratio_test_matches_within_the_photo():
    """``verify="pairwise"``: RANSAC sees the query's Lowe-ratio matches with the shortlisted photo alone, each
    weighed d_{k+1} − d as LNBNN weighs it; so a photo's correspondences do not multiply as the gallery shrinks."""
    gallery = [(i, j) for i in range(4) for j in range(2)]
    feats = [extract(view(i, j)) for i, j in gallery]
    owners = [i for i, _ in gallery]
    index = LM.LocalIndex(feats, LM.MatcherSettings(shortlist=3, verify="pairwise"))
    query = extract(view(2, 5))
    m = index.match(query, owners, 4)
    assert np.argmax(m["evidence"]) == 2 and max(m["inliers"][4], m["inliers"][5]) >= 20
    # by its definition, for one photo: ratio test within it, LNBNN weights, RANSAC with the fixed seed
    rows, _, _, norm = index._lists(query)
    q, g = query.descriptors[rows].astype(np.float64), feats[4].descriptors.astype(np.float64)
    d = np.linalg.norm(q[:, None, :] - g[None, :, :], axis=2)
    order = np.argsort(d, axis=1)[:, :2]
    d1, d2 = d[np.arange(len(q)), order[:, 0]], d[np.arange(len(q)), order[:, 1]]
    w = np.maximum(norm - d1, 0.0)
    ok = (d1 < 0.8 * d2) & (w > 0)
    cv2.setRNGSeed(0)
    _, mask = cv2.findHomography(query.points[rows[ok]].reshape(-1, 1, 2),
                                 feats[4].points[order[ok, 0]].reshape(-1, 1, 2), cv2.RANSAC, 8.0)
    keep = mask.ravel() > 0
    n, v = index.verify(query, 4, *index.weights(query), norm=norm)
    assert n == int(keep.sum()) and v == pytest.approx(float(w[ok][keep].sum()), rel=1e-5)
    assert index.verify(query, 4, *index.weights(query)) == (n, pytest.approx(v))    # the normaliser found again
    # a gallery of that one photo verifies it too (its own ratio test needs no other photos)
    alone = LM.LocalIndex(feats[4:5], LM.MatcherSettings(verify="pairwise"))
    assert alone.verify(query, 0, *alone.weights(query))[0] > 0
    with pytest.raises(ValueError, match="verify"):
        LM.MatcherSettings(verify="both")
    # mutual=True keeps, of those matches, the ones whose photo descriptor's nearest query descriptor is their own
    back = np.argmin(d, axis=0)[order[:, 0]] == np.arange(len(q))
    cv2.setRNGSeed(0)
    _, mask = cv2.findHomography(query.points[rows[ok & back]].reshape(-1, 1, 2),
                                 feats[4].points[order[ok & back, 0]].reshape(-1, 1, 2), cv2.RANSAC, 8.0)
    keep = mask.ravel() > 0
    mutual = LM.LocalIndex(feats, LM.MatcherSettings(shortlist=3, verify="pairwise", mutual=True))
    n2, v2 = mutual.verify(query, 4, *mutual.weights(query), norm=norm)
    assert 0 < n2 <= n and n2 == int(keep.sum()) and v2 == pytest.approx(float(w[ok & back][keep].sum()), rel=1e-5)
    assert LM.MatcherSettings.from_dict({"verify": "pairwise"}).mutual is False      # stored before the field
    with pytest.raises(ValueError, match="mutual"):
        LM.MatcherSettings(mutual="yes")
