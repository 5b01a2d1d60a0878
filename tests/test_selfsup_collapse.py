"""The collapse monitor of the methods without negatives (SimSiam, BYOL): the std of the l2-normalised
projections, its ``z_std`` column in the metrics, and the one warning when it falls below 0.2/√D."""
from collections import OrderedDict

import numpy as np
import pytest

from nabi import backend
from nabi.layers import Flatten, Linear, ReLU
from nabi.layers.simsiam import SimSiamLoss
from nabi.models.registry import Network
from nabi.selfsup.collapse import collapse_warning, healthy_std, is_collapsing, normalised_std
from nabi.selfsup.model import BYOL, SimCLR, SimSiam
from nabi.selfsup.pretrain import BYOLTrainer, ContrastiveTrainer
from nabi import optim


def test_normalised_std_of_constant_rows_is_zero_and_of_random_rows_is_one_over_root_d():
    rng = np.random.default_rng(0)
    D = 64
    constant = np.tile(rng.standard_normal(D), (512, 1)) * rng.uniform(0.5, 2.0, (512, 1))   # one direction
    assert normalised_std(constant) == pytest.approx(0.0, abs=1e-12)
    assert is_collapsing(normalised_std(constant), D)
    spread = rng.standard_normal((512, D)) * 3.0 + 0.1
    s = normalised_std(spread)
    assert s == pytest.approx(healthy_std(D), rel=0.05) and not is_collapsing(s, D)
    assert healthy_std(D) == 0.125
    # the same numbers as the formula written out: per dimension std over the rows of z/‖z‖, then the mean
    z = rng.standard_normal((10, 5))
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert normalised_std(z) == pytest.approx(float(np.mean([u[:, d].std() for d in range(5)])), rel=1e-12)
    assert normalised_std(z.astype(np.float32)) == pytest.approx(normalised_std(z), rel=1e-6)
    # the boundary: below 0.2/√D is collapse, at or above is not
    assert is_collapsing(0.2 * healthy_std(D) * 0.99, D) and not is_collapsing(0.2 * healthy_std(D), D)


def test_the_warning_names_the_numbers_and_the_remedies():
    text = collapse_warning(0.003, 128, 4)
    assert text.startswith("nabi pretrain: the projections are collapsing (std of normalised z 0.003, "
                           "healthy ≈ 0.088)")
    for remedy in ("--lr", "--batch-size", "--method simclr"):
        assert remedy in text


def _backbone():
    backbone = Network(OrderedDict([("flatten", Flatten()), ("fc0", Linear(12, 16)), ("relu0", ReLU())]))
    backbone.input_size = (3, 2, 2)
    backbone.arch = {"name": "tiny", "kwargs": {}}
    return backbone


def _batches(n_batches=3, n=16, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((2 * n, 3, 2, 2)), np.full(2 * n, -1)) for _ in range(n_batches)]


def _simsiam(collapsed):
    backend.seed(0)
    with backend.default_dtype(np.float64):
        model = SimSiam(_backbone(), 16, projection_dim=8)
    if collapsed:               # the projector's last batch norm outputs its shift for every photo: one z for all
        model.projector.bn2.weight.data[...] = 0.0
        model.projector.bn2.bias.data[...] = np.random.default_rng(3).standard_normal(8)
    return model, ContrastiveTrainer, {"loss": SimSiamLoss()}


def _byol(collapsed):
    backend.seed(0)
    with backend.default_dtype(np.float64):
        model = BYOL(_backbone(), 16, projection_dim=8)
    if collapsed:               # the projector's last layer ignores its input: one z for all
        model.projector.fc2.weight.data[...] = 0.0
        model.projector.fc2.bias.data[...] = np.random.default_rng(3).standard_normal(8)
    return model, BYOLTrainer, {}


@pytest.mark.parametrize("build", [_simsiam, _byol], ids=["simsiam", "byol"])
@pytest.mark.parametrize("collapsed", [True, False], ids=["collapsed", "healthy"])
def test_pretraining_logs_z_std_and_warns_once_when_the_projections_collapse(build, collapsed):
    model, trainer_class, extra = build(collapsed)
    lines = []
    opt = optim.SGD(model.named_parameters(), lr=0.0 if collapsed else 1e-3)      # the collapse is kept
    trainer = trainer_class(model, opt, _batches(), epochs=3, progress=False, log=lines.append, **extra)
    trainer.fit()
    rows = trainer.history
    assert len(rows) == 3 and all(r["z_std_healthy"] == pytest.approx(8 ** -0.5) for r in rows)
    warnings = [line for line in lines if "collapsing" in line]
    if collapsed:
        assert all(r["z_std"] < 1e-6 for r in rows)
        assert len(warnings) == 1, lines                                     # one per run, not one per epoch
        assert warnings[0].startswith("nabi pretrain: the projections are collapsing (std of normalised z ")
        assert "healthy ≈ 0.35" in warnings[0] and "--method simclr" in warnings[0]
    else:
        assert all(r["z_std"] > 0.2 * 8 ** -0.5 for r in rows)
        assert warnings == [], warnings


def test_z_std_is_the_mean_over_the_epochs_batches():
    model, trainer_class, extra = _simsiam(False)
    batches = _batches(n_batches=2)
    trainer = trainer_class(model, optim.SGD(model.named_parameters(), lr=1e-3), batches, epochs=1,
                            progress=False, log=None, **extra)
    seen = []
    real_step = trainer._step

    def step(x, y, sums):
        real_step(x, y, sums)
        seen.append(normalised_std(model.projection))
    trainer._step = step
    trainer.fit()
    assert trainer.history[0]["z_std"] == pytest.approx(sum(seen) / 2, rel=1e-12) and len(seen) == 2


def test_simclr_has_no_z_std_column():
    backend.seed(0)
    with backend.default_dtype(np.float64):
        model = SimCLR(_backbone(), 16, projection_dim=8)
    trainer = ContrastiveTrainer(model, optim.SGD(model.named_parameters(), lr=1e-3), _batches(n_batches=1),
                                 epochs=1, progress=False, log=None)
    trainer.fit()
    assert "z_std" not in trainer.history[0] and "z_std_healthy" not in trainer.history[0]
