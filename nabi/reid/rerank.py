"""k-reciprocal re-ranking (Zhong, Zheng, Cao & Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017): two photos are close when their neighbourhoods agree, not only their embeddings.

The Q queries and G gallery photos are pooled into N = Q + G items with distances d (N, N), built from
the three blocks given (query–gallery, query–query, gallery–gallery; d(i, i) = 0). Ranks are taken
along each row of d, ties broken by index; N(i, k) is the k + 1 nearest items of i, i itself included.

    k-reciprocal set      R(i, k) = { j ∈ N(i, k) : i ∈ N(j, k) }
                          (a true match tends to have the query among its own nearest neighbours too;
                          a look-alike of another individual usually does not)
    expansion             R*(i) = R(i, k1) ∪ R(c, h) for each c ∈ R(i, k1) with
                          |R(c, h) ∩ R(i, k1)| > ⅔ |R(c, h)|,  h = k1/2 rounded to the nearest integer
                          (halves to even); this brings back matches that R's strict test lost (a photo
                          of the animal from the other side, in other light)
    encoding              V[i, j] = exp(−d(i, j)) / Σ_{j' ∈ R*(i)} exp(−d(i, j'))  for j ∈ R*(i), else 0
                          (a neighbourhood as a vector: rows sum to 1, nearer members weigh more)
    local query expansion V[i] ← (1/k2) Σ_{j ∈ N(i, k2 − 1)} V[j]   (the k2 nearest items, i included;
                          k2 = 1 leaves V as it is)
    Jaccard distance      d_J(i, j) = 1 − Σ_m min(V[i, m], V[j, m]) / Σ_m max(V[i, m], V[j, m])
    final distance        d*(q, g) = (1 − λ) · d_J(q, g) + λ · d(q, g)       (Q, G)

λ = 1 gives back the original distance, λ = 0 the Jaccard distance alone. d_J lies in [0, 1], and
exp(−d) weighs neighbours by distance, so d should be on a comparable scale: for unit embeddings the
cosine distance 1 − cos θ (``reranked_individual_scores`` uses it). The neighbourhoods depend on every
item given: queries re-ranked together influence each other (transductive); re-ranking each query with
the gallery alone (q_q_dist = [[0]]) is what a gallery answering one photo at a time does. Time and
memory grow as N²: galleries of a few thousand photos, not millions.
"""
from __future__ import annotations

import numbers

import numpy as np


