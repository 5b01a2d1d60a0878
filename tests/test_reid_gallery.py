"""The gallery end to end on synthetic individuals: train an embedding with ``nabi train --head``, build,
add, identify, calibrate; damaged files, other models and bad input give clear errors."""
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from nabi.cli import main
from nabi.files.digest import file_sha256
from nabi.reid.gallery import Gallery, GalleryError

from reid_synth import photo, write_photos

ENROLLED = range(0, 6)          # in the gallery
CALIBRATION_UNKNOWNS = (7, 8)   # held out of the gallery, used to set the threshold
NEVER_SEEN = (6, 19)            # in neither: must come back unknown once calibrated


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reid")
    write_photos(root / "train", range(20, 44), 6)
    write_photos(root / "enrol", ENROLLED, 3, background=4)
    write_photos(root / "val", ENROLLED, 2, start=10)
    write_photos(root / "val", CALIBRATION_UNKNOWNS, 3)
    write_photos(root / "cal", range(50, 62), 4)                    # other individuals, for calibration
    rc = main(["--threads", "1", "train", str(root / "train"), "--model", "cifar_cnn", "--head", "arcface",
               "--embedding-dim", "32", "--epochs", "6", "--batch-size", "16", "--lr", "3e-3",
               "--out", str(root / "run"), "--no-progress", "--val-ratio", "0.2", "--seed", "0"])
    assert rc == 0
    return root


@pytest.fixture
def gallery(world, tmp_path):
    return Gallery.build(world / "run", world / "enrol", tmp_path / "gallery")


