"""k-reciprocal re-ranking: against a reference written from the paper's set definitions with loops, its
properties (λ = 1, k2 = 1, identical queries, gallery order), a synthetic gallery where it raises mAP, the
per-individual scores a gallery needs, and clear refusals."""
import numpy as np
import pytest

from nabi.reid.metrics import mean_average_precision, rank_k
from nabi.reid.rerank import k_reciprocal, reranked_individual_scores


def reference_k_reciprocal(q_g, q_q, g_g, k1, k2, lam):
    """Zhong et al. (CVPR 2017), §3, one definition at a time with Python sets and loops."""
    d = np.block([[q_q, q_g], [q_g.T, g_g]])
    N, Q = len(d), len(q_q)
    order = [sorted(range(N), key=lambda j, i=i: (d[i, j], j)) for i in range(N)]

    def nearest(i, k):                              # N(i, k): the k nearest, i itself counted apart
        return set(order[i][:k + 1])

    def reciprocal(i, k):                           # R(i, k)
        return {j for j in nearest(i, k) if i in nearest(j, k)}

    half = int(round(k1 / 2))                       # Python rounds halves to even, as NumPy does
    V = np.zeros((N, N))
    for i in range(N):
        base = reciprocal(i, k1)
        star = set(base) | {i}
        for c in base:
            candidate = reciprocal(c, half)
            if len(candidate & base) > 2 / 3 * len(candidate):
                star |= candidate
        for j in star:
            V[i, j] = np.exp(-d[i, j])
        V[i] /= V[i].sum()
    if k2 > 1:
        V = np.array([np.mean([V[j] for j in order[i][:k2]], axis=0) for i in range(N)])
    out = np.zeros(q_g.shape)
    for a in range(Q):
        for b in range(q_g.shape[1]):
            i, j = a, Q + b
            jaccard = 1 - np.minimum(V[i], V[j]).sum() / np.maximum(V[i], V[j]).sum()
            out[a, b] = (1 - lam) * jaccard + lam * d[i, j]
    return out


