"""Tests for nabi.studies.stats, checked against hand arithmetic and against scipy directly."""
import csv
import io
import math
import os

import numpy as np
import pytest
from scipy import stats as st

from nabi.evaluate import background_statistics
from nabi.studies.stats import TABLE1_COLUMNS, mean_std, paired_summary, sign_test, table1_row, table_csv, table_markdown

# Seed 2019 "Table 1", per-run values of two columns (10 seeds).
A_P2 = [0.5375, 0.55, 0.575, 0.525, 0.45, 0.575, 0.5, 0.525, 0.6, 0.4625]
B_P4 = [0.6, 0.575, 0.55, 0.55, 0.525, 0.575, 0.5, 0.525, 0.6375, 0.4625]


def test_table1_averages_reproduce():
    # sum A·P2 = 5.3 -> 0.53 ; sum B·P4 = 5.5 -> 0.55
    # A·P2 squared deviations from .53 sum to 0.0213125 -> std = sqrt(0.0213125 / 9) = 0.048663
    # B·P4 squared deviations from .55 sum to 0.0228125 -> std = sqrt(0.0228125 / 9) = 0.050346
    m, s = mean_std(A_P2)
    assert m == pytest.approx(0.53, abs=1e-12) and s == pytest.approx(math.sqrt(0.0213125 / 9), rel=1e-12)
    assert s == pytest.approx(0.048663, abs=1e-6)
    m, s = mean_std(B_P4)
    assert m == pytest.approx(0.55, abs=1e-12) and s == pytest.approx(0.050346, abs=1e-6)


def test_mean_std_edge_cases():
    assert mean_std([0.5])[0] == 0.5 and math.isnan(mean_std([0.5])[1])  # n = 1: no sample std
    assert all(math.isnan(v) for v in mean_std([]))
    assert all(math.isnan(v) for v in mean_std([0.1, float("nan")]))
    # ignore_nan: mean of .2, .4 = .3 ; std = sqrt((.01 + .01) / 1) = 0.141421
    m, s = mean_std([0.2, float("nan"), 0.4], ignore_nan=True)
    assert m == pytest.approx(0.3) and s == pytest.approx(math.sqrt(0.02))


def test_paired_summary_table1_hand_values():
    # d = B·P4 - A·P2 = .0625 .025 -.025 .025 .075 0 0 0 .0375 0 : mean .02, 5 up, 1 down, 4 ties
    # squared deviations of d from .02 sum to .0088125 -> std_d = sqrt(.0088125/9) = .031292
    # t_{.975, 9} = 2.262157 ; half width = 2.262157 * .031292 / sqrt(10) = .022385
    r = paired_summary(A_P2, B_P4)
    assert r.n == 10 and (r.n_pos, r.n_neg, r.n_zero) == (5, 1, 4)
    assert r.mean_a == pytest.approx(0.53) and r.mean_b == pytest.approx(0.55)
    assert r.mean_diff == pytest.approx(0.02, abs=1e-12)
    assert r.std_diff == pytest.approx(math.sqrt(0.0088125 / 9), rel=1e-9)
    assert r.ci_low == pytest.approx(0.02 - 0.022385, abs=2e-6)
    assert r.ci_high == pytest.approx(0.02 + 0.022385, abs=2e-6)
    # sign test: m = 6 non-zero, k = 1 -> p = 2 * (C(6,0) + C(6,1)) / 2^6 = 14/64
    assert r.sign_p == pytest.approx(14 / 64)
    # Wilcoxon, zeros dropped: |d| = .025 x3 -> ranks 1,2,3 averaged to 2 ; .0375 -> 4 ; .0625 -> 5 ; .075 -> 6
    # W- = 2 (the one negative .025), W+ = 2+2+4+5+6 = 19 ; statistic = min = 2
    assert r.wilcoxon_stat == 2.0
    d = np.round(np.array(B_P4) - np.array(A_P2), 12)
    assert r.wilcoxon_p == pytest.approx(st.wilcoxon(d, zero_method="wilcox").pvalue)
    assert any("zero difference" in n for n in r.notes)
    assert "b - a = +0.0200" in str(r)


def test_paired_summary_matches_scipy_on_random_data():
    rng = np.random.default_rng(2019)
    a = rng.normal(0.5, 0.05, 12)
    b = a + rng.normal(0.02, 0.03, 12)
    r = paired_summary(a, b, confidence=0.9)
    d = np.round(b - a, 12)
    tt = st.ttest_rel(b, a)
    ci = tt.confidence_interval(0.9)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert r.std_a == pytest.approx(np.std(a, ddof=1)) and r.std_b == pytest.approx(np.std(b, ddof=1))
    for zm in ("wilcox", "pratt", "zsplit"):
        w = st.wilcoxon(d, zero_method=zm)
        rz = paired_summary(a, b, zero_method=zm)
        assert (rz.wilcoxon_stat, rz.wilcoxon_p) == pytest.approx((w.statistic, w.pvalue))
    assert r.sign_p == pytest.approx(st.binomtest(r.n_pos, r.n_pos + r.n_neg, 0.5).pvalue)


def test_float_noise_does_not_break_ties():
    # 0.575 - 0.55 and 0.55 - 0.525 are not the same float; unrounded, scipy ranks them apart
    # and reports 1.5 instead of the hand value 2 (see test above). We round first.
    raw = np.array(B_P4) - np.array(A_P2)
    assert st.wilcoxon(raw).statistic != 2.0
    assert paired_summary(A_P2, B_P4).wilcoxon_stat == 2.0
    # 0.1 + 0.2 vs 0.3 is a tie, not a tiny positive difference
    r = paired_summary([0.3, 0.5, 0.5], [0.1 + 0.2, 0.6, 0.7])
    assert (r.n_pos, r.n_neg, r.n_zero) == (2, 0, 1)


