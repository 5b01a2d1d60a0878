"""Background descriptors for LNBNN: the file (round trip, damage, wrong files), and the index's weights with a
background equal to their definition (the (k + 1)-th neighbour over gallery and background; the background
never votes)."""
import json

import numpy as np
import pytest

pytest.importorskip("cv2")

from nabi.reid import background as BG  # noqa: E402
from nabi.reid import matcher as LM  # noqa: E402
from nabi.reid.local_features import Features  # noqa: E402


def _unit_positive(rng, n, dim=16):
    """Rows like RootSIFT's: non-negative, unit length."""
    d = np.abs(rng.normal(size=(n, dim)))
    return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


def _features(rng, n_photos, per_photo=30, dim=16):
    return [Features(rng.uniform(0, 100, (per_photo, 2)).astype(np.float32), _unit_positive(rng, per_photo, dim))
            for _ in range(n_photos)]


def _naive_weights(query, feats, background, k):
    """Per query descriptor: the gallery's k nearest and their weights, the (k + 1)-th taken over gallery ∪
    background, one descriptor at a time."""
    gallery = np.concatenate([f.descriptors for f in feats]).astype(np.float64)
    out = []
    for q in query.descriptors.astype(np.float64):
        dg = np.sort(np.linalg.norm(gallery - q, axis=1))
        pool = dg[:k + 1] if background is None else np.concatenate([dg, np.linalg.norm(background - q, axis=1)])
        norm = np.sort(pool)[k]
        out.append(np.maximum(norm - dg[:k], 0.0))
    return np.array(out)


def _index_with(tmp_path, feats, bg, k=3, name="bg.safetensors"):
    BG.save_background(tmp_path / name, bg, {"command": "test"})
    return LM.LocalIndex(feats, LM.MatcherSettings(k=k, index="exact", background=str(tmp_path / name)))


def test_background_file_round_trips_within_its_rounding(tmp_path):
    rng = np.random.default_rng(0)
    d = _unit_positive(rng, 200, 128)
    BG.save_background(tmp_path / "b.safetensors", d, {"command": "make it"})
    got = BG.load_background(str(tmp_path / "b.safetensors"))
    assert got.shape == d.shape and got.dtype == np.float32 and not got.flags.writeable
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert np.abs(got - d).max() < 2.0 / BG.SCALE                       # uint8 rounding, renormalised
    meta = json.loads((tmp_path / "b.json").read_text())
    assert meta["format"] == BG.FORMAT and meta["count"] == 200 and meta["command"] == "make it"
    assert BG.load_background("none") is None


