"""Statistics over repeated runs: mean and spread, paired comparisons, and "Table 1" style tables.

The 2019 campus-cats report compared model A (no background class) with model B
(with one) over several seeds; :func:`paired_summary` compares two such paired
columns (e.g. A·P2 against B·P4) and :func:`table_markdown` / :func:`table_csv`
write the per-run table with ``Avg`` and ``Std`` rows.

Std is always the sample standard deviation ``sqrt(sum (x - mean)^2 / (n - 1))``.
"""
from __future__ import annotations

import csv
import io
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

__all__ = ["mean_std", "paired_summary", "PairedSummary", "sign_test",
           "TABLE1_COLUMNS", "table1_row", "table_markdown", "table_csv"]

TABLE1_COLUMNS = ("A·P2", "B·P1", "B·P2", "B·P3", "B·P4")


def _vector(values, what="values") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {v.shape}")
    return v


def mean_std(values, ignore_nan: bool = False) -> tuple[float, float]:
    """``(mean, sample std)`` with ``std = sqrt(sum (x - mean)^2 / (n - 1))``.

    Std is ``nan`` for n < 2; both are ``nan`` for n = 0. A ``nan`` value makes both
    ``nan`` unless ``ignore_nan=True`` (then it is left out).
    """
    v = _vector(values)
    if ignore_nan:
        v = v[~np.isnan(v)]
    n = v.size
    if n == 0:
        return float("nan"), float("nan")
    mean = float(np.mean(v))
    std = float(np.std(v, ddof=1)) if n >= 2 else float("nan")
    return mean, std


def sign_test(diffs, decimals: int = 12) -> tuple[float, int, int, int]:
    """Exact two-sided sign test: ``(p, n_pos, n_neg, n_zero)``; zeros are dropped.

    With m = n_pos + n_neg and k = min(n_pos, n_neg):
    ``p = min(1, 2 * sum_{i=0..k} C(m, i) / 2^m)``; ``nan`` when m = 0.
    """
    d = np.round(_vector(diffs, "diffs"), decimals)
    d = d[~np.isnan(d)]
    n_pos, n_neg = int(np.sum(d > 0)), int(np.sum(d < 0))
    n_zero = int(d.size - n_pos - n_neg)
    m = n_pos + n_neg
    if m == 0:
        return float("nan"), n_pos, n_neg, n_zero
    k = min(n_pos, n_neg)
    tail = sum(math.comb(m, i) for i in range(k + 1))
    return min(1.0, 2.0 * tail / 2.0 ** m), n_pos, n_neg, n_zero


@dataclass
class PairedSummary:
    """Result of :func:`paired_summary`; ``d = b - a`` per pair."""

    n: int
    mean_a: float
    std_a: float
    mean_b: float
    std_b: float
    mean_diff: float
    std_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    wilcoxon_stat: float
    wilcoxon_p: float
    sign_p: float
    n_pos: int
    n_neg: int
    n_zero: int
    zero_method: str = "wilcox"
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        pct = round(self.confidence * 100)
        s = (f"n={self.n}  a: {self.mean_a:.4f} ± {self.std_a:.4f}  b: {self.mean_b:.4f} ± {self.std_b:.4f}\n"
             f"b - a = {self.mean_diff:+.4f}  {pct}% CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}]  "
             f"(+{self.n_pos} / -{self.n_neg} / ={self.n_zero})\n"
             f"Wilcoxon signed-rank p = {self.wilcoxon_p:.4g}  sign test p = {self.sign_p:.4g}")
        if self.notes:
            s += "\n" + "\n".join(f"note: {x}" for x in self.notes)
        return s


def paired_summary(a, b, confidence: float = 0.95, zero_method: str = "wilcox",
                   decimals: int = 12) -> PairedSummary:
    """Compare paired runs ``a[i]``, ``b[i]`` (same seed i) through ``d = b - a``.

    * mean and sample std of a, b and d;
    * CI: ``mean(d) ± t_{(1+confidence)/2, n-1} * std(d) / sqrt(n)`` (Student t);
    * Wilcoxon signed-rank p (``scipy.stats.wilcoxon(d, zero_method=...)``, two-sided);
      ``'wilcox'`` drops zero differences, ``'pratt'`` ranks then drops them,
      ``'zsplit'`` splits their ranks between signs;
    * exact two-sided sign test p (:func:`sign_test`).

    ``d`` is rounded to ``decimals`` places before testing, so 0.575-0.55 and
    0.55-0.525 count as the same |d| and 0.1+0.2-0.3 as a zero. Pairs with a ``nan``
    are dropped (noted). Untestable cases (n < 2, all d zero) give ``nan`` plus a note.
    """
    from scipy import stats as st

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if zero_method not in ("wilcox", "pratt", "zsplit"):
        raise ValueError(f"zero_method must be 'wilcox', 'pratt' or 'zsplit', got {zero_method!r}")
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
    notes = []
    ok = ~(np.isnan(a) | np.isnan(b))
    if not ok.all():
        notes.append(f"{int((~ok).sum())} pair(s) with nan dropped")
        a, b = a[ok], b[ok]
    n = int(a.size)
    d = np.round(b - a, decimals)

    mean_a, std_a = mean_std(a)
    mean_b, std_b = mean_std(b)
    mean_d, std_d = mean_std(d)
    if n >= 2:
        half = float(st.t.ppf((1 + confidence) / 2, n - 1)) * std_d / math.sqrt(n)
        ci = (mean_d - half, mean_d + half)
    else:
        ci = (float("nan"), float("nan"))
        notes.append(f"n={n} < 2: no standard deviation, confidence interval or tests")

    sign_p, n_pos, n_neg, n_zero = sign_test(d, decimals)
    if n < 2:
        sign_p = float("nan")
    w_stat = w_p = float("nan")
    if n >= 2:
        if n_pos + n_neg == 0:
            notes.append("all differences are zero: Wilcoxon and sign tests undefined")
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = st.wilcoxon(d, zero_method=zero_method, alternative="two-sided")
                w_stat, w_p = float(res.statistic), float(res.pvalue)
            except ValueError as exc:  # e.g. too few non-zero differences for the method
                notes.append(f"Wilcoxon test failed: {exc}")
            if n_zero:
                notes.append(f"{n_zero} zero difference(s) (ties) handled by zero_method={zero_method!r}; "
                             f"the sign test drops them")
            nz = np.abs(d[d != 0])
            if np.unique(nz).size < nz.size:
                notes.append("tied |differences|: Wilcoxon ranks averaged")
    return PairedSummary(n=n, mean_a=mean_a, std_a=std_a, mean_b=mean_b, std_b=std_b,
                         mean_diff=mean_d, std_diff=std_d, ci_low=ci[0], ci_high=ci[1],
                         confidence=confidence, wilcoxon_stat=w_stat, wilcoxon_p=w_p, sign_p=sign_p,
                         n_pos=n_pos, n_neg=n_neg, n_zero=n_zero, zero_method=zero_method, notes=notes)


