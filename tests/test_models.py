"""Model zoo: parameter counts, registry, shapes, and whole networks against PyTorch.

Each network is written a second time in PyTorch below (compact copies of
torchvision's code with identical key names; torchvision itself is not a
dependency). nabi's weights are copied in by name (``helpers.copy_to_torch``), both
run a training-mode forward pass on the same batch, a cross-entropy loss and its
backward pass, and we compare logits and loss elementwise, and the input gradient,
every parameter gradient and every batch-norm running statistic by a norm-relative
error ‖a − b‖ ≤ rtol·‖b‖ + atol·√n (n elements). Tolerances (``TOLS``):

    float64  logits rtol 1e-7 / atol 1e-9, loss 1e-9, gradients rtol 1e-7 / atol 1e-12
             (observed: ~1e-14) — the proof that nabi computes the same function and
             the same gradients as PyTorch, for every network except the three largest;
    float32  logits rtol 1e-3 / atol 1e-4, loss 1e-4, gradients rtol 1e-3 / atol 1e-6,
             except deep nets with training-mode batch norm (ResNets, GoogLeNet):
             logits atol 1e-3, gradients rtol 2e-1 (a smoke check; observed up to 8.7e-2
             in GoogLeNet's inception5b). There float32 gradients are ill-conditioned in
             either library: PyTorch's own float32 gradients of ResNet-50 and GoogLeNet
             are 1–4 % away from its float64 ones at every small input size we tried,
             and one ReLU input that rounds across zero (4.5e-7 in float64, −1.7e-6 in
             float32, seen in a ResNet-20) flips
             one element's gradient, which batch norm's backward spreads over the whole
             channel and every layer below. Norms, not elements, for the same reason; and
             a gradient that is zero in exact arithmetic (a conv bias right before batch
             norm in VGG-BN) is pure rounding noise in both, covered by atol.
"""
import math
from collections import OrderedDict as OD

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as tF

import nabi.models as zoo
from nabi import backend
from nabi.layers import Concat, CrossEntropyLoss, Residual, Sequential
from nabi.models import registry
from nabi.models.googlenet import AUX_WEIGHT
from helpers import copy_to_torch

TOLS = {
    np.float64: dict(logits=(1e-7, 1e-9), loss=1e-9, grad=(1e-7, 1e-12)),
    np.float32: dict(logits=(1e-3, 1e-4), loss=1e-4, grad=(1e-3, 1e-6)),
    "float32-bn": dict(logits=(1e-3, 1e-3), loss=1e-4, grad=(2e-1, 1e-6)),
}


# ----------------------------------------------------------------------------------
# PyTorch references (torchvision's code, trimmed; same key names as nabi's models), shared with
# the benchmarks: benchmarks/torch_models.py
# ----------------------------------------------------------------------------------
from benchmarks.torch_models import (TAlexNet, TBasicBlock, TBottleneck, TGoogLeNet, TResNet,  # noqa: E402
                                     TVGG, t_alexnet336, t_cifar_cnn, t_lenet5)


# ----------------------------------------------------------------------------------
# comparison helpers
# ----------------------------------------------------------------------------------

def assert_close_norm(a, b, what, rtol, atol):
    a = np.asarray(backend.to_numpy(a), dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}"
    err, ref = np.linalg.norm(a - b), np.linalg.norm(b)
    assert err <= rtol * ref + atol * math.sqrt(b.size), \
        f"{what}: ‖nabi − torch‖ = {err:.3e}, ‖torch‖ = {ref:.3e} (relative {err / max(ref, 1e-30):.2e})"


