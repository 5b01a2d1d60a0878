"""Learned local descriptors: keypoint patches, mining training pairs, training (``nabi train-descriptor``), and
describing photos with the result. Every photo here is drawn by the test (a random texture seen under
homographies); the real photos are used only under the ``shared_data`` marker."""
import json
import math

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from nabi.reid import descriptor_data as DD  # noqa: E402
from nabi.reid.descriptor_train import fpr_at_recall, pair_scores, run_descriptor_training  # noqa: E402
from nabi.reid.descriptors import PatchDescriptor, default_path, learned_features  # noqa: E402
from nabi.reid.local_features import LocalSettings, extract  # noqa: E402
from nabi.reid.matcher import inliers  # noqa: E402
from nabi.reid.patches import extract_patches, keypoint_array, patch_frames, standardise  # noqa: E402


def texture(rng, h, w):
    """A grey texture with blobs at several scales: SIFT finds many keypoints in it."""
    img = np.zeros((h, w), np.float32)
    for sigma in (1.5, 3.0, 6.0):
        img += cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma) * sigma
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.uint8)


def view(base, rng, size=(200, 160)):
    """A photo of ``base``: a mild random homography, cropped to ``size``, in other light."""
    w, h = size
    H = DD.random_homography(rng, base.shape[1], base.shape[0])
    H = np.array([[1, 0, -(base.shape[1] - w) / 2], [0, 1, -(base.shape[0] - h) / 2], [0, 0, 1]]) @ H
    photo = cv2.warpPerspective(base, H, (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.clip(photo.astype(np.float32) * rng.uniform(0.8, 1.1) + rng.uniform(-15, 15), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Three individuals (one texture each), three photos of each."""
    root = tmp_path_factory.mktemp("individuals")
    rng = np.random.default_rng(0)
    for name in ("ana", "bo", "cy"):
        base = texture(rng, 260, 220)
        (root / name).mkdir()
        for k in range(3):
            cv2.imwrite(str(root / name / f"{k}_photo.png"), view(base, rng))
    return root


# -- patches -------------------------------------------------------------------------------------------------
def test_patches_equal_warp_affine_for_each_keypoint():
    rng = np.random.default_rng(1)
    img = texture(rng, 120, 150)
    kp = np.array([[40.3, 50.7, 3.0, 30.0], [75.0, 60.0, 5.0, 290.0], [90.5, 70.2, 2.0, 0.0]])   # level 0
    got = extract_patches(img, kp)
    for k in range(len(kp)):
        want = cv2.warpAffine(img, patch_frames(kp[k:k + 1])[0], (32, 32),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        assert np.abs(got[k].astype(int) - want).max() <= 1          # the same bilinear sampling (fixed-point)
    big = np.array([[75.0, 60.0, 12.0, 45.0]])                          # spacing 2.25 px: pyramid level 1
    A = patch_frames(big)[0] / 2.0
    A[:, 2] += 0.25 - 0.5
    want = cv2.warpAffine(cv2.pyrDown(img), A, (32, 32), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(extract_patches(img, big)[0].astype(int) - want).max() <= 1


def test_patches_turn_and_scale_with_the_keypoint():
    rng = np.random.default_rng(2)
    img = texture(rng, 120, 160)
    h = img.shape[0]
    kp = np.array([[60.0, 50.0, 4.0, 20.0], [100.0, 70.0, 3.0, 200.0]])
    turned = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)                   # (x, y) → (h − 1 − y, x), angles + 90°
    kp_turned = np.column_stack([h - 1 - kp[:, 1], kp[:, 0], kp[:, 2], (kp[:, 3] + 90) % 360])
    diff = extract_patches(img, kp).astype(int) - extract_patches(turned, kp_turned)
    assert np.abs(diff).max() <= 2
    doubled = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    kp_doubled = np.column_stack([kp[:, 0] * 2 + 0.5, kp[:, 1] * 2 + 0.5, kp[:, 2] * 2, kp[:, 3]])
    a, b = standardise(extract_patches(img, kp)), standardise(extract_patches(doubled, kp_doubled))
    assert min(float((a[k] * b[k]).mean()) for k in range(len(kp))) > 0.9    # correlation of the two samplings


def test_opencv_sift_angles_follow_the_patch_convention():
    """SIFT on a photo and on the photo turned 90° clockwise: a keypoint found in both has its angle 90° larger
    in the turned one, as ``nabi.reid.patches`` assumes, and the two patches agree."""
    img = texture(np.random.default_rng(3), 200, 240)
    sift = cv2.SIFT_create(500)
    kp1 = keypoint_array(sift.detect(img, None))
    turned = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    kp2 = keypoint_array(sift.detect(turned, None))
    moved = np.column_stack([img.shape[0] - 1 - kp1[:, 1], kp1[:, 0]])
    d = np.linalg.norm(moved[:, None] - kp2[None, :, :2], axis=2)
    gap = (kp2[None, :, 3] - kp1[:, None, 3] - 90.0) % 360.0
    gap = np.minimum(gap, 360 - gap)
    same = (d < 0.5) & (np.abs(kp2[None, :, 2] - kp1[:, None, 2]) < 0.05 * kp1[:, None, 2])
    i, j = np.nonzero(same & (gap < 5))
    i_wrong, _ = np.nonzero(same & (np.minimum((kp2[None, :, 3] - kp1[:, None, 3] + 90) % 360,
                                               360 - (kp2[None, :, 3] - kp1[:, None, 3] + 90) % 360) < 5))
    assert len(i) > 50 and len(i) > 5 * len(i_wrong)
    a = standardise(extract_patches(img, kp1[i]))
    b = standardise(extract_patches(turned, kp2[j]))
    assert np.median((a * b).mean(axis=(1, 2, 3))) > 0.9


def test_standardise_and_bad_input():
    p = np.random.default_rng(4).integers(0, 256, (3, 32, 32)).astype(np.uint8)
    p[2] = 7                                                             # a flat patch
    x = standardise(p)
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[:2].mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x[:2].std(axis=(1, 2, 3)), 1, atol=1e-4)
    assert (x[2] == 0).all()
    img = np.zeros((40, 40), np.uint8)
    with pytest.raises(ValueError, match="uint8 grey"):
        extract_patches(img.astype(np.float32), np.zeros((1, 4)) + 5)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        extract_patches(img, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="positive size"):
        extract_patches(img, np.array([[10.0, 10.0, 0.0, 0.0]]))
    assert extract_patches(img, np.zeros((0, 4))).shape == (0, 32, 32)


# -- mining pairs ----------------------------------------------------------------------------------------------
SMALL = dict(nfeatures=400, max_side=512, warps=1, pairs_per_warp=40, pairs_per_match=40, min_inliers=12)


def test_random_homography_projection_matches_opencv():
    rng = np.random.default_rng(5)
    H = DD.random_homography(rng, 200, 160)
    kp = np.array([[50.0, 40.0, 3.0, 10.0], [120.0, 90.0, 5.0, 300.0]])
    xy, scale, angle = DD.project(H, kp)
    np.testing.assert_allclose(xy, cv2.perspectiveTransform(kp[None, :, :2], H)[0], rtol=1e-9)
    step = 1e-4                                                          # the angle a small step along d turns to
    a = np.deg2rad(kp[:, 3])
    ahead = cv2.perspectiveTransform((kp[:, :2] + step * np.column_stack([np.cos(a), np.sin(a)]))[None], H)[0]
    turned = np.rad2deg(np.arctan2(ahead[:, 1] - xy[:, 1], ahead[:, 0] - xy[:, 0])) % 360
    np.testing.assert_allclose(angle, turned, atol=1e-3)
    assert (scale > 0.5).all() and (scale < 2).all()


def test_mined_pairs_show_one_point_twice(photo_folder, tmp_path):
    settings = DD.MiningSettings(**SMALL)
    pairs, path = DD.cached_pairs(photo_folder, settings, cache_dir=tmp_path, log=lambda *a: None)
    counts = pairs.counts()
    assert counts["warped"] > 50 and counts["matched"] > 20, counts
    assert pairs.patches.shape == (len(pairs), 2, 32, 32) and pairs.patches.dtype == np.uint8
    assert pairs.individuals == ["ana", "bo", "cy"] and len(pairs.paths) == 9
    names = [pairs.individuals[i] for i in pairs.individual]
    for (a, b), name in zip(pairs.photos, names):                      # both photos of a pair are its individual's
        assert pairs.paths[a].split("/")[-2] == pairs.paths[b].split("/")[-2] == name
    matched = pairs.source == DD.MATCHED
    assert (pairs.photos[matched, 0] != pairs.photos[matched, 1]).all()
    assert (pairs.photos[~matched, 0] == pairs.photos[~matched, 1]).all()
    x = standardise(pairs.patches.reshape(-1, 32, 32)).reshape(len(pairs), 2, -1)
    same = (x[:, 0] * x[:, 1]).mean(1)
    other = (x[:, 0] * np.roll(x[:, 1], 1, axis=0)).mean(1)
    for source in (DD.WARPED, DD.MATCHED):                               # a pair's patches agree, others do not
        assert np.median(same[pairs.source == source]) > 0.6 > 0.2 > np.median(other[pairs.source == source])
    # the second call reads the cache; a damaged cache file is mined again
    again, _ = DD.cached_pairs(photo_folder, settings, cache_dir=tmp_path, log=lambda *a: None)
    np.testing.assert_array_equal(again.patches, pairs.patches)
    kept = np.array(pairs.patches)                                       # the cache is memory-mapped: copy it first
    del pairs, again
    patches_file = path.with_name(path.name.replace(".json", ".patches.npy"))
    patches_file.write_bytes(patches_file.read_bytes()[:1000])
    assert DD.load_pairs(tmp_path, path.stem) is None
    third, _ = DD.cached_pairs(photo_folder, settings, cache_dir=tmp_path, log=lambda *a: None)
    np.testing.assert_array_equal(third.patches, kept)                    # mined again, the same pairs


def test_mining_refuses_bad_folders_and_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DD.list_photos(tmp_path / "missing")
    (tmp_path / "empty" / "ana").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        DD.list_photos(tmp_path / "empty")
    with pytest.raises(ValueError, match="min_inliers"):
        DD.MiningSettings(min_inliers=2).check()
    with pytest.raises(ValueError, match="ratio"):
        DD.MiningSettings(ratio=1.5).check()


# -- scores ----------------------------------------------------------------------------------------------------
def test_fpr_at_recall_and_pair_scores():
    assert fpr_at_recall(np.arange(100), np.array([0.5, 94.0, 95.0, 200.0])) == 0.5     # 95 % of positives ≤ 94.05
    rng = np.random.default_rng(6)
    a = rng.standard_normal((300, 8))
    good = pair_scores(a, a + 0.01 * rng.standard_normal(a.shape), batch=100)
    bad = pair_scores(a, rng.standard_normal(a.shape), batch=100)
    assert good["fpr95"] == 0 and good["match_top1"] == 1
    assert bad["fpr95"] > 0.8 and bad["match_top1"] < 0.1


# -- training and using the result -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair_cache(photo_folder, tmp_path_factory):
    """A cache folder holding the photos' mined pairs (mined once for the module)."""
    folder = tmp_path_factory.mktemp("pair_cache")
    DD.cached_pairs(photo_folder, DD.MiningSettings(**SMALL), cache_dir=folder, log=lambda *a: None)
    return folder


def _train(photo_folder, out, pair_cache, **kw):
    args = dict(width=2, embedding_dim=16, iterations=4, batch_size=16, lr=0.05, val_ratio=0.34,
                mining=DD.MiningSettings(**SMALL), cache_dir=pair_cache, checkpoint_every=2, progress=False,
                log=lambda *a: None)
    args.update(kw)
    return run_descriptor_training(photo_folder, out, **args)


@pytest.fixture(scope="module")
def trained(photo_folder, pair_cache, tmp_path_factory):
    """``(trainer, descriptor path)`` of a four-step run."""
    out = tmp_path_factory.mktemp("trained") / "run"
    return _train(photo_folder, out, pair_cache, command="nabi train-descriptor photos --out run")


def test_train_descriptor_writes_a_run_that_describes_keypoints(photo_folder, trained):
    trainer, path = trained
    out = path.parent
    assert path.name == "descriptor.safetensors"
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "descriptor.json", "checkpoints"):
        assert (out / name).exists(), name
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= row["val_fpr95"] <= 1 and 0 <= row["val_match_top1"] <= 1 and 0 <= row["train_acc"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert 0 <= config["descriptor"]["sift_val_fpr95"] <= 1
    meta = json.loads((out / "descriptor.json").read_text())
    assert meta["format"] == "nabi-descriptor" and meta["storage"] == "float16"
    assert meta["arch"] == {"name": "hardnet", "kwargs": {"width": 2, "embedding_dim": 16, "dropout": 0.3,
                                                          "init": "he_uniform"}}
    training = meta["training"]
    assert training["command"] == "nabi train-descriptor photos --out run" and training["iterations"] == 4
    assert training["validation_individuals"] and training["pairs"]["matched"] > 0 and training["date"]
    net = PatchDescriptor.load(path)
    img = cv2.imread(str(sorted(photo_folder.glob("ana/*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    kps = cv2.SIFT_create(200).detect(img, None)
    d = net.describe(img, kps)
    assert d.shape == (len(kps), 16) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    trainer.model.eval()                                                 # float16 storage: close to the float32 net
    want = trainer.model(standardise(extract_patches(img, kps)))
    np.testing.assert_allclose(d, want, atol=0.02)
    assert net.describe(img, []).shape == (0, 16)


def test_train_descriptor_resumes_a_killed_run_exactly(photo_folder, pair_cache, trained, tmp_path):
    """A run killed (SIGKILL) after its third step continues from its checkpoint of step 2 with --resume and ends
    with the weights of the run that was never stopped."""
    import os
    import subprocess
    import sys
    out = tmp_path / "run"
    code = ("import sys; from nabi.reid.descriptor_data import MiningSettings; "
            "from nabi.reid.descriptor_train import run_descriptor_training as r; "
            f"r(sys.argv[1], sys.argv[2], width=2, embedding_dim=16, iterations=4, batch_size=16, lr=0.05, "
            f"val_ratio=0.34, mining=MiningSettings(**{SMALL!r}), cache_dir=sys.argv[3], checkpoint_every=2, "
            f"progress=False)")
    killed = subprocess.run([sys.executable, "-c", code, str(photo_folder), str(out), str(pair_cache)],
                            env={**os.environ, "NABI_FAULT": "step:3"}, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert not (out / "descriptor.safetensors").exists()
    with pytest.raises(ValueError, match="already holds a run"):
        _train(photo_folder, out, pair_cache)
    trainer, path = _train(photo_folder, out, pair_cache, resume=True, command="nabi train-descriptor photos --out run")
    assert trainer.iteration == 4
    whole, _ = trained                                                   # the same run, never stopped
    for (name, a), b in zip(trainer.model.state_dict().items(), whole.model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    with pytest.raises(ValueError, match="batch-size"):
        _train(photo_folder, tmp_path / "other", pair_cache, batch_size=1)


def test_learned_features_are_found_at_rootsifts_keypoints(photo_folder, trained):
    _, path = trained
    photo = sorted(photo_folder.glob("bo/*.png"))[0]
    points, desc = learned_features(photo, nfeatures=300, descriptor=path)
    ref = extract(photo, LocalSettings(nfeatures=300))
    np.testing.assert_array_equal(points, ref.points)
    assert desc.shape == (len(points), 16) and desc.dtype == np.float32
    # the gallery's features with the learned descriptor: the same keypoints, described by the network
    mine = extract(photo, LocalSettings(nfeatures=300, descriptor=f"learned:{path}"))
    np.testing.assert_array_equal(mine.points, ref.points)
    np.testing.assert_allclose(mine.descriptors, desc, atol=1e-6)
    assert inliers(mine, mine) == len(mine)       # a photo matches itself everywhere
    blank = np.full((60, 60), 128, np.uint8)
    p, d = learned_features(blank, descriptor=path)
    assert p.shape == (0, 2) and d.shape == (0, 16)


def test_descriptor_files_are_checked(trained, tmp_path):
    _, path = trained
    with pytest.raises(FileNotFoundError, match="not found"):
        PatchDescriptor.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="not a nabi descriptor"):
        PatchDescriptor.load(path.parent / "model.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:-100])
    (tmp_path / "damaged.json").write_text((path.parent / "descriptor.json").read_text())
    with pytest.raises(ValueError, match="damaged.safetensors"):
        PatchDescriptor.load(damaged)


def test_command_line(photo_folder, pair_cache, tmp_path, capsys):
    from nabi.cli.main import build_parser
    parser = build_parser()
    args = parser.parse_args(["train-descriptor", str(photo_folder), "--out", str(tmp_path / "run"), "--width", "2",
                              "--iterations", "2", "--batch-size", "16", "--val-ratio", "0.34", "--warps", "1",
                              "--nfeatures", "400", "--pairs-per-warp", "40", "--pairs-per-match", "40",
                              "--min-inliers", "12", "--cache-dir", str(pair_cache), "--no-progress"])
    assert args.func(args) == 0
    assert "descriptor.safetensors" in capsys.readouterr().out
    assert PatchDescriptor.load(tmp_path / "run" / "descriptor.safetensors").dim == 128
    from nabi.cli.main import main
    for bad, flag in ((["--width", "0"], "--width"), (["--lr", "-1"], "--lr"), (["--val-ratio", "1.5"], "--val-ratio"),
                      (["--min-inliers", "3"], "--min-inliers")):
        assert main(["train-descriptor", "p", "--out", str(tmp_path / "o"), *bad]) == 1    # refused, naming the flag
        assert flag in capsys.readouterr().err
    with pytest.raises(SystemExit):                                                    # not a number: a usage error
        parser.parse_args(["train-descriptor", "p", "--out", "o", "--iterations", "x"])
    assert not (tmp_path / "o").exists()
    assert "--matched-repeats" in parser._subparsers._group_actions[0].choices["train-descriptor"].format_help()
    assert "train-descriptor" in parser.format_help()


# -- the shipped descriptor ------------------------------------------------------------------------------------
def test_shipped_descriptor_is_small_loads_and_is_packaged():
    path = default_path()
    assert path.stat().st_size < 3_000_000
    net = PatchDescriptor.load()
    meta = net.metadata
    assert meta["format"] == "nabi-descriptor" and net.dim == 128
    assert meta["training"]["command"].startswith("nabi train-descriptor") and meta["training"]["commit"]
    import fnmatch
    from pathlib import Path
    try:
        import tomllib
    except ModuleNotFoundError:                                         # Python 3.10
        import tomli as tomllib
    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["nabi.reid"]
    for shipped in (path, path.with_suffix(".json")):                  # both files go into the wheel
        assert any(fnmatch.fnmatch(f"data/{shipped.name}", p) for p in patterns), shipped.name
    patches = np.random.default_rng(7).integers(0, 256, (5, 32, 32)).astype(np.uint8)
    d = net.describe_patches(patches)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)


# -- real photos -----------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_shipped_descriptor_matches_a_real_photo_to_its_warped_copy(nabi_data_dir):
    photos = sorted((nabi_data_dir / "nyala_dev").glob("*/*.jpg"))
    if not photos:
        pytest.skip("no nyala_dev photos under NABI_DATA_DIR")
    from nabi.reid.matcher import _gray
    gray = _gray(photos[0])
    H = DD.random_homography(np.random.default_rng(8), gray.shape[1], gray.shape[0])
    warped = cv2.warpPerspective(gray, H, (gray.shape[1], gray.shape[0]))
    a, b = learned_features(gray), learned_features(warped)
    assert len(a[0]) > 500
    assert inliers(a, b) > 50
    assert math.isfinite(float(a[1].sum()))
