"""Fusing the embedding's similarity with the local-feature matcher's evidence, for every enrolled individual.

For a query and an enrolled individual u, s_u is the embedding's cosine similarity (closest photo) and
e_u the matcher's evidence (``nabi.reid.matcher``). The two live on different scales, so each is
standardised with its mean and standard deviation over validation (query, individual) pairs:

    fused_u = (1 − w) · (s_u − μ_s) / σ_s  +  w · (e_u − μ_e) / σ_e          w ∈ [0, 1]

w = 0 is the embedding alone, w = 1 the matcher alone. Every enrolled individual is scored (no
shortlist). ``fit_fusion`` chooses w on validation queries only: the w of ``WEIGHTS`` with the best
rank-1 of the known queries — averaged with the AUROC of their best fused score against the unknown
queries' when there are unknowns, since the three-way answer needs both — ties going to the smaller w.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics as M

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class Fusion:
    """``fused = (1 − weight)·(s − mean[0])/std[0] + weight·(e − mean[1])/std[1]``."""
    weight: float
    mean: tuple
    std: tuple

    def __call__(self, similarity, evidence):
        """Fused scores of (Q, U) similarities and evidence (NaN, for an individual not scored, stays NaN)."""
        s = (np.asarray(similarity, np.float64) - self.mean[0]) / self.std[0]
        e = (np.asarray(evidence, np.float64) - self.mean[1]) / self.std[1]
        return (1.0 - self.weight) * s + self.weight * e

    def to_dict(self) -> dict:
        return {"weight": float(self.weight), "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d, where="the gallery's calibration"):
        try:
            return cls(float(d["weight"]), tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where} has no usable fusion (weight, mean, std); calibrate again with the "
                             "matcher (nabi gallery calibrate GALLERY VALIDATION --matcher)") from None


def _check_scores(similarity, evidence):
    s, e = np.asarray(similarity, np.float64), np.asarray(evidence, np.float64)
    if s.ndim != 2 or s.shape != e.shape:
        raise ValueError(f"similarity and evidence must both be (queries, individuals), got {s.shape} and {e.shape}")
    return s, e


def standardised(similarity, evidence, weight=0.5) -> Fusion:
    """A ``Fusion`` with each score's mean and standard deviation over the non-NaN entries."""
    s, e = _check_scores(similarity, evidence)
    stats = []
    for name, x in (("similarity", s), ("evidence", e)):
        v = x[~np.isnan(x)]
        if v.size < 2:
            raise ValueError(f"standardising the {name} needs at least two scored (query, individual) pairs")
        sd = float(v.std())
        stats.append((float(v.mean()), sd if sd > 1e-12 else 1.0))     # a constant score: leave its scale
    return Fusion(float(weight), (stats[0][0], stats[1][0]), (stats[0][1], stats[1][1]))


def best_of(scores):
    """(best score, its column) per row of (Q, U) scores, NaN entries left out (ties: the first column)."""
    x = np.where(np.isnan(scores), -np.inf, scores)
    col = np.argmax(x, axis=1)
    return x[np.arange(len(x)), col], col


def selection_table(similarity, evidence, truth, weights=WEIGHTS, base=None) -> list:
    """For each weight: rank-1 of the known queries (``truth`` ≥ 0: their individual's column) and, when some
    queries are unknown (``truth`` = −1), the AUROC of the best fused score known against unknown."""
    s, e = _check_scores(similarity, evidence)
    truth = np.asarray(truth)
    if truth.shape != (len(s),):
        raise ValueError(f"truth must give one column (or −1 for unknown) per query, got shape {truth.shape}")
    known = truth >= 0
    if not known.any():
        raise ValueError("choosing the fusion weight needs known validation queries (enrolled individuals)")
    base = base or standardised(s, e)
    rows = []
    for w in weights:
        if not 0.0 <= float(w) <= 1.0:
            raise ValueError(f"fusion weights must be in [0, 1], got {w}")
        best, col = best_of(Fusion(float(w), base.mean, base.std)(s, e))
        row = {"weight": float(w), "rank1": float(np.mean(col[known] == truth[known]))}
        if (~known).any():
            row["auroc"] = M.auroc(best[known], best[~known])
        rows.append(row)
    return rows


def fit_fusion(similarity, evidence, truth, weights=WEIGHTS):
    """The ``Fusion`` chosen on validation scores, and the table it was chosen from (see the module docstring).

    similarity, evidence: (Q, U) scores of Q validation queries for U individuals (NaN: not scored);
    truth: (Q,) each query's individual column, −1 for unknowns.
    """
    base = standardised(similarity, evidence)
    table = selection_table(similarity, evidence, truth, weights, base)

    def objective(row):
        return round(row["rank1"] if "auroc" not in row else (row["rank1"] + row["auroc"]) / 2, 12)
    best = max(table, key=lambda r: (objective(r), -r["weight"]))
    return Fusion(best["weight"], base.mean, base.std), table