def _batch(shape, num_classes, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    labels = rng.integers(0, num_classes, size=shape[0])
    return x, labels


def build_pair(make_nabi, make_torch, dtype, seed=0):
    """The nabi model (weights from a fixed seed, parameters in ``dtype``) and its torch twin with the same weights."""
    backend.seed(seed)
    with backend.default_dtype(dtype):
        model = make_nabi()
    ref = make_torch().to(torch.float64 if dtype == np.float64 else torch.float32)
    copy_to_torch(model, ref)
    model.train()
    ref.train()
    return model, ref


def compare_ce(make_nabi, make_torch, shape, num_classes, dtype, tol=None, seed=0):
    """Train-mode forward, cross-entropy, backward in both; compare logits, loss and all gradients."""
    tol = TOLS[tol or dtype]
    model, ref = build_pair(make_nabi, make_torch, dtype, seed)
    x, labels = _batch(shape, num_classes, seed, dtype)

    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    lt = tF.cross_entropy(yt, torch.from_numpy(labels))
    lt.backward()

    model.zero_grad()
    y = model(x)
    assert y.dtype == dtype
    ce = CrossEntropyLoss()
    loss = ce(y, labels)
    dx = model.backward(ce.backward())

    np.testing.assert_allclose(y, yt.detach().numpy(), *tol["logits"], err_msg="logits")
    assert loss == pytest.approx(lt.item(), rel=tol["loss"])
    assert_close_norm(dx, xt.grad.numpy(), "input gradient", *tol["grad"])
    check_params_and_buffers(model, ref, tol)
    return model


def check_params_and_buffers(model, ref, tol):
    tparams = dict(ref.named_parameters())
    names = [n for n, _ in model.named_parameters()]
    assert sorted(names) == sorted(tparams)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert_close_norm(p.grad, tparams[name].grad.numpy(), f"grad of {name}", *tol["grad"])
    tbufs = dict(ref.named_buffers())
    for name, b in model.named_buffers():
        assert_close_norm(b, tbufs[name].numpy(), f"buffer {name}", *tol["grad"])


# ----------------------------------------------------------------------------------
# parameter counts
# ----------------------------------------------------------------------------------

COUNTS = {
    ("lenet5", ()): 61_706,
    ("cifar_cnn", ()): 25_578,
    ("alexnet", ()): 62_378_344,
    ("alexnet_tv", ()): 61_100_840,
    ("alexnet336", (("num_classes", 5),)): 108_629_381,
    ("alexnet336", (("num_classes", 4),)): 108_629_381 - 4097,
    ("vgg11", ()): 132_863_336,
    ("vgg11_lrn", ()): 132_863_336,
    ("vgg13", ()): 133_047_848,
    ("vgg16_c", ()): 133_638_952,
    ("vgg16", ()): 138_357_544,
    ("vgg19", ()): 143_667_240,
    ("vgg11_bn", ()): 132_868_840,
    ("vgg13_bn", ()): 133_053_736,
    ("vgg16_bn", ()): 138_365_992,
    ("vgg19_bn", ()): 143_678_248,
    ("resnet18", ()): 11_689_512,
    ("resnet34", ()): 21_797_672,
    ("resnet50", ()): 25_557_032,
    ("resnet50", (("stride_on", "1x1"),)): 25_557_032,
    ("resnet101", ()): 44_549_160,
    ("resnet152", ()): 60_192_808,
    ("resnet20", ()): 272_474,     # 269,722 with the paper's option-A shortcuts + 2 projections (576 + 2,176)
    ("resnet32", ()): 466_906,
    ("resnet44", ()): 661_338,
    ("resnet56", ()): 855_770,
    ("resnet18_cifar", ()): 11_173_962,
    ("googlenet", ()): 6_624_904,
    ("googlenet", (("aux_logits", True),)): 13_004_888,
    ("googlenet", (("branch3_kernel", 5),)): 7_005_832,
}


@pytest.mark.parametrize("name,kw", sorted(COUNTS), ids=lambda v: v if isinstance(v, str) else "-".join(
    f"{k}={x}" for k, x in v) or "default")
def test_parameter_count(name, kw):
    assert zoo.count_parameters(name, **dict(kw)) == COUNTS[(name, kw)]


@pytest.mark.parametrize("name,kw", [("resnet18", {}), ("googlenet", {"aux_logits": True}),
                                     ("vgg11_bn", {"num_classes": 10}), ("lenet5", {})])
def test_count_parameters_matches_a_real_build(name, kw):
    model = zoo.get(name, init="zeros", **kw)
    assert model.num_parameters() == zoo.count_parameters(name, **kw)
    assert all(p.data.flags.writeable for p in model.parameters())


def test_alexnet336_count_by_layer():
    """The 2019 campus-cat report, §8.4: conv1 34,944; conv2 614,656; conv3 885,120; conv4 1,327,488; conv5 884,992;
    fc6 104,861,696; fc7 20,485 (5 classes)."""
    model = zoo.alexnet336(init=registry._shape_only)
    per_layer = {name: sum(p.size for p in m.parameters()) for name, m in model._modules.items() if m._parameters}
    assert per_layer == {"conv1": 34_944, "conv2": 614_656, "conv3": 885_120, "conv4": 1_327_488,
                         "conv5": 884_992, "fc6": 104_861_696, "fc7": 20_485}


# ----------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------

ALL_NAMES = {"lenet5", "cifar_cnn", "alexnet", "alexnet_tv", "alexnet336", "vgg", "vgg11", "vgg11_lrn", "vgg13",
             "vgg16_c", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "resnet18", "resnet34",
             "resnet50", "resnet101", "resnet152", "resnet20", "resnet32", "resnet44", "resnet56", "resnet18_cifar",
             "googlenet"}


def test_names_lists_every_model():
    assert ALL_NAMES <= set(zoo.names())          # other files may register more (densenet, senet, …)
    assert zoo.names() == sorted(zoo.names())


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as e:
        zoo.get("resnet19")
    msg = str(e.value)
    assert "resnet19" in msg and "resnet18" in msg and "googlenet" in msg and "alexnet336" in msg


def test_get_normalises_names_and_records_arch():
    model = zoo.get("ResNet-20", num_classes=7)
    assert model.arch == {"name": "resnet20", "kwargs": {"num_classes": 7, "init": "he_uniform",
                                                         "zero_init_residual": False, "drop_path": 0.0,
                                                         "pool": "avg"}}
    assert model.input_size == (3, 32, 32)
    again = zoo.get(model.arch["name"], **model.arch["kwargs"])
    assert list(again.state_dict()) == list(model.state_dict())
    assert zoo.vgg11_bn(num_classes=3, init="zeros").arch["name"] == "vgg11_bn"
    assert zoo.vgg("C", init="zeros").arch == {"name": "vgg", "kwargs": {
        "cfg": "C", "batch_norm": False, "num_classes": 1000, "dropout": 0.5, "init": "zeros"}}


def test_an_architecture_recorded_before_an_argument_existed_equals_it_with_defaults_filled_in():
    """A run saved before ``pool`` existed recorded resnet20 without it: the same network."""
    now = zoo.get("resnet20", num_classes=7).arch
    older = {"name": "resnet20", "kwargs": {k: v for k, v in now["kwargs"].items() if k != "pool"}}
    assert older != now and zoo.same_architecture(older, now)
    assert zoo.with_defaults(older) == now
    assert not zoo.same_architecture(older, zoo.get("resnet20", num_classes=7, pool="gem").arch)
    assert not zoo.same_architecture(now, {"name": "resnet32", "kwargs": now["kwargs"]})
    assert zoo.with_defaults({"name": "no_such_net", "kwargs": {}}) == {"name": "no_such_net", "kwargs": {}}


@pytest.mark.parametrize("name,size", [("lenet5", (1, 32, 32)), ("cifar_cnn", (3, 32, 32)), ("alexnet", (3, 227, 227)),
                                       ("alexnet_tv", (3, 224, 224)), ("alexnet336", (3, 336, 336)),
                                       ("vgg16", (3, 224, 224)), ("resnet50", (3, 224, 224)),
                                       ("resnet56", (3, 32, 32)), ("resnet18_cifar", (3, 32, 32)),
                                       ("googlenet", (3, 224, 224))])
def test_input_size(name, size):
    model = zoo.get(name, init=registry._shape_only)
    assert model.input_size == size
    assert model.arch["name"] == name


def test_register_decorator():
    @zoo.register("tiny_test_model")
    def tiny(num_classes=3, init="he_uniform"):
        m = zoo.lenet5(num_classes=num_classes, init=init)
        m.input_size = (1, 32, 32)
        return m
    try:
        assert "tiny_test_model" in zoo.names()
        m = zoo.get("tiny_test_model", num_classes=4)
        assert m.arch == {"name": "tiny_test_model", "kwargs": {"num_classes": 4, "init": "he_uniform"}}
        with pytest.raises(ValueError, match="already registered"):
            zoo.register("tiny_test_model")(tiny)
    finally:
        registry._REGISTRY.pop("tiny_test_model", None)


def test_too_small_input_names_the_layer():
    model = zoo.alexnet(init="zeros")
    with pytest.raises(ValueError) as e:
        model(np.zeros((1, 3, 32, 32), np.float32))
    msg = str(e.value)
    assert msg.startswith("alexnet: layer 'features.pool2' (MaxPool2d)")
    assert "(1, 3, 32, 32)" in msg and "too small" in msg and "(N, 3, 227, 227)" in msg


def test_too_small_input_googlenet_names_the_layer():
    model = zoo.googlenet(num_classes=10, init="zeros")
    with pytest.raises(ValueError, match=r"googlenet: layer '\w+[\w.]*'.*too small"):
        model(np.zeros((1, 3, 8, 8), np.float32))


def test_wrong_channels_names_the_layer():
    with pytest.raises(ValueError, match=r"cifar_cnn: layer 'conv1' \(Conv2d\)"):
        zoo.cifar_cnn()(np.zeros((1, 1, 32, 32), np.float32))


# ----------------------------------------------------------------------------------
# structure: key names, shapes, variants
# ----------------------------------------------------------------------------------

def test_alexnet336_shapes_follow_the_2019_report_tables():
    """The 2019 campus-cat report's tables 3–9 where they are self-consistent (conv1 is 82×82, not 81×81)."""
    model = zoo.alexnet336(init="zeros").eval()
    x = np.zeros((1, 3, 336, 336), np.float32)
    shapes = {}
    for name, m in model._modules.items():
        x = m(x)
        shapes[name] = x.shape[1:]
    assert shapes["conv1"] == (96, 82, 82)
    assert shapes["pool1"] == (96, 40, 40)
    assert shapes["conv2"] == (256, 40, 40)
    assert shapes["pool2"] == (256, 20, 20)
    assert shapes["conv3"] == shapes["conv4"] == (384, 20, 20)
    assert shapes["conv5"] == (256, 20, 20)
    assert shapes["pool5"] == (256, 10, 10)
    assert shapes["flatten"] == (25_600,)
    assert shapes["fc6"] == (4096,) and shapes["fc7"] == (5,)
    assert model.pool2.ceil_mode and model.pool5.ceil_mode and not model.pool1.ceil_mode


def test_alexnet_paper_shapes_and_init():
    model = zoo.alexnet(num_classes=10, init="paper")
    assert model.features.conv2.bias.data.min() == 1 and model.features.conv3.bias.data.max() == 0
    assert model.classifier.fc6.bias.data.min() == 1 and model.classifier.fc8.bias.data.max() == 0
    assert abs(float(model.classifier.fc6.weight.data.std()) - 0.01) < 1e-3
    model.eval()
    x = np.zeros((1, 3, 227, 227), np.float32)
    for name, m in model.features._modules.items():
        x = m(x)
        if name in ("conv1", "pool1", "pool2", "pool5"):
            assert x.shape[1:] == {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "pool2": (256, 13, 13),
                                   "pool5": (256, 6, 6)}[name]


def test_torchvision_key_names():
    assert list(zoo.alexnet_tv(init=registry._shape_only).state_dict()) == list(TAlexNet().state_dict())
    rn = zoo.resnet50(init=registry._shape_only).state_dict()
    trn = [k for k in TResNet(TBottleneck, [3, 4, 6, 3]).state_dict() if not k.endswith("num_batches_tracked")]
    assert list(rn) == trn
    assert "layer1.0.downsample.0.weight" in rn and "layer1.0.downsample.1.running_var" in rn
    g = zoo.googlenet(aux_logits=True, init=registry._shape_only).state_dict()
    tg = [k for k in TGoogLeNet().state_dict() if not k.endswith("num_batches_tracked")]
    assert list(g) == tg
    for k in ("conv1.conv.weight", "conv1.bn.running_mean", "inception3a.branch1.conv.weight",
              "inception3a.branch2.0.conv.weight", "inception3a.branch4.1.bn.bias", "aux1.conv.conv.weight",
              "aux1.fc1.weight", "aux2.fc2.bias", "fc.weight"):
        assert k in g
    v = zoo.vgg16_bn(init=registry._shape_only).state_dict()
    assert "features.0.weight" in v and "features.1.running_mean" in v and "classifier.6.weight" in v


def test_torch_state_dict_loads_into_nabi():
    """A torchvision-keyed state_dict loads strictly once ``num_batches_tracked`` (not kept by nabi) is dropped."""
    ref = TResNet(TBasicBlock, [2, 2, 2, 2], num_classes=10)
    sd = {k: v.numpy() for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = zoo.resnet18(num_classes=10, init="zeros")
    model.load_state_dict(sd, strict=True)
    np.testing.assert_array_equal(model.layer2[0].downsample[0].weight.data, sd["layer2.0.downsample.0.weight"])


def test_vgg_configurations():
    def convs(model):
        return [m for m in model.features if type(m).__name__ == "Conv2d"]
    counts = {"vgg11": 8, "vgg11_lrn": 8, "vgg13": 10, "vgg16_c": 13, "vgg16": 13, "vgg19": 16}
    for name, n in counts.items():
        assert len(convs(zoo.get(name, init=registry._shape_only))) == n
    c = convs(zoo.vgg16_c(init=registry._shape_only))
    assert [i for i, m in enumerate(c) if m.kernel_size == (1, 1)] == [6, 9, 12]
    assert [m.padding for m in c if m.kernel_size == (1, 1)] == [(0, 0)] * 3
    lrn = zoo.vgg11_lrn(init=registry._shape_only).features
    assert [type(m).__name__ for m in lrn][:4] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"]
    with pytest.raises(ValueError, match="unknown configuration"):
        zoo.vgg("F")


def test_resnet_stride_placement():
    v15 = zoo.resnet50(init=registry._shape_only)
    v1 = zoo.resnet50(stride_on="1x1", init=registry._shape_only)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.num_parameters() == v1.num_parameters()
    with pytest.raises(ValueError, match="stride_on"):
        zoo.resnet50(stride_on="2x2")


def test_resnet_v1_forward_shape():
    model = zoo.resnet50(num_classes=3, stride_on="1x1").eval()
    assert model(np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)).shape == (1, 3)


def test_resnet_blocks_and_zero_init():
    model = zoo.resnet18(zero_init_residual=True, init=registry._shape_only)
    blocks = [m for m in model.modules() if isinstance(m, Residual)]
    assert len(blocks) == 8
    assert all(isinstance(b.after, type(model.relu)) for b in blocks)
    assert [n for n, b in model.named_modules() if isinstance(b, Residual) and b.shortcut_module is not None] == \
        ["layer2.0", "layer3.0", "layer4.0"]
    assert all(float(abs(b.bn2.weight.data).max()) == 0 for b in blocks)
    assert float(model.bn1.weight.data.min()) == 1
    cif = zoo.resnet20(init=registry._shape_only)
    assert not hasattr(cif, "maxpool") and cif.conv1.kernel_size == (3, 3)
    assert [len(getattr(cif, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]


@pytest.mark.parametrize("kw", [dict(activation="relu", pool="max"), dict(activation="tanh", pool="avg")])
def test_lenet5_variants(kw):
    model = zoo.lenet5(**kw)
    y = model(np.zeros((2, 1, 32, 32), np.float32))
    assert y.shape == (2, 10)
    with pytest.raises(ValueError, match="activation"):
        zoo.lenet5(activation="sigmoidal")


def test_models_use_only_generic_containers():
    """Every module is a nabi layer or Sequential/Residual/Concat (GoogLeNet's top level excepted)."""
    import nabi.layers as L
    allowed = tuple(getattr(L, n) for n in L.__all__ if isinstance(getattr(L, n), type))
    for name in ("lenet5", "cifar_cnn", "alexnet", "alexnet_tv", "alexnet336", "vgg16_bn", "resnet50", "resnet20",
                 "googlenet"):
        model = zoo.get(name, init=registry._shape_only, **({"aux_logits": True} if name == "googlenet" else {}))
        for path, m in model.named_modules():
            if path == "" and name == "googlenet":
                continue
            assert isinstance(m, allowed), f"{name}.{path} is a {type(m).__name__}"
            assert type(m).__module__.startswith("nabi.layers") or type(m) is zoo.Network, (name, path)
    assert isinstance(zoo.cifar_cnn(), Sequential)


# ----------------------------------------------------------------------------------
# GoogLeNet's auxiliary heads
# ----------------------------------------------------------------------------------

def test_googlenet_aux_api():
    model = zoo.googlenet(num_classes=6, aux_logits=True)
    x, _ = _batch((2, 3, 96, 96), 6)
    y = model(x)
    assert y.shape == (2, 6)
    a1, a2 = model.aux_outputs
    assert a1.shape == a2.shape == (2, 6)
    dx = model.backward(np.ones_like(y), daux=(0.3 * np.ones_like(a1), 0.3 * np.ones_like(a2)))
    assert dx.shape == x.shape
    assert model.aux1.fc2.weight.grad is not None and model.aux2.conv.conv.weight.grad is not None

    model.eval()
    assert model(x).shape == (2, 6) and model.aux_outputs is None
    with pytest.raises(ValueError, match="auxiliary heads did not run"):
        model.backward(np.ones((2, 6), np.float32), daux=(np.ones((2, 6)), np.ones((2, 6))))

    chain = model.named_eval_chain()
    assert [n for n, _ in chain][:3] == ["conv1", "maxpool1", "conv2"] and chain[-1][0] == "fc"
    assert {n for n, _ in chain} | {"aux1", "aux2"} == set(model._modules)
    assert model.eval_chain() == [m for _, m in chain]
    assert all(isinstance(model._modules[n], Concat) for n, _ in chain if n.startswith("inception"))

    plain = zoo.googlenet(num_classes=6)
    plain(x)
    assert plain.aux_outputs is None and "aux1" not in plain._modules


def test_googlenet_eval_chain_is_the_eval_forward():
    model = zoo.googlenet(num_classes=4, aux_logits=True).eval()
    x, _ = _batch((1, 3, 64, 64), 4)
    y = x
    for m in model.eval_chain():
        y = m(y)
    np.testing.assert_array_equal(model(x), y)


# ----------------------------------------------------------------------------------
# whole networks against PyTorch (training mode, cross-entropy)
# ----------------------------------------------------------------------------------

F64, F32 = np.float64, np.float32
NETS = {  # name: (nabi builder, torch twin, input shape, classes, [(dtype, tolerance key)])
    "lenet5": (lambda: zoo.lenet5(), lambda: t_lenet5(), (4, 1, 32, 32), 10, [F64, F32]),
    "cifar_cnn": (lambda: zoo.cifar_cnn(), lambda: t_cifar_cnn(), (4, 3, 32, 32), 10, [F64, F32]),
    "alexnet336": (lambda: zoo.alexnet336(), lambda: t_alexnet336(), (1, 3, 336, 336), 5, [F32]),
    "alexnet_tv": (lambda: zoo.alexnet_tv(num_classes=10, dropout=0.0), lambda: TAlexNet(10, dropout=0.0),
                   (2, 3, 64, 64), 10, [F32]),
    "vgg11_bn": (lambda: zoo.vgg11_bn(num_classes=10, dropout=0.0), lambda: TVGG(TVGG.CFG_A, True, 10, dropout=0.0),
                 (2, 3, 32, 32), 10, [F32]),
    "resnet18": (lambda: zoo.resnet18(num_classes=10), lambda: TResNet(TBasicBlock, [2, 2, 2, 2], 10),
                 (2, 3, 64, 64), 10, [F64, "float32-bn"]),
    "resnet50": (lambda: zoo.resnet50(num_classes=10), lambda: TResNet(TBottleneck, [3, 4, 6, 3], 10),
                 (2, 3, 64, 64), 10, [F64, "float32-bn"]),
    "resnet20": (lambda: zoo.resnet20(), lambda: TResNet(TBasicBlock, [3, 3, 3], 10, widths=(16, 32, 64), cifar=True),
                 (4, 3, 32, 32), 10, [F64, "float32-bn"]),
}
NET_CASES = [(name, t) for name, spec in NETS.items() for t in spec[4]]
SLOW_NETS = {"vgg11_bn",       # its layers are each proven, and resnet18 covers a network with batch norm
             "alexnet336"}     # its layers are each proven, and alexnet_tv covers the same stack at 224×224


@pytest.mark.parametrize("name,tol", [pytest.param(n, t, marks=pytest.mark.slow) if n in SLOW_NETS else (n, t)
                                      for n, t in NET_CASES],
                         ids=[f"{n}-{t if isinstance(t, str) else np.dtype(t).name}" for n, t in NET_CASES])
def test_network_vs_torch(name, tol):
    make_nabi, make_torch, shape, k, _ = NETS[name]
    dtype = F32 if tol == "float32-bn" else tol
    model = compare_ce(make_nabi, make_torch, shape, k, dtype, tol)
    if name == "alexnet336":
        assert model.num_parameters() == 108_629_381


@pytest.mark.parametrize("tol", [F64, "float32-bn"], ids=["float64", "float32-bn"])
def test_googlenet_aux_vs_torch(tol):
    """Loss = CE(main) + 0.3·(CE(aux1) + CE(aux2)); torchvision returns (logits, aux2, aux1) in training."""
    dtype = F32 if tol == "float32-bn" else tol
    tol = TOLS[tol]
    k = 10
    model, ref = build_pair(lambda: zoo.googlenet(num_classes=k, aux_logits=True, dropout=0.0, aux_dropout=0.0),
                            lambda: TGoogLeNet(k, aux_logits=True, dropout=0.0, dropout_aux=0.0), dtype)
    x, labels = _batch((2, 3, 96, 96), k, seed=3, dtype=dtype)
    w = AUX_WEIGHT
    assert w == 0.3

    xt = torch.tensor(x, requires_grad=True)
    yt, aux2_t, aux1_t = ref(xt)
    lab = torch.from_numpy(labels)
    lt = tF.cross_entropy(yt, lab) + w * (tF.cross_entropy(aux1_t, lab) + tF.cross_entropy(aux2_t, lab))
    lt.backward()

    model.zero_grad()
    y = model(x)
    a1, a2 = model.aux_outputs
    ce, ce1, ce2 = CrossEntropyLoss(), CrossEntropyLoss(), CrossEntropyLoss()
    loss = ce(y, labels) + w * (ce1(a1, labels) + ce2(a2, labels))
    dx = model.backward(ce.backward(), daux=(w * ce1.backward(), w * ce2.backward()))

    for a, b, what in ((y, yt, "logits"), (a1, aux1_t, "aux1 logits"), (a2, aux2_t, "aux2 logits")):
        np.testing.assert_allclose(a, b.detach().numpy(), *tol["logits"], err_msg=what)
    assert loss == pytest.approx(lt.item(), rel=tol["loss"])
    assert_close_norm(dx, xt.grad.numpy(), "input gradient", *tol["grad"])
    check_params_and_buffers(model, ref, tol)


@pytest.mark.parametrize("name,kwargs,params,gmacs", [
    ("resnet18", {}, 11_689_512, 1.814),
    ("resnet34", {}, 21_797_672, 3.664),
    ("resnet50", {}, 25_557_032, 4.089),
    ("resnet50", {"stride_on": "1x1"}, 25_557_032, 3.858),          # the paper's v1
    ("resnet101", {}, 44_549_160, 7.801),
    ("resnet101", {"stride_on": "1x1"}, 44_549_160, 7.570),
    ("resnet152", {}, 60_192_808, 11.514),
    ("resnet152", {"stride_on": "1x1"}, 60_192_808, 11.282),
    ("googlenet", {"branch3_kernel": 5}, 7_005_832, 1.583),        # the paper's 5×5 branch, no aux heads
])
def test_summary_macs_at_224_match_the_published_counts(name, kwargs, params, gmacs):
    """Conv + linear multiply–accumulates at 224×224, batch 1 (torchvision's v1.5 ResNets by default)."""
    model = zoo.get(name, num_classes=1000, **kwargs)
    res = model.summary((3, 224, 224), file=False)
    assert res.total_params == params
    assert round(res.total_macs / 1e9, 3) == gmacs, res.total_macs
