"""Scores → probabilities: pair calibration, fusion, the open-set posterior, calibration error."""
import math

import numpy as np
import pytest

pytest.importorskip("sklearn")

from nabi.reid.calibration import (CalibrationError, Fusion, PairCalibration, expected_calibration_error,  # noqa: E402
                                   posterior, reliability)


def _pairs(n=600, seed=0, shift=2.0):
    """Scores of same-individual pairs drawn around ``shift``, of other pairs around 0 (one in six is same)."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 1 / 6
    return rng.normal(0, 1, n) + shift * same, same


@pytest.mark.parametrize("kind", ["isotonic", "logistic"])
def test_pair_calibration_is_monotone_bounded_and_calibrated(kind):
    s, same = _pairs()
    cal = PairCalibration.fit(s, same, kind)
    grid = np.linspace(-5, 8, 400)
    p = cal(grid)
    assert np.all(np.diff(p) >= -1e-12)                         # monotone non-decreasing in the score
    assert np.all((p >= cal.eps) & (p <= 1 - cal.eps)) and cal.eps == pytest.approx(1 / 1200)
    assert cal.prior == pytest.approx(same.mean())
    test_s, test_same = _pairs(20000, seed=1)                  # fresh pairs from the same distribution
    assert expected_calibration_error(cal(test_s), test_same) < 0.03
    assert np.isnan(cal(np.array([np.nan, 0.0]))[0])


def test_isotonic_matches_sklearn_and_round_trips():
    from sklearn.isotonic import IsotonicRegression
    s, same = _pairs(300, seed=2)
    cal = PairCalibration.fit(s, same, "isotonic", scorer="embedding")
    ref = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0, y_max=1).fit(s, same)
    x = np.linspace(-3, 5, 50)
    np.testing.assert_allclose(cal(x), np.clip(ref.predict(x), cal.eps, 1 - cal.eps), atol=1e-12)
    back = PairCalibration.from_dict(cal.to_dict())
    np.testing.assert_array_equal(back(x), cal(x))
    assert back.scorer == "embedding" and back.pairs == cal.pairs


def test_too_few_pairs_is_refused_with_the_counts():
    s, same = _pairs(60, seed=3)
    with pytest.raises(CalibrationError, match=r"at least 20 same-individual pairs .* got \d+ and \d+"):
        PairCalibration.fit(s[:40], np.zeros(40, bool) | (np.arange(40) < 3), "isotonic", scorer="matcher")
    with pytest.raises(CalibrationError, match="same length"):
        PairCalibration.fit(s, same[:-1])


def test_damaged_calibration_dicts_are_refused():
    with pytest.raises(CalibrationError, match="not a usable pair calibration"):
        PairCalibration.from_dict({"kind": "isotonic"})
    with pytest.raises(CalibrationError, match="increasing knots"):
        PairCalibration("isotonic", {"x": [1, 0], "y": [0.2, 0.3]}, 0.01, 0.2)
    with pytest.raises(CalibrationError, match="unknown calibration kind"):
        PairCalibration("magic", {}, 0.01, 0.2)


def test_fusion_weighs_an_informative_scorer_over_noise():
    rng = np.random.default_rng(4)
    n = 3000
    same = rng.random(n) < 0.2
    good = rng.normal(0, 1, n) + 3 * same
    noise = rng.normal(0, 1, n)
    fu = Fusion.fit({"embedding": good, "matcher": noise}, same, method="logistic")
    assert fu.weights["embedding"] > 5 * fu.weights["matcher"]
    t_same = rng.random(n) < 0.2
    t_good, t_noise = rng.normal(0, 1, n) + 3 * t_same, rng.normal(0, 1, n)
    p_log = fu.probabilities({"embedding": t_good, "matcher": t_noise})
    p_mean = Fusion.fit({"embedding": good, "matcher": noise}, same, method="mean").probabilities(
        {"embedding": t_good, "matcher": t_noise})
    assert expected_calibration_error(p_log, t_same) < expected_calibration_error(p_mean, t_same)
    back = Fusion.from_dict(fu.to_dict())
    np.testing.assert_allclose(back.probabilities({"embedding": t_good, "matcher": t_noise}), p_log)
    # a pair one scorer could not score is fused from the other
    one = fu.probabilities({"embedding": np.array([3.0, np.nan]), "matcher": np.array([np.nan, np.nan])})
    assert not np.isnan(one[0]) and np.isnan(one[1])
    with pytest.raises(CalibrationError, match="needs the scores of matcher"):
        fu.probabilities({"embedding": t_good})


def test_posterior_is_bayes_rule_over_the_hypotheses():
    p = np.array([[0.9, 0.1, 0.2], [0.05, 0.05, np.nan]])
    prior_pairs, alpha = 0.25, 0.6
    P, P0 = posterior(p, prior_pairs, alpha)
    np.testing.assert_allclose(P.sum(axis=1) + P0, 1.0)
    for r in range(2):                                      # by hand: (α/U)·LR_u against (1 − α)
        have = ~np.isnan(p[r])
        lr = p[r][have] / (1 - p[r][have]) * (1 - prior_pairs) / prior_pairs
        w = np.concatenate([alpha / have.sum() * lr, [1 - alpha]])
        np.testing.assert_allclose(np.append(P[r][have], P0[r]), w / w.sum(), rtol=1e-12)
    assert P[1, 2] == 0.0
    assert posterior(p, 0.25, 0.0)[1].tolist() == [1.0, 1.0]          # α = 0: never a known individual
    with pytest.raises(ValueError, match="pair prior"):
        posterior(p, 0.0)


def test_ece_and_reliability_by_hand():
    prob = np.array([0.05, 0.15, 0.15, 0.95, 0.95, 0.95, 0.95])
    right = np.array([0, 1, 0, 1, 1, 1, 0], bool)
    rows = reliability(prob, right, bins=10)
    assert [r["count"] for r in rows] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 4]
    want = (1 * abs(0 - 0.05) + 2 * abs(0.5 - 0.15) + 4 * abs(0.75 - 0.95)) / 7
    assert math.isclose(expected_calibration_error(prob, right), want)
    with pytest.raises(ValueError, match="same length"):
        reliability(prob, right[:-1])


def test_prior_known_is_estimated_from_unlabelled_queries():
    """Queries of which a share α shows one of U enrolled individuals, scored by a calibrated pair score:
    expectation–maximisation recovers α without the truth."""
    from nabi.reid.calibration import estimate_prior_known
    rng = np.random.default_rng(5)
    U, Q = 8, 4000
    s_train, same_train = _pairs(20000, seed=6, shift=2.5)
    cal = PairCalibration.fit(s_train, same_train, "logistic")
    for alpha in (0.2, 0.5, 0.8):
        known = rng.random(Q) < alpha
        who = rng.integers(0, U, Q)
        scores = rng.normal(0, 1, (Q, U))
        scores[np.arange(Q)[known], who[known]] += 2.5
        est = estimate_prior_known(cal(scores), cal.prior)
        assert abs(est - alpha) < 0.05, (alpha, est)


def test_a_sightings_photos_are_averaged_not_counted_twice():
    """Two photos of one sighting agreeing give the probability one of them gives (they are not independent
    evidence); disagreeing, the mean of their log likelihood ratios; photos of other sightings are untouched."""
    from nabi.reid.gallery import _combine_groups
    prior = 0.1
    p = np.array([[0.8, 0.05], [0.8, 0.05], [0.3, 0.6], [0.9, np.nan]])
    out = _combine_groups(p, ["a", "a", "b", "c"], prior)
    np.testing.assert_allclose(out[0], [0.8, 0.05])
    np.testing.assert_allclose(out[1], out[0])
    np.testing.assert_allclose(out[2], p[2])
    np.testing.assert_allclose(out[3, 0], 0.9)
    assert np.isnan(out[3, 1])
    lr = lambda q: np.log(q / (1 - q)) - np.log(prior / (1 - prior))            # noqa: E731
    both = _combine_groups(np.array([[0.2, 0.5], [0.9, 0.5]]), ["s", "s"], prior)
    z = (lr(0.2) + lr(0.9)) / 2 + np.log(prior / (1 - prior))
    np.testing.assert_allclose(both[:, 0], 1 / (1 + np.exp(-z)))


def _open_set_queries(Q=600, U=8, alpha=0.5, sharpen=3.0, seed=0):
    """Queries of which a share α shows one of U individuals, with pair probabilities from a calibrated score
    whose logits are then multiplied by ``sharpen`` (an overconfident scorer). Returns (p_same, truth, π)."""
    rng = np.random.default_rng(seed)
    s_train, same_train = _pairs(20000, seed=seed + 1, shift=2.0)
    cal = PairCalibration.fit(s_train, same_train, "logistic")
    known = rng.random(Q) < alpha
    who = rng.integers(0, U, Q)
    scores = rng.normal(0, 1, (Q, U))
    scores[np.arange(Q)[known], who[known]] += 2.0
    p = cal(scores)
    base = np.log(cal.prior / (1 - cal.prior))
    z = sharpen * (np.log(p / (1 - p)) - base) + base
    return 1 / (1 + np.exp(-z)), np.where(known, who, -1), cal.prior


def test_answer_temperature_softens_an_overconfident_posterior():
    from nabi.reid.calibration import fit_temperature
    p, truth, prior = _open_set_queries(sharpen=3.0)
    fit = fit_temperature(p, truth, prior, 0.5)
    assert fit["temperature"] > 1.5
    assert fit["nll"]["after"] < fit["nll"]["before"]
    assert fit["ece"]["after"] < 0.5 * fit["ece"]["before"]
    assert fit["queries"]["known"] + fit["queries"]["strangers"] == len(truth)
    p2, truth2, _ = _open_set_queries(sharpen=1 / 3.0, seed=3)          # underconfident: sharpened (T < 1)
    assert fit_temperature(p2, truth2, prior, 0.5)["temperature"] < 0.95
    p3, truth3, _ = _open_set_queries(sharpen=1.0, seed=4)              # calibrated already: T near 1
    assert 0.8 < fit_temperature(p3, truth3, prior, 0.5)["temperature"] < 1.25


def test_temperature_keeps_the_answer_and_is_monotone():
    p, _, prior = _open_set_queries(Q=200, sharpen=2.0, seed=7)
    P1, P01 = posterior(p, prior, 0.5)
    best1 = np.argmax(np.column_stack([P1, P01]), axis=1)
    shown = []
    for T in (0.5, 1.0, 2.0, 4.0):
        P, P0 = posterior(p, prior, 0.5, temperature=T)
        allp = np.column_stack([P, P0])
        np.testing.assert_allclose(allp.sum(axis=1), 1.0)
        assert (np.argmax(allp, axis=1) == best1).all()                 # same answer at any temperature
        assert (np.argsort(-P, axis=1, kind="stable")[:, 0] == np.argsort(-P1, axis=1, kind="stable")[:, 0]).all()
        shown.append(allp.max(axis=1))
    assert all((a >= b - 1e-12).all() for a, b in zip(shown, shown[1:]))   # hotter: never more confident
    for bad in (0, -1.0, float("nan"), float("inf"), "2"):
        with pytest.raises(CalibrationError, match="temperature must be a finite number > 0"):
            posterior(p, prior, 0.5, temperature=bad)


def test_temperature_needs_known_queries_and_strangers():
    from nabi.reid.calibration import fit_temperature
    p, truth, prior = _open_set_queries(Q=200, seed=2)
    few = np.flatnonzero(truth >= 0)[:5].tolist() + np.flatnonzero(truth < 0)[:30].tolist()
    with pytest.raises(CalibrationError, match=r"at least 20 queries of known individuals and 20 of strangers; "
                                               r"got 5 and 30"):
        fit_temperature(p[few], truth[few], prior)
    with pytest.raises(CalibrationError, match="one truth per query"):
        fit_temperature(p, truth[:-1], prior)
    with pytest.raises(CalibrationError, match=r"a column 0 … 7 or −1"):
        fit_temperature(p, np.full(len(p), 8), prior)


def test_calibrations_without_an_answer_temperature_read_as_one():
    from nabi.reid.calibration import answer_temperature
    assert answer_temperature(None) == 1.0 and answer_temperature({"fusion": {}}) == 1.0     # older files
    assert answer_temperature({"answer": {"temperature": 2.5}}) == 2.5
    with pytest.raises(CalibrationError, match="'answer' entry is malformed"):
        answer_temperature({"answer": {"t": 2}})
    with pytest.raises(CalibrationError, match="finite number > 0"):
        answer_temperature({"answer": {"temperature": -1}})


def test_answer_map_flattens_answers_that_are_right_less_often_than_shown():
    from nabi.reid.calibration import answer_map, fit_answer_map
    rng = np.random.default_rng(0)
    shown = rng.uniform(0.3, 1.0, 2000)
    right = rng.random(2000) < 0.4 + 0.3 * (shown - 0.3)            # right far less often than shown
    fit = fit_answer_map(shown, right)
    assert fit["method"] == "platt" and fit["ece"]["after"] < 0.3 * fit["ece"]["before"]
    f = answer_map({"answer": fit})
    xs = [f(q) for q in (0.3, 0.5, 0.9, 0.99)]
    assert xs == sorted(xs) and xs[-1] < 0.8                         # monotone: the order of answers is kept
    assert answer_map({"answer": {"temperature": 2.0}}) is None and answer_map({}) is None
    with pytest.raises(CalibrationError, match="answer map is malformed"):
        answer_map({"answer": {"method": "platt", "a": -1, "b": 0}})
    with pytest.raises(CalibrationError, match="at least 20 right and 20 wrong calibration answers; got 25 and 5"):
        fit_answer_map([0.9] * 30, [True] * 25 + [False] * 5)


def test_describe_says_how_the_answer_is_calibrated():
    from nabi.reid.calibrate import describe
    base = {"source": "calibration folder", "prior_known": 0.5}
    platt = describe({**base, "answer": {"method": "platt", "a": 0.25, "b": 0.1, "answers": {"right": 30, "wrong": 25},
                                         "ece": {"before": 0.2, "after": 0.05}}})
    assert any("σ(0.25·logit(p) + 0.10)" in line and "30 right and 25 wrong" in line for line in platt)
    temp = describe({**base, "answer": {"temperature": 1.5, "queries": {"known": 40, "strangers": 40},
                                        "ece": {"before": 0.2, "after": 0.1}}})
    assert any("temperature 1.50" in line for line in temp)
    note = describe({**base, "answer": {"temperature": 1.0, "note": "not fitted: too few"}})
    assert any("as Bayes' rule gives it (not fitted: too few)" in line for line in note)
    assert not any("answer's" in line for line in describe(base))            # an older calibration
