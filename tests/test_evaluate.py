"""Tests for nabi.evaluate: every expected number below is worked out by hand in the comments."""
import math
import os
import unicodedata

import numpy as np
import pytest

from nabi.evaluate import (EvalReport, accuracy, background_statistics, classification_report,
                           confusion_matrix, confusion_matrix_text, format_report, plot_confusion_matrix,
                           precision_recall, topk_accuracy)

# --------------------------------------------------------------------------- the basic 8-photo table
# Test set and model B both have classes [cat_a, cat_b, cat_c, background].
#  photo true        probs (a, b, c, bg)     argmax    argmax over a,b,c
#   0    cat_a       .7 .1 .1 .1             cat_a  ok  cat_a ok
#   1    cat_a       .2 .5 .1 .2             cat_b  x   cat_b x
#   2    cat_a       .3 .1 .1 .5             bg     x   cat_a ok   (called background)
#   3    cat_b       .1 .6 .2 .1             cat_b  ok  cat_b ok
#   4    cat_b       .1 .2 .3 .4             bg     x   cat_c x    (called background)
#   5    cat_c       .1 .1 .7 .1             cat_c  ok  cat_c ok
#   6    background  .1 .1 .1 .7             bg     ok  -
#   7    background  .5 .2 .2 .1             cat_a  x   -
# P1 = {0,3,5,6} / 8 = 0.5
# P2 = {0,3,5} / 6 = 0.5
# P3: leave out photos 2 and 4 -> {0,3,5} / {0,1,3,5} = 3/4 = 0.75, n_p3 = 4, n_called_background = 2
# P4 = {0,2,3,5} / 6 = 2/3
NAMES = ["cat_a", "cat_b", "cat_c", "background"]
PROBS = np.array([[.7, .1, .1, .1],
                  [.2, .5, .1, .2],
                  [.3, .1, .1, .5],
                  [.1, .6, .2, .1],
                  [.1, .2, .3, .4],
                  [.1, .1, .7, .1],
                  [.1, .1, .1, .7],
                  [.5, .2, .2, .1]])
LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 3])
BASE = dict(p1=0.5, p2=0.5, p3=0.75, p4=2 / 3, n_test1=8, n_test2=6, n_called_background=2, n_p3=4)


def _check(stats, expected):
    for key, val in expected.items():
        if isinstance(val, float) and math.isnan(val):
            assert math.isnan(stats[key]), key
        else:
            assert stats[key] == pytest.approx(val), key


# --------------------------------------------------------------------------- accuracy / top-k

def test_accuracy_probs_logits_onehot():
    # argmax per row: 0,1,3,1,3,2,3,0 vs labels 0,0,0,1,1,2,3,3 -> rows 0,3,5,6 right -> 4/8
    assert accuracy(PROBS, LABELS) == 0.5
    assert accuracy(np.log(PROBS), LABELS) == 0.5  # logits: same argmax
    assert accuracy(PROBS, np.eye(4)[LABELS]) == 0.5  # one-hot labels
    assert math.isnan(accuracy(np.zeros((0, 4)), np.zeros(0, dtype=int)))