def _embeddings(rng, n_ids, per_id, dim=16, spread=0.8):
    centres = rng.standard_normal((n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    x = centres[labels] + spread * rng.standard_normal((len(labels), dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def _blocks(q, g):
    def dist(a, b):
        return np.clip(1 - a @ b.T, 0, None)
    q_q, g_g = dist(q, q), dist(g, g)
    np.fill_diagonal(q_q, 0)
    np.fill_diagonal(g_g, 0)
    return dist(q, g), q_q, g_g


def _case(k1, k2):
    """9 queries and 21 gallery photos of 5 individuals, drawn from a seed that depends on (k1, k2)."""
    rng = np.random.default_rng(k1 * 10 + k2)
    x, labels = _embeddings(rng, 5, 6)
    is_query = np.zeros(len(x), bool)
    is_query[rng.choice(len(x), 9, replace=False)] = True
    return _blocks(x[is_query], x[~is_query])


@pytest.mark.parametrize("k1,k2,lam", [(4, 2, 0.3), (6, 3, 0.0), (5, 1, 0.5), (20, 6, 0.3), (3, 4, 0.9)])
def test_k_reciprocal_equals_the_reference_from_the_set_definitions(k1, k2, lam):
    blocks = _case(k1, k2)
    ours = k_reciprocal(*blocks, k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(ours, reference_k_reciprocal(*blocks, k1, k2, lam), rtol=1e-12, atol=1e-12)
    assert ours.shape == (9, 21)


@pytest.mark.parametrize("k1,k2", [(6, 3), (20, 6)])
def test_the_expansion_step_is_exercised_by_the_reference_comparison(k1, k2):
    """In these cases some R(c, k1/2) joins a set beyond R(i, k1), so the comparison above covers the expansion."""
    from nabi.reid.rerank import expanded_sets, neighbour_ranks, reciprocal_sets
    q_g, q_q, g_g = _case(k1, k2)
    d = np.block([[q_q, q_g], [q_g.T, g_g]])
    ranks = neighbour_ranks(d)
    assert (expanded_sets(d, ranks, k1) & ~reciprocal_sets(ranks, k1)).any()


def test_lambda_one_gives_the_original_distance_and_lambda_zero_the_jaccard_distance():
    rng = np.random.default_rng(1)
    q, _ = _embeddings(rng, 4, 3)
    g, _ = _embeddings(rng, 4, 5)
    blocks = _blocks(q, g)
    np.testing.assert_array_equal(k_reciprocal(*blocks, k1=5, k2=3, lambda_value=1.0), blocks[0])
    jaccard = k_reciprocal(*blocks, k1=5, k2=3, lambda_value=0.0)
    assert (jaccard >= 0).all() and (jaccard <= 1).all() and (jaccard == 1).any()   # disjoint neighbourhoods: 1
    mixed = k_reciprocal(*blocks, k1=5, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(mixed, 0.7 * jaccard + 0.3 * blocks[0], rtol=1e-12)


def test_k2_one_is_no_query_expansion():
    rng = np.random.default_rng(2)
    x, _ = _embeddings(rng, 4, 5)
    blocks = _blocks(x[:6], x[6:])
    np.testing.assert_allclose(k_reciprocal(*blocks, k1=4, k2=1), reference_k_reciprocal(*blocks, 4, 1, 0.3),
                               rtol=1e-12)
    assert not np.allclose(k_reciprocal(*blocks, k1=4, k2=1), k_reciprocal(*blocks, k1=4, k2=3))


def test_identical_queries_get_identical_rows_and_gallery_order_does_not_matter():
    rng = np.random.default_rng(3)
    x, _ = _embeddings(rng, 5, 5)
    q = np.vstack([x[:3], x[1:2]])                          # queries 1 and 3 are the same photo
    g = x[3:]
    out = k_reciprocal(*_blocks(q, g), k1=6, k2=3)
    np.testing.assert_allclose(out[1], out[3], rtol=1e-12)
    perm = rng.permutation(len(g))
    np.testing.assert_allclose(k_reciprocal(*_blocks(q, g[perm]), k1=6, k2=3), out[:, perm], rtol=1e-12)


def test_re_ranking_raises_map_on_a_gallery_with_hubs():
    """Each individual a cluster of noisy embeddings, plus "hub" gallery photos near the middle of all of
    them (a photo of mostly background is close to every query). A hub is often some query's nearest photo,
    but that query is rarely among the hub's own nearest: the k-reciprocal test sees through it."""
    gains = []
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        n_ids, dim = 8, 24
        centres = rng.standard_normal((n_ids, dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)

        def photos(labels, spread):
            x = centres[labels] + spread * rng.standard_normal((len(labels), dim)) / np.sqrt(dim)
            return x / np.linalg.norm(x, axis=1, keepdims=True)
        g_labels = np.repeat(np.arange(n_ids), 6)
        q_labels = np.repeat(np.arange(n_ids), 4)
        g, q = photos(g_labels, 0.9), photos(q_labels, 0.9)
        hub_labels = rng.integers(0, n_ids, 10)
        hubs = centres.mean(axis=0) + 0.05 * rng.standard_normal((10, dim)) + 0.25 * centres[hub_labels]
        hubs /= np.linalg.norm(hubs, axis=1, keepdims=True)
        g, g_labels = np.vstack([g, hubs]), np.concatenate([g_labels, hub_labels])
        blocks = _blocks(q, g)
        before = mean_average_precision(-blocks[0], q_labels, g_labels)
        after = mean_average_precision(-k_reciprocal(*blocks, k1=6, k2=3, lambda_value=0.3), q_labels, g_labels)
        gains.append(after - before)
        assert rank_k(-k_reciprocal(*blocks, k1=6, k2=3), q_labels, g_labels, 1) >= \
            rank_k(-blocks[0], q_labels, g_labels, 1) - 0.1
    assert np.mean(gains) > 0.03 and min(gains) > 0, gains


# -- per individual ----------------------------------------------------------------------------------------------------

def test_individual_scores_are_the_best_re_ranked_similarity_of_their_photos():
    rng = np.random.default_rng(5)
    x, labels = _embeddings(rng, 3, 6)
    names = np.array(["amber", "biscuit", "coal"])[labels]
    q, g, g_names = x[::4], np.delete(x, np.s_[::4], axis=0), np.delete(names, np.s_[::4])
    q_g, g_g = q @ g.T, g @ g.T
    scores, individuals = reranked_individual_scores(q_g, g_g, g_names, k1=4, k2=2)
    assert list(individuals) == ["amber", "biscuit", "coal"] and scores.shape == (len(q), 3)
    _, _, g_g_d = _blocks(q, g)
    for i in range(len(q)):                                     # each query alone with the gallery
        sim = 1 - k_reciprocal(np.clip(1 - q_g[i:i + 1], 0, None), np.zeros((1, 1)), g_g_d, k1=4, k2=2)[0]
        for j, name in enumerate(individuals):
            assert scores[i, j] == pytest.approx(sim[g_names == name].max(), abs=1e-12)
    together, _ = reranked_individual_scores(q_g, g_g, g_names, q_q_sim=q @ q.T, k1=4, k2=2)
    assert together.shape == scores.shape and not np.allclose(together, scores)     # queries see each other


def test_with_lambda_one_individual_scores_are_the_best_cosine():
    rng = np.random.default_rng(6)
    x, labels = _embeddings(rng, 4, 4)
    q, g, g_labels = x[:5], x[5:], labels[5:]
    scores, individuals = reranked_individual_scores(q @ g.T, g @ g.T, g_labels, lambda_value=1.0)
    best = np.stack([(q @ g.T)[:, g_labels == k].max(axis=1) for k in individuals], axis=1)
    np.testing.assert_allclose(scores, best, atol=1e-12)


def test_a_shortlist_re_ranks_the_nearest_photos_and_puts_the_rest_at_jaccard_one():
    rng = np.random.default_rng(7)
    x, labels = _embeddings(rng, 5, 8)
    q, g, g_labels = x[:4], x[4:], labels[4:]
    q_g, g_g = q @ g.T, g @ g.T
    full, names = reranked_individual_scores(q_g, g_g, g_labels, k1=6, k2=3)
    same, _ = reranked_individual_scores(q_g, g_g, g_labels, k1=6, k2=3, shortlist=len(g))
    np.testing.assert_array_equal(same, full)
    M, lam = 12, 0.3
    short, _ = reranked_individual_scores(q_g, g_g, g_labels, k1=6, k2=3, lambda_value=lam, shortlist=M)
    _, _, g_g_d = _blocks(q, g)
    for i in range(len(q)):
        near = np.argsort(-q_g[i], kind="stable")[:M]
        sim = 1 - ((1 - lam) + lam * np.clip(1 - q_g[i], 0, None))                  # d_J = 1 outside
        sim[near] = 1 - k_reciprocal(np.clip(1 - q_g[i:i + 1, near], 0, None), np.zeros((1, 1)),
                                     g_g_d[np.ix_(near, near)], k1=6, k2=3, lambda_value=lam)[0]
        far = np.setdiff1d(np.arange(len(g)), near)
        assert sim[far].max() < np.sort(sim[near])[-1]
        for j, name in enumerate(names):
            assert short[i, j] == pytest.approx(sim[g_labels == name].max(), abs=1e-12)


# -- bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_is_refused_with_a_clear_message():
    q_g, q_q, g_g = np.ones((2, 3)), np.zeros((2, 2)), np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"q_q_dist must be \(2, 2\) for 2 queries"):
        k_reciprocal(q_g, np.zeros((3, 3)), g_g)
    with pytest.raises(ValueError, match=r"g_g_dist must be \(3, 3\) for 3 gallery photos"):
        k_reciprocal(q_g, q_q, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="negative distances .* not similarities"):
        k_reciprocal(-q_g, q_q, g_g)
    with pytest.raises(ValueError, match="NaN or infinite"):
        k_reciprocal(np.full((2, 3), np.nan), q_q, g_g)
    with pytest.raises(ValueError, match=r"k1 must be an integer ≥ 1, got 0"):
        k_reciprocal(q_g, q_q, g_g, k1=0)
    with pytest.raises(ValueError, match=r"k2 must be an integer ≥ 1, got 2.5"):
        k_reciprocal(q_g, q_q, g_g, k2=2.5)
    with pytest.raises(ValueError, match=r"lambda_value must lie in \[0, 1\], got 1.5"):
        k_reciprocal(q_g, q_q, g_g, lambda_value=1.5)
    with pytest.raises(ValueError, match="at least one query and one gallery photo"):
        k_reciprocal(np.zeros((0, 3)), np.zeros((0, 0)), g_g)
    with pytest.raises(ValueError, match=r"gallery_labels \(gallery,\)"):
        reranked_individual_scores(np.ones((2, 3)), np.ones((3, 3)), ["a", "b"])
    with pytest.raises(ValueError, match=r"g_g_sim \(gallery, gallery\)"):
        reranked_individual_scores(np.ones((2, 3)), np.ones((2, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"reranked_individual_scores: shortlist must be an integer ≥ 1, got 0"):
        reranked_individual_scores(np.ones((2, 3)), np.ones((3, 3)), ["a", "b", "c"], shortlist=0)
    with pytest.raises(ValueError, match="cannot be combined with q_q_sim"):
        reranked_individual_scores(np.ones((2, 3)), np.ones((3, 3)), ["a", "b", "c"], q_q_sim=np.ones((2, 2)),
                                   shortlist=2)
