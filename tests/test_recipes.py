"""The strong from-scratch recipe ``resnet18-160`` and what it is made of: the ``crop_flip_jitter``
augmentation, the warm-up given as a share of the run, and the checks on recipe settings."""
import math

import numpy as np
import pytest

from nabi import data as D
from nabi import models as zoo
from nabi.data.prepare import augmentation
from nabi.studies import experiment as X
from nabi.studies.recipes import RECIPES, fingerprint_config
from nabi.training.build import check_warmup, make_optimizer, make_schedule, warmup_steps, what_ran
from nabi.training.config import TrainConfig


# -- the recipe -----------------------------------------------------------------------------------------------
def test_strong_recipe_settings():
    r = X.resolve_recipe("resnet18-160")
    assert (r["model"], r["image_size"], r["fit"], r["epochs"], r["batch_size"]) == ("resnet18", 160, "squash", 60, 16)
    assert (r["optimizer"], r["lr"], r["weight_decay"], r["label_smoothing"]) == ("adamw", 2e-3, 0.05, 0.1)
    assert (r["schedule"], r["warmup_fraction"], r["warmup_epochs"]) == ("warmup_cosine", 0.3, None)
    assert (r["augment"], r["normalize"]) == ("crop_flip_jitter", "imagenet")
    assert "strong from-scratch baseline" in RECIPES["resnet18-160"]["description"]
    assert X.probe_input_size(r) == [3, 160, 160]


def test_strong_recipe_trains_with_a_30_percent_warmup_then_cosine():
    cfg = X.resolve_recipe("resnet18-160", {"model": "cifar_cnn", "image_size": 32})
    tc, epochs, iterations = X._train_config(cfg, 4, 10, "/tmp/unused", 0)
    assert (epochs, iterations, tc.epochs) == (60, None, 60)
    assert tc.warmup == 180 and tc.warmup_fraction is None and tc.fit == "squash"   # 0.3 × 600 iterations
    opt = make_optimizer(tc, zoo.get("cifar_cnn", num_classes=4))
    sched = make_schedule(tc, opt, 10)
    base = 2e-3
    for t in (0, 1, 90, 179, 180, 181, 390, 599):
        want = base * (t + 1) / 180 if t < 180 else base * (1 + math.cos(math.pi * (t - 180) / 420)) / 2
        assert sched.get_lr(t) == pytest.approx(want, rel=1e-12), t


def test_the_other_recipes_keep_their_settings():
    m = X.resolve_recipe("modern")
    assert (m["image_size"], m["fit"], m["warmup_epochs"], m["warmup_fraction"], m["augment"]) == \
        (128, "crop", 2, None, "strong")
    assert X.resolve_recipe("alexnet336-2019")["fit"] == "crop"


# -- recipe checks ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe, overrides, match", [
    ("resnet18-160", {"fit": "zoom"}, "fit must be one of crop, squash, pad; got 'zoom'"),
    ("resnet18-160", {"augment": "wild"}, "augment must be one of .*crop_flip_jitter"),
    ("resnet18-160", {"warmup_fraction": 1.0}, r"warmup_fraction must be a number in \[0, 1\), got 1.0"),
    ("resnet18-160", {"warmup_fraction": "0.3"}, "warmup_fraction must be a number"),
    ("resnet18-160", {"warmup_epochs": 2}, "give the warm-up one way: warmup_fraction 0.3 or warmup_epochs 2"),
    ("modern", {"warmup_fraction": 0.3}, "give the warm-up one way"),
    ("resnet18-160", {"schedule": "cosine"}, "warmup_fraction only applies to schedule warmup_cosine"),
])
def test_bad_recipe_settings_are_refused(recipe, overrides, match):
    with pytest.raises(ValueError, match=match):
        X.resolve_recipe(recipe, overrides)


def test_one_warmup_replaces_the_other_when_the_other_is_cleared():
    r = X.resolve_recipe("modern", {"warmup_fraction": 0.3, "warmup_epochs": None})
    assert r["warmup_fraction"] == 0.3 and r["warmup_epochs"] is None
    r = X.resolve_recipe("resnet18-160", {"warmup_fraction": None, "warmup_epochs": 5})
    tc, _, _ = X._train_config(r, 4, 10, "/tmp/unused", 0)
    assert tc.warmup == 50


