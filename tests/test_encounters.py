"""Encounters (photos taken together) and splits that keep each one whole."""
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from nabi.data.encounters import encounter_keys, parse_rule, split_by_encounter
from nabi.data.exif import photo_time


def _photo(path, when=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (8, 8), (120, 80, 40))
    if when is None:
        img.save(path)
    else:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[36867] = when.strftime("%Y:%m:%d %H:%M:%S")
        img.save(path, exif=exif)
    return path


def test_name_rule_takes_the_first_number_after_a_prefix(tmp_path):
    names = ["275_leftphoto.jpg", "275_rightphoto.jpg", "train_14_leftphoto.jpg", "test_14_rightphoto.jpg",
             "cat.jpg"]
    keys = encounter_keys([tmp_path / n for n in names], "name")
    assert keys[:4] == ["275", "275", "14", "14"]
    assert keys[4] == "photo:cat.jpg"               # no number: a photo of its own, never grouped by accident


def test_name_rule_with_a_regex(tmp_path):
    keys = encounter_keys([tmp_path / "2024-05-01_a.jpg", tmp_path / "2024-05-01_b.jpg", tmp_path / "x.jpg"],
                          r"name:^(\d{4}-\d{2}-\d{2})_")
    assert keys == ["2024-05-01", "2024-05-01", "photo:x.jpg"]


@pytest.mark.parametrize("rule, message", [("nonsense", "unknown encounter rule"),
                                           ("name:(", "is not a regular expression"),
                                           ("name:abc", "needs one group"), (None, "must be one of")])
def test_bad_rules_are_refused_by_name(rule, message):
    with pytest.raises(ValueError, match=message):
        parse_rule(rule)


def test_folder_rule_and_auto_detect_sub_folders(tmp_path):
    ind = tmp_path / "Nala"
    paths = [_photo(ind / "2024-05-01" / "a.png"), _photo(ind / "2024-05-01" / "b.png"),
             _photo(ind / "2024-06-11" / "c.png"), _photo(ind / "d.png")]
    for rule in ("folder", "auto"):
        keys = encounter_keys(paths, rule, individual_dir=ind)
        assert keys[0] == keys[1] != keys[2] and keys[3] == "photo:d.png"


def test_time_rule_groups_photos_within_the_gap(tmp_path):
    t = datetime(2024, 5, 1, 8, 0, 0)
    paths = [_photo(tmp_path / f"{i}.jpg", when) for i, when in enumerate(
        [t, t.replace(minute=20), t.replace(minute=45), t.replace(hour=12), None])]
    assert photo_time(paths[0]) == t and photo_time(paths[4]) is None
    keys = encounter_keys(paths, "time", gap_minutes=30)
    assert keys[0] == keys[1] == keys[2]             # 8:00, 8:20, 8:45: each within 30 min of the previous
    assert keys[3] != keys[0] and keys[4] == "photo:4.jpg"
    assert len(set(encounter_keys(paths, "time", gap_minutes=10))) == 5
    # auto: every photo needs a time for the time rule; else each photo is alone
    assert encounter_keys(paths[:4], "auto") == keys[:4]
    assert encounter_keys(paths, "auto") == [f"photo:{p.name}" for p in paths]


def test_split_keeps_each_encounter_on_one_side():
    rng = np.random.default_rng(0)
    labels, keys = [], []
    for ind in range(6):
        for enc in range(int(rng.integers(2, 9))):
            for _ in range(int(rng.integers(1, 4))):
                labels.append(f"i{ind}")
                keys.append(f"{ind}-{enc}")
    a, b = split_by_encounter(labels, keys, (0.5, 0.5), seed=3)
    assert len(a) + len(b) == len(labels) and not set(a) & set(b)
    side = {}
    for part, idx in (("a", a), ("b", b)):
        for i in idx:
            assert side.setdefault(keys[i], part) == part           # an encounter never on both sides
    for ind in set(labels):
        enc = {keys[i] for i in range(len(labels)) if labels[i] == ind}
        in_a = {keys[i] for i in a if labels[i] == ind}
        assert abs(len(in_a) - len(enc) / 2) <= 0.5 and 0 < len(in_a) < len(enc)    # about half, both sides used
    again = split_by_encounter(labels, keys, (0.5, 0.5), seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((a, b), again))
    other = split_by_encounter(labels, keys, (0.5, 0.5), seed=4)
    assert not np.array_equal(a, other[0])


