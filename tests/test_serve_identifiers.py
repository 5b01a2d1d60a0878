"""The Identifier adapters of nabi serve: a classifier run (answers as `nabi predict` computes them) and a gallery
(the built gallery read-only, the server's enrolments beside it, searched by individual id)."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from nabi.cli import main
from nabi.serve.identifiers import ClassifierIdentifier, GalleryIdentifier, is_classifier_run, open_identifier

from serve_support import COLOURS, OTHER_COLOURS, colour_identifier, photo_bytes, shared_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture
def photos(tmp_path):
    out = {}
    for i, name in enumerate(COLOURS):
        out[name] = tmp_path / f"{name}.jpg"
        out[name].write_bytes(photo_bytes(COLOURS[name], seed=500 + i))
    return out


IDS = {"momo": 11, "nabi": 32}


def classifier(run, **kw):
    ident = ClassifierIdentifier(run, **kw)
    ident.load(IDS)
    return ident


def test_classifier_answers_known_and_background(run, photos):
    ident = ClassifierIdentifier(run)
    assert ident.kind == "classifier" and ident.labels() == ["momo", "nabi"] and not ident.enrols
    with pytest.raises(ValueError, match="no individual for the classes"):
        ident.load({"momo": 11})
    ident.load(IDS)
    res = ident.identify([photos["nabi"], photos["momo"], photos["background"]])
    assert [r["answer"] for r in res] == ["known", "known", "background"]
    assert res[0]["individual_id"] == 32 and res[1]["individual_id"] == 11 and res[2]["individual_id"] is None
    for r in res:
        assert set(r) == {"answer", "individual_id", "similarity", "margin", "probability", "threshold",
                          "candidates", "embedding"}
        assert r["embedding"] is None and r["threshold"] == 0.5
        sims = [c["similarity"] for c in r["candidates"]]
        assert sims == sorted(sims, reverse=True) and len(sims) == 2          # background is never a candidate
        assert {c["individual_id"] for c in r["candidates"]} == {11, 32}
        assert r["margin"] == pytest.approx(sims[0] - sims[1])
    assert res[2]["similarity"] > 0.5                                            # p(background) won


def test_classifier_probabilities_are_those_of_nabi_predict(run, photos, capsys):
    ident = classifier(run)
    res = ident.identify([photos["momo"]])[0]
    assert main(["predict", str(run), str(photos["momo"]), "--json", "--topk", "3"]) == 0
    top = {IDS.get(t["class"]): t["probability"] for t in json.loads(capsys.readouterr().out)[0]["top"]}
    for c in res["candidates"]:
        assert c["similarity"] == pytest.approx(top[c["individual_id"]], rel=1e-5, abs=1e-7)
    assert res["similarity"] == pytest.approx(max(top.values()), rel=1e-5)


def test_classifier_threshold_gives_unknown(run, photos):
    ident = classifier(run, threshold=1.01)          # nothing is ever that sure
    res = ident.identify([photos["nabi"], photos["background"]])
    assert res[0]["answer"] == "unknown" and res[0]["individual_id"] is None
    assert res[0]["candidates"][0]["individual_id"] == 32          # the closest is still there
    assert res[1]["answer"] == "background"                   # the background answer does not need the threshold
    assert not ident.can_enrol_new() and ident.embed([photos["nabi"]]) is None


def test_classifier_heatmap_is_a_png_over_the_photo(run, photos):
    png = classifier(run).heatmap(photos["nabi"], individual_id=11)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (384, 384) and img.mode == "RGB"


def test_open_identifier_decides_by_what_is_there(run, tmp_path):
    assert is_classifier_run(run) and isinstance(open_identifier(run), ClassifierIdentifier)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_identifier(tmp_path / "nothing")
    assert not is_classifier_run(tmp_path)
    with pytest.raises(ValueError, match="kind must be"):
        open_identifier(run, kind="oracle")


def test_gallery_adapter_searches_by_individual_id(photos, tmp_path):
    """The in-memory gallery: enrolments keyed by individual id, moved and dropped without any name."""
    ident = colour_identifier()
    assert ident.kind == "gallery" and ident.can_enrol_new() and ident.enrols and ident.labels() == []
    ident.load({}, [])
    (first,) = ident.identify([photos["nabi"]])
    assert first["answer"] == "unknown" and first["candidates"] == [] and first["embedding"].shape == (3,)
    ident.put(1, 7, photos["nabi"], first["embedding"])
    ident.put(2, 8, photos["momo"], ident.embed([photos["momo"]])[0])
    res = ident.identify([photos["nabi"]])[0]
    assert res["answer"] == "known" and res["individual_id"] == 7 and res["threshold"] == 0.92
    assert [c["individual_id"] for c in res["candidates"]] == [7, 8]
    assert res["candidates"][0]["photo"] == str(photos["nabi"])
    np.testing.assert_allclose(res["embedding"], first["embedding"], rtol=1e-6)      # the same photo, once embedded
    ident.put(1, 8, photos["nabi"], first["embedding"])               # moved: the photo now counts for 8
    assert [c["individual_id"] for c in ident.identify([photos["nabi"]])[0]["candidates"]] == [8]
    ident.drop(1)
    ident.drop(2)
    assert ident.identify([photos["nabi"]])[0]["candidates"] == []


def test_gallery_adapter_refuses_a_malformed_answer(photos):
    ident = colour_identifier()
    ident.load({}, [])
    ident.served.identify = lambda paths, topk=5, groups=None: [{"answer": "maybe", "individual_id": None, "similarity": 0,
                                                    "margin": 0, "candidates": []}]
    with pytest.raises(ValueError, match="answered 'maybe'"):
        ident.identify([photos["nabi"]])


def test_the_reid_gallery_through_the_adapter(run, tmp_path, photos):
    """A gallery built on disk by nabi.reid.gallery: opened read-only (its index checksum kept), its names keyed
    by the individual ids the server gives them, the server's enrolments searched beside it."""
    from nabi.reid.gallery import Gallery
    folder = tmp_path / "cats"
    for name in ("nabi", "momo"):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            (folder / name / f"{i}.jpg").write_bytes(photo_bytes(COLOURS[name], seed=900 + 10 * i + len(name)))
    Gallery.build(run, folder, tmp_path / "gallery")
    index = (tmp_path / "gallery" / "index.json").read_bytes()
    ident = open_identifier(tmp_path / "gallery")
    assert isinstance(ident, GalleryIdentifier) and ident.labels() == ["momo", "nabi"]
    assert len(ident.checksum) == 64 and not ident.calibrated
    ident.load({"momo": 5, "nabi": 6}, [])
    res = ident.identify([photos["nabi"], photos["momo"]])
    assert [r["individual_id"] for r in res] == [6, 5] and res[0]["embedding"].ndim == 1
    assert res[0]["candidates"][0]["photo"].startswith(str((folder / "nabi").resolve()))
    yellow = tmp_path / "yellow.jpg"
    yellow.write_bytes(photo_bytes(OTHER_COLOURS["yellow"], seed=5))
    ident.put(1, 9, yellow, ident.embed([yellow])[0])                   # a new individual enrolled by the server
    assert ident.identify([yellow])[0]["individual_id"] == 9
    assert (tmp_path / "gallery" / "index.json").read_bytes() == index   # the built gallery is never written