# --------------------------------------------------------------------------- tables

def _get(obj, key):
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def table1_row(a_stats, b_stats) -> dict:
    """One Table 1 row from model A's and model B's background statistics (dicts or ``EvalReport``s)."""
    return {"A·P2": float(_get(a_stats, "p2")), "B·P1": float(_get(b_stats, "p1")),
            "B·P2": float(_get(b_stats, "p2")), "B·P3": float(_get(b_stats, "p3")),
            "B·P4": float(_get(b_stats, "p4"))}


def _matrix(rows, columns) -> np.ndarray:
    columns = list(columns)
    if not columns:
        raise ValueError("no columns given")
    out = np.empty((len(rows), len(columns)), dtype=np.float64)
    for i, r in enumerate(rows):
        if isinstance(r, Mapping):
            missing = [c for c in columns if c not in r]
            if missing:
                raise ValueError(f"row {i} lacks column(s) {missing}")
            vals = [r[c] for c in columns]
        else:
            vals = list(r)
            if len(vals) != len(columns):
                raise ValueError(f"row {i} has {len(vals)} values for {len(columns)} columns")
        out[i] = [float("nan") if v is None else float(v) for v in vals]
    return out


def _labels(n, row_labels):
    if row_labels is None:
        return [str(i + 1) for i in range(n)]
    labels = [str(x) for x in row_labels]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} row labels for {n} rows")
    return labels


def _summary(m: np.ndarray, ignore_nan: bool):
    stats = [mean_std(m[:, j], ignore_nan) for j in range(m.shape[1])]
    return [s[0] for s in stats], [s[1] for s in stats]


def table_markdown(rows: Sequence, columns: Sequence[str] = TABLE1_COLUMNS, *, digits: int = 4,
                   row_labels: Sequence | None = None, label: str = "Run", summary: bool = True,
                   ignore_nan: bool = False) -> str:
    """Markdown table: one line per run (``rows``: mappings keyed by column, or sequences
    in column order), then ``Avg`` (mean) and ``Std`` (sample std) lines. ``nan`` prints as ``n/a``."""
    m = _matrix(rows, columns)
    lines = ["| " + " | ".join([label, *map(str, columns)]) + " |",
             "|" + "---|" + "---:|" * len(columns)]

    def cells(vals):
        return ["n/a" if math.isnan(v) else f"{v:.{digits}f}" for v in vals]

    for lab, r in zip(_labels(len(m), row_labels), m):
        lines.append("| " + " | ".join([lab, *cells(r)]) + " |")
    if summary:
        avg, std = _summary(m, ignore_nan)
        lines.append("| " + " | ".join(["**Avg**", *cells(avg)]) + " |")
        lines.append("| " + " | ".join(["**Std**", *cells(std)]) + " |")
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence, columns: Sequence[str] = TABLE1_COLUMNS, path=None, *, digits: int | None = None,
              row_labels: Sequence | None = None, label: str = "run", summary: bool = True,
              ignore_nan: bool = False) -> str:
    """CSV text of the same table (``Avg``/``Std`` rows last; full precision unless ``digits``).

    With ``path`` the text is also written (UTF-8, via a temp file and ``os.replace``).
    """
    m = _matrix(rows, columns)

    def cells(vals):
        return ["nan" if math.isnan(v) else (repr(float(v)) if digits is None else f"{v:.{digits}f}")
                for v in vals]

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([label, *columns])
    for lab, r in zip(_labels(len(m), row_labels), m):
        w.writerow([lab, *cells(r)])
    if summary:
        avg, std = _summary(m, ignore_nan)
        w.writerow(["Avg", *cells(avg)])
        w.writerow(["Std", *cells(std)])
    text = buf.getvalue()
    if path is not None:
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        from ..files import atomic_write_text
        atomic_write_text(path, text)
    return text
