"""How a photo is brought to the square input size (``fit``: crop, squash, pad), and that a run's choice is
recorded and used the same way in training, ``nabi eval``/``predict``, the embedder and the web app."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nabi import data as D
from nabi.cli import main
from nabi.data.prepare import augmentation, eval_loader, load_datasets
from nabi.runs import image_fit, load_run

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def stripes(path, width=96, height=32):
    """A wide photo: red left third, green middle third, blue right third."""
    a = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    a[:, :third], a[:, third:2 * third], a[:, 2 * third:] = RED, GREEN, BLUE
    Image.fromarray(a).save(path)
    return Path(path)


def colour_shares(x):
    """Share of pixels of x (3, H, W) in [0, 1] that are mostly red, green, blue."""
    top = x.argmax(axis=0)
    bright = x.max(axis=0) > 0.5
    return [float(((top == c) & bright).mean()) for c in range(3)]


# -- loading --------------------------------------------------------------------------------------------------
def test_crop_loses_the_sides_squash_keeps_the_whole_photo_pad_letterboxes(tmp_path):
    path = stripes(tmp_path / "wide.png")
    crop = D.load_image(path, 3, 32)                       # the default, as before
    assert np.array_equal(crop, D.load_image(path, 3, 32, fit="crop"))
    assert crop.shape == (3, 32, 32)
    assert colour_shares(crop) == [0.0, 1.0, 0.0]           # only the green centre is left
    squash = D.load_image(path, 3, 32, fit="squash")
    assert squash.shape == (3, 32, 32)
    red, green, blue = colour_shares(squash)
    assert red == pytest.approx(1 / 3, abs=0.05) and blue == pytest.approx(1 / 3, abs=0.05)
    assert green == pytest.approx(1 / 3, abs=0.05)
    assert squash[0, :, 0].min() == 1.0 and squash[2, :, -1].min() == 1.0   # both edges are still there
    pad = D.load_image(path, 3, 32, fit="pad")
    # 96×32 → 32 wide, round(32 / 3) = 11 high, pasted from row (32 - 11) // 2 = 10
    assert pad.shape == (3, 32, 32)
    assert pad[:, :10].max() == 0.0 and pad[:, 21:].max() == 0.0
    assert pad[0, 15, 0] == 1.0 and pad[2, 15, -1] == 1.0 and pad[1, 15, 16] == 1.0


def test_a_square_photo_is_the_same_under_every_fit(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "sq.png")
    xs = [D.load_image(tmp_path / "sq.png", 3, 20, fit=f) for f in D.FITS]
    assert all(np.array_equal(xs[0], x) for x in xs[1:])


def test_an_unknown_fit_is_refused_naming_the_choices(tmp_path):
    path = stripes(tmp_path / "wide.png")
    with pytest.raises(ValueError, match="fit must be one of crop, squash, pad; got 'zoom'"):
        D.load_image(path, 3, 32, fit="zoom")
    with pytest.raises(ValueError, match=r"fit must be one of crop, squash, pad; got \['crop'\]"):
        D.load_image(path, 3, 32, fit=["crop"])
    (tmp_path / "folder" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="fit must be one of"):
        D.ImageFolder(tmp_path / "folder", image_size=32, fit="stretch")


def test_random_resized_crops_of_a_squashed_photo_reach_its_sides(tmp_path):
    """With ``crop`` the augmentation only ever sees the centre square; with ``squash`` the whole photo."""
    (tmp_path / "a").mkdir()
    stripes(tmp_path / "a" / "wide.png")
    rrc = augmentation("crop_flip_jitter", (32, 32))[0]
    seen = {}
    for fit in ("crop", "squash"):
        x = D.ImageFolder(tmp_path, image_size=32, fit=fit)[0][0]
        seen[fit] = [colour_shares(rrc(x, np.random.default_rng(i))) for i in range(40)]
    assert all(s[0] == 0 and s[2] == 0 for s in seen["crop"])
    assert sum(s[0] > 0 for s in seen["squash"]) > 10 and sum(s[2] > 0 for s in seen["squash"]) > 10


# -- the run records its fit; every reader uses it ----------------------------------------------------------
def write_wide_folder(root, per_class=6):
    """Two classes told apart only by the side of the photo that is coloured (lost under a centre crop)."""
    rng = np.random.default_rng(0)
    for name, side in (("left", 0), ("right", 1)):
        d = Path(root) / name
        d.mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(90, 110, (32, 96, 3)).astype(np.uint8)
            cols = slice(0, 24) if side == 0 else slice(72, 96)
            a[:, cols] = (200, 60 + 10 * i, 40)
            Image.fromarray(a).save(d / f"{i}.png")
    return Path(root)


@pytest.fixture(scope="module")
def squash_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    data = write_wide_folder(root / "data")
    out = root / "run"
    code = main(["train", str(data), "--model", "cifar_cnn", "--epochs", "1", "--batch-size", "4", "--fit", "squash",
                 "--val-ratio", "0", "--test-ratio", "0.34", "--out", str(out), "--no-progress"])
    assert code == 0
    return data, out


def test_the_run_records_its_fit(squash_run):
    data, out = squash_run
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert meta["fit"] == "squash" and meta["config"]["fit"] == "squash"
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["fit"] == "squash"
    _, loaded = load_run(out)
    assert image_fit(loaded) == "squash"


def test_training_and_every_reader_see_the_same_input(squash_run, capsys):
    from nabi.backend import to_numpy
    from nabi.functional.activation import softmax
    from nabi.reid.embedder import Embedder
    from nabi.serve.identifiers import ClassifierIdentifier
    data, out = squash_run
    model, meta = load_run(out)
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    parts = load_datasets(str(data), image_size=(32, 32), val_ratio=0, test_ratio=cfg["test_ratio"], seed=0,
                          fit=cfg["fit"])                     # the test part as training split and read it
    test = parts["test"]
    x_train, _ = next(iter(eval_loader(test, meta, batch_size=len(test))))
    paths = [test.dataset.samples[i][0] for i in test.indices]
    x_embedder = np.stack([Embedder(out).load(p) for p in paths])
    x_web = np.stack([ClassifierIdentifier(out)._input(p) for p in paths])
    assert np.array_equal(to_numpy(x_train), x_embedder) and np.array_equal(x_embedder, x_web)
    assert not np.array_equal(x_embedder[0], _cropped(paths[0], meta))   # the crop would be another input
    # nabi predict gives the probabilities of the training-side input
    p_train = to_numpy(softmax(model(x_train), axis=1))
    assert main(["predict", str(out), paths[0], "--json", "--topk", "2"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    k = meta["classes"].index(top[0]["class"])
    assert top[0]["probability"] == pytest.approx(float(p_train[0, k]), abs=1e-6)
    # nabi eval reads the folder the same way: its accuracy equals the one on the training-side inputs
    # (--all-photos: every photo of the folder the run trained on, not only its held-out test part)
    assert main(["eval", str(out), str(data), "--all-photos", "--json", "--out", str(out / "eval")]) == 0
    report = json.loads(capsys.readouterr().out)
    everything = load_datasets(str(data), image_size=(32, 32), val_ratio=0, test_ratio=0, fit="squash")["train"]
    x_all, y_all = next(iter(eval_loader(everything, meta, batch_size=len(everything))))
    acc = float((to_numpy(model(x_all)).argmax(1) == to_numpy(y_all)).mean())
    assert report["accuracy"] == pytest.approx(acc) and report["n"] == len(everything)


def _cropped(path, meta):
    from nabi.data.prepare import eval_transforms
    x = D.load_image(path, 3, 32, fit="crop")
    for t in eval_transforms((32, 32), meta["normalization"]):
        if t is not None:
            x = t(x, None)
    return x


def test_a_run_without_the_key_reads_photos_cropped(squash_run, tmp_path):
    import shutil
    from nabi.reid.embedder import Embedder
    data, out = squash_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for name in ("model.json", "best.json"):
        side = old / name
        if side.is_file():
            meta = json.loads(side.read_text(encoding="utf-8"))
            meta.pop("fit")
            meta["config"].pop("fit")
            side.write_text(json.dumps(meta), encoding="utf-8")
    _, meta = load_run(old)
    assert "fit" not in meta and image_fit(meta) == "crop"
    path = sorted((data / "left").iterdir())[0]
    emb = Embedder(old)
    assert emb.fit == "crop" and np.array_equal(emb.load(path), _cropped(path, meta))
    with pytest.raises(ValueError, match="fit 'zoom'.*crop, squash, pad"):
        image_fit({"fit": "zoom"})
    with pytest.raises(ValueError, match=r"fit \['squash'\]"):
        image_fit({"fit": ["squash"]})
