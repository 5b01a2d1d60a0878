"""Re-identification metrics, closed and open set, and a leave-individuals-out split.

Closed set (every query's individual is in the gallery), similarities S (Q, G) between Q query
photos and G gallery photos, ranked by decreasing similarity (ties: gallery order):

    rank-k   fraction of queries with a photo of their own individual among the k most similar
             gallery photos (the CMC curve at k)
    mAP      mean over queries of the average precision of the ranking,
             AP = (1/R) Σ_{r: hit} precision@r over the R gallery photos of the query's individual
             (queries whose individual has no gallery photo are left out)

Open set (some queries are of individuals never enrolled), from each query's best similarity s
and an acceptance threshold t (a query is accepted when s > t):

    FAR(t)   false-accept rate: fraction of unknown queries accepted
    FRR(t)   false-reject rate: fraction of known queries rejected
    TAR(t)   true-accept rate: fraction of known queries accepted *and* given the right individual
             (the detection-and-identification rate of open-set face recognition)
    AUROC    of the best similarity separating known from unknown queries (ties count ½)

The three-way answer (``background`` / ``known`` NAME / ``unknown``) is right when the kind matches
and, for ``known``, the name too.
"""
from __future__ import annotations

import numpy as np


def _check(sim, q_labels, g_labels):
    sim = np.asarray(sim, dtype=np.float64)
    q_labels, g_labels = np.asarray(q_labels), np.asarray(g_labels)
    if sim.ndim != 2 or sim.shape != (len(q_labels), len(g_labels)):
        raise ValueError(f"similarities must be (queries, gallery) = ({len(q_labels)}, {len(g_labels)}), "
                         f"got shape {sim.shape}")
    return sim, q_labels, g_labels


def _ranking(sim):
    return np.argsort(-sim, axis=1, kind="stable")


def rank_k(sim, q_labels, g_labels, k=1) -> float:
    """Fraction of queries with their individual among the ``k`` most similar gallery photos."""
    sim, q_labels, g_labels = _check(sim, q_labels, g_labels)
    if len(q_labels) == 0:
        raise ValueError("rank-k of no queries is undefined")
    top = g_labels[_ranking(sim)[:, :k]]
    return float((top == q_labels[:, None]).any(axis=1).mean())


def mean_average_precision(sim, q_labels, g_labels) -> float:
    """Mean average precision of the rankings (queries without a gallery match are left out)."""
    sim, q_labels, g_labels = _check(sim, q_labels, g_labels)
    hits = g_labels[_ranking(sim)] == q_labels[:, None]
    aps = []
    for row in hits:
        r = int(row.sum())
        if r == 0:
            continue
        positions = np.nonzero(row)[0] + 1
        aps.append(float(np.mean(np.arange(1, r + 1) / positions)))
    if not aps:
        raise ValueError("mAP: no query has a photo of its individual in the gallery")
    return float(np.mean(aps))


def auroc(known_scores, unknown_scores) -> float:
    """Probability that a known query scores above an unknown one (ties ½): the Mann–Whitney form."""
    k = np.asarray(known_scores, dtype=np.float64)
    u = np.asarray(unknown_scores, dtype=np.float64)
    if k.size == 0 or u.size == 0:
        raise ValueError("AUROC needs both known and unknown queries")
    order = np.sort(u)
    below = np.searchsorted(order, k, side="left")
    equal = np.searchsorted(order, k, side="right") - below
    return float((below + 0.5 * equal).sum() / (k.size * u.size))


def threshold_at_far(unknown_scores, far) -> float:
    """The lowest threshold t with FAR(t) <= ``far`` (accept s > t): the (⌊far·n⌋ + 1)-th largest unknown score."""
    u = np.sort(np.asarray(unknown_scores, dtype=np.float64))[::-1]
    if u.size == 0:
        raise ValueError("choosing a threshold needs unknown queries (individuals held out of the gallery)")
    if not 0.0 <= far < 1.0:
        raise ValueError(f"target false-accept rate must be in [0, 1), got {far}")
    allowed = int(np.floor(far * u.size + 1e-9))
    return float(u[allowed]) if allowed < u.size else float(u[-1])


def rates(threshold, known_scores, known_correct, unknown_scores) -> dict:
    """FAR, FRR and TAR at ``threshold`` (accept s > t)."""
    k = np.asarray(known_scores, dtype=np.float64)
    c = np.asarray(known_correct, dtype=bool)
    u = np.asarray(unknown_scores, dtype=np.float64)
    return {"threshold": float(threshold),
            "far": float((u > threshold).mean()) if u.size else float("nan"),
            "frr": float((k <= threshold).mean()) if k.size else float("nan"),
            "tar": float(((k > threshold) & c).mean()) if k.size else float("nan")}


def tar_at_far(known_scores, known_correct, unknown_scores, far) -> dict:
    """``rates`` at the threshold chosen for false-accept rate ``far``."""
    return rates(threshold_at_far(unknown_scores, far), known_scores, known_correct, unknown_scores)


def far_frr_curve(known_scores, known_correct, unknown_scores) -> list:
    """``rates`` at every distinct score (and one below all), sorted by threshold."""
    allv = np.concatenate([np.asarray(known_scores, float), np.asarray(unknown_scores, float)])
    if allv.size == 0:
        return []
    ts = np.unique(np.concatenate([[allv.min() - 1e-6], allv]))
    return [rates(t, known_scores, known_correct, unknown_scores) for t in ts]


def three_way_accuracy(answers, truths) -> float:
    """Fraction of (kind, name) answers equal to the truth; names count only for ``known``."""
    answers, truths = list(answers), list(truths)
    if len(answers) != len(truths) or not answers:
        raise ValueError(f"need as many answers as truths (at least one), got {len(answers)} and {len(truths)}")
    right = 0
    for (kind, name), (tkind, tname) in zip(answers, truths):
        right += kind == tkind and (kind != "known" or name == tname)
    return right / len(answers)


def leave_individuals_out(names, held_out=0.2, seed=0, keep=(), at_least=1):
    """Split individual names into ``(enrolled, held_out)`` sorted lists, holding out a ``held_out``
    fraction (at least ``at_least``, at most all but one); names in ``keep`` (e.g. ``background``) stay
    enrolled."""
    names = sorted(set(names))
    pool = [n for n in names if n not in set(keep)]
    if len(pool) < 2:
        raise ValueError(f"a leave-individuals-out split needs at least two individuals, got {pool}")
    n_out = min(max(int(at_least), int(round(held_out * len(pool)))), len(pool) - 1)
    rng = np.random.default_rng(seed)
    out = sorted(pool[i] for i in rng.permutation(len(pool))[:n_out])
    return sorted(n for n in names if n not in set(out)), out