def _png(path, arr):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_train_reports_rank1_of_held_out_individuals(world):
    cfg = json.loads((world / "run" / "config.json").read_text())
    emb = cfg["embedding"]
    assert emb["head"] == "arcface" and len(emb["validation_individuals"]) == 5
    assert not set(emb["validation_individuals"]) & set(emb["train_individuals"])
    rows = [json.loads(line) for line in (world / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(0.0 <= r["val_acc"] == r["val_rank1"] <= 1.0 for r in rows)
    assert all(r["val_rank5"] == r["val_top5"] >= r["val_rank1"] for r in rows)
    assert max(r["val_acc"] for r in rows) >= 0.8                 # rank-1 of never-trained-on individuals
    meta = json.loads((world / "run" / "best.json").read_text())
    assert meta["arch"]["name"] == "embedding_net" and meta["arch"]["kwargs"]["embedding_dim"] == 32


@pytest.mark.parametrize("head", ["subcenter_arcface", "cosface", "triplet"])
def test_train_other_heads(world, tmp_path, head):
    rc = main(["--threads", "1", "train", str(world / "train"), "--model", "cifar_cnn", "--head", head,
               "--embedding-dim", "8", "--iterations", "2", "--batch-size", "8", "--k", "2",
               "--out", str(tmp_path / "run"), "--no-progress", "--val-ratio", "0.2"])
    assert rc == 0
    g = Gallery.build(tmp_path / "run", world / "enrol", tmp_path / "g")
    assert g.embeddings.shape == (22, 8)
    np.testing.assert_allclose(np.linalg.norm(g.embeddings, axis=1), 1.0, rtol=1e-5)


def test_known_photos_found(gallery):
    queries = [photo(i, j) for i in ENROLLED for j in (50, 51)]
    res = gallery.identify(queries)
    assert [r["name"] for r in res] == [f"ind{i:02d}" for i in ENROLLED for _ in (50, 51)]
    from PIL import Image
    as_pil = gallery.identify([Image.fromarray(q) for q in queries[:2]])
    assert [r["similarity"] for r in as_pil] == pytest.approx([r["similarity"] for r in res[:2]], abs=1e-6)
    r = res[0]
    assert r["answer"] == "known" and set(r) >= {"answer", "name", "similarity", "margin", "candidates"}
    assert len(r["candidates"]) == 5 and r["candidates"][0]["name"] == r["name"]
    assert r["margin"] == pytest.approx(r["candidates"][0]["similarity"] - r["candidates"][1]["similarity"])
    assert Path(r["candidates"][0]["photo"]).parent.name == r["name"]


def test_background_answer(gallery, world):
    from reid_synth import background_photo
    res = gallery.identify([background_photo(77)])
    assert res[0]["answer"] == "background" and res[0]["name"] is None


def test_individual_added_after_training_is_found(gallery, tmp_path):
    new = [_png(tmp_path / "new" / f"{j}.png", photo(12, j)) for j in range(3)]
    added = gallery.add("newcomer", new)
    assert [e["name"] for e in added] == ["newcomer"] * 3
    reopened = Gallery.open(gallery.path)
    assert "newcomer" in reopened.names() and len(reopened) == len(gallery)
    res = reopened.identify([photo(12, 40), photo(12, 41)])
    assert [r["name"] for r in res] == ["newcomer", "newcomer"]


def test_unknown_once_calibrated(gallery, world):
    strangers = [photo(i, j) for i in NEVER_SEEN for j in (60, 61)]
    before = gallery.identify(strangers)
    assert all(r["answer"] == "known" and not r["calibrated"] for r in before)   # uncalibrated: the closest one
    summary = gallery.calibrate(world / "cal")
    assert summary["source"] == "calibration folder" and summary["individuals"] == 12
    assert summary["pairs"] == {"same": 48, "different": 48 * 11}
    assert summary["check"]["known_named_correctly"] > 0.9 and summary["check"]["strangers_called_new"] > 0.9
    ans = summary["answer"]                           # the answer's map, fitted out of individual
    assert ans.get("note") or (ans["method"] == "platt" and ans["a"] >= 0 and "out of individual" in ans["fitted_on"])
    after = Gallery.open(gallery.path)
    assert after.calibrated and after.calibration["pairs"] == summary["pairs"]
    assert after.calibration["answer"] == ans
    after.calibration = {k: v for k, v in after.calibration.items() if k != "answer"}  # an older file: T = 1
    plain = after.identify(strangers)
    assert [r["answer"] for r in plain] == ["unknown"] * 4
    assert all(r["probability"] == r["p_unknown"] > 0.5 and "posterior_probability" not in r for r in plain)
    after.calibration = {**after.calibration, "answer": {"temperature": 3.0}}     # a hotter posterior: the same
    hot = after.identify(strangers)                                                # answers, less sure of them
    assert [r["answer"] for r in hot] == ["unknown"] * 4
    assert all(h["probability"] < r["probability"] for h, r in zip(hot, plain))
    after.calibration = {**after.calibration, "answer": {"method": "platt", "a": 0.5, "b": 0.0}}   # a map of the
    mapped = after.identify(strangers)                                                          # shown probability
    for m, r in zip(mapped, plain):
        assert m["answer"] == r["answer"] and m["posterior_probability"] == pytest.approx(r["probability"])
        assert 0.5 <= m["probability"] < r["probability"] and m["p_unknown"] == pytest.approx(r["p_unknown"])
    after.calibration = {k: v for k, v in after.calibration.items() if k != "answer"}
    known = after.identify([photo(i, 70) for i in ENROLLED])
    named = [r["name"] for r in known]
    assert all(n in (f"ind{i:02d}", None) for n, i in zip(named, ENROLLED)) and named.count(None) <= 1
    for r in known:
        if r["answer"] != "known":
            continue
        p = [c["probability"] for c in r["candidates"]]
        assert r["probability"] == p[0] > 0.5 and p == sorted(p, reverse=True)
        assert sum(p) + r["p_unknown"] <= 1.0 + 1e-9 and r["margin"] == pytest.approx(p[0] - p[1])


def test_calibration_needs_enough_pairs_and_other_individuals(gallery, world, tmp_path):
    from nabi.reid.calibration import CalibrationError
    with pytest.raises(CalibrationError, match=r"at least 20 same-individual pairs .* got 18"):
        gallery.calibrate()                      # leave-one-encounter-out over 18 photos: too few pairs
    overlap = tmp_path / "cal_overlap"
    shutil.copytree(world / "cal", overlap)
    shutil.copy(world / "enrol" / "ind01" / "000.png", overlap / "ind50" / "enrolled.png")
    with pytest.raises(ValueError, match="enrolled in the gallery .*enrolled.png"):
        gallery.calibrate(overlap)
    assert not gallery.calibrated                # a refused calibration leaves the gallery as it was


def test_leave_one_out_leaves_the_whole_encounter_out(world, tmp_path):
    """Two photos of one encounter are near copies: scored against each other they would be a free match."""
    photos = tmp_path / "enc"
    for i in range(6):
        d = photos / f"ind{i:02d}"
        for e in range(4):                # four encounters of two photos each: the same pixels in two files
            for ext in ("png", "bmp"):
                _png(d / f"{e}" / f"shot.{ext}", photo(i, 10 * e))
    g = Gallery.build(world / "run", photos, tmp_path / "g", encounters="folder")
    assert {e["encounter"] for e in g.entries if e["name"] == "ind00"} == {f"folder:{e}" for e in range(4)}
    from nabi.reid.calibrate import leave_encounter_out_scores
    scored, truth, rows = leave_encounter_out_scores(g, matcher=False)
    own = scored["similarity"][np.arange(len(rows)), truth]
    assert own.max() < 0.999                                   # never its encounter twin (similarity 1)
    summary = g.calibrate()
    assert summary["encounters"] == 24 and summary["photos"] == 48 and summary["pairs"]["same"] == 48


def test_remove_takes_a_photo_out_of_every_answer(gallery, world):
    entry = next(e for e in gallery.entries if e["name"] == "ind02")
    q = Path(entry["photo"])
    assert gallery.identify([q])[0]["candidates"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    removed = gallery.remove(entry["sha256"])
    assert removed[0]["photo"] == entry["photo"] and len(gallery) == 21
    reopened = Gallery.open(gallery.path)
    assert entry["sha256"] not in {e["sha256"] for e in reopened.entries}
    assert reopened.identify([q])[0]["candidates"][0]["similarity"] < 0.9999
    assert len(reopened.local) == 21 and reopened.embeddings.shape[0] == 21
    with pytest.raises(ValueError, match="no photo with SHA-256"):
        gallery.remove(entry["sha256"])


def test_duplicate_photo_refused(gallery, world):
    dup = world / "enrol" / "ind03" / "000.png"
    with pytest.raises(ValueError, match=r"already in the gallery .*ind03.*SHA-256"):
        gallery.add("someone", [dup])
    copy = gallery.path.parent / "copy.png"
    shutil.copy(dup, copy)                                          # another path, same bytes
    with pytest.raises(ValueError, match="copy.png is already in the gallery"):
        gallery.add("ind03", [copy])
    twin = _png(gallery.path.parent / "twin_a.png", photo(30, 1))
    shutil.copy(twin, gallery.path.parent / "twin_b.png")
    with pytest.raises(ValueError, match="twin_b.png is the same file as .*twin_a.png"):
        gallery.add("twins", [twin, gallery.path.parent / "twin_b.png"])
    assert len(Gallery.open(gallery.path)) == 22 and "twins" not in gallery.names()     # nothing was added


def test_name_collision_refused_unless_merge(gallery, tmp_path):
    p = _png(tmp_path / "x.png", photo(3, 90))
    with pytest.raises(ValueError, match="collides with the enrolled individual 'ind03'"):
        gallery.add("IND03", [p])
    added = gallery.add("IND03", [p], merge=True)
    assert added[0]["name"] == "ind03"
    with pytest.raises(ValueError, match="collides"):
        gallery.rename("ind04", "ind05")
    gallery.merge("ind04", "ind05")
    assert "ind04" not in gallery.names() and sum(e["name"] == "ind05" for e in gallery.entries) == 6
    gallery.rename("ind05", "Nala")
    assert "Nala" in Gallery.open(gallery.path).names()


def test_single_individual_gallery(world, tmp_path):
    (tmp_path / "one").mkdir()
    shutil.copytree(world / "enrol" / "ind01", tmp_path / "one" / "ind01")
    g = Gallery.build(world / "run", tmp_path / "one", tmp_path / "g1")
    r = g.identify([photo(1, 30)])[0]
    assert r["answer"] == "known" and r["name"] == "ind01" and r["margin"] is None
    assert len(r["candidates"]) == 1


def test_edited_index_is_an_error(gallery):
    index = gallery.path / "index.json"
    data = json.loads(index.read_text())
    data["entries"] = data["entries"][:-1]
    index.write_text(json.dumps(data))
    with pytest.raises(GalleryError, match=r"index.json does not match .*embeddings-.*\.safetensors"):
        Gallery.open(gallery.path)
    index.write_text("{ not json")
    with pytest.raises(GalleryError, match="index.json is not valid JSON"):
        Gallery.open(gallery.path)


def test_truncated_embeddings_file_is_an_error(gallery):
    emb = next(gallery.path.glob("embeddings-*.safetensors"))
    emb.write_bytes(emb.read_bytes()[:-40])
    with pytest.raises(GalleryError, match=rf"{emb.name} does not match the SHA-256 recorded in .*index.json"):
        Gallery.open(gallery.path)


def test_gallery_of_another_model_refused(gallery, world, tmp_path):
    other = tmp_path / "other"
    assert main(["--threads", "1", "train", str(world / "train"), "--model", "cifar_cnn", "--head", "cosface",
                 "--embedding-dim", "32", "--iterations", "1", "--batch-size", "8", "--k", "2",
                 "--out", str(other), "--no-progress", "--val-ratio", "0"]) == 0
    with pytest.raises(GalleryError, match=r"was built with the model .*run.*best.safetensors.*not with .*other"):
        Gallery.open(gallery.path, run=other)


def test_bad_input(world, tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, [1, 2], 2)
    (photos / "empty_one").mkdir()
    with pytest.raises(ValueError, match="individual folder .*empty_one holds no photos"):
        Gallery.build(world / "run", photos, tmp_path / "g")
    (photos / "empty_one").rmdir()
    (photos / "ind01" / "fake.png").write_text("not an image")
    with pytest.raises(ValueError, match="could not decode image file .*fake.png"):
        Gallery.build(world / "run", photos, tmp_path / "g", strict=True)
    assert not (tmp_path / "g").exists()                            # nothing half-written
    said = []
    g = Gallery.build(world / "run", photos, tmp_path / "g", log=said.append)      # skipped with a line
    assert len(g) == 4 and any("fake.png" in m for m in said) and any("1 photo(s) could not be read" in m
                                                                       for m in said)
    res = g.identify([photos / "ind01" / "fake.png", photos / "ind02" / "000.png"])
    assert res[0]["answer"] == "error" and "fake.png" in res[0]["error"] and res[1]["name"] == "ind02"
    with pytest.raises(ValueError, match="cannot contain '/'"):
        Gallery.create(world / "run").add("a/b", [world / "enrol" / "ind01" / "000.png"])


def test_evaluate_warns_about_flattering_queries(gallery, world, tmp_path):
    queries = tmp_path / "q"
    write_photos(queries, [1, 2], 2, start=40)
    shutil.copy(world / "enrol" / "ind01" / "000.png", queries / "ind01" / "enrolled.png")
    said = []
    res = gallery.evaluate(queries, log=said.append)
    assert res["queries"] == 4 and res["left_out_enrolled"] == 1
    assert any("enrolled in the gallery" in m for m in said)
    assert "note" not in res                 # six individuals enrolled: rank-5 is a figure, not trivially 1


def test_cli_end_to_end(world, tmp_path, capsys):
    g = str(tmp_path / "g")
    assert main(["gallery", "build", str(world / "run"), str(world / "enrol"), "--out", g,
                 "--calibration", str(world / "cal")]) == 0
    out = capsys.readouterr().out
    assert "22 photos of 6 individuals in 18 encounters" in out and "calibrated on calibration folder" in out
    new = _png(tmp_path / "p" / "a.png", photo(13, 1))
    assert main(["gallery", "add", g, "Bora", str(new)]) == 0
    assert main(["gallery", "add", g, "Bora", str(new)]) == 1
    assert "already in the gallery" in capsys.readouterr().err
    q = _png(tmp_path / "p" / "q.png", photo(13, 2))
    assert main(["identify", g, str(q), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["answer"] == "known" and res[0]["name"] == "Bora" and 0.5 < res[0]["probability"] <= 1
    assert main(["identify", g, str(q)]) == 0
    assert "known: Bora (probability" in capsys.readouterr().out
    text = tmp_path / "p" / "notes.png"
    text.write_text("hello")
    assert main(["identify", g, str(text), str(q)]) == 1
    captured = capsys.readouterr()
    assert "notes.png: not identified" in captured.out and "Bora" in captured.out
    assert main(["gallery", "rename", g, "Bora", "ind01"]) == 1
    assert "collides" in capsys.readouterr().err
    assert main(["gallery", "rename", g, "Bora", "ind01", "--merge"]) == 0
    capsys.readouterr()
    assert main(["gallery", "list", g, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["names"]["ind01"] == 4 and "Bora" not in listed["names"] and listed["calibrated"]
    assert main(["gallery", "remove", g, str(new)]) == 0
    assert "1 photo(s) removed" in capsys.readouterr().out
    assert main(["gallery", "calibrate", g, str(world / "cal"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"]["same"] == 48 and (tmp_path / "g" / "reliability.png").stat().st_size > 1000


def test_in_memory_writes_are_locked(world, tmp_path):
    g = Gallery.create(world / "run")                 # in memory, no folder
    paths = [_png(tmp_path / f"{i}_{j}.png", photo(i, j)) for i in range(4) for j in range(3)]
    threads = [threading.Thread(target=g.add, args=(f"n{i}", paths[i * 3:(i + 1) * 3])) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(g) == 12 and g.embeddings.shape[0] == 12
    for e, row in zip(g.entries, g.embeddings):
        np.testing.assert_allclose(row, g.embedder.embed([Path(e["photo"])])[0], rtol=1e-5, atol=1e-6)


def test_classifier_run_with_background_class(world, tmp_path):
    """A classifier trained with a background class: its features are the embeddings, and "background"
    is the answer when that class wins, even with no background photos enrolled."""
    from reid_synth import background_photo
    data = write_photos(tmp_path / "cls", range(20, 24), 8, background=8)
    assert main(["--threads", "1", "train", str(data), "--model", "cifar_cnn", "--epochs", "4", "--batch-size", "8",
                 "--lr", "3e-3", "--out", str(tmp_path / "run"), "--no-progress", "--val-ratio", "0",
                 "--test-ratio", "0"]) == 0
    g = Gallery.build(tmp_path / "run", world / "val", tmp_path / "g")
    assert g.embedder.kind == "classifier" and "background" not in g.names()
    res = g.identify([background_photo(j, seed=5) for j in range(3)] + [photo(2, 80)])
    assert [r["answer"] for r in res] == ["background"] * 3 + ["known"]
    assert res[3]["name"] == "ind02"


def test_classifier_run_with_background_kinds(world, tmp_path):
    """A classifier trained with background/<kind>/ folders (nabi train's default splits them): any kind
    winning is the answer "background", and no kind is ever an enrolled name."""
    from PIL import Image

    from reid_synth import background_photo
    data = write_photos(tmp_path / "cls", range(20, 24), 8)
    for kind, shift in (("grass", 0), ("water", 50)):
        d = data / "background" / kind
        d.mkdir(parents=True)
        for j in range(8):
            Image.fromarray(np.roll(background_photo(j + shift), shift, axis=2)).save(d / f"{j}.png")
    assert main(["--threads", "1", "train", str(data), "--model", "cifar_cnn", "--epochs", "4", "--batch-size", "8",
                 "--lr", "3e-3", "--out", str(tmp_path / "run"), "--no-progress", "--val-ratio", "0",
                 "--test-ratio", "0"]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["background_classes"] == ["background/grass", "background/water"]
    g = Gallery.build(tmp_path / "run", world / "val", tmp_path / "g")
    assert g.embedder.kind == "classifier" and not any(n.startswith("background") for n in g.names())
    queries = [np.roll(background_photo(j + 30, seed=5), s, axis=2) for j, s in ((0, 0), (1, 50), (2, 0))]
    _, probs = g.embedder.embed(queries + [photo(2, 80)], with_probs=True)
    won = [cfg["classes"][i] for i in probs.argmax(1)]
    assert set(won[:3]) == {"background/grass", "background/water"}           # both kinds win ...
    assert not won[3].startswith("background")              # (an individual of training wins for an animal)
    res = g.identify(queries + [photo(2, 80)])
    assert [r["answer"] for r in res] == ["background"] * 3 + ["known"]     # ... any kind is "background"
    assert res[3]["name"] == "ind02"


def test_evaluate_closed_and_open_set(gallery, world, tmp_path, capsys):
    res = gallery.evaluate(world / "val")
    assert res["known_queries"] == 12 and res["unknown_queries"] == 6 and not res["calibrated"]
    emb = res["embedding"]
    assert emb["rank1"] == 1.0 and emb["rank5"] == 1.0 and emb["mAP"] > 0.9 and 0.0 <= emb["auroc"] <= 1.0
    assert res["three_way_accuracy"] == pytest.approx(12 / 18)     # uncalibrated: unknowns answered known
    assert "fused" not in res and "ece" not in res
    gallery.calibrate(world / "cal")
    res = gallery.evaluate(world / "val")
    assert res["fused"]["rank1"] == 1.0 and res["three_way_accuracy"] == 1.0 and 0 <= res["ece"] < 0.3
    from nabi.reid.evaluation import score_queries
    once = score_queries(gallery, world / "val")                   # scored once, answered again without scoring
    again = gallery.evaluate(scored=once)
    assert again["ece"] == pytest.approx(res["ece"]) and again["fused"] == pytest.approx(res["fused"])
    platt = gallery.calibrate(world / "cal", answer="platt")        # a map of the shown probability: the same
    mapped = gallery.evaluate(scored=once)                          # answers, other numbers shown
    assert platt["answer"].get("method") == "platt" or "not fitted" in platt["answer"]["note"]
    assert mapped["three_way_accuracy"] == res["three_way_accuracy"] and mapped["fused"] == pytest.approx(res["fused"])
    with pytest.raises(ValueError, match="unknown answer calibration 'vector'"):
        gallery.calibrate(world / "cal", answer="vector")
    assert main(["gallery", "evaluate", str(gallery.path), str(world / "val")]) == 0
    out = capsys.readouterr().out
    assert "embedding alone:" in out and "rank-1                     1.0000" in out


def test_background_kinds_train_as_classes_and_answer_background(world, tmp_path):
    from PIL import Image

    from reid_synth import background_photo
    data = write_photos(tmp_path / "data", range(20, 26), 4)
    for kind, shift in (("grass", 0), ("water", 50)):
        d = data / "background" / kind
        d.mkdir(parents=True)
        for j in range(4):
            Image.fromarray(np.roll(background_photo(j + shift), shift, axis=2)).save(d / f"{j}.png")
    assert main(["--threads", "1", "train", str(data), "--model", "cifar_cnn", "--head", "arcface",
                 "--embedding-dim", "8", "--iterations", "2", "--batch-size", "8", "--k", "2",
                 "--out", str(tmp_path / "run"), "--no-progress", "--val-ratio", "0.2"]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {"background/grass", "background/water"} <= set(cfg["classes"]) and "background" not in cfg["classes"]
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["arch"]["kwargs"]["num_classes"] == len(cfg["classes"])
    enrol = tmp_path / "enrol"
    shutil.copytree(data / "background", enrol / "background")
    shutil.copytree(world / "enrol" / "ind01", enrol / "ind01")
    g = Gallery.build(tmp_path / "run", enrol, tmp_path / "g")
    assert g.names() == ["background/grass", "background/water", "ind01"]
    r = g.identify([str(data / "background" / "water" / "1.png")])[0]
    assert r["answer"] == "background" and r["candidates"][0]["name"] == "background/water"


def test_explain_match(gallery, world, tmp_path):
    from nabi.reid.explain import explain_match
    q = _png(tmp_path / "q.png", photo(4, 99))
    res = explain_match(gallery, q, tmp_path / "cam")
    assert res["explained"] == "ind04" and res["similarity_explained"] == pytest.approx(res["similarity"], abs=1e-4)
    assert [Path(f).name for f in res["files"]] == ["query_cam.png", "match_cam.png"]
    assert all(Path(f).stat().st_size > 1000 for f in res["files"])


def test_cli_explain_habitat_reliance(gallery, tmp_path, capsys):
    """--mask / --match-mask: the share of the similarity's heat on the habitat (mask black), against the
    habitat's share of the photo; masks of another size than the photo; bad masks are clear errors."""
    from nabi.explain import grad_cam, habitat_reliance, mask_at_input
    from nabi.reid.explain import SimilarityToEmbedding
    q = _png(tmp_path / "q.png", photo(4, 97))
    left = np.zeros((64, 64), dtype=np.uint8)
    left[:, :32] = 255                                      # the animal: the left half, at twice the size
    top = np.zeros((16, 16), dtype=np.uint8)
    top[:4] = 255                                           # the matched photo's animal: the top quarter
    mask, match_mask = _png(tmp_path / "m" / "q_mask.png", left), _png(tmp_path / "m" / "match_mask.png", top)
    g, out = str(gallery.path), tmp_path / "cam"
    assert main(["gallery", "explain", g, str(q), "--mask", str(mask), "--match-mask", str(match_mask),
                 "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    hq, hm = res["habitat"]["query"], res["habitat"]["match"]
    assert hq["area_share"] == 0.5 and hm["area_share"] == 0.75 and hq["mask"] == str(mask)
    # the same figure from the heat map and the mask as the model sees them
    emb = gallery.embedder
    best = Path(res["candidates"][0]["photo"])
    cam, _ = grad_cam(SimilarityToEmbedding(emb.model, emb.embed([best])[0]), emb.load(q), target_class=0)
    expected = habitat_reliance(cam, mask_at_input(mask, q, emb.input_size[1:], emb.fit))
    assert cam[:, 16:].sum() > 0 and hq["heat_share"] == pytest.approx(expected["heat_share"], abs=1e-12)
    assert hq["heat_share"] == pytest.approx(cam[:, 16:].sum() / cam.sum(), abs=1e-6)
    assert main(["gallery", "explain", g, str(q), "--mask", str(mask), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"habitat reliance, query photo: {100 * hq['heat_share']:.0f} % of the heat on the habitat, which is " \
           f"50 % of the photo" in text and "match photo" not in text
    # bad masks: not an image, all black, all white; nothing written
    notes = tmp_path / "m" / "notes.png"
    notes.write_text("hello")
    black, white = _png(tmp_path / "m" / "black.png", left * 0), _png(tmp_path / "m" / "white.png", left * 0 + 255)
    for bad, message in ((notes, "could not decode mask file"), (black, "all black"), (white, "all white")):
        assert main(["gallery", "explain", g, str(q), "--mask", str(bad), "--out", str(tmp_path / "none")]) == 1
        err = capsys.readouterr().err
        assert message in err and str(bad) in err, err
    assert not (tmp_path / "none").exists()


def test_explain_habitat_reliance_of_a_heat_map_that_is_zero(gallery, tmp_path, monkeypatch):
    """A similarity whose Grad-CAM is zero everywhere has no habitat share: a clear error naming the
    photo and the mask, and no PNG written."""
    import nabi.explain
    from nabi.reid.explain import explain_match
    real = nabi.explain.grad_cam

    def flat(model, x, **kwargs):
        cam, info = real(model, x, **kwargs)
        return np.zeros_like(cam), info
    monkeypatch.setattr(nabi.explain, "grad_cam", flat)
    q = _png(tmp_path / "q.png", photo(4, 96))
    m = np.zeros((32, 32), dtype=np.uint8)
    m[8:24, 8:24] = 255
    mask = _png(tmp_path / "mask.png", m)
    with pytest.raises(ValueError, match="zero everywhere") as err:
        explain_match(gallery, q, tmp_path / "cam", mask=mask)
    assert str(q) in str(err.value) and str(mask) in str(err.value)
    assert not (tmp_path / "cam").exists()


def test_web_app_heat_map_of_a_gallery_match(gallery, tmp_path):
    """The web app's heat-map for a gallery: Grad-CAM of the query's similarity to its best match, over the
    photo; a name the photo is not matched with gives none."""
    import io
    from PIL import Image
    from nabi.explain import grad_cam
    from nabi.reid.explain import SimilarityToEmbedding
    from nabi.serve.identifiers import GalleryIdentifier
    from nabi.serve.served_gallery import ServedGallery
    q = _png(tmp_path / "q.png", photo(4, 98))
    ident = GalleryIdentifier(ServedGallery(gallery))
    ident.load({name: i for i, name in enumerate(ident.labels(), 1)})     # the web app's individual ids
    assert ident.has_heatmap
    png = ident.heatmap(q, size=96)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size[1] == 96
    # the overlay differs from the plain photo, and the CAM behind it is the similarity's
    top = gallery.identify([str(q)])[0]["candidates"][0]
    emb = gallery.embedder
    cam, info = grad_cam(SimilarityToEmbedding(emb.model, emb.embed([Path(top["photo"])])[0]), emb.load(q),
                         target_class=0)
    assert cam.max() > 0 and info["score"] == pytest.approx(top["similarity"], abs=1e-4)
    assert ident.heatmap(q, individual_id=10**6) is None              # an individual the photo is not matched with


def test_moved_weights_need_run(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    g = Gallery.build(run, world / "enrol", tmp_path / "g")
    moved = tmp_path / "moved"
    run.rename(moved)
    with pytest.raises(FileNotFoundError, match=r"weights .*run.*best.safetensors, which no longer exist"):
        Gallery.open(g.path)
    assert len(Gallery.open(g.path, run=moved)) == len(g)          # same weights elsewhere: accepted


def test_build_enrols_repeated_files_once(world, tmp_path):
    photos = write_photos(tmp_path / "photos", [1, 2], 2)
    shutil.copy(photos / "ind01" / "000.png", photos / "ind01" / "000 (copy).png")
    notes = []
    g = Gallery.build(world / "run", photos, tmp_path / "g", log=notes.append)
    assert len(g) == 4 and len(g.skipped) == 1 and "000 (copy).png" in notes[0]
    with pytest.raises(ValueError, match="already holds a gallery"):
        Gallery.build(world / "run", photos, tmp_path / "g")
    shutil.copy(photos / "ind01" / "001.png", photos / "ind02" / "stray.png")
    with pytest.raises(ValueError, match=r"stray.png \(individual 'ind02'\) is the same file as .*ind01"):
        Gallery.build(world / "run", photos, tmp_path / "g2")


def test_init_backbone_from_a_classifier_run(world, tmp_path, capsys):
    data = write_photos(tmp_path / "cls", range(20, 23), 3)
    assert main(["--threads", "1", "train", str(data), "--model", "cifar_cnn", "--iterations", "1", "--batch-size", "4",
                 "--out", str(tmp_path / "cls_run"), "--no-progress", "--val-ratio", "0", "--test-ratio", "0"]) == 0
    assert main(["--threads", "1", "train", str(world / "train"), "--model", "cifar_cnn", "--head", "cosface",
                 "--embedding-dim", "8", "--iterations", "1", "--batch-size", "8", "--k", "2", "--val-ratio", "0",
                 "--init", str(tmp_path / "cls_run"), "--out", str(tmp_path / "emb"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "loaded 4 arrays matching by name and shape" in out
    assert "unused (not in this model): fc.weight, fc.bias" in out


def test_embedding_training_keeps_an_existing_run(world, capsys):
    before = (world / "run" / "best.safetensors").read_bytes()
    assert main(["train", str(world / "train"), "--model", "cifar_cnn", "--head", "arcface", "--iterations", "1",
                 "--out", str(world / "run"), "--no-progress"]) == 1
    assert "--out" in capsys.readouterr().err
    assert (world / "run" / "best.safetensors").read_bytes() == before


def test_damaged_local_features_file_is_an_error(gallery):
    local = next(gallery.path.glob("local-*.safetensors"))
    local.write_bytes(local.read_bytes()[:-16])
    with pytest.raises(GalleryError, match=rf"local features file .*{local.name} does not match the SHA-256"):
        Gallery.open(gallery.path)


def test_a_learned_descriptor_that_changed_or_vanished_is_an_error(world, tmp_path):
    """Keypoints described by one patch network cannot be compared with a query's described by another."""
    from nabi.reid.descriptors import default_path
    from nabi.reid.local_features import LocalSettings
    net = tmp_path / "descriptor.safetensors"
    shutil.copy(default_path(), net)
    shutil.copy(default_path().with_suffix(".json"), net.with_suffix(".json"))              # its sidecar
    g = Gallery.build(world / "run", world / "enrol", tmp_path / "g",
                      local=LocalSettings(nfeatures=200, descriptor=f"learned:{net}"))
    recorded = json.loads((g.path / "index.json").read_text())["descriptor"]
    assert recorded == {"file": str(net), "sha256": file_sha256(net)}
    again = Gallery.open(g.path)
    assert again.local_settings.descriptor == f"learned:{net}"
    query = photo(ENROLLED[0], 50)
    assert again.identify([query])[0]["candidates"][0]["name"] == f"ind{ENROLLED[0]:02d}"   # it still answers
    net.write_bytes(net.read_bytes() + b" ")                                    # another file under the same name
    again.save()                        # a gallery open meanwhile keeps the SHA-256 its keypoints were made with
    assert json.loads((g.path / "index.json").read_text())["descriptor"] == recorded
    with pytest.raises(GalleryError, match=r"descriptor .*descriptor.safetensors .*now holds another network"):
        Gallery.open(g.path)
    net.unlink()
    with pytest.raises(GalleryError, match=r"descriptor .*descriptor.safetensors, which no longer exists"):
        Gallery.open(g.path)


def test_a_version_1_gallery_still_opens_and_upgrades(gallery):
    """A gallery written before encounters, keypoints and probabilities: its cosine threshold still answers."""
    index = gallery.path / "index.json"
    data = json.loads(index.read_text())
    for key in ("local", "local_settings", "matcher_settings", "encounter_rule", "gap_minutes"):
        data.pop(key, None)
    data["version"] = 1
    data["entries"] = [{k: e[k] for k in ("name", "photo", "sha256")} for e in data["entries"]]
    data["threshold"], data["calibration"] = 0.5, {"target_far": 0.01, "threshold": 0.5}
    index.write_text(json.dumps(data))
    old = Gallery.open(gallery.path)
    assert not old.has_local_features and not old.calibrated and old.threshold == 0.5
    r = old.identify([photo(2, 70), photo(19, 60)])
    assert r[0]["answer"] == "known" and r[0]["name"] == "ind02" and r[0]["probability"] is None
    assert all(r_["answer"] in ("known", "unknown") for r_ in r) and r[1]["threshold"] in (0.5, None)
    with pytest.raises(ValueError, match="has no local features"):
        old.identify([photo(2, 70)], matcher=True)
    old.ensure_local_features()
    again = Gallery.open(gallery.path)
    assert again.has_local_features and json.loads(index.read_text())["version"] == 3


def test_saves_keep_the_unchanged_chunks_of_local_features(gallery, world):
    """Enrolling a photo writes a small chunk of local features beside the untouched ones (a binary counter
    of chunks); taking one out rewrites the chunks from the one that held it; a reopened gallery has every
    photo's features, each equal to a fresh computation; files no index names are removed."""
    from nabi.reid import store

    def chunks():
        return store.local_chunks(json.loads((gallery.path / "index.json").read_text()))

    def local_files():
        return sorted(p.name for p in gallery.path.glob("local-*.safetensors"))
    first = chunks()
    assert [c["photos"] for c in first] == [22]
    before = (gallery.path / first[0]["file"]).stat()
    gallery.add("ind40", [world / "val" / "ind07" / "000.png"])
    gallery.add("ind41", [world / "val" / "ind08" / "000.png"])
    gallery.add("ind42", [world / "val" / "ind07" / "001.png"])
    assert [c["photos"] for c in chunks()] == [22, 2, 1] and chunks()[0] == first[0]
    after = (gallery.path / first[0]["file"]).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)      # never written again
    assert local_files() == sorted(c["file"] for c in chunks())
    gallery.remove(gallery.entries[23]["sha256"])                 # the first photo of the 2-photo chunk
    assert [c["photos"] for c in chunks()] == [22, 2] and chunks()[0] == first[0]
    assert local_files() == sorted(c["file"] for c in chunks())
    reopened = Gallery.open(gallery.path)
    assert [e["sha256"] for e in reopened.entries] == [e["sha256"] for e in gallery.entries]
    fresh = reopened._local_features([Path(e["photo"]) for e in reopened.entries[-3:]])
    for got, want in zip(reopened.local[-3:], fresh):
        np.testing.assert_array_equal(got.points, want.points)
        np.testing.assert_array_equal(got.descriptors.astype(np.float16), want.descriptors.astype(np.float16))


def test_the_keypoint_trees_are_cached_in_the_folder_and_loaded_instead_of_built(gallery, world, monkeypatch):
    """A FLANN-indexed gallery: the first process that searches it builds the trees and caches them beside the
    gallery; the next one loads them (no tree is built) and answers exactly as the built index does; photos
    enrolled since are searched beside the cached trees; a damaged cache is ignored and built again, and a
    save that makes it stale removes it."""
    import cv2
    from nabi.reid import matcher, store
    from nabi.reid.matcher import MatcherSettings
    gallery.matcher_settings = MatcherSettings(index="flann")
    gallery.save()
    queries = [photo(i, 75) for i in (0, 3, 5)]
    first = Gallery.open(gallery.path)
    built = first.identify(queries, matcher=True)
    (meta_path, meta), = store.saved_trees(gallery.path)
    assert meta["chunks"] == [c["sha256"] for c in store.local_chunks(json.loads((gallery.path / "index.json").read_text()))]
    builds = []
    real = matcher._cv2

    class Counting:
        def __getattr__(self, name):
            return getattr(cv2, name)

        def flann_Index(self, *args, **kwargs):
            if args:
                builds.append(len(args[0]))
            return cv2.flann_Index(*args, **kwargs)
    monkeypatch.setattr(matcher, "_cv2", lambda: Counting())
    again = Gallery.open(gallery.path).identify(queries, matcher=True)
    assert builds == []                                              # loaded, not built
    for a, b in zip(again, built):
        assert (a["name"], a["probability"]) == (b["name"], pytest.approx(b["probability"], abs=1e-12))
    gallery.add("ind43", [world / "val" / "ind08" / "001.png"])       # a new chunk: the cache still fits
    assert len(store.saved_trees(gallery.path)) == 1
    grown = Gallery.open(gallery.path)
    with_new = grown.identify(queries, matcher=True)
    assert builds == [] and len(grown.local_index()[0]) == 23
    in_memory = Gallery(grown.embedder, None, grown.entries, grown.embeddings, grown.local, grown.local_settings,
                        grown.matcher_settings, grown.calibration, grown.threshold)
    monkeypatch.setattr(matcher, "_cv2", real)
    for a, b in zip(with_new, in_memory.identify(queries, matcher=True)):
        assert a["name"] == b["name"]
    for tree in gallery.path.glob("keypoint-tree-*.flann"):           # damaged: not loaded, built again
        tree.write_bytes(tree.read_bytes()[:-64])
    monkeypatch.setattr(matcher, "_cv2", lambda: Counting())
    Gallery.open(gallery.path).identify(queries, matcher=True)
    assert len(builds) == 1
    gallery.remove(gallery.entries[0]["sha256"])                       # the first chunk changes: stale
    assert store.saved_trees(gallery.path) == [] and not list(gallery.path.glob("keypoint-tree-*"))


def test_a_version_2_gallery_with_one_local_features_file_still_opens(gallery):
    index = gallery.path / "index.json"
    data = json.loads(index.read_text())
    (chunk,) = data["local"]
    data["local"], data["version"] = {"file": chunk["file"], "sha256": chunk["sha256"]}, 2
    index.write_text(json.dumps(data))
    old = Gallery.open(gallery.path)
    assert len(old.local) == len(old.entries) == 22


def test_web_app_answers_with_the_matcher_as_identify_does(gallery, world, tmp_path):
    """A gallery calibrated with the keypoint matcher: the web app's answers (its own enrolments included)
    are the probabilities ``Gallery.identify`` gives on the same photos, and a new photo extends the keypoint
    index instead of building it again."""
    from nabi.serve.served_gallery import ServedGallery
    summary = gallery.calibrate(world / "cal")
    assert "matcher" in summary["fusion"]["scorers"]
    served = ServedGallery(Gallery.open(gallery.path))
    ids = {name: i for i, name in enumerate(served.labels(), 1)}
    served.load(ids, [])
    queries = [str(_png(tmp_path / f"q{i}.png", photo(i, 71))) for i in (0, 3)]
    mine = served.identify(queries)
    theirs = gallery.identify(queries)
    assert gallery.use_matcher(None) and served.base.use_matcher(None)
    for a, b in zip(mine, theirs):
        assert a["individual_id"] == (ids[b["name"]] if b["name"] else None)
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-9)
    together = served.identify(queries, groups=[0, 0])             # one sighting: one answer from both photos
    theirs = gallery.identify(queries, groups=[0, 0])
    assert together[0]["individual_id"] == together[1]["individual_id"]
    for a, b in zip(together, theirs):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-9)
    index_before = served._index_state[0]
    new = _png(tmp_path / "new.png", photo(2, 72))
    served.put(1, ids["ind02"], new, served.embed([new])[0])
    mine = served.identify(queries)
    assert len(served._index_state[0]) == len(index_before) + 1        # extended by the new photo
    gallery.add("ind02", [new])                                        # the same enrolment, on disk
    theirs = gallery.identify(queries)
    for a, b in zip(mine, theirs):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-9)


def test_embedding_run_carries_a_calibration_a_small_gallery_falls_back_on(world, tmp_path):
    """An embedding run ends with calibration.json fitted on its held-out individuals; a gallery with one photo
    per individual (nothing to calibrate on) uses it and says so."""
    from nabi.reid.calibrate import calibrate_new_gallery
    cal = json.loads((world / "run" / "calibration.json").read_text())
    held_out = json.loads((world / "run" / "config.json").read_text())["embedding"]["validation_individuals"]
    assert cal["source"].startswith(f"the run's {len(held_out)} held-out individuals")
    assert list(cal["fusion"]["scorers"]) == ["embedding"] and cal["pairs"]["same"] > 0
    small = tmp_path / "small"
    for i in (0, 1, 2):
        _png(small / f"ind{i:02d}" / "a.png", photo(i, 80))
    g = Gallery.build(world / "run", small, tmp_path / "g", local=False)
    summary, note = calibrate_new_gallery(g)
    assert "too few photos" in note and "held-out individuals" in note
    assert g.calibrated and Gallery.open(tmp_path / "g").calibrated
    res = g.identify([photo(1, 81)])[0]
    assert 0.0 <= res["probability"] <= 1.0 and res["calibrated"]


def test_a_gallery_has_one_writer_at_a_time(gallery, world, tmp_path, capsys):
    """While another process changes a gallery (it holds the folder's lock), add, remove, rename, calibrate and
    a build into it are refused at once with a clear message, and the gallery is unchanged; identify still reads."""
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from nabi.reid.store import one_writer\n"
        f"with one_writer({str(gallery.path)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        index = (gallery.path / "index.json").read_bytes()
        new = _png(tmp_path / "new.png", photo(3, 90))
        for argv in (["gallery", "add", str(gallery.path), "ind03", str(new)],
                     ["gallery", "rename", str(gallery.path), "ind03", "Ind-3"],
                     ["gallery", "calibrate", str(gallery.path)],
                     ["gallery", "build", str(world / "run"), str(world / "enrol"), "--out", str(gallery.path)]):
            assert main(argv) == 1, argv
            assert "being changed by another nabi process" in capsys.readouterr().err
        assert (gallery.path / "index.json").read_bytes() == index
        assert main(["identify", str(gallery.path), str(new)]) == 0
    finally:
        holder.kill()
        holder.wait()
    assert main(["gallery", "add", str(gallery.path), "ind03", str(new)]) == 0       # free again


def test_the_shipped_matcher_calibration_is_used_by_a_small_gallery(world, tmp_path):
    """nabi ships a calibration of the keypoint matcher (its provenance inside, made with the default
    settings); a gallery too small to calibrate on itself uses it beside the run's embedding calibration."""
    from nabi.reid.calibrate import calibrate_new_gallery, shipped_matcher_calibration
    from nabi.reid.local_features import LocalSettings
    from nabi.reid.matcher import MatcherSettings
    shipped = shipped_matcher_calibration()
    assert shipped["local_settings"] == LocalSettings().to_dict()
    assert MatcherSettings.from_dict(shipped["matcher_settings"]) == MatcherSettings()     # made as galleries match
    assert shipped["provenance"]["command"].startswith("python -m benchmarks.reid_default_calibration")
    assert shipped["pairs"]["same"] >= 100 and 0.5 < shipped["auroc_pairs"]["matcher"] <= 1.0
    small = tmp_path / "small"
    for i in (0, 1, 2):
        _png(small / f"ind{i:02d}" / "a.png", photo(i, 82))
    g = Gallery.build(world / "run", small, tmp_path / "g")
    summary, note = calibrate_new_gallery(g)
    assert "shipped matcher calibration" in note
    assert set(summary["fusion"]["scorers"]) == {"embedding", "matcher"} and g.use_matcher(None)
    res = g.identify([photo(2, 83)])[0]
    assert 0.0 <= res["probability"] <= 1.0
    # a gallery whose matcher verifies otherwise (one made before pairwise verification) is not given it
    old = Gallery.build(world / "run", small, tmp_path / "g_old",
                        matcher_settings=MatcherSettings(verify="neighbours"))
    assert "shipped matcher calibration" not in calibrate_new_gallery(old)[1]
