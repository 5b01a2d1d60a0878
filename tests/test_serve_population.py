"""How many animals: each estimator against a published worked example, and capture histories from sightings.

Sources of the expected figures (each quoted where it is used):
- Krebs, C. J. (1989) Ecological Methodology, Box 2.1: snowshoe hares, M = 948, C = 421, R = 167.
- Pine et al. (2013), Box 11.2: M = 421, C = 332, R = 88.
- Seber, G. A. F. (2002) The Estimation of Animal Abundance, Tables 3.7 and 3.8: M = 500, C = 149, R = 7
  and M = 1000, C = 243, R = 21.
- Ricker, W. E. (1975) Bull. Fish. Res. Board Can. 191, p. 99 (Table 4.4), and Krebs (1989) p. 32: Gerking's
  (1953) sunfish of Gordy Lake, Indiana, 14 days of marking (the R package FSAdata's SunfishIN).
These are the published figures the R package FSA checks its own estimators against (its testthat tests).
"""
import math

import pytest

from nabi.serve.population import (capture_histories, chao_mh, chapman, estimates, lincoln_petersen, schnabel,
                                   summaries)

# Gerking (1953) as in Ricker (1975) Table 4.4 and Krebs (1999) Table 2.4: caught, recaptured, returned marked.
GERKING_C = [10, 27, 17, 7, 1, 5, 6, 15, 9, 18, 16, 5, 7, 19]
GERKING_R = [0, 0, 0, 0, 0, 0, 2, 1, 5, 5, 4, 2, 2, 3]
GERKING_RETURNED = [10, 27, 17, 7, 1, 5, 6, 15, 9, 18, 14, 5, 6, 0]


def test_lincoln_petersen_krebs_box_2_1():
    e = lincoln_petersen(948, 421, 167)
    assert round(e.n) == 2390                                  # Krebs (1989) Box 2.1
    assert round(e.low) == 2153 and round(e.high) == 2685      # the normal approximation of Box 2.1
    assert lincoln_petersen(10, 10, 0).n is None               # no recapture: no estimate, said so


def test_chapman_krebs_pine_seber_ricker():
    assert round(chapman(948, 421, 167).n) == 2383             # Krebs (1989) Box 2.1
    assert round(chapman(109, 177, 57).n) == 337               # Ricker (1975)
    e = chapman(421, 332, 88)                                  # Pine et al. (2013) Box 11.2
    assert round(e.n) == 1578 and round(e.low) == 1330 and round(e.high) == 1826
    e = chapman(500, 149, 7)                                   # Seber (2002) Tables 3.7 and 3.8
    assert round(e.n) == 9393 and round(e.se) == 3022 and round(e.high) == 15316
    e = chapman(1000, 243, 21)
    assert round(e.n) == 11101 and round(e.se) == 2184
    assert chapman(5, 5, 0).n == pytest.approx(35.0)          # defined without a recapture: 6·6/1 − 1
    with pytest.raises(ValueError, match="cannot exceed"):
        chapman(5, 3, 4)


def test_schnabel_gerking_sunfish():
    marked, at_large = [], 0
    for c, r, returned in zip(GERKING_C, GERKING_R, GERKING_RETURNED):
        marked.append(at_large)
        at_large += returned - r
    assert sum(c * m for c, m in zip(GERKING_C, marked)) == 10740 and sum(GERKING_R) == 24    # Krebs: ΣCM, ΣR
    e = schnabel(GERKING_C, GERKING_R, marked)
    assert e.n == pytest.approx(447.5)                         # Krebs (1989) p. 32
    assert round(e.low) == 320 and round(e.high) == 746        # Ricker (1975) p. 99, from var(1/N) = ΣR/(ΣCM)²
    assert "rough" in e.note                                   # fewer than 50 recaptures
    # without removals the marked animals at large follow from the catches: Σ_{j<i} (C_j − R_j)
    assert schnabel([3, 4, 5], [0, 1, 2]).n == pytest.approx((4 * 3 + 5 * 6) / 3)


def test_chao_mh_on_the_cottontail_data_chao_analysed():
    """Edwards & Eberhardt's (1967) cottontails (a population of known size, 135), 18 trapping days: f_k rabbits
    seen on exactly k days. Chao (1987) analysed these data; the figures below are her equations evaluated by
    hand: N = S + f1²/(2 f2), var = f2 [(f1/f2)⁴/4 + (f1/f2)³ + (f1/f2)²/2], K = exp(1.96 √ln(1 + var/(N − S)²))."""
    f = [43, 16, 8, 6, 0, 2, 1]
    e = chao_mh(f)
    S, r = 76, 43 / 16
    assert e.n == pytest.approx(76 + 43 ** 2 / 32) and round(e.n) == 134
    var = 16 * (r ** 4 / 4 + r ** 3 + r ** 2 / 2)
    assert e.se == pytest.approx(math.sqrt(var))
    K = math.exp(1.959963984540054 * math.sqrt(math.log(1 + var / (e.n - S) ** 2)))
    assert e.low == pytest.approx(S + (e.n - S) / K) and e.high == pytest.approx(S + (e.n - S) * K)
    assert e.low > S and e.high > 135 > e.low                 # the interval holds the known 135
    assert chao_mh([4, 0, 1]).n == pytest.approx(5 + 4 * 3 / 2) and chao_mh([4, 0, 1]).low is None


def test_capture_histories_by_day_and_week():
    sightings = [(1, "2024-05-06T08:00:00"), (1, "2024-05-06T17:00:00"), (2, "2024-05-06T09:00:00"),
                 (1, "2024-05-08T10:00:00"), (3, "2024-05-13T10:00:00"), (2, "2024-05-14T11:00:00")]
    occasions, h = capture_histories(sightings, "day")
    assert occasions == ["2024-05-06", "2024-05-08", "2024-05-13", "2024-05-14"]
    assert h == {1: [1, 1, 0, 0], 2: [1, 0, 0, 1], 3: [0, 0, 1, 0]}          # twice on one day counts once
    occasions, h = capture_histories(sightings, "week")
    assert occasions == ["2024-05-06", "2024-05-13"]                          # the Mondays of ISO weeks
    assert h == {1: [1, 0], 2: [1, 1], 3: [0, 1]}
    s = summaries(h)
    assert (s["caught"], s["recaptured"], s["marked"], s["frequencies"]) == ([2, 2], [0, 1], [0, 2], [2, 1])
    two = estimates(h)
    assert [e.method for e in two] == ["Lincoln–Petersen", "Chapman"]
    assert two[0].n == pytest.approx(2 * 2 / 1)
    _, days = capture_histories(sightings, "day")
    assert [e.method for e in estimates(days)] == ["Schnabel", "Chao M_h"]
    assert estimates({}) == [] and estimates({1: [1]}) == []
    with pytest.raises(ValueError, match="day or week"):
        capture_histories(sightings, "month")