def test_new_settings_at_their_old_values_leave_study_fingerprints_unchanged():
    old = {"model": "resnet18", "lr": 1e-3, "device": "cpu"}
    assert fingerprint_config({**old, "fit": "crop", "warmup_fraction": None}) == {"model": "resnet18", "lr": 1e-3}
    assert fingerprint_config({**old, "fit": "squash"})["fit"] == "squash"
    assert fingerprint_config({**old, "warmup_fraction": 0.3})["warmup_fraction"] == 0.3


def test_an_ablations_fingerprint_holds_the_settings_it_always_held():
    """A setting added to training later must not enter the fingerprint at its default value (declare it
    fingerprint=UNLESS_DEFAULT, nabi.training.config), or every unfinished ablation would be refused after an
    upgrade."""
    from nabi.studies.ablation import _base_config
    assert sorted(fingerprint_config(_base_config({"model": "cifar_cnn"}))) == [
        "augment", "background_kinds", "batch_size", "cache", "channels", "clip_norm", "early_stopping", "epochs",
        "exclude", "fused_sgd", "gamma", "image_size", "iterations", "label_smoothing", "lr", "model", "model_args",
        "momentum", "nesterov", "normalize", "optimizer", "precision", "schedule", "schedule_unit", "step_size",
        "strict", "test_ratio", "val_ratio", "warmup", "weight_decay"]
    tuned = fingerprint_config(_base_config({"model": "cifar_cnn", "freeze_until": "conv1", "layer_lr_decay": 0.5}))
    assert tuned["freeze_until"] == "conv1" and tuned["layer_lr_decay"] == 0.5


def test_ablation_base_takes_the_new_settings_and_checks_them():
    from nabi.studies.ablation import _base_config, _validate
    base = _base_config({"model": "cifar_cnn", "fit": "squash", "augment": "crop_flip_jitter",
                         "schedule": "warmup_cosine", "warmup_fraction": 0.3})
    _validate(base, "[base]")
    with pytest.raises(ValueError, match=r"\[base\]: fit must be one of"):
        _validate({**base, "fit": "zoom"}, "[base]")


