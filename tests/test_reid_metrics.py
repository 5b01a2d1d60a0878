"""Re-identification metrics against hand-computed small cases and scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from nabi.reid import metrics as M


def test_rank_k_and_map_by_hand():
    # two queries (individuals a, b); gallery a, b, a, c
    g = np.array(["a", "b", "a", "c"])
    q = np.array(["a", "b"])
    S = np.array([[0.2, 0.9, 0.8, 0.1],      # query a: ranking b, a, a, c → hits at 2 and 3
                  [0.5, 0.4, 0.3, 0.6]])     # query b: ranking c, a, b, a → hit at 3
    assert M.rank_k(S, q, g, 1) == 0.0
    assert M.rank_k(S, q, g, 2) == 0.5
    assert M.rank_k(S, q, g, 3) == 1.0
    ap_a = (1 / 2 + 2 / 3) / 2
    ap_b = 1 / 3
    assert M.mean_average_precision(S, q, g) == pytest.approx((ap_a + ap_b) / 2)


def test_map_skips_queries_without_gallery_match():
    S = np.array([[0.9, 0.1], [0.5, 0.4]])
    assert M.mean_average_precision(S, ["a", "z"], ["a", "b"]) == 1.0
    with pytest.raises(ValueError, match="no query"):
        M.mean_average_precision(S, ["y", "z"], ["a", "b"])


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    k = np.round(rng.normal(0.7, 0.1, 40), 2)
    u = np.round(rng.normal(0.5, 0.1, 30), 2)              # rounding makes ties
    y = np.r_[np.ones_like(k), np.zeros_like(u)]
    assert M.auroc(k, u) == pytest.approx(roc_auc_score(y, np.r_[k, u]), abs=1e-12)
    assert M.auroc([1.0], [1.0]) == 0.5


def test_threshold_and_rates_by_hand():
    unknown = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    t = M.threshold_at_far(unknown, 0.0)
    assert t == 0.95                                       # nothing above it: FAR 0
    t10 = M.threshold_at_far(unknown, 0.1)
    assert t10 == 0.9 and M.rates(t10, [], [], unknown)["far"] == pytest.approx(0.1)
    known = np.array([0.97, 0.92, 0.85, 0.99])
    correct = np.array([True, True, True, False])
    r = M.tar_at_far(known, correct, unknown, 0.1)        # accept s > 0.9: 0.97, 0.92 right, 0.99 wrong name
    assert r == {"threshold": 0.9, "far": 0.1, "frr": 0.25, "tar": 0.5}
    curve = M.far_frr_curve(known, correct, unknown)
    assert curve[0]["far"] == 1.0 and curve[-1]["far"] == 0.0
    assert all(a["threshold"] < b["threshold"] for a, b in zip(curve, curve[1:]))


def test_three_way_accuracy():
    answers = [("known", "a"), ("known", "b"), ("unknown", None), ("background", None), ("unknown", None)]
    truths = [("known", "a"), ("known", "a"), ("unknown", None), ("background", None), ("known", "c")]
    assert M.three_way_accuracy(answers, truths) == 3 / 5


def test_leave_individuals_out():
    names = [f"n{i}" for i in range(10)] + ["background"]
    kept, out = M.leave_individuals_out(names, 0.3, seed=1, keep=["background"])
    assert len(out) == 3 and "background" in kept and not set(kept) & set(out)
    assert set(kept) | set(out) == set(names)
    assert M.leave_individuals_out(names, 0.3, seed=1, keep=["background"]) == (kept, out)
    with pytest.raises(ValueError, match="two individuals"):
        M.leave_individuals_out(["a"], 0.5)
    assert len(M.leave_individuals_out(names, 0.05, seed=1, keep=["background"], at_least=2)[1]) == 2


@pytest.mark.parametrize("n,held_out,line", [
    (4, 2, "note: holding out 2 of the 4 individuals for validation, not 1 (--val-ratio 0.1)"),
    (3, 0, "has 3 individuals, too few to validate on held-out ones"),
])
def test_an_embedding_run_never_validates_on_one_held_out_individual(tmp_path, capsys, n, held_out, line):
    """Rank-1 among one held-out individual is 1.0 whatever the network: with four individuals the run holds
    out two (a note says why), with three it trains without validation (a warning says why)."""
    import json
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from reid_synth import write_photos
    from nabi.cli import main
    data = write_photos(tmp_path / "photos", range(n), 4)
    out = tmp_path / "run"
    assert main(["train", str(data), "--model", "cifar_cnn", "--head", "arcface", "--embedding-dim", "8",
                 "--epochs", "1", "--batch-size", "8", "--val-ratio", "0.1", "--test-ratio", "0", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert line in printed
    emb = json.loads((out / "config.json").read_text())["embedding"]
    assert len(emb["validation_individuals"]) == held_out
    assert len(emb["train_individuals"]) == n - held_out
    assert (out / "best.safetensors").exists() == bool(held_out)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert ("val_rank1" in rows[0]) == bool(held_out)