def _check_k(value, name, where="k_reciprocal", lowest=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lowest:
        raise ValueError(f"{where}: {name} must be an integer ≥ {lowest}, got {value!r}")
    return int(value)


def _check_blocks(q_g_dist, q_q_dist, g_g_dist):
    q_g = np.asarray(q_g_dist, dtype=np.float64)
    q_q = np.asarray(q_q_dist, dtype=np.float64)
    g_g = np.asarray(g_g_dist, dtype=np.float64)
    if q_g.ndim != 2:
        raise ValueError(f"k_reciprocal: q_g_dist must be (queries, gallery), got shape {q_g.shape}")
    Q, G = q_g.shape
    if q_q.shape != (Q, Q):
        raise ValueError(f"k_reciprocal: q_q_dist must be ({Q}, {Q}) for {Q} queries, got shape {q_q.shape}")
    if g_g.shape != (G, G):
        raise ValueError(f"k_reciprocal: g_g_dist must be ({G}, {G}) for {G} gallery photos, got shape {g_g.shape}")
    if Q == 0 or G == 0:
        raise ValueError(f"k_reciprocal: needs at least one query and one gallery photo, got {Q} and {G}")
    for name, a in (("q_g_dist", q_g), ("q_q_dist", q_q), ("g_g_dist", g_g)):
        if not np.isfinite(a).all():
            raise ValueError(f"k_reciprocal: {name} holds NaN or infinite distances")
        if (a < 0).any():
            raise ValueError(f"k_reciprocal: {name} holds negative distances (min {a.min():.4g}); pass distances, "
                             f"e.g. 1 − cosine similarity, not similarities")
    return q_g, q_q, g_g


def neighbour_ranks(dist):
    """Each row's items by increasing distance, ties by index: (N, N) indices."""
    return np.argsort(dist, axis=1, kind="stable")


def reciprocal_sets(ranks, k):
    """R(i, k) for every i as a boolean matrix (N, N): ``out[i, j]`` ⇔ j ∈ N(i, k) and i ∈ N(j, k)."""
    N = ranks.shape[0]
    near = np.zeros((N, N), dtype=bool)
    near[np.arange(N)[:, None], ranks[:, :k + 1]] = True         # near[i, j] ⇔ j ∈ N(i, k)
    return near & near.T


def expanded_sets(dist, ranks, k1):
    """R*(i) for every i (N, N) boolean: R(i, k1) grown by the half-size sets R(c, h) that mostly lie inside it.
    i belongs to its own set (it always does unless more than k1 items lie at distance 0 from it)."""
    r_full = reciprocal_sets(ranks, k1)
    r_half = reciprocal_sets(ranks, int(np.around(k1 / 2)))
    half_sizes = r_half.sum(axis=1)
    out = r_full.copy()
    for i in range(dist.shape[0]):
        members = np.flatnonzero(r_full[i])
        sets = r_half[members]                                     # R(c, h) of each c ∈ R(i, k1)
        inside = (sets & r_full[i]).sum(axis=1)
        agree = inside > (2.0 / 3.0) * half_sizes[members]
        if agree.any():
            out[i] |= sets[agree].any(axis=0)
    np.fill_diagonal(out, True)
    return out


def encode(dist, sets):
    """V (N, N): the Gaussian-kernel weights exp(−d) over each row's set, normalised to sum 1."""
    w = np.where(sets, np.exp(-dist), 0.0)
    return w / w.sum(axis=1, keepdims=True)


def jaccard_distances(V, rows, cols):
    """d_J between the items ``rows`` and ``cols``: (len(rows), len(cols)). Sparse in V's rows: only the
    columns where row i is non-zero can add to Σ min."""
    out = np.empty((len(rows), len(cols)))
    Vc = V[cols]
    col_mass = Vc.sum(axis=1)
    for a, i in enumerate(rows):
        nz = np.flatnonzero(V[i])
        inter = np.minimum(V[i, nz][None, :], Vc[:, nz]).sum(axis=1)
        union = V[i].sum() + col_mass - inter
        out[a] = 1.0 - inter / union
    return out


def k_reciprocal(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """Re-ranked distances (Q, G) from the original ones (see the module docstring for the formulas).

    q_g_dist (Q, G) query–gallery distances, q_q_dist (Q, Q) query–query, g_g_dist (G, G) gallery–gallery,
    all ≥ 0 with zero diagonals; k1 the size of the k-reciprocal neighbourhoods (20 in the paper; smaller for
    galleries with few photos per individual), k2 the local query expansion (6; 1 for none), lambda_value λ
    the weight of the original distance in the final mix (0.3). Returns float64 distances: smaller is nearer.
    """
    q_g, q_q, g_g = _check_blocks(q_g_dist, q_q_dist, g_g_dist)
    k1, k2 = _check_k(k1, "k1"), _check_k(k2, "k2")
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, numbers.Real) \
            or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"k_reciprocal: lambda_value must lie in [0, 1], got {lambda_value!r}")
    Q, G = q_g.shape
    dist = np.block([[q_q, q_g], [q_g.T, g_g]])
    ranks = neighbour_ranks(dist)
    V = encode(dist, expanded_sets(dist, ranks, k1))
    if k2 > 1:
        V = V[ranks[:, :k2]].mean(axis=1)
    d_j = jaccard_distances(V, np.arange(Q), np.arange(Q, Q + G))
    return (1.0 - lambda_value) * d_j + lambda_value * q_g


