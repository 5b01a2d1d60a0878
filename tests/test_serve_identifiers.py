"""The Identifier adapters of nabi serve: a classifier run (answers as `nabi predict` computes them) and a gallery."""
import io
import json

import pytest
from PIL import Image

from nabi.cli import main
from nabi.serve.identifiers import (ClassifierIdentifier, EnrolRefused, GalleryIdentifier, is_classifier_run,
                                    open_identifier)

from serve_support import COLOURS, ColourGallery, photo_bytes, shared_run


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


def test_classifier_answers_known_and_background(run, photos):
    ident = ClassifierIdentifier(run)
    assert ident.kind == "classifier" and ident.names() == ["momo", "nabi"]
    res = ident.identify([photos["nabi"], photos["momo"], photos["background"]])
    assert [r["answer"] for r in res] == ["known", "known", "background"]
    assert res[0]["name"] == "nabi" and res[1]["name"] == "momo" and res[2]["name"] is None
    for r in res:
        assert set(r) == {"answer", "name", "similarity", "margin", "candidates"}
        sims = [c["similarity"] for c in r["candidates"]]
        assert sims == sorted(sims, reverse=True) and len(sims) == 2          # background is never a candidate
        assert {c["name"] for c in r["candidates"]} == {"nabi", "momo"}
        assert r["margin"] == pytest.approx(sims[0] - sims[1])
        assert all(set(c) == {"name", "similarity", "photo"} for c in r["candidates"])
    assert res[2]["similarity"] > 0.5                                            # p(background) won


def test_classifier_probabilities_are_those_of_nabi_predict(run, photos, capsys):
    ident = ClassifierIdentifier(run)
    res = ident.identify([photos["momo"]])[0]
    assert main(["predict", str(run), str(photos["momo"]), "--json", "--topk", "3"]) == 0
    top = {t["class"]: t["probability"] for t in json.loads(capsys.readouterr().out)[0]["top"]}
    for c in res["candidates"]:
        assert c["similarity"] == pytest.approx(top[c["name"]], rel=1e-5, abs=1e-7)
    assert res["similarity"] == pytest.approx(max(top.values()), rel=1e-5)


def test_classifier_threshold_gives_unknown(run, photos):
    ident = ClassifierIdentifier(run, threshold=1.01)          # nothing is ever that sure
    res = ident.identify([photos["nabi"], photos["background"]])
    assert res[0]["answer"] == "unknown" and res[0]["name"] == "nabi"
    assert res[1]["answer"] == "background"                   # the background answer does not need the threshold


def test_classifier_refuses_a_new_individual(run, photos):
    ident = ClassifierIdentifier(run)
    assert not ident.can_enrol_new()
    ident.enrol("nabi", [photos["nabi"]])                    # a known class: kept as its photo, nothing retrained
    with pytest.raises(EnrolRefused, match="needs a re-identification gallery"):
        ident.enrol("뾰또", [photos["nabi"]])


def test_classifier_heatmap_is_a_png_over_the_photo(run, photos):
    png = ClassifierIdentifier(run).heatmap(photos["nabi"])
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (384, 384) and img.mode == "RGB"


def test_open_identifier_decides_by_what_is_there(run, tmp_path):
    assert is_classifier_run(run) and isinstance(open_identifier(run), ClassifierIdentifier)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_identifier(tmp_path / "nothing")
    assert not is_classifier_run(tmp_path)
    with pytest.raises(ValueError, match="kind must be"):
        open_identifier(run, kind="oracle")


def test_gallery_adapter_over_the_gallery_interface(photos):
    ident = GalleryIdentifier(ColourGallery())
    assert ident.kind == "gallery" and ident.can_enrol_new() and ident.names() == []
    ident.enrol("nabi", [photos["nabi"]])
    ident.enrol("momo", [photos["momo"]])
    with pytest.raises(EnrolRefused, match="already in the gallery"):
        ident.enrol("nabi", [photos["nabi"]])
    res = ident.identify([photos["nabi"]])[0]
    assert res["answer"] == "known" and res["name"] == "nabi"
    assert [c["name"] for c in res["candidates"]] == ["nabi", "momo"]
    assert res["candidates"][0]["photo"] == str(photos["nabi"])
    ident.rename("nabi", "나비")
    ident.merge("momo", "나비")
    assert ident.names() == ["나비"]


def test_gallery_adapter_refuses_a_malformed_answer(photos):
    class Odd(ColourGallery):
        def names(self):
            return ["nabi"]

        def identify(self, paths, topk=5):
            return [{"answer": "maybe", "name": None, "similarity": 0, "margin": 0, "candidates": []}]
    with pytest.raises(ValueError, match="answered 'maybe'"):
        GalleryIdentifier(Odd()).identify([photos["nabi"]])


def test_the_reid_gallery_through_the_adapter(run, tmp_path, photos):
    """With nabi.reid.gallery present: a gallery over the classifier run's features, opened by path."""
    gallery_module = pytest.importorskip("nabi.reid.gallery", reason="nabi.reid.gallery is not in this nabi yet")
    gallery_module.Gallery.create(run, tmp_path / "gallery")
    ident = open_identifier(tmp_path / "gallery")
    assert isinstance(ident, GalleryIdentifier) and ident.names() == []
    assert ident.identify([photos["nabi"]]) == [{"answer": "unknown", "name": None, "similarity": 0.0,
                                                 "margin": 0.0, "candidates": []}]
    ident.enrol("nabi", [photos["nabi"]])
    ident.enrol("momo", [photos["momo"]])
    with pytest.raises(EnrolRefused, match="already in the gallery"):
        ident.enrol("momo", [photos["nabi"]])
    res = ident.identify([photos["nabi"]])[0]
    assert res["name"] == "nabi" and [c["name"] for c in res["candidates"]] == ["nabi", "momo"]
    assert res["candidates"][0]["photo"] == str(photos["nabi"].resolve())
    ident.rename("nabi", "나비")
    with pytest.raises(EnrolRefused, match="refused to rename"):
        ident.rename("momo", "나비")
    ident.merge("momo", "나비")
    assert ident.names() == ["나비"]
