"""Fine-tuning controls: ``--freeze-until`` (frozen stages) and ``--layer-lr-decay`` (per-stage learning rates).

Frozen stages keep their weights and batch-norm statistics bit for bit and get no gradient at all;
the stages that train take exactly the update PyTorch gives the same network with ``requires_grad``
off (and eval mode) for the frozen stages; the layer-wise rates are the optimiser's per-parameter
multipliers and equal ``torch.optim`` parameter groups of those rates; bad values are refused naming
the flag; a killed run with both options resumes to the weights of an uninterrupted one.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import nabi
from nabi import backend, files, layers as L, models, optim
from nabi.cli.main import main as nabi_main
from nabi.data import ArrayDataset, DataLoader
from nabi.layers.module import Parameter
from nabi.training import fine_tune
from nabi.training.build import build_trainer
from nabi.training.config import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import write_folder  # noqa: E402

torch = pytest.importorskip("torch")


# -- stages --------------------------------------------------------------------------------------------
def test_stages_are_the_top_level_children_with_trunks_and_backbones_opened():
    names = lambda m: [n for n, _ in fine_tune.stages(m)]  # noqa: E731
    assert names(models.get("resnet20", num_classes=3)) == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3",
                                                            "avgpool", "flatten", "fc"]
    vgg = names(models.get("vgg11_bn", num_classes=3, init=models.registry._shape_only))
    assert vgg[:3] == ["features.0", "features.1", "features.2"] and vgg[-3:] == ["avgpool", "flatten", "classifier"]
    emb = names(models.get("embedding_net", backbone="resnet20", num_classes=4))
    assert emb[:2] == ["backbone.conv1", "backbone.bn1"] and emb[-2:] == ["neck", "classifier"]
    # every stage name begins state-dict keys
    keys = list(models.get("resnet20", num_classes=3).state_dict())
    assert all(any(k.startswith(n + ".") for k in keys) for n in ["conv1", "bn1", "layer2", "fc"])


def test_an_opened_child_freezes_all_of_it_and_an_unknown_name_lists_the_stages():
    vgg = models.get("vgg11_bn", num_classes=3, init=models.registry._shape_only)
    st = fine_tune.stages(vgg)
    assert fine_tune.frozen_stage_count(st, "features") == len([n for n, _ in st if n.startswith("features.")])
    with pytest.raises(ValueError) as e:
        fine_tune.frozen_stage_count(fine_tune.stages(models.get("resnet20", num_classes=3)), "layer9")
    msg = str(e.value)
    assert "--freeze-until layer9" in msg and "conv1, bn1, layer1, layer2, layer3, fc" in msg
    with pytest.raises(ValueError, match="nothing would train"):
        fine_tune.freeze_until(models.get("resnet20", num_classes=3), "fc")


# -- frozen stages in training ----------------------------------------------------------------------------
def _digits(n=32, size=32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    y = (np.arange(n) % classes).astype(np.int64)
    return ArrayDataset(x, y, classes=[str(i) for i in range(classes)])


def _trainer(model, **cfg):
    cfg = TrainConfig(**{"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "epochs": 1,
                         "progress": False, **cfg})
    loader = DataLoader(_digits(), batch_size=8, shuffle=True, seed=1)
    lines = []
    return build_trainer(cfg, model, loader, None, out_dir=None, log=lines.append), lines


def test_frozen_stages_keep_weights_and_batch_norm_statistics_bit_for_bit():
    nabi.seed(0)
    model = models.get("resnet20", num_classes=3)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    trainer, lines = _trainer(model, freeze_until="layer2")
    assert "frozen stages conv1, bn1, relu, layer1, layer2" in lines[1]
    assert lines[2].strip().startswith("parameters: ") and "trainable" in lines[2] and "frozen" in lines[2]
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    assert not any(n.startswith(frozen) for n in trainer.optimizer.params)
    trainer.fit()                                     # 4 steps, then model.train() / eval() round trips
    after = model.state_dict()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    for k in before:
        if k.startswith(frozen):
            assert k not in changed, k                # weights and running_mean / running_var alike
    assert "layer3.0.bn1.running_mean" in changed and "layer3.2.conv2.weight" in changed and "fc.weight" in changed
    for name, p in model.named_parameters():         # backward never went below layer3
        if name.startswith(frozen):
            assert p.grad is None, name
    assert all(not m.training for m in model.layer2.modules()) and model.layer3.training


def test_module_train_leaves_frozen_stages_in_eval_mode():
    model = models.get("cifar_cnn", num_classes=3)
    fine_tune.freeze_until(model, "pool1")
    model.train()
    assert not model.conv1.training and not model.pool1.training and model.conv2.training and model.fc.training
    model.eval()
    model.train()
    assert not model.conv1.training and model.conv2.training


def test_mixed_precision_keeps_frozen_stages_as_loaded():
    nabi.seed(0)
    model = models.get("cifar_cnn", num_classes=3)
    before = model.state_dict()
    trainer, _ = _trainer(model, freeze_until="conv1", precision="float16")
    trainer.fit()
    after = trainer.model_state()
    assert after["conv1.weight"].dtype == np.float32
    assert np.array_equal(after["conv1.weight"], before["conv1.weight"])
    assert np.array_equal(after["conv1.bias"], before["conv1.bias"])
    assert not np.array_equal(after["conv2.weight"], before["conv2.weight"])


def _torch_pair(dtype=np.float64):
    """The same small network (two conv + batch-norm stages and a head) in nabi and in PyTorch."""
    with backend.default_dtype(dtype):
        net = L.Sequential(L.Conv2d(3, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU(),
                           L.Conv2d(4, 5, 3, padding=1, stride=2), L.BatchNorm2d(5), L.ReLU(),
                           L.Flatten(), L.Linear(5 * 4 * 4, 3))
    rng = np.random.default_rng(3)
    for _, p in net.named_parameters():
        p.data = rng.uniform(-0.5, 0.5, p.shape).astype(dtype)
    for m in (net[1], net[4]):          # running statistics as loaded from a pretrained run
        m.running_mean[...] = rng.uniform(-0.2, 0.2, m.running_mean.shape)
        m.running_var[...] = rng.uniform(0.5, 1.5, m.running_var.shape)
    tnet = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 5, 3, padding=1, stride=2), torch.nn.BatchNorm2d(5),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(5 * 4 * 4, 3)).double()
    tnet.load_state_dict({k: torch.tensor(v) for k, v in net.state_dict().items()}, strict=False)
    return net, tnet


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_frozen_and_decayed_training_equals_pytorch_with_requires_grad_off_and_param_groups(kind):
    """Stages 0–1 frozen (conv + batch norm), decay 0.5 over the rest: three steps in float64 equal PyTorch's
    with requires_grad=False and eval mode on the frozen stages and one parameter group per stage."""
    net, tnet = _torch_pair()
    plan = fine_tune.prepare(net, "1", 0.5)
    # stage 4 (batch norm alone) shares stage 3's rate: conv + batch norm are one step
    assert plan["lr_scale"] == {"3.weight": 0.5, "3.bias": 0.5, "4.weight": 0.5, "4.bias": 0.5, "7.weight": 1.0,
                                "7.bias": 1.0}
    assert [n for n, _ in plan["params"]] == ["3.weight", "3.bias", "4.weight", "4.bias", "7.weight", "7.bias"]
    if kind == "sgd":
        opt = optim.SGD(plan["params"], lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True,
                        lr_scale=plan["lr_scale"])
    else:
        opt = optim.AdamW(plan["params"], lr=0.01, weight_decay=1e-2, lr_scale=plan["lr_scale"])
    for p in list(tnet[0].parameters()) + list(tnet[1].parameters()):
        p.requires_grad_(False)
    groups = [{"params": list(tnet[3].parameters()), "lr": opt.lr * 0.5},
              {"params": list(tnet[4].parameters()), "lr": opt.lr * 0.5},
              {"params": list(tnet[7].parameters()), "lr": opt.lr}]
    topt = (torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True) if kind == "sgd"
            else torch.optim.AdamW(groups, lr=0.01, weight_decay=1e-2))
    loss_fn = L.CrossEntropyLoss()
    rng = np.random.default_rng(5)
    net.train()
    tnet.train()
    tnet[0].eval()
    tnet[1].eval()
    for _ in range(3):
        x = rng.standard_normal((6, 3, 8, 8))
        y = rng.integers(0, 3, 6)
        net.zero_grad()
        loss_fn(net(x), y)
        assert net.backward(loss_fn.backward()) is None          # stopped above the frozen stages
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tnet(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    got, want = net.state_dict(), tnet.state_dict()
    for k, v in got.items():
        np.testing.assert_allclose(v, want[k].numpy(), rtol=1e-9, atol=1e-11, err_msg=k)
    assert net[0].weight.grad is None and net[1].weight.grad is None


def test_backward_stops_at_the_frozen_stages_of_googlenet_and_of_an_embedding_network():
    """Containers other than Sequential stop too: GoogLeNet (its auxiliary heads, registered after
    inception5b, still train although they read frozen stages) and the embedding network (backbone, neck)."""
    nabi.seed(0)
    g = models.get("googlenet", num_classes=3, aux_logits=True)
    fine_tune.prepare(g, "inception4e", 1.0)
    g.train()
    assert not g.inception4a.training and g.aux1.training and g.inception5a.training
    out = g(np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32))
    assert g.backward(np.ones_like(out), daux=tuple(np.ones_like(a) for a in g.aux_outputs)) is None
    has_grad = lambda prefix: {p.grad is not None for n, p in g.named_parameters() if n.startswith(prefix)}  # noqa
    assert has_grad("conv1.") == has_grad("inception4e.") == {False}
    assert has_grad("aux1.") == has_grad("aux2.") == has_grad("inception5a.") == has_grad("fc.") == {True}

    e = models.get("embedding_net", backbone="resnet20", num_classes=4)
    plan = fine_tune.prepare(e, "backbone.layer2", 0.5)
    assert plan["lr_scale"]["backbone.layer3.0.conv1.weight"] == 0.25 and plan["lr_scale"]["neck.fc.weight"] == 0.5
    e.train()
    out = e(np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32))
    assert e.backward(np.ones_like(out)) is None
    grads = {n: p.grad is not None for n, p in e.named_parameters()}
    assert not any(v for n, v in grads.items() if n.startswith(("backbone.layer2.", "backbone.conv1.")))
    assert all(v for n, v in grads.items() if n.startswith(("backbone.layer3.", "neck.", "classifier.")))
    fine_tune.prepare(models.get("embedding_net", backbone="resnet20", num_classes=4), "neck", 1.0)  # head trains


# -- layer-wise learning rates -------------------------------------------------------------------------------
def test_layer_lr_multipliers_equal_hand_computed_values():
    st = fine_tune.stages(models.get("resnet20", num_classes=3))
    got = fine_tune.layer_lr_multipliers(st, 0.5)
    # bn1 holds only batch norm: it shares conv1's step (conv1 + bn1, layer1, layer2, layer3, fc: 5 steps)
    assert got == {"conv1": 0.0625, "bn1": 0.0625, "layer1": 0.125, "layer2": 0.25, "layer3": 0.5, "fc": 1.0}
    scale = fine_tune.parameter_lr_scale(st, got)
    assert scale["layer2.0.conv1.weight"] == 0.25 and scale["bn1.bias"] == 0.0625 and scale["fc.bias"] == 1.0
    lines = fine_tune.prepare(models.get("resnet20", num_classes=3), None, 0.5)["lines"]
    assert any(line.split() == ["bn1", "0.0625", "(normalisation:", "with", "conv1)"] for line in lines), lines
    assert fine_tune.layer_lr_multipliers(st, 1.0) == dict.fromkeys(got, 1.0)
    lenet = fine_tune.layer_lr_multipliers(fine_tune.stages(models.get("lenet5", num_classes=3)), 0.9)
    assert list(lenet) == ["c1", "c3", "c5", "f6", "output"]
    np.testing.assert_allclose(list(lenet.values()), [0.9 ** 4, 0.9 ** 3, 0.9 ** 2, 0.9, 1.0], rtol=0, atol=0)



@pytest.mark.slow       # builds vgg11_bn (130 M weights); resnet20's and lenet5's stages are checked by default
def test_vgg_batch_norm_shares_its_convolutions_step():
    # vgg11_bn's trunk: 8 convolutions, each with its batch norm: 8 steps below the classifier, not 16
    vgg = fine_tune.layer_lr_multipliers(fine_tune.stages(models.get("vgg11_bn", num_classes=3)), 0.5)
    assert vgg["features.0"] == vgg["features.1"] == 0.5 ** 8 and vgg["features.25"] == vgg["features.26"] == 0.5
    assert vgg["classifier"] == 1.0 and sorted(set(vgg.values())) == [0.5 ** k for k in range(8, -1, -1)]

@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_one_step_with_lr_scale_equals_torch_param_groups_and_schedules_scale_every_group(kind):
    rng = np.random.default_rng(0)
    shapes = {"stem.weight": (4, 3), "mid.weight": (5, 4), "head.weight": (2, 5)}
    scale = {"stem.weight": 0.25, "mid.weight": 0.5}
    init = {k: rng.standard_normal(s) for k, s in shapes.items()}
    named = [(k, Parameter(v.copy())) for k, v in init.items()]
    tparams = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in init.items()}
    make = (lambda ps, **kw: optim.SGD(ps, lr=0.2, momentum=0.9, weight_decay=1e-2, **kw)) if kind == "sgd" else \
        (lambda ps, **kw: optim.Adam(ps, lr=0.02, weight_decay=1e-2, **kw))
    opt = make(named, lr_scale=scale)
    sched = optim.make_schedule("cosine", opt, total_steps=4)
    groups = [{"params": [tparams[k]], "lr": opt.lr * scale.get(k, 1.0)} for k in shapes]
    topt = (torch.optim.SGD(groups, lr=0.2, momentum=0.9, weight_decay=1e-2) if kind == "sgd"
            else torch.optim.Adam(groups, lr=0.02, weight_decay=1e-2))
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=4)
    for _ in range(3):
        for k, p in named:
            g = rng.standard_normal(shapes[k])
            p.grad = g.copy()
            tparams[k].grad = torch.tensor(g)
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        for (k, p), group in zip(named, topt.param_groups):
            assert opt.lr_of(k) == pytest.approx(group["lr"], rel=1e-12)
    for k, p in named:
        np.testing.assert_allclose(p.data, tparams[k].detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=k)
    # saved and restored with the optimiser's state
    other = make([(k, Parameter(v.copy())) for k, v in init.items()])
    other.load_state_dict(opt.state_dict())
    assert other.lr_scale == scale


def test_lr_scale_is_checked():
    p = [("a", Parameter(np.zeros(2)))]
    with pytest.raises(KeyError, match="'b'"):
        optim.SGD(p, lr=0.1, lr_scale={"b": 0.5})
    with pytest.raises(ValueError, match="> 0"):
        optim.SGD(p, lr=0.1, lr_scale={"a": 0.0})


def test_fused_sgd_takes_each_layers_rate_and_leaves_frozen_layers_alone():
    """Plain SGD applied inside backward gives the same weights as the optimiser's step, with a frozen
    stage and layer-wise rates."""
    results = []
    for fused in (False, True):
        nabi.seed(0)
        with backend.default_dtype(np.float32):
            net = L.Sequential(L.Conv2d(3, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU(),
                               L.Conv2d(4, 5, 3, padding=1, stride=2), L.BatchNorm2d(5), L.ReLU(),
                               L.Flatten(), L.Linear(5 * 16 * 16, 3))
        before = net.state_dict()
        trainer, _ = _trainer(net, freeze_until="2", layer_lr_decay=0.5, momentum=0.0, weight_decay=0.0,
                              fused_sgd=fused)
        if fused:
            assert trainer.fused_layers == [net[3], net[7]]
            assert net[3].fused_lr == pytest.approx(0.05 * 0.5) and net[0].fused_lr is None
        trainer.fit()
        after = net.state_dict()
        assert all(np.array_equal(before[k], after[k]) for k in before if k.startswith(("0.", "1.")))
        results.append(after)
    for k in results[0]:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-5, atol=1e-6, err_msg=k)


# -- the command line ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("fine") / "photos", classes=("a", "b", "c", "d"), per_class=8)


@pytest.fixture(scope="module")
def init_weights(tmp_path_factory):
    nabi.seed(11)
    model = models.get("cifar_cnn", num_classes=4)
    path = tmp_path_factory.mktemp("init") / "start.safetensors"
    files.save_weights(path, model.state_dict(), {"arch": model.arch})
    return path


def test_unknown_freeze_stage_is_refused_naming_the_flag_and_listing_the_stages(photos, init_weights, tmp_path,
                                                                               capsys):
    code = nabi_main(["train", str(photos), "--model", "cifar_cnn", "--image-size", "32", "--init",
                      str(init_weights), "--freeze-until", "layer2", "--out", str(tmp_path / "run"),
                      "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "--freeze-until layer2" in err and "conv1, conv2, fc" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5"])
def test_bad_layer_lr_decay_is_refused_naming_the_flag(photos, tmp_path, capsys, value):
    code = nabi_main(["train", str(photos), "--model", "cifar_cnn", "--layer-lr-decay", value,
                      "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "--layer-lr-decay" in err and "(0, 1]" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_bad_values_in_a_config_file_are_refused_too(photos, tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text("layer_lr_decay = 0.0\n")
    assert nabi_main(["train", str(photos), "--config", str(toml), "--out", str(tmp_path / "a")]) == 1
    assert "--layer-lr-decay (config key layer_lr_decay)" in capsys.readouterr().err
    toml.write_text("freeze_until = 3\n")
    assert nabi_main(["train", str(photos), "--config", str(toml), "--out", str(tmp_path / "b")]) == 1
    assert "--freeze-until (config key freeze_until) must be a stage name" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_fine_tuning_run_resumes_to_the_uninterrupted_runs_weights(photos, init_weights, tmp_path):
    from test_faults import assert_same_run, nabi_train
    extra = ["--init", str(init_weights), "--freeze-until", "conv1", "--layer-lr-decay", "0.5"]
    ref = tmp_path / "ref"
    done = nabi_train(photos, ref, *extra)
    assert done.returncode == 0, done.stderr
    assert "--freeze-until conv1: frozen stages conv1" in done.stdout
    assert "--layer-lr-decay 0.5" in done.stdout and "conv2  0.5" in done.stdout
    config = json.loads((ref / "config.json").read_text())
    assert config["freeze_until"] == "conv1" and config["layer_lr_decay"] == 0.5
    start, _ = files.load_weights(init_weights)
    final, _ = files.load_weights(ref / "model.safetensors")
    assert np.array_equal(final["conv1.weight"], start["conv1.weight"])
    assert not np.array_equal(final["conv2.weight"], start["conv2.weight"])
    out = tmp_path / "run"
    killed = nabi_train(photos, out, *extra, fault="step:9")
    assert killed.returncode != 0
    # the optimiser checkpoint's sidecar holds the per-parameter multipliers: conv1 frozen (not in the
    # optimiser), conv2 one step below fc, fc at 1 (not stored)
    latest = (out / "checkpoints" / "latest").read_text().strip()
    optimiser_sidecar = json.loads((out / "checkpoints" / Path(latest).name / "optimizer.json").read_text())
    assert optimiser_sidecar["lr_scale"] == {"conv2.weight": 0.5, "conv2.bias": 0.5}
    resumed = nabi_train(photos, out, *extra, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(ref, out)
    # continuing with other settings is refused, naming them
    other = tmp_path / "other"
    assert nabi_train(photos, other, *extra, fault="step:9").returncode != 0
    changed = nabi_train(photos, other, "--init", str(init_weights), "--freeze-until", "conv1", "--resume")
    assert changed.returncode == 1 and "--layer-lr-decay: 0.5 in the checkpoint" in changed.stderr and "Traceback" not in changed.stderr


def test_refused_resume_leaves_config_json_byte_identical_and_lists_every_differing_setting(photos, init_weights,
                                                                                           tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", str(photos), "--model", "cifar_cnn", "--image-size", "32", "--batch-size", "8", "--iterations",
            "2", "--val-ratio", "0", "--test-ratio", "0", "--init", str(init_weights), "--out", str(out),
            "--no-progress"]
    assert nabi_main(base + ["--freeze-until", "conv1", "--layer-lr-decay", "0.5"]) == 0
    before = (out / "config.json").read_bytes()
    capsys.readouterr()
    code = nabi_main(base + ["--freeze-until", "conv2", "--resume"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "--freeze-until: conv1 in the checkpoint, conv2 now" in err
    assert "--layer-lr-decay: 0.5 in the checkpoint, 1 now" in err
    assert (out / "config.json").read_bytes() == before


def test_freezing_weights_that_init_did_not_load_is_refused_naming_the_stage_and_arrays(photos, init_weights,
                                                                                        tmp_path, capsys):
    start, meta = files.load_weights(init_weights)
    no_bias = tmp_path / "no_bias.safetensors"
    files.save_weights(no_bias, {k: v for k, v in start.items() if k != "conv1.bias"}, meta)
    other_shape = tmp_path / "other_shape.safetensors"
    files.save_weights(other_shape, dict(start, **{"conv2.weight": np.zeros((8, 16, 3, 3), np.float32)}), meta)
    for i, (path, layer, message) in enumerate([
            (no_bias, "conv1", "stage conv1, but --init"),
            (other_shape, "conv2", "stage conv2, but --init")]):
        out = tmp_path / f"run{i}"
        code = nabi_main(["train", str(photos), "--model", "cifar_cnn", "--image-size", "32", "--init", str(path),
                          "--freeze-until", layer, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err, err
        assert f"--freeze-until {layer} would freeze {message}" in err
        assert ("conv1.bias (new)" if i == 0 else "conv2.weight (shape differs)") in err
        assert not out.exists()
    # the stages below the missing array may still be frozen
    assert nabi_main(["train", str(photos), "--model", "cifar_cnn", "--image-size", "32", "--init",
                      str(other_shape), "--freeze-until", "conv1", "--iterations", "1", "--batch-size", "8",
                      "--out", str(tmp_path / "ok"), "--no-progress"]) == 0


def test_freeze_until_without_init_is_a_note_and_nothing_to_train_is_refused_before_the_data_is_read(
        photos, tmp_path, capsys, monkeypatch):
    assert nabi_main(["train", str(photos), "--model", "cifar_cnn", "--image-size", "32", "--freeze-until", "conv1",
                      "--iterations", "1", "--batch-size", "8", "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    assert "note: --freeze-until conv1 without --init freezes the model's initial weights" in capsys.readouterr().out
    import nabi.training.build as build

    def no_reading(*args, **kwargs):
        raise AssertionError("the photos were read")
    monkeypatch.setattr(build, "load_datasets", no_reading)
    code = nabi_main(["train", str(photos), "--model", "cifar_cnn", "--image-size", "32", "--freeze-until", "fc",
                      "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "--freeze-until fc freezes every stage with parameters: nothing would train" in err
    assert "the photos were read" not in err and not (tmp_path / "run").exists()


def test_embedding_training_checks_freeze_until_before_reading_the_photos(photos, init_weights, tmp_path, capsys,
                                                                          monkeypatch):
    from nabi.data import ImageFolder

    def no_reading(self, *args, **kwargs):
        raise AssertionError("the photos were read")
    monkeypatch.setattr(ImageFolder, "verify", no_reading)
    start, meta = files.load_weights(init_weights)
    no_bias = tmp_path / "no_bias.safetensors"
    files.save_weights(no_bias, {k: v for k, v in start.items() if k != "conv1.bias"}, meta)
    base = ["train", str(photos), "--model", "cifar_cnn", "--image-size", "32", "--head", "arcface", "--no-progress"]
    for i, (extra, message) in enumerate([
            (["--freeze-until", "classifier"], "--freeze-until classifier freezes every stage with parameters"),
            (["--freeze-until", "nope"], "--freeze-until nope: not a stage of this network"),
            (["--init", str(no_bias), "--freeze-until", "backbone.conv1"],
             "--freeze-until backbone.conv1 would freeze stage backbone.conv1, but --init")]):
        code = nabi_main(base + extra + ["--out", str(tmp_path / f"run{i}")])
        err = capsys.readouterr().err
        assert code == 1 and message in err and "Traceback" not in err, err
        assert "the photos were read" not in err and not (tmp_path / f"run{i}").exists()
    assert "backbone.conv1.bias (new)" in err
