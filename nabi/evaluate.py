"""Evaluation: accuracy, top-k, confusion matrices, and the background-class statistics P1-P4.

Everything here runs on NumPy (CuPy arrays are copied to the host first);
matplotlib is imported only by :func:`plot_confusion_matrix`.

Conventions
-----------
* Predictions are ``argmax`` over the class axis; ties go to the lowest column
  index (``np.argmax``). Probabilities and logits give the same answers.
* Labels are integer class indices ``(N,)``; one-hot ``(N, K)`` labels are
  accepted by :func:`accuracy` and :func:`topk_accuracy`.
* A ratio with a zero denominator is ``nan`` (never a silent 0): the precision of a class never
  predicted, the recall of a class with no photos. Reports print it as ``n/a`` (with a note saying
  why) and JSON holds ``null`` (``json_ready``), so every JSON file stays valid.
* Text tables line up by display width: a Korean (East Asian wide) character takes two columns, and
  names arriving decomposed (NFD, from macOS file systems) are composed (NFC) first.

Background statistics (the 2019 campus-cats protocol)
-----------------------------------------------------
The protocol of the report "CNN을 이용한 고려대학교 길고양이 분류 및 배경 학습을 통한
성능 개선" (COSE362, Korea University, 2019): a model B learns the individuals
plus a background class and is compared with a model A that learns the
individuals only. Testset 1 holds every test photo (cats and background photos); Testset 2 holds
the cat photos only. With ``pred`` the argmax over the model's classes:

* ``P1 = #{pred == true} / |Testset 1|``  (a background photo is right when predicted background)
* ``P2 = #{pred == true} / |Testset 2|``  (a cat predicted background is wrong)
* ``P3 = #{pred == true} / #{pred != background}`` over Testset 2 (``nan`` if every cat was called background)
* ``P4 = #{argmax over individuals == true} / |Testset 2|``

Background kinds: a model may learn the background as several classes
``background/<kind>`` (one per sub-folder of the background folder: trees, pavement, …),
and a test set may label its background photos by kind. Every one of those names means
"background": a photo predicted as any background class is "called background", a
background photo predicted as any background class (another kind included) is right,
and P4's argmax runs over the individuals' columns only (every background column ignored).

Decisions: with no background photos in the test set, Testset 1 = Testset 2 and
``P1 = P2``. For a model without a background output (model A), background photos
can never be predicted right, so ``P1`` counts them as wrong (it is still
"fraction of Testset 1 labelled correctly"), nothing is called background, and
``P3 = P4 = P2``.
"""
from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

from .backend import to_numpy
from .data.background import is_background

__all__ = [
    "accuracy", "topk_accuracy", "confusion_matrix", "precision_recall", "PrecisionRecall",
    "classification_report", "confusion_matrix_text", "plot_confusion_matrix",
    "background_statistics", "merge_background_classes", "EvalReport", "format_report",
]


# --------------------------------------------------------------------------- helpers

def _scores_2d(scores, what="scores") -> np.ndarray:
    s = to_numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (N, K) array, got shape {s.shape}")
    if s.shape[1] == 0:
        raise ValueError(f"{what} has no classes (shape {s.shape})")
    if s.size and not np.all(np.isfinite(s)):
        raise ValueError(f"{what} contains NaN or inf; a diverged model cannot be scored")
    return s


def _labels_1d(labels, n: int, num_classes: int, what="labels") -> np.ndarray:
    y = to_numpy(labels)
    if y.ndim == 2:  # one-hot
        if y.shape != (n, num_classes):
            raise ValueError(f"one-hot {what} have shape {y.shape}, expected {(n, num_classes)}")
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise ValueError(f"{what} must be 1-D class indices (or one-hot 2-D), got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{what} have {y.shape[0]} entries but there are {n} predictions")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{what} must be integer class indices")
        y = y.astype(np.int64)
    y = y.astype(np.int64, copy=False)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{what} must lie in [0, {num_classes}); got range [{y.min()}, {y.max()}]")
    return y


def _ratio(num, den) -> float:
    return float(num) / float(den) if den else float("nan")


def _nfc(name) -> str:
    # Folder names from macOS file systems arrive decomposed (NFD); compare in NFC.
    return unicodedata.normalize("NFC", str(name))


def _width(text: str) -> int:
    """Terminal display width: East Asian wide/full-width characters take two columns (measured on the
    composed form: a decomposed Hangul syllable is shown as one wide character, not as its jamo)."""
    w = 0
    for ch in _nfc(text):
        if unicodedata.combining(ch):
            continue
        w += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return w