def reranked_individual_scores(q_g_sim, g_g_sim, gallery_labels, q_q_sim=None, k1=20, k2=6, lambda_value=0.3,
                               shortlist=None):
    """Per-individual scores of each query after re-ranking its per-photo cosine similarities.

    q_g_sim (Q, G) cosine similarities of the queries to the gallery photos, g_g_sim (G, G) of the gallery
    photos to each other, gallery_labels (G,) the individual of each gallery photo. Distances are 1 − cos;
    re-ranked, each becomes a similarity 1 − d*, and an individual scores the best re-ranked similarity of
    its photos. Without ``q_q_sim`` each query is re-ranked with the gallery alone (a gallery answers one
    photo at a time); with it (Q, Q), the queries are re-ranked together.

    ``shortlist`` M (per query; not with ``q_q_sim``): re-rank only among the query's M most similar gallery
    photos, so the cost is O(M²) per query whatever the gallery's size. A photo outside the shortlist is
    taken to share no neighbourhood with the query (d_J = 1): its similarity is 1 − ((1 − λ) + λ·(1 − cos)),
    below that of any shortlisted photo as near as it. An approximation: the shortlisted photos' own
    neighbourhoods are then taken within the shortlist too.

    Returns ``(scores (Q, K), individuals (K,))``, the individuals in sorted order.
    """
    q_g = np.asarray(q_g_sim, dtype=np.float64)
    g_g = np.asarray(g_g_sim)                         # read block by block: a shortlist never copies all of it
    labels = np.asarray(gallery_labels)
    if q_g.ndim != 2 or labels.shape != (q_g.shape[1],) or g_g.shape != (q_g.shape[1],) * 2:
        raise ValueError(f"reranked_individual_scores: q_g_sim must be (queries, gallery), g_g_sim (gallery, gallery) "
                         f"and gallery_labels (gallery,), got shapes {q_g.shape}, {g_g.shape} and {labels.shape}")
    if shortlist is not None:
        shortlist = _check_k(shortlist, "shortlist", "reranked_individual_scores")
        if q_q_sim is not None:
            raise ValueError("reranked_individual_scores: a shortlist re-ranks each query alone; it cannot be "
                             "combined with q_q_sim")

    def distance(sim):
        return np.clip(1.0 - np.asarray(sim, dtype=np.float64), 0.0, None)   # cos(x, x) may round a hair above 1

    def gallery_distances(rows=slice(None)):
        d = distance(g_g[rows][:, rows])
        np.fill_diagonal(d, 0.0)
        return d

    if q_q_sim is not None:
        q_q_d = distance(np.asarray(q_q_sim, dtype=np.float64))
        if q_q_d.shape == (len(q_g), len(q_g)):
            np.fill_diagonal(q_q_d, 0.0)
        final = k_reciprocal(distance(q_g), q_q_d, gallery_distances(), k1, k2, lambda_value)
    elif shortlist is None or shortlist >= q_g.shape[1]:
        g_g_d = gallery_distances()
        final = np.vstack([k_reciprocal(distance(q_g[i:i + 1]), np.zeros((1, 1)), g_g_d, k1, k2, lambda_value)
                           for i in range(q_g.shape[0])]) if len(q_g) else np.zeros(q_g.shape)
    else:
        final = (1.0 - lambda_value) + lambda_value * distance(q_g)
        for i in range(q_g.shape[0]):
            near = np.sort(np.argsort(-q_g[i], kind="stable")[:shortlist])
            final[i, near] = k_reciprocal(distance(q_g[i:i + 1, near]), np.zeros((1, 1)), gallery_distances(near),
                                          k1, k2, lambda_value)[0]
    similarity = 1.0 - final
    individuals = np.unique(labels)
    scores = np.stack([similarity[:, labels == name].max(axis=1) for name in individuals], axis=1) \
        if len(individuals) else np.zeros((len(q_g), 0))
    return scores, individuals