# -- the augmentation -------------------------------------------------------------------------------------------
def test_crop_flip_jitter_is_resized_crop_flip_and_jitter_02():
    rrc, flip, jitter = augmentation("crop_flip_jitter", (20, 24))
    assert isinstance(rrc, D.RandomResizedCrop) and rrc.size == (20, 24) and rrc.scale == (0.5, 1.0)
    assert rrc.ratio == pytest.approx((3 / 4, 4 / 3))
    assert isinstance(flip, D.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(jitter, D.ColorJitter)
    assert (jitter.brightness, jitter.contrast, jitter.saturation) == (0.2, 0.2, 0.2)
    with pytest.raises(ValueError, match="augment must be one of none, flip, standard, strong, crop_flip_jitter"):
        augmentation("wild", (8, 8))


def test_colour_jitter_factors_lie_in_one_plus_minus_j():
    """As torchvision's ColorJitter(j): a brightness factor from [1 - j, 1 + j] multiplies every pixel."""
    x = np.full((3, 4, 4), 0.5, np.float32)
    jitter = D.ColorJitter(brightness=0.2)
    factors = np.array([jitter(x, np.random.default_rng(i))[0, 0, 0] / 0.5 for i in range(400)])
    assert factors.min() >= 0.8 - 1e-6 and factors.max() <= 1.2 + 1e-6
    assert factors.min() < 0.81 and factors.max() > 1.19


# -- the warm-up as a share of the run ------------------------------------------------------------------------
def test_warmup_fraction_in_iterations():
    cfg = TrainConfig(schedule="warmup_cosine", warmup_fraction=0.3, epochs=7)
    assert warmup_steps(cfg, 70) == 21 and warmup_steps(cfg, 3) == 1
    assert warmup_steps(TrainConfig(warmup=5), 70) == 5
    sched = make_schedule(cfg, make_optimizer(cfg, zoo.get("cifar_cnn", num_classes=2)), 10)
    assert sched.warmup_steps == 21 and sched.after.T_max == 49


def test_warmup_given_twice_or_out_of_range_is_refused():
    with pytest.raises(ValueError, match="give the warm-up one way: --warmup 5"):
        check_warmup(TrainConfig(schedule="warmup_cosine", warmup=5, warmup_fraction=0.3))
    with pytest.raises(ValueError, match=r"--warmup-fraction must be a number in \[0, 1\)"):
        check_warmup(TrainConfig(schedule="warmup_cosine", warmup_fraction=1.5))
    cfg = TrainConfig(data="embedded:digits8x8", schedule="warmup_cosine", warmup_fraction=0.9, iterations=1)
    parts = {"train": [0], "val": None, "test": None, "classes": ["a", "b"]}
    with pytest.raises(ValueError, match=r"--warmup-fraction 0.9 \(1 steps\) is not shorter than the whole run"):
        what_ran(cfg, parts, [3, 8, 8], 3, {"kind": "unit"}, 1)


def test_the_command_line_checks_the_new_settings():
    from nabi.cli.checks import BadArgument, check_train_config
    check_train_config(TrainConfig(schedule="warmup_cosine", warmup_fraction=0.3, fit="pad"))
    for cfg, match in ((TrainConfig(warmup_fraction=0.3), "--warmup-fraction 0.3 only applies to --schedule"),
                       (TrainConfig(schedule="warmup_cosine", warmup=3, warmup_fraction=0.3), "one way"),
                       (TrainConfig(fit="zoom"), "--fit .*must be one of crop, squash, pad, got 'zoom'"),
                       (TrainConfig(augment="wild"), "--augment .*crop_flip_jitter")):
        with pytest.raises(BadArgument, match=match):
            check_train_config(cfg)


# -- one-cycle ------------------------------------------------------------------------------------------------
def test_one_cycle_rises_over_the_warmup_fraction_or_0_3():
    from nabi.optim import OneCycleLR
    for fraction, rise in ((None, 0.3), (0.2, 0.2)):
        cfg = TrainConfig(schedule="one_cycle", warmup_fraction=fraction, epochs=5, lr=0.01)
        sched = make_schedule(cfg, make_optimizer(cfg, zoo.get("cifar_cnn", num_classes=2)), 20)
        assert isinstance(sched, OneCycleLR) and (sched.total_steps, sched.pct_start) == (100, rise)
        assert sched.lr == pytest.approx(0.01 / 25) and sched.get_lr(int(rise * 100) - 1) == pytest.approx(0.01)
    r = X.resolve_recipe("resnet18-160", {"schedule": "one_cycle"})
    tc, _, _ = X._train_config(r, 4, 10, "/tmp/unused", 0)
    assert tc.warmup_fraction == 0.3 and tc.warmup == 0
    assert make_schedule(tc, make_optimizer(tc, zoo.get("cifar_cnn", num_classes=4)), 10).pct_start == 0.3


def test_one_cycle_too_short_is_refused_before_training():
    cfg = TrainConfig(data="embedded:digits8x8", schedule="one_cycle", iterations=3)
    parts = {"train": [0], "val": None, "test": None, "classes": ["a", "b"]}
    with pytest.raises(ValueError, match="one_cycle needs its rising share"):
        what_ran(cfg, parts, [3, 8, 8], 3, {"kind": "unit"}, 1)
    ok = what_ran(TrainConfig(data="embedded:digits8x8", schedule="one_cycle", iterations=30), parts, [3, 8, 8], 3,
                  {"kind": "unit"}, 1)
    assert ok["warmup_fraction"] == 0.3 and ok["warmup"] is None


# -- a recipe as the start of nabi train and of an ablation's [base] ------------------------------------------
def test_recipe_as_train_settings():
    from nabi.studies.recipes import recipe_train_settings
    s = recipe_train_settings("resnet18-160")
    tc = TrainConfig.from_dict(s)
    assert (tc.model, tc.image_size, tc.fit, tc.augment, tc.epochs, tc.batch_size, tc.lr) == \
        ("resnet18", 160, "squash", "crop_flip_jitter", 60, 16, 2e-3)
    assert (tc.schedule, tc.warmup_fraction, tc.warmup, tc.test_ratio) == ("warmup_cosine", 0.3, 0, 0.2)
    m = recipe_train_settings("modern")
    assert m["warmup_fraction"] == pytest.approx(2 / 30) and m["fit"] == "crop"
    for name, what in (("alexnet336-2019", r"offline ×8 variants and 2000 iterations per class"),
                       ("tiny", "8 iterations per class")):
        with pytest.raises(ValueError, match=f"trains with {what}.*nabi experiment DATA --recipe {name}"):
            recipe_train_settings(name)


def _train_args(*argv):
    from nabi.cli.main import build_parser
    from nabi.cli.train import train_config
    return train_config(build_parser().parse_args(["train", "DATA", *argv]))


def test_nabi_train_recipe_then_config_then_flags(tmp_path):
    cfg = _train_args("--recipe", "resnet18-160")
    assert (cfg.model, cfg.fit, cfg.warmup_fraction, cfg.epochs, cfg.data) == ("resnet18", "squash", 0.3, 60, "DATA")
    cfg = _train_args("--recipe", "resnet18-160", "--epochs", "2", "--fit", "pad", "--warmup", "5")
    assert (cfg.epochs, cfg.fit, cfg.warmup, cfg.warmup_fraction) == (2, "pad", 5, None)   # the flag's warm-up
    (tmp_path / "run.toml").write_text('lr = 0.01\nwarmup_fraction = 0.1\n', encoding="utf-8")
    cfg = _train_args("--recipe", "modern", "--config", str(tmp_path / "run.toml"), "--lr", "0.02")
    assert (cfg.lr, cfg.warmup_fraction, cfg.image_size) == (0.02, 0.1, 128)
    assert _train_args("--epochs", "3").fit == "crop"            # no recipe: TrainConfig's defaults


def test_nabi_train_with_the_strong_recipe_runs(tmp_path, capsys):
    from PIL import Image
    from nabi.cli import main
    rng = np.random.default_rng(0)
    for k, name in enumerate(("a", "b")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(5):
            a = rng.integers(0, 60, (24, 40, 3)).astype(np.uint8)
            a[..., k] += 150
            Image.fromarray(a).save(tmp_path / "data" / name / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--recipe", "resnet18-160", "--model", "cifar_cnn",
                 "--image-size", "32", "--epochs", "2", "--val-ratio", "0", "--test-ratio", "0.2",
                 "--out", str(out), "--no-progress"]) == 0
    import json
    c = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert (c["fit"], c["augment"], c["optimizer"], c["batch_size"], c["warmup_fraction"]) == \
        ("squash", "crop_flip_jitter", "adamw", 16, 0.3)
    assert c["warmup"] == max(1, round(0.3 * c["total_iterations"]))
    assert main(["train", str(tmp_path / "data"), "--recipe", "tiny", "--out", str(tmp_path / "t")]) == 1
    assert "only the experiment does" in capsys.readouterr().err


def test_ablation_base_from_a_recipe():
    from nabi.studies.ablation import _base_config, _validate
    base = _base_config({"recipe": "resnet18-160", "model": "cifar_cnn", "image_size": 32, "epochs": 2})
    assert (base["fit"], base["augment"], base["warmup_fraction"], base["epochs"], base["batch_size"]) == \
        ("squash", "crop_flip_jitter", 0.3, 2, 16)
    _validate(base, "[base]")
    assert _base_config({"recipe": "resnet18-160", "warmup": 4})["warmup_fraction"] is None
    assert _base_config({"recipe": "resnet18-160", "iterations": 9})["epochs"] is None
    with pytest.raises(ValueError, match=r"\[base\] recipe: recipe 'tiny' trains with 8 iterations per class"):
        _base_config({"recipe": "tiny"})
    with pytest.raises(ValueError, match=r"\[base\] recipe must be a recipe's name"):
        _base_config({"recipe": 3})


def test_self_train_settings_from_defaults_recipe_and_flags():
    from nabi.cli.main import build_parser
    from nabi.cli.self_train import SELF_TRAIN_DEFAULTS, self_train_settings
    from nabi.cli.self_train import run as cmd_self_train

    def parse(*argv):
        return build_parser().parse_args(["self-train", "LAB", "UNL", *argv])
    assert self_train_settings(parse()) == SELF_TRAIN_DEFAULTS
    assert (SELF_TRAIN_DEFAULTS["model"], SELF_TRAIN_DEFAULTS["epochs"], SELF_TRAIN_DEFAULTS["augment"]) == \
        ("resnet18_cifar", 10, "standard")                  # the defaults the command had before --recipe
    s = self_train_settings(parse("--recipe", "resnet18-160", "--epochs", "3", "--teacher-augment", "flip"))
    assert (s["model"], s["fit"], s["warmup_fraction"], s["epochs"], s["augment"], s["label_smoothing"]) == \
        ("resnet18", "squash", 0.3, 3, "flip", 0.1)
    with pytest.raises(ValueError, match="warmup_cosine needs --warmup-fraction"):
        cmd_self_train(parse("--schedule", "warmup_cosine"))


def test_ablation_factors_for_the_new_settings():
    from nabi.studies.ablation import FACTORS, _base_config, _validate
    base = _base_config({"model": "cifar_cnn", "schedule": "warmup_cosine", "warmup": 5})
    for fit in ("crop", "squash", "pad"):
        FACTORS["fit"].check(base, fit)
        assert FACTORS["fit"].apply(base, fit)["fit"] == fit
    with pytest.raises(ValueError, match="factor 'fit'"):
        FACTORS["fit"].check(base, "zoom")
    FACTORS["augment"].check(base, "crop_flip_jitter")
    v = FACTORS["warmup_fraction"].apply(base, 0.3)
    assert (v["warmup_fraction"], v["warmup"]) == (0.3, 0)
    _validate(v, "variant")
    with pytest.raises(ValueError, match="factor 'warmup_fraction'"):
        FACTORS["warmup_fraction"].check(base, 1.0)


def test_the_embedding_recipe_trains_an_identity_embedding_and_the_studies_refuse_it(tmp_path, capsys):
    import json
    from PIL import Image
    from nabi.cli import main
    from nabi.studies.ablation import _base_config
    from nabi.studies.experiment import run_experiment
    from nabi.studies.recipes import recipe_embedding, resolve_recipe
    assert recipe_embedding("reid-resnet20-64") == {"head": "arcface", "embedding_dim": 128}
    assert recipe_embedding("resnet18-160") is None
    with pytest.raises(ValueError, match="embedding must be a table with head"):
        resolve_recipe("reid-resnet20-64", {"embedding": {"head": "softmax"}})
    rng = np.random.default_rng(1)
    for k in range(4):
        (tmp_path / "data" / f"ind{k}").mkdir(parents=True)
        for i in range(4):
            a = rng.integers(0, 60, (20, 20, 3)).astype(np.uint8)
            a[..., k % 3] += 120 + 20 * k
            Image.fromarray(a).save(tmp_path / "data" / f"ind{k}" / f"{i}.png")
    out = tmp_path / "emb"
    assert main(["train", str(tmp_path / "data"), "--recipe", "reid-resnet20-64", "--model", "cifar_cnn",
                 "--image-size", "32", "--embedding-dim", "8", "--iterations", "2", "--batch-size", "8", "--k", "2",
                 "--val-ratio", "0.5", "--out", str(out), "--no-progress"]) == 0
    arch = json.loads((out / "model.json").read_text(encoding="utf-8"))["arch"]
    assert (arch["name"], arch["kwargs"]["head"], arch["kwargs"]["embedding_dim"]) == ("embedding_net", "arcface", 8)
    c = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert (c["optimizer"], c["augment"]) == ("adam", "crop_flip_jitter")                   # the recipe's
    with pytest.raises(ValueError, match="trains an identity embedding, which the paired experiment does not"):
        run_experiment(tmp_path / "data", tmp_path / "exp", recipe="reid-resnet20-64")
    with pytest.raises(ValueError, match="trains an identity embedding, which an ablation does not"):
        _base_config({"recipe": "reid-resnet20-64"})