def _pad(text: str, width: int, align: str = "<") -> str:
    text = _nfc(text)
    gap = max(0, width - _width(text))
    return text + " " * gap if align == "<" else " " * gap + text


def _fmt(x, digits: int) -> str:
    if x is None:
        return "-"
    x = float(x)
    return UNDEFINED if math.isnan(x) else f"{x:.{digits}f}"


UNDEFINED = "n/a"
UNDEFINED_NOTE = ("n/a: undefined (0/0): the precision of a class never predicted, the recall of a class "
                  "with no photos here; the averages leave it out")


def json_ready(x):
    """``x`` with every NaN or infinite float as ``None`` (JSON ``null``) and NumPy values as Python ones,
    recursively: what JSON files of results hold (``json.dumps`` would write the invalid token ``NaN``)."""
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_ready(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _check_cm(cm) -> np.ndarray:
    cm = np.asarray(to_numpy(cm))
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    if np.any(cm < 0):
        raise ValueError("confusion matrix has negative counts")
    return cm


def _check_names(class_names, k: int) -> list[str]:
    names = [str(n) for n in class_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names given for {k} classes")
    return names


# --------------------------------------------------------------------------- basic metrics

def accuracy(probs_or_logits, labels) -> float:
    """Top-1 accuracy ``mean(argmax_k s[n, k] == y[n])``; ``nan`` for an empty batch."""
    s = _scores_2d(probs_or_logits)
    y = _labels_1d(labels, s.shape[0], s.shape[1])
    if s.shape[0] == 0:
        return float("nan")
    return float(np.mean(s.argmax(axis=1) == y))


def topk_accuracy(scores, labels, k: int) -> float:
    """Fraction of rows whose true class is among the ``k`` highest scores.

    rank(y) = #{j : s_j > s_y} + #{j < y : s_j == s_y}  (ties broken like ``argmax``,
    so ``k=1`` equals :func:`accuracy`); correct iff ``rank(y) < k``.
    """
    s = _scores_2d(scores)
    n, num_classes = s.shape
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= num_classes:
        raise ValueError(f"k must be an integer in [1, {num_classes}], got {k!r}")
    y = _labels_1d(labels, n, num_classes)
    if n == 0:
        return float("nan")
    sy = s[np.arange(n), y][:, None]
    cols = np.arange(num_classes)[None, :]
    rank = np.sum(s > sy, axis=1) + np.sum((s == sy) & (cols < y[:, None]), axis=1)
    return float(np.mean(rank < int(k)))


def confusion_matrix(pred, labels, num_classes: int) -> np.ndarray:
    """``cm[t, p]`` = number of samples with true class ``t`` predicted as ``p`` (int64).

    ``pred`` may be class indices ``(N,)`` or scores ``(N, K)`` (argmax is taken).
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    p = to_numpy(pred)
    if p.ndim == 2:
        p = _scores_2d(p, "pred").argmax(axis=1)
    p = _labels_1d(p, p.shape[0] if p.ndim else -1, num_classes, "pred")
    y = _labels_1d(labels, p.shape[0], num_classes)
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).astype(np.int64)


class PrecisionRecall(NamedTuple):
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def precision_recall(cm) -> PrecisionRecall:
    """Per-class ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``, ``f1 = 2TP/(2TP+FP+FN)``, ``support = TP+FN``.

    ``TP = cm[c, c]``, ``FP = col sum - TP``, ``FN = row sum - TP``. A 0/0 is ``nan``:
    precision of a class never predicted, recall of a class absent from the labels,
    f1 only when the class is neither present nor predicted (f1 = harmonic mean of
    precision and recall wherever both are defined).
    """
    cm = _check_cm(cm).astype(np.float64)
    tp = np.diag(cm)
    col = cm.sum(axis=0)
    row = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(col > 0, tp / np.where(col > 0, col, 1), np.nan)
        recall = np.where(row > 0, tp / np.where(row > 0, row, 1), np.nan)
        den = col + row  # = 2TP + FP + FN
        f1 = np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)
    return PrecisionRecall(precision, recall, f1, row.astype(np.int64))


def classification_report(cm, class_names: Sequence[str], digits: int = 4) -> str:
    """Text table: per-class precision / recall / f1 / support, then accuracy, macro and weighted averages.

    accuracy = trace(cm) / sum(cm); macro = mean over classes ignoring nan;
    weighted = sum(support_c * m_c) / sum(support_c) over classes where m_c is defined.
    """
    cm = _check_cm(cm)
    names = _check_names(class_names, cm.shape[0])
    pr = precision_recall(cm)
    total = int(cm.sum())
    name_w = max([_width(n) for n in names] + [len("weighted avg")])
    col_w = max(9, digits + 3)
    head = _pad("", name_w) + "".join(_pad(h, col_w, ">") for h in ("precision", "recall", "f1", "support"))
    lines = [head, ""]
    for i, n in enumerate(names):
        lines.append(_pad(n, name_w) + "".join(_pad(_fmt(v[i], digits), col_w, ">")
                                               for v in (pr.precision, pr.recall, pr.f1))
                     + _pad(str(int(pr.support[i])), col_w, ">"))
    lines.append("")
    acc = _ratio(np.trace(cm), total)
    lines.append(_pad("accuracy", name_w) + _pad("", 2 * col_w) + _pad(_fmt(acc, digits), col_w, ">")
                 + _pad(str(total), col_w, ">"))

    def _avg(v, w=None):
        ok = ~np.isnan(v)
        if not ok.any():
            return float("nan")
        if w is None:
            return float(np.mean(v[ok]))
        ws = w[ok].sum()
        return float(np.sum(v[ok] * w[ok]) / ws) if ws > 0 else float("nan")

    sup = pr.support.astype(np.float64)
    for label, w in (("macro avg", None), ("weighted avg", sup)):
        lines.append(_pad(label, name_w) + "".join(_pad(_fmt(_avg(v, w), digits), col_w, ">")
                                                   for v in (pr.precision, pr.recall, pr.f1))
                     + _pad(str(total), col_w, ">"))
    if np.isnan(pr.precision).any() or np.isnan(pr.recall).any():
        lines += ["", UNDEFINED_NOTE]
    return "\n".join(lines) + "\n"


def per_class_scores(cm, class_names: Sequence[str]) -> dict:
    """``{name: {'precision', 'recall', 'f1', 'support'}}`` for a JSON report: an undefined value (0/0)
    is ``None``, as ``classification_report`` prints ``n/a``."""
    cm = _check_cm(cm)
    names = _check_names(class_names, cm.shape[0])
    pr = precision_recall(cm)
    return json_ready({n: {"precision": pr.precision[i], "recall": pr.recall[i], "f1": pr.f1[i],
                           "support": int(pr.support[i])} for i, n in enumerate(names)})


def confusion_matrix_text(cm, class_names: Sequence[str]) -> str:
    """Counts as a text grid: rows = true class, columns = predicted class, with row totals."""
    cm = _check_cm(cm)
    names = _check_names(class_names, cm.shape[0])
    corner = "true \\ pred"
    name_w = max([_width(n) for n in names] + [len(corner)])
    cells = [[str(int(v)) for v in r] for r in cm]
    col_w = [max(_width(names[j]), *(len(cells[i][j]) for i in range(len(names)))) for j in range(len(names))]
    tot_w = max(len("total"), len(str(int(cm.sum()))))
    lines = [_pad(corner, name_w) + "".join("  " + _pad(names[j], col_w[j], ">") for j in range(len(names)))
             + "  " + _pad("total", tot_w, ">")]
    for i, n in enumerate(names):
        lines.append(_pad(n, name_w) + "".join("  " + _pad(cells[i][j], col_w[j], ">") for j in range(len(names)))
                     + "  " + _pad(str(int(cm[i].sum())), tot_w, ">"))
    return "\n".join(lines) + "\n"


def plot_confusion_matrix(cm, class_names: Sequence[str], path, *, normalize: bool = False,
                          title: str | None = None, dpi: int = 120) -> str:
    """Write the confusion matrix as a PNG heat map (rows = true, cols = predicted); returns ``path``.

    ``normalize=True`` colours by row fraction ``cm[t, p] / sum_p cm[t, p]``. The file is
    written to a temporary file in the same folder and moved into place with
    ``os.replace``, so a reader never sees half a PNG. Class names and the title may be
    Korean or other CJK text: they are drawn with the CJK fallback font of
    :func:`nabi.plots.plotting`.
    """
    cm = _check_cm(cm)
    names = _check_names(class_names, cm.shape[0])
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from .plots import plotting

    path = os.fspath(path)
    k = cm.shape[0]
    counts = cm.astype(np.float64)
    if normalize:
        rows = counts.sum(axis=1, keepdims=True)
        shown = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    else:
        shown = counts

    with plotting():
        size = max(4.0, 0.6 * k + 2.5)
        fig = Figure(figsize=(size + 1.0, size))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=(1.0 if normalize else max(1.0, shown.max())))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_yticklabels(names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title:
            ax.set_title(title)
        thresh = (1.0 if normalize else max(1.0, shown.max())) / 2
        if k <= 30:
            for i in range(k):
                for j in range(k):
                    txt = f"{shown[i, j]:.2f}" if normalize else str(int(cm[i, j]))
                    ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                            color="white" if shown[i, j] > thresh else "black")
        fig.tight_layout()

        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        import io as _io
        from .files import atomic_write_bytes
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------- background statistics

def _unique_names(names, what) -> list[str]:
    out = [_nfc(n) for n in names]
    seen = set()
    for n in out:
        if n in seen:
            raise ValueError(f"{what} lists {n!r} twice")
        seen.add(n)
    return out


def background_statistics(probs, labels, class_names: Sequence[str], background: str = "background",
                          model_classes: Sequence[str] | None = None) -> dict:
    """P1-P4 of the background-class protocol (see the module docstring for the formulas).

    probs: (N, K) scores over ``model_classes`` (only argmax is used, logits work too).
    labels: (N,) indices into ``class_names``, the test set's classes (including the
    background class when background photos exist). ``model_classes`` defaults to
    ``class_names``; names are matched (Unicode NFC), so orders may differ and the
    background may sit at any position or be called e.g. ``'배경'``.

    Returns a dict: ``p1 p2 p3 p4`` (float, nan when undefined), ``n_test1 n_test2
    n_called_background n_p3 n_background_photos`` (int), ``model_has_background
    test_has_background`` (bool), ``individuals`` (model's non-background names), and
    per photo: ``pred`` / ``pred_individual`` (model column of argmax / of argmax over
    individuals), ``pred_name``, ``target`` (model column of the true class, -1 for a
    background photo the model cannot output), ``is_background_photo``, ``correct``.
    """
    names = _unique_names(class_names, "class_names")
    mnames = names if model_classes is None else _unique_names(model_classes, "model_classes")
    bg = _nfc(background)
    s = _scores_2d(probs, "probs")
    n, k = s.shape
    if k != len(mnames):
        raise ValueError(f"probs has {k} columns but the model has {len(mnames)} classes {mnames}")
    y = _labels_1d(labels, n, len(names))

    is_bg_col = np.array([is_background(m, bg) for m in mnames], dtype=bool)
    individuals = [m for m, b in zip(mnames, is_bg_col) if not b]
    if len(individuals) < 2:
        raise ValueError(f"need at least two individuals (non-background model classes), got {individuals}; "
                         f"background={bg!r}")
    missing = [c for c in names if not is_background(c, bg) and c not in mnames]
    if missing:
        raise ValueError(f"test classes {missing} are not among the model's classes {mnames}; "
                         f"if one of them is the background folder, pass background=<its name>")

    model_has_bg = bool(is_bg_col.any())
    bg_cols = np.nonzero(is_bg_col)[0]
    first_bg = int(bg_cols[0]) if model_has_bg else -1
    # model column for each test class: an individual's own; a background class's own column when the model
    # has it, else its first background column (-1 for model A, which has none)
    to_model = np.array([(mnames.index(c) if c in mnames else first_bg) if is_background(c, bg)
                         else mnames.index(c) for c in names], dtype=np.int64)
    target = to_model[y]
    is_bg_photo = np.array([is_background(c, bg) for c in names], dtype=bool)[y] if n else np.zeros(0, bool)
    animal = ~is_bg_photo
    n_test2 = int(animal.sum())
    if n_test2 == 0:
        raise ValueError("the test set has no animal photos (Testset 2 is empty); P2-P4 are undefined")

    pred = s.argmax(axis=1)
    ind_cols = np.nonzero(~is_bg_col)[0].astype(np.int64)
    pred_ind = ind_cols[s[:, ind_cols].argmax(axis=1)]
    pred_bg = is_bg_col[pred]                       # called background: any background class wins
    # a background photo is right when called background (any kind); an animal when its own column wins
    correct = np.where(is_bg_photo, pred_bg, pred == target)
    called_bg = animal & pred_bg
    kept = animal & ~called_bg

    n_called = int(called_bg.sum())
    n_p3 = n_test2 - n_called
    return {
        "p1": _ratio(correct.sum(), n),
        "p2": _ratio(correct[animal].sum(), n_test2),
        "p3": _ratio(correct[kept].sum(), n_p3),
        "p4": _ratio((pred_ind == target)[animal].sum(), n_test2),
        "n_test1": int(n),
        "n_test2": n_test2,
        "n_background_photos": int(is_bg_photo.sum()),
        "n_called_background": n_called,
        "n_p3": int(n_p3),
        "model_has_background": model_has_bg,
        "test_has_background": bool(is_bg_photo.any()),
        "background": bg,
        "background_classes": [mnames[i] for i in bg_cols],
        "individuals": individuals,
        "model_classes": list(mnames),
        "class_names": list(names),
        "pred": pred,
        "pred_individual": pred_ind,
        "pred_name": [mnames[i] for i in pred],
        "pred_answer": [bg if b else mnames[i] for i, b in zip(pred, pred_bg)],
        "target": target,
        "is_background_photo": is_bg_photo,
        "called_background": pred_bg,
        "correct": correct,
    }


def merge_background_classes(cm, class_names: Sequence[str], background: str = "background"):
    """A confusion matrix with every background class (``background``, ``background/<kind>``) summed into
    one row and one column named ``background`` (placed where the first of them was).

    ``cm`` (K, K) counts, rows = true, columns = predicted. Returns ``(cm_merged (K', K'), names')``;
    without two or more background classes, ``cm`` and the names come back unchanged.
    """
    cm = _check_cm(cm)
    names = _check_names(class_names, cm.shape[0])
    bg = _nfc(background)
    is_bg = [is_background(_nfc(c), bg) for c in names]
    if sum(is_bg) < 2:
        return cm.copy(), names
    first = is_bg.index(True)
    groups, out_names = [], []
    for i, c in enumerate(names):
        if not is_bg[i]:
            groups.append([i])
            out_names.append(c)
        elif i == first:
            groups.append([j for j, b in enumerate(is_bg) if b])
            out_names.append(bg)
    m = np.array([[cm[np.ix_(r, c)].sum() for c in groups] for r in groups], dtype=cm.dtype)
    return m, out_names


@dataclass
class EvalReport:
    """The scalar part of :func:`background_statistics` under a model name."""

    name: str
    p1: float
    p2: float
    p3: float
    p4: float
    n_test1: int
    n_test2: int
    n_called_background: int
    n_p3: int
    n_background_photos: int = 0
    model_has_background: bool = True
    test_has_background: bool = True
    background: str = "background"
    extra: dict = field(default_factory=dict)
    background_classes: list = field(default_factory=list)   # the model's background class(es), kinds included

    @classmethod
    def from_statistics(cls, stats: dict, name: str = "model", **extra) -> "EvalReport":
        return cls(name=name, p1=stats["p1"], p2=stats["p2"], p3=stats["p3"], p4=stats["p4"],
                   n_test1=stats["n_test1"], n_test2=stats["n_test2"],
                   n_called_background=stats["n_called_background"], n_p3=stats["n_p3"],
                   n_background_photos=stats.get("n_background_photos", stats["n_test1"] - stats["n_test2"]),
                   model_has_background=stats.get("model_has_background", True),
                   test_has_background=stats.get("test_has_background", stats["n_test1"] > stats["n_test2"]),
                   background=stats.get("background", "background"), extra=dict(extra),
                   background_classes=list(stats.get("background_classes", [])))

    def to_dict(self) -> dict:
        return asdict(self)


def format_report(report, name: str | None = None, digits: int = 4) -> str:
    """Human-readable P1-P4 block for an :class:`EvalReport` or a :func:`background_statistics` dict."""
    if not isinstance(report, EvalReport):
        report = EvalReport.from_statistics(report, name or "model")
    elif name is not None:
        report = EvalReport(**{**asdict(report), "name": name})
    r = report
    p1_note = ""
    if not r.test_has_background:
        p1_note = "  (no background photos: P1 = P2)"
    elif not r.model_has_background:
        p1_note = f"  (model has no background class: its {r.n_background_photos} background photos count as wrong)"
    p3_note = f"  ({r.n_called_background} called background, left out)"
    if r.n_p3 == 0:
        p3_note = "  (every animal photo was called background: undefined)"
    lines = [
        f"{r.name}: Testset 1 = {r.n_test1} photos ({r.n_background_photos} {r.background}), "
        f"Testset 2 = {r.n_test2} animal photos",
        *([f"  background = any of the model's {len(r.background_classes)} background classes: "
           + ", ".join(r.background_classes)] if len(r.background_classes) > 1 else []),
        f"  P1 accuracy on Testset 1               {_fmt(r.p1, digits)}{p1_note}",
        f"  P2 accuracy on Testset 2               {_fmt(r.p2, digits)}",
        f"  P3 on Testset 2 minus 'background'     {_fmt(r.p3, digits)}  n={r.n_p3}{p3_note}",
        f"  P4 best non-background class           {_fmt(r.p4, digits)}",
    ]
    return "\n".join(lines) + "\n"