def test_split_checks_its_arguments():
    with pytest.raises(ValueError, match="summing to 1"):
        split_by_encounter(["a"], ["1"], (0.5, 0.6))
    with pytest.raises(ValueError, match="both be"):
        split_by_encounter(["a", "b"], ["1"], (0.5, 0.5))


def _encounter_folder(root, individuals=3, encounters=5, per=2):
    """``root/<individual>/<e>_<k>.png``: ``per`` photos of each encounter, coloured by individual."""
    for i in range(individuals):
        for e in range(encounters):
            for k in range(per):
                img = Image.new("RGB", (8, 8), (40 * i, 10 * e, 5 * k))
                (root / f"ind{i}").mkdir(parents=True, exist_ok=True)
                img.save(root / f"ind{i}" / f"{100 + e}_{k}.png")
    return root


def _encounters_of(ds, idx):
    return {(ds.classes[ds.samples[i][1]], ds.samples[i][0].split("/")[-1].split("_")[0]) for i in idx}


def test_training_splits_keep_encounters_whole(tmp_path):
    from nabi.data.prepare import load_datasets
    root = _encounter_folder(tmp_path / "photos")
    plain = load_datasets(str(root), image_size=8, val_ratio=0.2, test_ratio=0.2, seed=3)
    kept = load_datasets(str(root), image_size=8, val_ratio=0.2, test_ratio=0.2, seed=3, encounters="name")
    full = kept["train"].dataset
    sides = {name: _encounters_of(full, kept[name].indices) for name in ("train", "val", "test")}
    assert sides["train"] and sides["val"] and sides["test"]
    assert not (sides["train"] & sides["val"]) and not (sides["train"] & sides["test"]) \
        and not (sides["val"] & sides["test"])                     # no encounter on two sides
    assert sum(len(kept[n]) for n in ("train", "val", "test")) == len(full)
    for name in ("val", "test"):                                   # both photos of an encounter go together
        assert len(kept[name]) == 2 * len(sides[name])
    # the plain split (the default) is the stratified one it always was, and here it does cut encounters
    plain_sides = {n: _encounters_of(plain["train"].dataset, plain[n].indices) for n in ("train", "test")}
    assert plain_sides["train"] & plain_sides["test"]


def test_encounters_setting_is_a_flag_and_is_checked(tmp_path):
    from nabi.cli.main import main
    from nabi.training.config import TrainConfig, check
    from nabi.training.rules import BadArgument
    check(TrainConfig(data="embedded:mnist5k", encounters="name:^(\\d+)_"))
    with pytest.raises(BadArgument, match="encounters"):
        check(TrainConfig(data="embedded:mnist5k", encounters="by-day"))
    root = _encounter_folder(tmp_path / "photos")
    out = tmp_path / "run"
    rc = main(["train", str(root), "--model", "lenet5", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
               "--encounters", "name", "--val-ratio", "0.2", "--test-ratio", "0.2", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    import json
    assert json.loads((out / "config.json").read_text())["encounters"] == "name"
    # eval on the same folder scores the run's own test photos: the encounter-kept split, made again
    from nabi.data.prepare import load_datasets
    from nabi.runs import load_run, scoring_scope
    _, meta = load_run(out)
    test, note = scoring_scope(meta, root)
    expected = load_datasets(str(root), image_size=32, val_ratio=0.2, test_ratio=0.2, seed=0, encounters="name")
    assert sorted(test.dataset.samples[i][0] for i in test.indices) == \
        sorted(expected["test"].dataset.samples[i][0] for i in expected["test"].indices)
    assert "held out" in note


def test_embedding_validation_keeps_encounters_whole():
    from nabi.reid.train import split_gallery_queries
    targets = [0] * 6 + [1] * 6
    paths = [f"/x/{t}/{e}_{k}.png" for t in (0, 1) for e in (1, 2, 3) for k in (0, 1)]
    g, q = split_gallery_queries(targets, 0, paths, "name")
    enc = lambda i: (targets[i], paths[i].split("/")[-1].split("_")[0])   # noqa: E731
    assert not ({enc(i) for i in g} & {enc(i) for i in q})
    assert len(g) + len(q) == 12 and len(q) > 0
