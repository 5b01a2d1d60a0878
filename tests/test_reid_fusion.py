"""Fusion of the embedding similarity with the matcher's evidence: standardised scales, weight chosen on
validation scores only, clear errors for bad input."""
import numpy as np
import pytest

from nabi.reid import fusion as F


def scores(seed, informative):
    """(similarity, evidence, truth) of 40 queries over 5 individuals (the last 10 queries unknown): only the
    ``informative`` score puts a query's own individual on top."""
    rng = np.random.default_rng(seed)
    truth = np.r_[np.arange(30) % 5, -np.ones(10, int)]
    s, e = rng.normal(0.3, 0.1, (40, 5)), rng.exponential(1.0, (40, 5))
    known = truth >= 0
    if informative == "embedding":
        s[known, truth[known]] += 0.5
    else:
        e[known, truth[known]] += 5.0
    return s, e, truth


def test_weight_follows_the_informative_score():
    w_match, table = F.fit_fusion(*scores(0, "matcher"))
    w_emb, _ = F.fit_fusion(*scores(0, "embedding"))
    assert w_match.weight >= 0.5 and w_emb.weight <= 0.5
    assert [r["weight"] for r in table] == list(F.WEIGHTS) and table[0]["rank1"] < table[-1]["rank1"]


def test_standardised_scales_and_extremes():
    s, e, _ = scores(3, "matcher")
    s[0, 0] = np.nan
    f = F.standardised(s, e, weight=0.0)
    z = f(s, e)
    assert np.isnan(z[0, 0]) and np.nanmean(z) == pytest.approx(0.0, abs=1e-12) and np.nanstd(z) == pytest.approx(1.0)
    only_matcher = F.Fusion(1.0, f.mean, f.std)(s, e)
    expected = (e - f.mean[1]) / f.std[1]
    expected[0, 0] = np.nan                                   # an individual not scored stays unscored
    np.testing.assert_allclose(only_matcher, expected)
    assert F.Fusion.from_dict(f.to_dict()) == f


def test_ties_go_to_the_smaller_weight():
    s = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.1]])
    e = s.copy()
    fusion, _ = F.fit_fusion(s, e, np.array([0, 1, -1]))
    assert fusion.weight == 0.0


def test_bad_input_messages():
    s, e, truth = scores(4, "matcher")
    with pytest.raises(ValueError, match=r"both be \(queries, individuals\)"):
        F.fit_fusion(s, e[:, :3], truth)
    with pytest.raises(ValueError, match="needs known validation queries"):
        F.fit_fusion(s, e, -np.ones(40, int))
    with pytest.raises(ValueError, match="one column"):
        F.fit_fusion(s, e, truth[:5])
    with pytest.raises(ValueError, match=r"weights must be in \[0, 1\]"):
        F.fit_fusion(s, e, truth, weights=(0.0, 1.5))
    with pytest.raises(ValueError, match="at least two scored"):
        F.standardised(np.full((2, 2), np.nan), e[:2, :2])
    with pytest.raises(ValueError, match="calibrate again with the matcher"):
        F.Fusion.from_dict({"weight": 0.5})