def test_sign_test_hand_case():
    # 7 up, 1 down, 1 tie: m = 8, k = 1 -> p = 2 * (1 + 8) / 256 = 0.0703125
    p, up, down, zero = sign_test([1, 2, 3, 4, 5, 6, 7, -1, 0])
    assert (up, down, zero) == (7, 1, 1) and p == 0.0703125
    assert p == pytest.approx(st.binomtest(1, 8, 0.5).pvalue)
    # balanced: 2 up, 2 down -> tail = 1+4+6 = 11 -> 2*11/16 > 1 -> capped at 1
    assert sign_test([1, 1, -1, -1])[0] == 1.0
    assert math.isnan(sign_test([0, 0])[0])


def test_paired_summary_degenerate_cases():
    r = paired_summary([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])  # all differences zero
    assert math.isnan(r.wilcoxon_p) and math.isnan(r.sign_p) and r.n_zero == 3
    assert r.ci_low == r.ci_high == 0.0  # std_d = 0 -> zero-width interval
    assert any("all differences are zero" in n for n in r.notes)
    r = paired_summary([0.5], [0.6])  # n = 1
    assert math.isnan(r.std_a) and math.isnan(r.ci_low) and math.isnan(r.wilcoxon_p) and math.isnan(r.sign_p)
    assert any("n=1 < 2" in n for n in r.notes)
    r = paired_summary([0.5, float("nan"), 0.4, 0.3], [0.6, 0.7, 0.6, 0.2])  # a nan pair is dropped
    assert r.n == 3 and any("nan dropped" in n for n in r.notes)
    assert r.mean_diff == pytest.approx((0.1 + 0.2 - 0.1) / 3)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_summary([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="zero_method"):
        paired_summary([1, 2], [1, 3], zero_method="bogus")


def test_table_markdown_table1_shape():
    rows = [{"A·P2": a, "B·P4": b} for a, b in zip(A_P2, B_P4)]
    text = table_markdown(rows, ["A·P2", "B·P4"])
    lines = text.splitlines()
    assert lines[0] == "| Run | A·P2 | B·P4 |" and lines[1] == "|---|---:|---:|"
    assert lines[2] == "| 1 | 0.5375 | 0.6000 |" and lines[11] == "| 10 | 0.4625 | 0.4625 |"
    assert lines[12] == "| **Avg** | 0.5300 | 0.5500 |"   # 5.3/10, 5.5/10
    assert lines[13] == "| **Std** | 0.0487 | 0.0503 |"   # 0.048663, 0.050346
    assert len(lines) == 14


def test_table1_row_from_background_statistics_and_nan():
    # model B on two photos of cat_a (right), cat_b (called background) + one background photo (right):
    # P1 = 2/3, P2 = 1/2, P3 = 1/1, P4: cat_b row .1 .3 over individuals -> cat_b right -> 2/2
    names = ["cat_a", "cat_b", "background"]
    b = background_statistics(np.array([[.8, .1, .1], [.1, .3, .6], [.1, .1, .8]]), [0, 1, 2], names)
    # model A (no background output): cat_a right, cat_b wrong -> P2 = 1/2
    a = background_statistics(np.array([[.9, .1], [.6, .4], [.5, .5]]), [0, 1, 2], names,
                              model_classes=names[:2])
    row = table1_row(a, b)
    assert row == pytest.approx({"A·P2": 0.5, "B·P1": 2 / 3, "B·P2": 0.5, "B·P3": 1.0, "B·P4": 1.0})
    row2 = {**row, "B·P3": float("nan")}
    text = table_markdown([row, row2], TABLE1_COLUMNS, digits=3)
    lines = text.splitlines()
    assert lines[0] == "| Run | A·P2 | B·P1 | B·P2 | B·P3 | B·P4 |"
    assert lines[3] == "| 2 | 0.500 | 0.667 | 0.500 | n/a | 1.000 |"
    assert lines[4] == "| **Avg** | 0.500 | 0.667 | 0.500 | n/a | 1.000 |"  # nan propagates by default
    assert table_markdown([row, row2], ignore_nan=True, digits=3).splitlines()[4].split(" | ")[4] == "1.000"
    # sequences in column order work too; wrong shapes are errors
    assert table_markdown([list(row.values())], digits=3).splitlines()[2] == "| 1 | 0.500 | 0.667 | 0.500 | 1.000 | 1.000 |"
    with pytest.raises(ValueError, match="lacks column"):
        table_markdown([{"A·P2": 0.5}])
    with pytest.raises(ValueError, match="values for"):
        table_markdown([[0.5, 0.6]])


def test_table_csv_roundtrip_and_file(tmp_path):
    rows = [[a, b] for a, b in zip(A_P2, B_P4)]
    path = tmp_path / "out" / "table1.csv"
    text = table_csv(rows, ["A·P2", "B·P4"], path=path, row_labels=[f"seed{i}" for i in range(10)])
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == ["run", "A·P2", "B·P4"] and parsed[1] == ["seed0", "0.5375", "0.6"]
    assert parsed[11][0] == "Avg" and float(parsed[11][1]) == pytest.approx(0.53, abs=1e-12)
    assert float(parsed[11][2]) == pytest.approx(0.55, abs=1e-12)
    assert parsed[12][0] == "Std" and float(parsed[12][1]) == pytest.approx(0.048663, abs=1e-6)
    assert path.read_text(encoding="utf-8") == text
    assert os.listdir(path.parent) == ["table1.csv"]  # temp file moved into place
    assert table_csv(rows, ["A·P2", "B·P4"], digits=2, summary=False).splitlines()[-1] == "10,0.46,0.46"
