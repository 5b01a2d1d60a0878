"""Background kinds: ``background/<kind>/`` folders as classes of their own in image folders, ``nabi train``
and ``nabi eval``, and P1–P4 counting every kind as background (on tiny photos the tests write).

P1: accuracy on every test photo (a background photo is right when called background); P2: accuracy on the
animal photos only; P3: accuracy on the animal photos not called background; P4: accuracy on the animal
photos with the background output(s) ignored (see ``nabi.evaluate``)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nabi import data as D
from nabi import evaluate as E
from nabi.cli import main
from nabi.data.background import background_kinds, expand_background_kinds, is_background
from nabi.data.prepare import folder_classes, load_datasets
from nabi.explain import masked_evaluation

COLOURS = {"aaa": (220, 40, 40), "bbb": (40, 70, 220), "background": (120, 120, 120),
           "background/trees": (30, 140, 40), "background/pavement": (200, 200, 200)}


def _write(folder, n, colour, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for j in range(n):
        img = np.clip(np.array(colour) + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{j:02d}.png")


def make_folder(root, per_class=5, direct=2, kinds=("trees", "pavement")):
    """root/aaa, root/bbb (individuals), root/background/ with ``direct`` photos in it and ``per_class`` in
    each ``kinds`` sub-folder."""
    root = Path(root)
    _write(root / "aaa", per_class, COLOURS["aaa"], 1)
    _write(root / "bbb", per_class, COLOURS["bbb"], 2)
    if direct:
        _write(root / "background", direct, COLOURS["background"], 3)
    for i, k in enumerate(kinds):
        _write(root / "background" / k, per_class, COLOURS.get(f"background/{k}", (90, 60, 30)), 4 + i)
    return root


# -- names ----------------------------------------------------------------------------------------------------
def test_names_of_background_classes():
    assert is_background("background") and is_background("background/trees")
    assert not is_background("backgrounds") and not is_background("tom") and not is_background(None)
    assert is_background("배경/나무", "배경") and not is_background("background/trees", "배경")
    assert background_kinds(["aaa", "background", "background/trees", "bbb"]) == ["trees"]


# -- image folders ------------------------------------------------------------------------------------------------
def test_image_folder_gives_each_kind_a_class(tmp_path):
    root = make_folder(tmp_path / "d")
    split = D.ImageFolder(root, background_kinds=True)
    assert split.classes == ["aaa", "background", "background/pavement", "background/trees", "bbb"]
    counts = np.bincount(split.targets, minlength=5).tolist()
    assert counts == [5, 2, 5, 5, 5]
    for path, label in split.samples:           # every photo sits in its class's folder
        rel = Path(path).relative_to(root).parent.as_posix()
        assert rel == split.classes[label]
    merged = D.ImageFolder(root)                 # the default: one class for the whole folder, as before
    assert merged.classes == ["aaa", "background", "bbb"] and len(merged) == len(split) == 22
    # a test folder read with the training classes; a kind can be left out by name
    again = D.ImageFolder(root, classes=split.classes, background_kinds=True)
    assert again.samples == split.samples
    less = D.ImageFolder(root, background_kinds=True, exclude=("background/trees",))
    assert "background/trees" not in less.classes and len(less) == 17
    with pytest.raises(ValueError, match=r"exclude names background kind\(s\) \['background/trees'\]"):
        D.ImageFolder(root, exclude=("background/trees",))          # read as one class: a kind cannot go
    # listing only (no image read) gives the same names
    assert folder_classes(root, (), background_kinds=True) == split.classes
    assert folder_classes(root, ()) == merged.classes


def test_flat_background_folder_is_unchanged(tmp_path):
    root = make_folder(tmp_path / "d", kinds=())
    assert D.ImageFolder(root, background_kinds=True).classes == ["aaa", "background", "bbb"]
    assert D.ImageFolder(root, background_kinds=True).samples == D.ImageFolder(root).samples


def test_only_kind_folders_leave_no_plain_background_class(tmp_path):
    root = make_folder(tmp_path / "d", direct=0)
    assert D.ImageFolder(root, background_kinds=True).classes == ["aaa", "background/pavement", "background/trees",
                                                                 "bbb"]


def test_empty_kind_folder_is_an_error_naming_it(tmp_path):
    root = make_folder(tmp_path / "d", kinds=("trees",))
    (root / "background" / "rocks").mkdir()
    with pytest.raises(ValueError, match=r"background kind folder\(s\) .*rocks.* hold no image files"):
        D.ImageFolder(root, background_kinds=True)
    # a background folder holding nothing but empty kind folders: no image at all in it
    root2 = make_folder(tmp_path / "d2", direct=0, kinds=())
    (root2 / "background" / "rocks").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"class folder .*background has no image files"):
        D.ImageFolder(root2, background_kinds=True)


def test_kind_named_like_an_individual_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d", kinds=("trees", "aaa"))
    with pytest.raises(ValueError, match=r"named like individual\(s\) \['aaa'\]"):
        D.ImageFolder(root, background_kinds=True)


def test_a_kind_the_training_classes_lack_is_an_error(tmp_path):
    train = make_folder(tmp_path / "train", kinds=("trees",))
    test = make_folder(tmp_path / "test", kinds=("trees", "rocks"))
    classes = D.ImageFolder(train, background_kinds=True).classes
    with pytest.raises(ValueError, match=r"\['background/rocks'\] that are not in the given classes"):
        D.ImageFolder(test, classes=classes, background_kinds=True)


def test_expand_background_kinds_alone(tmp_path):
    root = make_folder(tmp_path / "d", per_class=2, direct=1, kinds=("trees",))
    files = {"aaa": [root / "aaa" / "00.png"],
             "background": sorted((root / "background").rglob("*.png"))}
    out = expand_background_kinds(files, root / "background")
    assert sorted(out) == ["aaa", "background", "background/trees"]
    assert [p.name for p in out["background"]] == ["00.png"] and len(out["background/trees"]) == 2
    assert expand_background_kinds({"aaa": []}, root / "background") == {"aaa": []}   # no background class


def test_ratio_split_is_stratified_by_kind(tmp_path):
    root = make_folder(tmp_path / "d", per_class=10, direct=10)
    parts = load_datasets(str(root), val_ratio=0.2, test_ratio=0.2, seed=3, background_kinds=True)
    assert parts["classes"] == ["aaa", "background", "background/pavement", "background/trees", "bbb"]
    for name, share in (("train", 6), ("val", 2), ("test", 2)):
        assert np.bincount(parts[name].targets, minlength=5).tolist() == [share] * 5, name


# -- nabi train / eval / predict --------------------------------------------------------------------------------
def _train(data, out, *extra):
    return main(["--threads", "1", "train", str(data), "--model", "cifar_cnn", "--iterations", "3",
                 "--batch-size", "8", "--val-ratio", "0", "--test-ratio", "0.25", "--out", str(out),
                 "--no-progress", *extra])


def test_train_learns_each_kind_as_a_class_and_records_it(tmp_path, capsys):
    data = make_folder(tmp_path / "d", per_class=4)
    assert _train(data, tmp_path / "split") == 0
    cfg = json.loads((tmp_path / "split" / "config.json").read_text(encoding="utf-8"))
    meta = json.loads((tmp_path / "split" / "model.json").read_text(encoding="utf-8"))
    kinds = ["aaa", "background", "background/pavement", "background/trees", "bbb"]
    assert cfg["classes"] == meta["classes"] == kinds and meta["arch"]["kwargs"]["num_classes"] == 5
    assert cfg["background_kinds"] == "split"
    assert cfg["background_classes"] == ["background", "background/pavement", "background/trees"]
    assert cfg["num_test"] == 5                # one photo of each of the 5 classes (stratified by kind)
    capsys.readouterr()
    # eval: the kinds show in the per-class report, the merged matrix and P1-P4 say background
    assert main(["eval", str(tmp_path / "split"), str(data), "--all-photos", "--out", str(tmp_path / "ev"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == kinds and len(report["confusion_matrix"]) == 5
    assert report["confusion_matrix_background_merged"]["classes"] == ["aaa", "background", "bbb"]
    merged = np.array(report["confusion_matrix_background_merged"]["counts"])
    assert merged.sum() == 18 and merged[1].sum() == 10       # 2 + 4 + 4 background photos, one row
    st = report["background_statistics"]
    assert st["n_background_photos"] == 10 and st["n_test2"] == 8
    assert st["background_classes"] == ["background", "background/pavement", "background/trees"]
    assert "pred_answer" not in st and "pred_name" not in st               # per-photo lists stay out
    # predict: a background kind may win; the answer then says background
    assert main(["predict", str(tmp_path / "split"), str(data / "background" / "trees"), "--json"]) == 0
    for r in json.loads(capsys.readouterr().out):
        assert r["answer"] == ("background" if is_background(r["top"][0]["class"]) else r["top"][0]["class"])
    # masked evaluation (photos given as already masked) scores each kind photo against its kind
    masked = masked_evaluation(tmp_path / "split", data, masks_dir=None)
    assert masked["n"] == 18 and sorted(masked["per_class"]) == kinds
    assert {c: masked["per_class"][c]["n"] for c in kinds} == {"aaa": 4, "background": 2, "background/pavement": 4,
                                                               "background/trees": 4, "bbb": 4}
    # merge: the whole folder is one class, as before kinds existed
    assert _train(data, tmp_path / "merge", "--background-kinds", "merge") == 0
    cfg = json.loads((tmp_path / "merge" / "config.json").read_text(encoding="utf-8"))
    assert cfg["classes"] == ["aaa", "background", "bbb"] and cfg["background_kinds"] == "merge"


def test_train_refuses_bad_background_folders(tmp_path, capsys):
    data = make_folder(tmp_path / "d", per_class=3)
    (data / "background" / "rocks").mkdir()
    assert _train(data, tmp_path / "r1") == 1
    err = capsys.readouterr().err
    assert "rocks" in err and "hold no image files" in err and "Traceback" not in err
    assert not (tmp_path / "r1" / "model.safetensors").exists()
    (data / "background" / "rocks").rmdir()
    (data / "background" / "bbb").mkdir()
    Image.new("RGB", (8, 8)).save(data / "background" / "bbb" / "x.png")
    assert _train(data, tmp_path / "r2") == 1
    err = capsys.readouterr().err
    assert "named like individual(s) ['bbb']" in err
    with pytest.raises(SystemExit) as exit_:                                      # argparse: not a choice
        _train(data, tmp_path / "r3", "--background-kinds", "some")
    assert exit_.value.code == 2 and "invalid choice: 'some'" in capsys.readouterr().err


# -- P1-P4 with background kinds --------------------------------------------------------------------------------
MODEL = ["aaa", "background/pavement", "background/trees", "bbb"]
# rows: true class, then the model's probabilities over MODEL
PHOTOS = [
    ("aaa",                 [0.60, 0.10, 0.10, 0.20]),   # right
    ("aaa",                 [0.25, 0.50, 0.10, 0.15]),   # called background (pavement); best individual aaa
    ("bbb",                 [0.10, 0.10, 0.60, 0.20]),   # called background (trees); best individual bbb
    ("bbb",                 [0.50, 0.10, 0.10, 0.30]),   # wrong individual, also for P4
    ("bbb",                 [0.10, 0.05, 0.05, 0.80]),   # right
    ("background/trees",    [0.10, 0.60, 0.20, 0.10]),   # a tree photo called pavement: right (background)
    ("background/pavement", [0.50, 0.30, 0.10, 0.10]),   # a background photo called aaa: wrong
    ("background/trees",    [0.10, 0.10, 0.70, 0.10]),   # right
]


def _stats(test_classes=MODEL, model_classes=MODEL, photos=PHOTOS):
    probs = np.array([p for _, p in photos])
    labels = np.array([test_classes.index(t) for t, _ in photos])
    return E.background_statistics(probs, labels, test_classes, model_classes=model_classes)


def test_p1_to_p4_count_every_kind_as_background():
    st = _stats()
    # by hand: P1 = right of 8 = rows 0, 4, 5, 7; P2 = right of the 5 animals = rows 0, 4;
    # P3 = right of the 3 animals not called background (0, 3, 4) = rows 0, 4; P4 = best individual
    # (background columns ignored) right for rows 0, 1, 2, 4 of the 5 animals
    assert st["p1"] == pytest.approx(4 / 8) and st["p2"] == pytest.approx(2 / 5)
    assert st["p3"] == pytest.approx(2 / 3) and st["p4"] == pytest.approx(4 / 5)
    assert st["n_test1"] == 8 and st["n_test2"] == 5 and st["n_background_photos"] == 3
    assert st["n_called_background"] == 2 and st["n_p3"] == 3
    assert st["model_has_background"] and st["individuals"] == ["aaa", "bbb"]
    assert st["background_classes"] == ["background/pavement", "background/trees"]
    assert st["correct"].tolist() == [True, False, False, False, True, True, False, True]
    assert st["pred_name"][5] == "background/pavement" and st["pred_answer"][5] == "background"
    assert [MODEL[i] for i in st["pred_individual"]] == ["aaa", "aaa", "bbb", "aaa", "bbb", "aaa", "aaa", "aaa"]
    text = E.format_report(st)
    assert "3 background" in text and "2 called background" in text
    assert "background = any of the model's 2 background classes: background/pavement, background/trees" in text


def test_p1_to_p4_with_a_flat_background_test_class():
    """The test set labels its background photos ``background`` while the model learnt kinds."""
    test = ["aaa", "background", "bbb"]
    photos = [(t if not t.startswith("background") else "background", p) for t, p in PHOTOS]
    st = _stats(test_classes=test, photos=photos)
    ref = _stats()
    for k in ("p1", "p2", "p3", "p4", "n_called_background", "n_background_photos"):
        assert st[k] == ref[k] or (math.isnan(st[k]) and math.isnan(ref[k])), k


def test_p1_to_p4_of_a_model_without_background_on_kinds():
    probs = np.array([[p[0], p[3]] for _, p in PHOTOS])
    labels = np.array([MODEL.index(t) for t, _ in PHOTOS])
    st = E.background_statistics(probs, labels, MODEL, model_classes=["aaa", "bbb"])
    # A: animals right in rows 0, 1 (aaa .25 > .15), 2 (bbb .2 > .1), 4; background photos always wrong
    assert st["p2"] == pytest.approx(4 / 5) and st["p1"] == pytest.approx(4 / 8)
    assert st["p3"] == st["p4"] == st["p2"] and st["n_called_background"] == 0
    assert not st["model_has_background"]


def test_merged_confusion_matrix():
    cm = np.arange(16).reshape(4, 4)
    m, names = E.merge_background_classes(cm, MODEL)
    assert names == ["aaa", "background", "bbb"]
    assert m.tolist() == [[0, 1 + 2, 3],
                          [4 + 8, 5 + 6 + 9 + 10, 7 + 11],
                          [12, 13 + 14, 15]]
    same, n2 = E.merge_background_classes(cm, ["a", "background", "b", "c"])
    assert n2 == ["a", "background", "b", "c"] and np.array_equal(same, cm)