def test_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="entries"):
        accuracy(PROBS, LABELS[:5])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        accuracy(PROBS, np.array([0, 0, 0, 1, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="NaN"):
        accuracy(np.full((2, 3), np.nan), [0, 1])
    with pytest.raises(ValueError, match="2-D"):
        accuracy(np.ones(4), [0])


def test_topk_accuracy_hand_case():
    scores = np.array([[0.1, 0.4, 0.3, 0.2],       # y=2: one higher (0.4)              -> rank 1
                       [0.5, 0.2, 0.2, 0.1],       # y=2: 0.5 higher + tie at col 1 < 2 -> rank 2
                       [0.25, 0.25, 0.25, 0.25],   # y=0: all tied, nothing before col 0 -> rank 0
                       [0.1, 0.2, 0.3, 0.4]])      # y=0: three higher                   -> rank 3
    y = np.array([2, 2, 0, 0])
    # correct iff rank < k: k=1 {row2} 1/4; k=2 {0,2} 2/4; k=3 {0,1,2} 3/4; k=4 all
    assert topk_accuracy(scores, y, 1) == 0.25
    assert topk_accuracy(scores, y, 2) == 0.5
    assert topk_accuracy(scores, y, 3) == 0.75
    assert topk_accuracy(scores, y, 4) == 1.0
    assert topk_accuracy(scores, y, 1) == accuracy(scores, y)  # same tie rule as argmax
    for bad in (0, 5, 1.5):
        with pytest.raises(ValueError, match="k must be"):
            topk_accuracy(scores, y, bad)


# --------------------------------------------------------------------------- confusion matrix & PRF

# predictions of PROBS: 0,1,3,1,3,2,3,0 ; rows = true, cols = predicted
CM = np.array([[1, 1, 0, 1],   # cat_a -> a, b, bg
               [0, 1, 0, 1],   # cat_b -> b, bg
               [0, 0, 1, 0],   # cat_c -> c
               [1, 0, 0, 1]])  # bg    -> bg, a


def test_confusion_matrix_small_case():
    np.testing.assert_array_equal(confusion_matrix(PROBS.argmax(1), LABELS, 4), CM)
    np.testing.assert_array_equal(confusion_matrix(PROBS, LABELS, 4), CM)  # scores: argmax taken
    assert confusion_matrix(PROBS, LABELS, 4).sum() == 8
    with pytest.raises(ValueError):
        confusion_matrix([0, 5], [0, 1], 4)


def test_precision_recall_hand_case():
    pr = precision_recall(CM)
    # TP = diag = 1,1,1,1 ; column sums 2,2,1,3 ; row sums 3,2,1,2
    np.testing.assert_allclose(pr.precision, [1 / 2, 1 / 2, 1, 1 / 3])
    np.testing.assert_allclose(pr.recall, [1 / 3, 1 / 2, 1, 1 / 2])
    # f1 = 2TP / (row + col) = 2/5, 2/4, 2/2, 2/5 (harmonic mean, e.g. 2*(.5*.333)/(.833) = .4)
    np.testing.assert_allclose(pr.f1, [0.4, 0.5, 1.0, 0.4])
    np.testing.assert_array_equal(pr.support, [3, 2, 1, 2])


def test_precision_recall_zero_division_is_nan():
    cm = np.array([[2, 0, 0],   # class 0: TP 2, predicted 3 times -> P 2/3, R 1, F1 4/5
                   [1, 0, 0],   # class 1: never predicted -> P nan; R 0/1 = 0; F1 0/(0+1) = 0
                   [0, 0, 0]])  # class 2: absent and never predicted -> all nan
    precision, recall, f1, support = precision_recall(cm)
    assert precision[0] == pytest.approx(2 / 3) and recall[0] == 1 and f1[0] == pytest.approx(0.8)
    assert math.isnan(precision[1]) and recall[1] == 0 and f1[1] == 0
    assert math.isnan(precision[2]) and math.isnan(recall[2]) and math.isnan(f1[2])
    np.testing.assert_array_equal(support, [2, 1, 0])


def test_classification_report_numbers():
    text = classification_report(CM, NAMES)
    rows = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines() if ln.strip()}
    assert rows["cat_a"] == ["0.5000", "0.3333", "0.4000", "3"]
    assert rows["background"] == ["0.3333", "0.5000", "0.4000", "2"]
    assert rows["accuracy"] == ["0.5000", "8"]  # trace 4 / 8
    # macro precision = (.5 + .5 + 1 + 1/3) / 4 = 0.58333
    assert rows["macro"][1] == "0.5833"
    # weighted recall = (3*1/3 + 2*.5 + 1*1 + 2*.5) / 8 = 4/8 = accuracy
    assert text.splitlines()[-1].split()[3] == "0.5000"
    with pytest.raises(ValueError, match="class names"):
        classification_report(CM, NAMES[:3])


def test_confusion_matrix_text_roundtrip_and_korean_alignment():
    names = ["나비", "cat_b", "cat_c", "배경"]
    text = confusion_matrix_text(CM, names)
    lines = text.splitlines()
    assert lines[0].split()[-5:] == ["나비", "cat_b", "cat_c", "배경", "total"]
    grid = np.array([[int(v) for v in ln.split()[1:]] for ln in lines[1:]])
    np.testing.assert_array_equal(grid[:, :4], CM)
    np.testing.assert_array_equal(grid[:, 4], [3, 2, 1, 2])
    # Hangul takes two terminal columns, so the "total" column lines up in display width
    from nabi.evaluate import _width
    assert len({_width(ln) for ln in lines}) == 1


# --------------------------------------------------------------------------- PNG

def test_plot_confusion_matrix_png(tmp_path):
    path = tmp_path / "sub" / "cm.png"
    out = plot_confusion_matrix(CM, ["나비", "cat_b", "cat_c", "배경"], path, title="고양이")
    assert out == str(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    import matplotlib.image as mpimg
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # overwrite in place (normalised), and no temp file is left behind
    plot_confusion_matrix(CM, NAMES, path, normalize=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(path.parent)) == ["cm.png"]


# --------------------------------------------------------------------------- background statistics

def test_background_statistics_base_case():
    s = background_statistics(PROBS, LABELS, NAMES)
    _check(s, BASE)
    assert s["n_background_photos"] == 2 and s["model_has_background"] and s["test_has_background"]
    np.testing.assert_array_equal(s["pred"], [0, 1, 3, 1, 3, 2, 3, 0])
    # photo 6 ties .1/.1/.1 over the individuals -> first one (cat_a, column 0), like np.argmax
    np.testing.assert_array_equal(s["pred_individual"], [0, 1, 0, 1, 2, 2, 0, 0])
    assert s["pred_name"][2] == "background" and s["individuals"] == ["cat_a", "cat_b", "cat_c"]
    np.testing.assert_array_equal(s["correct"], [1, 0, 0, 1, 0, 1, 1, 0])
    # logits give the same result
    _check(background_statistics(np.log(PROBS), LABELS, NAMES), BASE)


def test_background_not_last_in_model_or_test_set():
    model = ["background", "cat_a", "cat_b", "cat_c"]
    probs = PROBS[:, [3, 0, 1, 2]]                    # same photos, columns reordered
    test = ["cat_b", "background", "cat_a", "cat_c"]
    old_to_new = np.array([2, 0, 3, 1])               # cat_a->2, cat_b->0, cat_c->3, background->1
    s = background_statistics(probs, old_to_new[LABELS], test, model_classes=model)
    _check(s, BASE)                                    # same photos, same answers
    base = background_statistics(PROBS, LABELS, NAMES)
    assert s["pred_name"] == base["pred_name"]


def test_renamed_background_korean_and_nfd():
    names = ["cat_a", "cat_b", "cat_c", "배경"]
    _check(background_statistics(PROBS, LABELS, names, background="배경"), BASE)
    # macOS folder names come decomposed (NFD); they still match an NFC '배경'
    nfd = [unicodedata.normalize("NFD", n) for n in names]
    assert nfd[3] != "배경"
    _check(background_statistics(PROBS, LABELS, nfd, background="배경"), BASE)
    # model A with a renamed background folder but no background= : '배경' would look like an
    # individual the model lacks; the error says how to fix it
    with pytest.raises(ValueError, match="background=<its name>"):
        background_statistics(PROBS[:, :3], LABELS, names, model_classes=["cat_a", "cat_b", "cat_c"])


def test_everything_called_background():
    #  true   probs (a, b, c, bg)   argmax  over a,b,c
    #  a      .3 .1 .1 .5           bg      a ok
    #  b      .3 .2 .1 .4           bg      a x
    #  c      .1 .1 .3 .5           bg      c ok
    #  bg     .1 .1 .1 .7           bg ok
    # P1 = 1/4; P2 = 0/3; P3 undefined (0 left) -> nan, n_p3 = 0; P4 = 2/3
    probs = np.array([[.3, .1, .1, .5], [.3, .2, .1, .4], [.1, .1, .3, .5], [.1, .1, .1, .7]])
    s = background_statistics(probs, [0, 1, 2, 3], NAMES)
    _check(s, dict(p1=0.25, p2=0.0, p3=float("nan"), p4=2 / 3, n_test1=4, n_test2=3,
                   n_called_background=3, n_p3=0))
    text = format_report(s, "B")
    assert "n/a" in text and "undefined" in text


def test_no_background_photos_p1_equals_p2():
    #  true  probs (a, b, c, bg)  argmax  over a,b,c
    #  a     .6 .2 .1 .1          a ok    a ok
    #  b     .2 .3 .1 .4          bg x    b ok   (called background)
    #  c     .1 .1 .8 .0          c ok    c ok
    #  a     .1 .5 .2 .2          b x     b x
    # P2 = 2/4 = P1; P3 = 2/3 (n_p3 = 3); P4 = 3/4
    probs = np.array([[.6, .2, .1, .1], [.2, .3, .1, .4], [.1, .1, .8, .0], [.1, .5, .2, .2]])
    s = background_statistics(probs, [0, 1, 2, 0], ["cat_a", "cat_b", "cat_c"], model_classes=NAMES)
    _check(s, dict(p1=0.5, p2=0.5, p3=2 / 3, p4=0.75, n_test1=4, n_test2=4, n_called_background=1, n_p3=3))
    assert not s["test_has_background"] and s["n_background_photos"] == 0
    assert "P1 = P2" in format_report(s)


def test_model_a_without_background_class():
    #  true  probs (a, b, c)  argmax
    #  a     .6 .3 .1         a ok
    #  a     .2 .7 .1         b x
    #  b     .1 .8 .1         b ok
    #  c     .3 .3 .4         c ok
    #  bg    .5 .3 .2         a  (always wrong: A cannot say background)
    #  bg    .2 .2 .6         c  (always wrong)
    # P2 = 3/4; P1 = 3/6 = 0.5; nothing called background -> P3 = P2, n_p3 = 4; P4 = P2
    probs = np.array([[.6, .3, .1], [.2, .7, .1], [.1, .8, .1], [.3, .3, .4], [.5, .3, .2], [.2, .2, .6]])
    s = background_statistics(probs, [0, 0, 1, 2, 3, 3], NAMES, model_classes=NAMES[:3])
    _check(s, dict(p1=0.5, p2=0.75, p3=0.75, p4=0.75, n_test1=6, n_test2=4, n_called_background=0, n_p3=4))
    assert not s["model_has_background"]
    np.testing.assert_array_equal(s["target"], [0, 0, 1, 2, -1, -1])
    assert "count as wrong" in format_report(s, "A")


def test_background_statistics_errors():
    with pytest.raises(ValueError, match="not among the model's classes"):
        background_statistics(PROBS, LABELS, ["cat_a", "cat_d", "cat_c", "background"], model_classes=NAMES)
    with pytest.raises(ValueError, match="no animal photos"):
        background_statistics(PROBS[6:], LABELS[6:], NAMES)
    with pytest.raises(ValueError, match="at least two individuals"):
        background_statistics(np.array([[.6, .4], [.3, .7]]), [0, 1], ["cat_a", "background"])
    with pytest.raises(ValueError, match="columns"):
        background_statistics(PROBS[:, :3], LABELS, NAMES)
    with pytest.raises(ValueError, match="entries"):
        background_statistics(PROBS, LABELS[:7], NAMES)
    with pytest.raises(ValueError, match="2-D"):
        background_statistics(PROBS[0], LABELS[:1], NAMES)
    with pytest.raises(ValueError, match="twice"):
        background_statistics(PROBS, LABELS, ["cat_a", "cat_a", "cat_c", "background"])


def test_eval_report_and_format():
    s = background_statistics(PROBS, LABELS, NAMES)
    r = EvalReport.from_statistics(s, "B", seed=2019)
    assert (r.p1, r.p2, r.p3, r.n_p3, r.n_called_background) == (0.5, 0.5, 0.75, 4, 2)
    assert r.to_dict()["extra"] == {"seed": 2019}
    text = format_report(r)
    assert text.startswith("B: Testset 1 = 8 photos (2 background), Testset 2 = 6 animal photos")
    assert "0.7500  n=4  (2 called background" in text and "0.6667" in text
    assert format_report(s, "B") == text  # dict and report give the same text