def test_background_files_that_are_not_one_are_refused_by_name(tmp_path):
    from nabi.files.weight_files import save_weights
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        BG.load_background(str(tmp_path / "missing.safetensors"))
    save_weights(tmp_path / "w.safetensors", {"descriptors": np.zeros((3, 4), np.uint8)}, {"format": "other"})
    with pytest.raises(ValueError, match="w.safetensors is not a nabi background file"):
        BG.load_background(str(tmp_path / "w.safetensors"))
    BG.save_background(tmp_path / "b.safetensors", _unit_positive(np.random.default_rng(1), 10), {})
    blob = bytearray((tmp_path / "b.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (tmp_path / "b.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="b.safetensors"):
        BG.load_background(str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BG.save_background(tmp_path / "neg.safetensors", -np.ones((2, 4)), {})
    with pytest.raises(ValueError, match="at least one descriptor"):
        BG.save_background(tmp_path / "none.safetensors", np.zeros((0, 4)), {})
    assert not (tmp_path / "neg.safetensors").exists() and not (tmp_path / "none.safetensors").exists()


def test_weights_with_a_background_equal_their_definition(tmp_path):
    rng = np.random.default_rng(2)
    feats = _features(rng, 6)
    bg = _unit_positive(rng, 300)
    index = _index_with(tmp_path, feats, bg)
    plain = LM.LocalIndex(feats, LM.MatcherSettings(k=3, index="exact"))
    query = _features(rng, 1)[0]
    rows, idx, w = index.weights(query)
    stored = BG.load_background(str(tmp_path / "bg.safetensors"))          # the rounded descriptors searched
    np.testing.assert_allclose(w, _naive_weights(query, feats, stored, 3)[rows], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(idx, plain.weights(query)[1])              # the same gallery neighbours vote
    assert (w <= plain.weights(query)[2] + 1e-6).all()                      # a background only lowers weights
    assert (w < plain.weights(query)[2] - 1e-6).any()


def test_a_far_background_changes_nothing_and_a_close_one_silences_habitat(tmp_path):
    rng = np.random.default_rng(3)
    feats = _features(rng, 6)
    owners = np.repeat(np.arange(3), 2)
    query = Features(feats[0].points, feats[0].descriptors + np.float32(0.01))   # photo 0 seen again
    plain = LM.LocalIndex(feats, LM.MatcherSettings(k=3, index="exact"))
    far = np.zeros((50, 16), np.float32)
    far[:, 0] = 1.0                                                           # one corner of the sphere
    far_index = _index_with(tmp_path, feats, far, name="far.safetensors")
    far_q = Features(query.points, np.where(np.arange(16) == 0, 0.0, query.descriptors).astype(np.float32))
    np.testing.assert_allclose(far_index.lnbnn(far_q, owners, 3)[0], plain.lnbnn(far_q, owners, 3)[0], rtol=1e-6)
    # each query descriptor found as close, and more than k times, in the background (habitat every animal
    # shows): its votes weigh next to nothing
    copies = np.concatenate([np.abs(query.descriptors + rng.normal(0, 0.002, query.descriptors.shape))
                             for _ in range(4)])
    close = _index_with(tmp_path, feats, copies / np.linalg.norm(copies, axis=1, keepdims=True),
                        name="close.safetensors")
    assert plain.lnbnn(query, owners, 3)[0][0] > 0
    assert close.lnbnn(query, owners, 3)[0][0] < 0.2 * plain.lnbnn(query, owners, 3)[0][0]


def test_a_large_background_is_searched_with_a_tree_that_agrees(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    feats = _features(rng, 6, dim=16)
    bg = _unit_positive(rng, 3000, 16)
    index = _index_with(tmp_path, feats, bg)
    query = _features(rng, 1)[0]
    exact = index.weights(query)[2]
    monkeypatch.setattr(LM, "EXACT_LIMIT", 1000)                              # the background is now "large"
    tree = LM.LocalIndex(feats, LM.MatcherSettings(k=3, index="exact", checks=4096,
                                                   background=str(tmp_path / "bg.safetensors"))).weights(query)[2]
    np.testing.assert_allclose(tree, exact, rtol=1e-4, atol=1e-5)


def test_background_setting_is_checked_and_old_settings_read_as_none():
    assert LM.MatcherSettings.from_dict({"k": 4}).background == "none"
    with pytest.raises(ValueError, match="background"):
        LM.MatcherSettings(background="")
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        LM.LocalIndex(_features(np.random.default_rng(5), 2), LM.MatcherSettings(
            background="nowhere.safetensors")).weights(_features(np.random.default_rng(6), 1)[0])


def test_a_background_is_built_from_photos_of_other_animals(tmp_path):
    from tests.test_reid_matcher import write_coats
    write_coats(tmp_path / "others", range(3), range(2))
    d, meta = BG.build_background(tmp_path / "others", per_photo=20, limit=50)
    assert d.shape == (50, 128) and meta["photos"] == 6 and meta["individuals"] == 3
    with pytest.raises(ValueError, match="RootSIFT"):
        from nabi.reid.local_features import LocalSettings
        BG.build_background(tmp_path / "others", LocalSettings(descriptor="learned"))


def test_a_background_of_other_descriptors_is_refused(tmp_path):
    rng = np.random.default_rng(7)
    index = _index_with(tmp_path, _features(rng, 3, dim=16), _unit_positive(rng, 50, 32))
    with pytest.raises(ValueError, match="32-d descriptors and the gallery 16-d"):
        index.weights(_features(rng, 1, dim=16)[0])


def test_the_background_maker_leaves_the_excluded_individuals_out(tmp_path):
    from benchmarks.reid_background import main
    from tests.test_reid_matcher import write_coats
    write_coats(tmp_path / "all", range(4), range(2))
    (tmp_path / "calibration" / "coat0").mkdir(parents=True)          # coat0 calibrates: not "anybody"
    main([str(tmp_path / "all"), str(tmp_path / "bg.safetensors"), "--exclude", str(tmp_path / "calibration"),
          "--per-photo", "10"])
    meta = json.loads((tmp_path / "bg.json").read_text())
    assert meta["individuals"] == 3 and meta["photos"] == 6 and meta["excluded"] == 1
    assert meta["command"].startswith("python -m benchmarks.reid_background")
    assert BG.load_background(str(tmp_path / "bg.safetensors")).shape == (60, 128)
