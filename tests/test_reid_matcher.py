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


def test_fusion_weight_by_auroc():
    known = [[(0.80, 40)], [(0.75, 30), (0.9, 0)], [(0.70, 25)]]     # each query: its candidates
    unknown = [[(0.82, 0)], [(0.60, 2)], [(0.65, 1)]]    # embedding alone ranks an unknown on top
    w, auc = LM.fit_fusion_weight(known, unknown)
    assert w > 0 and auc == 1.0
    assert LM.fit_fusion_weight([[(0.9, 0)]], [[(0.1, 0)]]) == (0.0, 1.0)    # ties go to the smaller weight


def test_gallery_identify_with_matcher(tmp_path):
    from PIL import Image

    from nabi.cli import main
    from nabi.reid.gallery import Gallery

    def write(root, ids, js):
        for i in ids:
            d = root / f"coat{i}"
            d.mkdir(parents=True, exist_ok=True)
            for j in js:
                Image.fromarray(view(i, j)).save(d / f"{j}.png")
        return root
    train = write(tmp_path / "train", range(10, 14), range(3))
    assert main(["--threads", "1", "train", str(train), "--model", "cifar_cnn", "--head", "arcface",
                 "--embedding-dim", "8", "--iterations", "1", "--batch-size", "8", "--k", "2", "--image-size", "32",
                 "--out", str(tmp_path / "run"), "--no-progress", "--val-ratio", "0"]) == 0
    g = Gallery.build(tmp_path / "run", write(tmp_path / "enrol", range(4), range(2)), tmp_path / "g")
    val = write(tmp_path / "val", range(4), [5])
    write(val, [7, 8], [0, 1])
    summary, _ = g.calibrate(val, target_far=0.0, matcher=LM.LocalMatcher())
    fu = summary["fusion"]
    assert fu["auroc"] >= summary["auroc"] and fu["auroc"] == 1.0 and fu["far"] == 0.0
    res = g.identify([view(2, 9), view(9, 0)], matcher=LM.LocalMatcher())
    assert res[0]["answer"] == "known" and res[0]["name"] == "coat2"
    assert res[0]["candidates"][0]["inliers"] >= 10
    assert res[1]["answer"] == "unknown"
