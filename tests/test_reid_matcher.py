"""Local-feature matcher: RootSIFT, ratio test, RANSAC; fusion with the embedding similarity in the gallery."""
import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from nabi.reid import matcher as LM  # noqa: E402


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
    pts, desc = LM.rootsift(view(0, 0))
    assert len(pts) > 20 and desc.shape == (len(pts), 128)
    np.testing.assert_allclose((desc ** 2).sum(1), 1.0, rtol=1e-5)       # √(d/‖d‖₁) has unit L2 norm


def test_same_individual_has_more_inliers():
    f = {(i, j): LM.rootsift(view(i, j)) for i in range(3) for j in range(2)}
    same = [LM.inliers(f[i, 0], f[i, 1]) for i in range(3)]
    other = [LM.inliers(f[i, 0], f[(i + 1) % 3, 1]) for i in range(3)]
    assert min(same) >= 20 and max(other) <= 10, (same, other)      # chance RANSAC fits stay small


def test_inliers_of_featureless_photos_is_zero():
    blank = LM.rootsift(np.zeros((64, 64), np.uint8))
    assert LM.inliers(blank, LM.rootsift(view(0, 0))) == 0


def test_individual_evidence_sums_the_best_photos_beyond_chance():
    n = np.array([[3.0, 17.0, 12.0, np.nan], [np.nan, np.nan, np.nan, np.nan]])
    ev = LM.individual_evidence(n, top=2)
    assert ev[0] == pytest.approx(np.log1p((17 - 7) + (12 - 7))) and np.isnan(ev[1])
    assert LM.individual_evidence(n[:1], top=1)[0] == pytest.approx(np.log1p(10))
    assert LM.individual_evidence([[4.0, 6.0]])[0] == 0.0                    # chance-level fits are no evidence
    np.testing.assert_allclose(LM.photo_evidence([0, 7, 8]), [0, 0, np.log(2)])


def test_matcher_settings_are_checked():
    with pytest.raises(ValueError, match="ratio must be in"):
        LM.LocalMatcher(ratio=1.5)
    with pytest.raises(ValueError, match="nfeatures must be an integer ≥ 1, got 0"):
        LM.LocalMatcher(nfeatures=0)
    with pytest.raises(ValueError, match="max_photos must be an integer"):
        LM.LocalMatcher(max_photos=2.5)
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4, 5\)"):
        LM.rootsift(np.zeros((2, 3, 4, 5), np.uint8))


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
    """A gallery of four coats, two photos each, with an embedding barely trained (one step): the coats are
    told apart by their keypoints, hardly by the embedding."""
    from nabi.cli import main
    from nabi.reid.gallery import Gallery
    root = tmp_path_factory.mktemp("coats")
    train = write_coats(root / "train", range(10, 14), range(3))
    assert main(["--threads", "1", "train", str(train), "--model", "cifar_cnn", "--head", "arcface",
                 "--embedding-dim", "8", "--iterations", "1", "--batch-size", "8", "--k", "2", "--image-size", "32",
                 "--out", str(root / "run"), "--no-progress", "--val-ratio", "0"]) == 0
    g = Gallery.build(root / "run", write_coats(root / "enrol", range(4), range(2)), root / "g")
    return root, g


def test_matcher_alone_ranks_every_individual(coat_gallery):
    root, g = coat_gallery
    queries = write_coats(root / "queries", range(4), [5, 6])
    write_coats(queries, [7, 8], [0])
    res = g.evaluate(queries, matcher=LM.LocalMatcher())
    assert res["matcher"]["rank1"] == 1.0 and res["matcher"]["auroc"] == 1.0     # keypoints alone, all 4 ranked
    assert res["matcher"]["mAP"] == 1.0 and "fused" not in res                 # no fusion before calibration


def test_identify_with_matcher_needs_its_calibration(coat_gallery):
    _, g = coat_gallery
    g.calibration = None
    with pytest.raises(ValueError, match="no calibration with the local-feature matcher"):
        g.identify([view(0, 9)], matcher=LM.LocalMatcher())


def test_fusion_calibrated_on_gallery_photos_only(coat_gallery):
    root, g = coat_gallery
    m = LM.LocalMatcher()
    summary, _ = g.calibrate(None, target_far=0.0, matcher=m)       # leave-one-out over the 8 enrolled photos
    fu = summary["fusion"]
    assert summary["validation"].startswith("leave-one-out") and summary["known_queries"] == 8
    assert summary["unknown_queries"] == 8 and len(fu["selection"]) == 11
    best = max(fu["selection"], key=lambda r: (r["rank1"] + r["auroc"]) / 2)
    assert fu["weight"] > 0 and (best["rank1"] + best["auroc"]) / 2 == pytest.approx(
        next((r["rank1"] + r["auroc"]) / 2 for r in fu["selection"] if r["weight"] == fu["weight"]))
    queries = write_coats(root / "queries2", range(4), [7])
    write_coats(queries, [8, 9], [1])
    res = g.evaluate(queries, matcher=m)
    assert res["fused"]["weight"] == fu["weight"]                 # the queries never choose the weight
    assert res["fused"]["rank1"] == 1.0 and res["fused"]["auroc"] == 1.0
    out = g.identify([view(2, 9), view(9, 0)], matcher=m)
    assert out[0]["answer"] == "known" and out[0]["name"] == "coat2"
    assert out[0]["candidates"][0]["inliers"] >= 10 and len(out[0]["candidates"]) == 4
    assert out[1]["answer"] == "unknown"
    with pytest.raises(ValueError, match="calibrated with matcher settings"):
        g.identify([view(2, 9)], matcher=LM.LocalMatcher(nfeatures=300))


def test_cli_evaluate_prints_each_scorer(coat_gallery, capsys):
    from nabi.cli import main
    root, g = coat_gallery
    val = write_coats(root / "val_cli", range(4), [11])
    write_coats(val, [12], [0, 1])
    assert main(["gallery", "calibrate", str(g.path), str(val), "--matcher", "--target-far", "0"]) == 0
    assert "with local-feature matching: weight" in capsys.readouterr().out
    queries = write_coats(root / "queries_cli", range(4), [13])
    assert main(["gallery", "evaluate", str(g.path), str(queries), "--matcher"]) == 0
    out = capsys.readouterr().out
    assert "local-feature matcher alone:" in out and "embedding and matcher fused (weight" in out
    assert out.count("rank-1") == 3
