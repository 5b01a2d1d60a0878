"""What ``nabi eval`` reports, read as a newcomer would: which photos it scored, undefined precision shown
as n/a (null in JSON, which stays valid), Korean class names lined up, and errors that name a file once."""
import json
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from nabi import evaluate as E
from nabi.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import write_folder  # noqa: E402

FAST = ["--model", "cifar_cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--no-progress"]


def strict_json(text):
    def refuse(token):
        raise ValueError(f"invalid JSON token {token}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("eval") / "photos", classes=("나비", "cat_b", "치즈냥이"), per_class=8)


def test_eval_on_the_folder_a_run_trained_on_scores_only_its_held_out_photos(photos, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(photos), *FAST, "--val-ratio", "0.25", "--test-ratio", "0.25", "--out", str(run)]) == 0
    test = json.loads((run / "test.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), str(photos)]) == 0
    out = capsys.readouterr()
    assert f"{photos} is the folder this run trained on and has no test/ folder: scoring the {test['n']} photos " \
           "the run held out for testing (0.25 of each class, seed 0)" in out.err
    report = strict_json((run / "eval" / "eval.json").read_text())
    assert report["n"] == test["n"] == 6 and report["accuracy"] == pytest.approx(test["test_acc"])
    assert "held out for testing" in report["scored"]
    assert main(["eval", str(run), str(photos), "--all-photos"]) == 0
    out = capsys.readouterr()
    assert "warning: --all-photos: scoring every photo" in out.err and "accuracy" in out.out
    assert strict_json((run / "eval" / "eval.json").read_text())["n"] == 24


def test_eval_warns_when_the_run_held_no_test_photos_out_of_that_folder(photos, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(photos), *FAST, "--val-ratio", "0.25", "--test-ratio", "0", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), str(photos)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {photos} is the folder this run trained on, and the run held no test photos out" in err
    assert "overstate" in err
    # another folder is scored whole, without a word
    other = write_folder(tmp_path / "other", classes=("나비", "cat_b", "치즈냥이"), per_class=2, seed=5)
    assert main(["eval", str(run), str(other)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_undefined_precision_reads_n_a_in_the_text_and_null_in_the_json():
    cm = np.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]])     # class 1 never predicted, class 2 has no photos
    text = E.classification_report(cm, ["a", "b", "c"])
    assert "nan" not in text and "n/a" in text and E.UNDEFINED_NOTE in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line[:1] in "abc" and line.strip()}
    assert rows["b"][0] == "n/a" and rows["c"][:2] == ["n/a", "n/a"]
    scores = E.per_class_scores(cm, ["a", "b", "c"])
    assert scores["b"]["precision"] is None and scores["c"]["recall"] is None and scores["a"]["precision"] == pytest.approx(2 / 3)
    assert strict_json(json.dumps(E.json_ready({"p3": float("nan"), "xs": [np.float32(np.inf), 1.0]}))) == \
        {"p3": None, "xs": [None, 1.0]}


def test_eval_json_is_strict_json_with_per_class_scores(photos, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(photos), *FAST, "--val-ratio", "0.25", "--test-ratio", "0.25", "--lr", "1e-9",
                 "--out", str(run)]) == 0                       # an untrained model: some classes never predicted
    capsys.readouterr()
    assert main(["eval", str(run), str(photos), "--json"]) == 0
    printed = strict_json(capsys.readouterr().out)
    report = strict_json((run / "eval" / "eval.json").read_text())
    assert printed == report
    text = (run / "eval" / "eval.txt").read_text()
    assert set(report["per_class"]) == {"나비", "cat_b", "치즈냥이"}
    never = [c for c, s in report["per_class"].items() if s["precision"] is None]
    for c in never:
        assert re.search(rf"^{c}\s+n/a", text, re.M), text
    assert never and "n/a" in text and "nan" not in text          # (seeded: the same classes every run)


def display_width(text):
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in unicodedata.normalize("NFC", text))


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_report_columns_line_up_with_korean_class_names(form):
    """Folder names from macOS arrive decomposed (NFD): a Hangul syllable is then two or three code points
    but still one wide character on screen."""
    names = [unicodedata.normalize(form, n) for n in ("치즈냥이", "나비", "cat_b", "background")]
    cm = np.array([[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 4, 0], [0, 0, 0, 2]])
    table = E.classification_report(cm, names).splitlines()
    widths = {display_width(line) for line in table[:1] + table[2:6]}
    assert len(widths) == 1, table                     # the header and every class row end at one column
    grid = E.confusion_matrix_text(cm, names).splitlines()
    assert len({display_width(line) for line in grid}) == 1, grid


def test_a_file_that_is_not_weights_is_named_once(tmp_path, capsys):
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes")
    assert main(["train", "embedded:mnist5k", "--init", str(notes), "--epochs", "1", "--out",
                 str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count(str(notes)) == 1 and "not a readable weight file" in err, err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "embedded:mnist5k", "--init", str(empty), "--epochs", "1", "--out",
                 str(tmp_path / "run2"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count(str(empty)) == 1 and "holds no best.safetensors" in err, err
