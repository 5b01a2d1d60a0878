"""nabi.explain: Grad-CAM against PyTorch autograd, sanity maps, occlusion, overlays, run-level tools."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as TF
from PIL import Image

from helpers import copy_to_torch
from nabi import backend, explain
from nabi import files
from nabi.layers import AdaptiveAvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Module, ReLU, Sequential
from nabi.models import Network, register
from nabi.runs import model_metadata


# -- tiny models ------------------------------------------------------------------------
class Mask(Module):
    """y = x · m (a fixed 0/1 spatial mask): the network sees only where m = 1."""

    def __init__(self, mask):
        super().__init__()
        self.mask = np.asarray(mask)

    def forward(self, x):
        return x * self.mask.astype(x.dtype)

    def backward(self, dy):
        return dy * self.mask.astype(dy.dtype)


def tiny_cnn(seed=0):
    rng = np.random.default_rng(seed)
    return Sequential(Conv2d(3, 4, 3, padding=1, rng=rng), ReLU(), Conv2d(4, 6, 3, stride=2, padding=1, rng=rng),
                      ReLU(), AdaptiveAvgPool2d(1), Flatten(), Linear(6, 3, rng=rng))


def torch_tiny_cnn():
    return tnn.Sequential(tnn.Conv2d(3, 4, 3, padding=1), tnn.ReLU(), tnn.Conv2d(4, 6, 3, stride=2, padding=1),
                          tnn.ReLU(), tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(6, 3))


def region_model(region, size=16, channels=1, classes=2):
    """Conv net that sees only ``region`` (a slice pair) of its input; class 0's logit grows with brightness."""
    m = np.zeros((size, size))
    m[region] = 1
    net = Sequential(Mask(m), Conv2d(channels, 4, 3, padding=1), ReLU(), Conv2d(4, 4, 3, padding=1), ReLU(),
                     AdaptiveAvgPool2d(1), Flatten(), Linear(4, classes))
    for conv in (net[1], net[3]):
        conv.weight.data[...] = np.abs(conv.weight.data)
        conv.bias.data[...] = 0
    net[7].weight.data[...] = 0
    net[7].weight.data[0] = 5.0
    net[7].bias.data[...] = 0
    return net


def state_of(model):
    """Everything grad_cam/occlusion must restore: per-module attribute dicts (by identity)."""
    return [(n, {k: v for k, v in m.__dict__.items()}) for n, m in model.named_modules()]


def assert_restored(model, before):
    after = state_of(model)
    for (n, d0), (_, d1) in zip(before, after):
        assert "forward" not in d1 and "backward" not in d1, n
        assert set(d0) == set(d1), (n, set(d0) ^ set(d1))
        for k in d0:
            assert d1[k] is d0[k], (n, k)


# -- find_target_layer ------------------------------------------------------------------
def test_find_target_layer_default_and_named():
    import nabi.models as zoo
    lenet = zoo.get("lenet5", num_classes=3)
    # c5 gives 120×1×1 (not spatial): the default is c3
    assert explain.find_target_layer(lenet)[0] == "c3"
    assert explain.find_target_layer(lenet, "s4")[0] == "s4"
    net = tiny_cnn()
    name, m = explain.find_target_layer(net, input_shape=(3, 8, 8))
    assert name == "2" and m is net[2]
    assert explain.find_target_layer(net)[0] == "2"  # no input_size: last Conv2d in named_modules order
    with pytest.raises(ValueError, match=r"no layer 'conv9'.*0, 2"):
        explain.find_target_layer(net, "conv9")
    mlp = Sequential(Flatten(), Linear(12, 2))
    with pytest.raises(ValueError, match="cannot be explained with Grad-CAM: no convolutional layer"):
        explain.find_target_layer(mlp)
    with pytest.raises(ValueError, match="no convolutional layer"):
        explain.grad_cam(mlp, np.zeros((3, 2, 2), np.float32))


# -- Grad-CAM vs PyTorch ----------------------------------------------------------------
def torch_grad_cam(tm, x, layer_index, c):
    xt = torch.tensor(x[None])
    h = xt
    for i, mod in enumerate(tm):
        h = mod(h)
        if i == layer_index:
            A = h
    logit = h[0, c]
    dA, = torch.autograd.grad(logit, A)
    alpha = dA.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((alpha * A).sum(dim=1, keepdim=True))
    cam = cam / cam.max() if cam.max() > 0 else cam
    up = TF.interpolate(cam, size=x.shape[1:], mode="bilinear", align_corners=False)
    return up[0, 0].detach().numpy(), cam[0, 0].detach().numpy(), h[0].detach().numpy()


@pytest.mark.parametrize("layer,index", [(None, 2), ("0", 0)])
@pytest.mark.parametrize("target", [None, 1])
def test_grad_cam_matches_torch_autograd(layer, index, target):
    with backend.default_dtype(np.float64):
        net = tiny_cnn(seed=3)
    tm = torch_tiny_cnn().double()
    copy_to_torch(net, tm)
    x = np.random.default_rng(1).standard_normal((3, 12, 10))
    net.train()
    before = state_of(net)
    cam, info = explain.grad_cam(net, x, target_class=target, layer=layer)
    logits = tm(torch.tensor(x[None]))[0].detach().numpy()
    c = int(logits.argmax()) if target is None else target
    ref, ref_low, _ = torch_grad_cam(tm, x, index, c)
    assert info["class"] == c and info["layer"] == ("2" if layer is None else layer)
    assert info["score"] == pytest.approx(logits[c], rel=1e-9)
    assert cam.shape == (12, 10) and cam.dtype == np.float32
    assert ref_low.max() == pytest.approx(1.0)  # a real (non-degenerate) map is compared
    np.testing.assert_allclose(info["cam_lowres"], ref_low, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cam, ref, rtol=1e-5, atol=1e-6)
    assert 0 <= cam.min() and cam.max() <= 1
    # left as it was: training flag, keep_cache, caches, no wrappers; gradients zeroed
    assert net.training and all(m.training for m in net.modules())
    assert not any(m.keep_cache for m in net.modules())
    assert_restored(net, before)
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())
    assert any(p.grad is not None for p in net.parameters())  # a backward did run (layers above the target)


def test_grad_cam_restores_eval_mode_and_keep_cache_and_batch_input():
    net = tiny_cnn()
    net.eval()
    net[2].set_keep_cache(True)  # a user's own setting survives
    x = np.random.default_rng(2).random((1, 3, 8, 8)).astype(np.float32)
    y0 = net(x)
    cam, info = explain.grad_cam(net, x)
    assert cam.shape == (8, 8)
    assert not net.training and net[2].keep_cache and not net[0].keep_cache
    assert "keep_cache" not in net[0].__dict__
    assert all("forward" not in m.__dict__ and "backward" not in m.__dict__ for m in net.modules())
    np.testing.assert_array_equal(net(x), y0)
    with pytest.raises(ValueError, match="out of range"):
        explain.grad_cam(net, x, target_class=7)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        explain.grad_cam(net, np.zeros((2, 3, 8, 8), np.float32))
    assert all("forward" not in m.__dict__ and "backward" not in m.__dict__ for m in net.modules())


def test_grad_cam_between_training_forward_and_backward():
    net = tiny_cnn()
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    net.train()
    net(x)
    dx_ref = net.backward(g)
    ref = [p.grad.copy() for p in net.parameters()]
    net.zero_grad()
    net(x)                     # a training step's forward ...
    explain.grad_cam(net, x[0])
    # documented: grad_cam ends with zero_grad (its own gradients never reach the optimiser)
    assert all(not p.grad.any() for p in net.parameters())
    dx = net.backward(g)       # ... and its backward still sees the training forward's caches
    np.testing.assert_array_equal(dx, dx_ref)
    for p, r in zip(net.parameters(), ref):
        np.testing.assert_array_equal(p.grad, r)


@pytest.mark.parametrize("quadrant", ["top_left", "bottom_right"])
def test_grad_cam_concentrates_where_the_model_looks(quadrant):
    region = (slice(0, 8), slice(0, 8)) if quadrant == "top_left" else (slice(8, 16), slice(8, 16))
    backend.seed(0)
    net = region_model(region)
    x = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)  # texture everywhere
    cam, info = explain.grad_cam(net, x, target_class=0)
    assert info["layer"] == "3"
    inside = np.zeros((16, 16), bool)
    inside[region] = True
    grown = np.zeros((16, 16), bool)  # two 3×3 convs spill 2 pixels (+1 for upsampling): allow a 3-pixel rim
    r0, c0 = region[0].start, region[1].start
    grown[max(r0 - 3, 0):r0 + 11, max(c0 - 3, 0):c0 + 11] = True
    assert cam[inside].mean() > 0.3
    assert cam[~grown].max() == 0
    assert cam[inside].sum() / cam.sum() > 0.8


# -- occlusion ---------------------------------------------------------------------------
def test_occlusion_large_in_the_region_zero_elsewhere_and_batch_independent():
    region = (slice(0, 8), slice(0, 8))
    backend.seed(1)
    net = region_model(region)
    x = np.full((1, 16, 16), 0.1, np.float32)
    x[0, 2:7, 2:7] = 1.0  # a bright object inside the region the model sees
    net[7].bias.data[0] = 1 - net.eval()(x[None])[0, 0]  # logits (1, 0): p = 0.73, not saturated
    net.train()
    heat, info = explain.occlusion_map(net, x, target_class=0, patch=4, stride=2, batch_size=5)
    assert heat.shape == (16, 16) and heat.dtype == np.float32
    assert info["patch"] == 4 and info["stride"] == 2 and info["tops"] == list(range(0, 13, 2))
    assert info["drops"].shape == (7, 7)
    assert info["fill"] == pytest.approx([x.mean()])
    far = np.ones((16, 16), bool)
    far[:8 + 4, :8 + 4] = False  # every patch covering these pixels lies outside the region
    np.testing.assert_allclose(heat[far], 0, atol=1e-5)  # float32 rounding only
    assert heat[2:7, 2:7].min() > 0.02 and heat[2:7, 2:7].mean() > 10 * np.abs(heat[far]).max() + 0.02
    # brute force for one pixel: the mean drop of the patches covering it
    p0 = info["probability"]
    covering = [(t, l) for t in info["tops"] for l in info["lefts"] if t <= 4 < t + 4 and l <= 5 < l + 4]
    drops = []
    for t, l in covering:
        xo = x.copy()
        xo[:, t:t + 4, l:l + 4] = x.mean()
        z = net.eval()(xo[None])[0]
        drops.append(p0 - np.exp(z[0]) / np.exp(z).sum())
    net.train()
    assert heat[4, 5] == pytest.approx(np.mean(drops), abs=1e-6)
    before = state_of(net)
    for bs in (1, 64):
        other, _ = explain.occlusion_map(net, x, target_class=0, patch=4, stride=2, batch_size=bs)
        np.testing.assert_allclose(other, heat, atol=1e-6)
    assert_restored(net, before)
    assert net.training


def test_occlusion_defaults_and_errors():
    net = tiny_cnn()
    x = np.random.default_rng(0).random((3, 16, 12)).astype(np.float32)
    heat, info = explain.occlusion_map(net, x)
    assert heat.shape == (16, 12) and info["patch"] == 2 and info["stride"] == 1
    assert info["class"] == int(np.argmax(net.eval()(x[None])[0]))
    np.testing.assert_allclose(info["fill"], x.mean(axis=(1, 2)), rtol=1e-6)
    heat2, _ = explain.occlusion_map(net, x, patch=5, stride=3, fill=[0, 0, 0])
    assert heat2.shape == (16, 12) and np.isfinite(heat2).all()
    with pytest.raises(ValueError, match="patch"):
        explain.occlusion_map(net, x, patch=13)
    with pytest.raises(ValueError, match="fill"):
        explain.occlusion_map(net, x, fill=[0, 0])


# -- overlay -------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_overlay_writes_png(tmp_path, channels):
    rng = np.random.default_rng(0)
    img = rng.random((channels, 20, 24))
    heat = rng.random((20, 24)) - (0.5 if channels == 1 else 0)  # signed map for the gray case
    out = explain.overlay(img, heat, tmp_path / "sub" / "a.png", title="hello")
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["a.png"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 10  # something was drawn
    with pytest.raises(ValueError, match="same"):
        explain.overlay(img, heat[:10], tmp_path / "b.png")


# -- run-level tools -----------------------------------------------------------------------
@register("test_explain_cnn", replace=True)
def _test_cnn(num_classes=2, in_channels=3, size=16):
    net = Network(OrderedDict([("conv1", Conv2d(in_channels, 4, 3, padding=1)), ("relu1", ReLU()),
                               ("pool", MaxPool2d(2)), ("conv2", Conv2d(4, 6, 3, padding=1)), ("relu2", ReLU()),
                               ("gap", AdaptiveAvgPool2d(1)), ("flatten", Flatten()),
                               ("fc", Linear(6, num_classes))]))
    net.input_size = (in_channels, size, size)
    return net


@register("test_explain_mlp", replace=True)
def _test_mlp(num_classes=2):
    net = Network(OrderedDict([("flatten", Flatten()), ("fc", Linear(64, num_classes))]))
    net.input_size = (1, 8, 8)
    return net


@register("test_explain_brightness", replace=True)
def _test_brightness(num_classes=2, threshold=0.1):
    """logit_0 − logit_1 = 2·(mean pixel − threshold): 'bright' when the image is brighter than threshold."""
    net = Network(OrderedDict([("conv", Conv2d(1, 1, 1)), ("gap", AdaptiveAvgPool2d(1)), ("flatten", Flatten()),
                               ("fc", Linear(1, num_classes))]))
    net.conv.weight.data[...] = 1
    net.conv.bias.data[...] = 0
    net.fc.weight.data[:, 0] = [1, -1]
    net.fc.bias.data[...] = [-threshold, threshold]
    net.input_size = (1, 16, 16)
    return net


def save_run(path, model, classes, norm=None, config=None):
    path.mkdir(parents=True, exist_ok=True)
    meta = model_metadata(model, classes, norm or {"kind": "unit"}, config)
    files.save_model(model, path / "best.safetensors", meta)
    return path


def test_explain_image_writes_both_maps(tmp_path):
    import nabi.models as zoo
    backend.seed(0)
    model = zoo.get("test_explain_cnn", num_classes=3)
    norm = {"kind": "dataset", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    run = save_run(tmp_path / "run", model, ["cat", "dog", "fox"], norm)
    photo = (np.random.default_rng(0).random((20, 26, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "cat 1.png")
    res = explain.explain_image(run, tmp_path / "cat 1.png", tmp_path / "out")
    # the same preprocessing by hand: resize shorter side to 16 + centre crop, then (x − mean)/std
    from nabi.data.folder import load_image
    x = (load_image(tmp_path / "cat 1.png", 3, 16) - np.array(norm["mean"])[:, None, None]) \
        / np.array(norm["std"])[:, None, None]
    z = model.eval()(x[None].astype(np.float32))[0].astype(np.float64)
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert res["class"] == ["cat", "dog", "fox"][int(p.argmax())] == res["predicted"]
    assert res["probability"] == pytest.approx(p.max(), rel=1e-5)
    assert res["layer"] == "conv2"
    assert [f.split("/")[-1] for f in res["files"]] == ["cat 1_gradcam.png", "cat 1_occlusion.png"]
    for f in res["files"]:
        with Image.open(f) as im:
            assert im.format == "PNG"
    res2 = explain.explain_image(run, tmp_path / "cat 1.png", tmp_path / "out2", method="gradcam", target="fox",
                                 layer="conv1")
    assert res2["class"] == "fox" and res2["class_index"] == 2 and res2["layer"] == "conv1"
    assert res2["probability"] == pytest.approx(p[2], rel=1e-5)
    assert [f.split("/")[-1] for f in res2["files"]] == ["cat 1_gradcam.png"]
    with pytest.raises(ValueError, match="not a class"):
        explain.explain_image(run, tmp_path / "cat 1.png", tmp_path / "o", target="cow")
    with pytest.raises(ValueError, match="no layer 'conv7'"):
        explain.explain_image(run, tmp_path / "cat 1.png", tmp_path / "o", layer="conv7")


def test_explain_image_errors(tmp_path):
    import nabi.models as zoo
    mlp_run = save_run(tmp_path / "mlp", zoo.get("test_explain_mlp"), ["a", "b"],
                       config={"image_size": 6})  # 6×6 images padded to 8×8, as MNIST 28 → 32
    Image.fromarray(np.full((6, 6), 200, np.uint8)).save(tmp_path / "g.png")
    for method in ("gradcam", "both"):
        with pytest.raises(ValueError, match="cannot be explained with Grad-CAM: no convolutional layer"):
            explain.explain_image(mlp_run, tmp_path / "g.png", tmp_path / "o", method=method)
    assert not (tmp_path / "o" / "g_gradcam.png").exists()
    res = explain.explain_image(mlp_run, tmp_path / "g.png", tmp_path / "o", method="occlusion")
    assert res["layer"] is None and res["files"][0].endswith("g_occlusion.png")
    # weights that do not fit the architecture the sidecar names
    bad = save_run(tmp_path / "bad", zoo.get("test_explain_cnn", num_classes=2), ["a", "b"])
    side = files.load_weights(bad / "best.safetensors")[1]
    side["arch"]["kwargs"]["num_classes"] = 5
    files.atomic_write_json(bad / "best.json", side)
    with pytest.raises(ValueError, match=r"bad.*best\.safetensors.*do not fit"):
        explain.explain_image(bad, tmp_path / "g.png", tmp_path / "o")
    with pytest.raises(ValueError, match=r"bad.*best\.safetensors.*do not fit"):
        explain.masked_evaluation(bad, tmp_path)
    # an image that cannot be read
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="broken.jpg"):
        explain.explain_image(mlp_run, tmp_path / "broken.jpg", tmp_path / "o", method="occlusion")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        explain.explain_image(mlp_run, tmp_path / "missing.png", tmp_path / "o", method="occlusion")
    with pytest.raises(ValueError, match="method"):
        explain.explain_image(mlp_run, tmp_path / "g.png", tmp_path / "o", method="lime")


# -- masked evaluation -----------------------------------------------------------------------
def _photo(center, background):
    a = np.full((16, 16), int(background * 255), np.uint8)
    a[4:12, 4:12] = int(center * 255)
    return a


def _mask(size=16):
    m = np.zeros((size, size), np.uint8)
    q = size // 4
    m[q:3 * q, q:3 * q] = 255
    return m


def test_masked_evaluation(tmp_path):
    import nabi.models as zoo
    run = save_run(tmp_path / "run", zoo.get("test_explain_brightness"), ["bright", "dark"])
    data, masks = tmp_path / "test", tmp_path / "masks"
    for d in (data / "bright", data / "dark", masks / "bright", masks / "dark"):
        d.mkdir(parents=True)
    # bright animals on a dim background (mean 0.4) and dark animals on a bright one (mean 0.675):
    # the model (image mean > 0.1 → 'bright') is right on 'bright', fooled by the background on 'dark'
    for i in range(3):
        Image.fromarray(_photo(1.0, 0.2)).save(data / "bright" / f"b{i}.png")
        Image.fromarray(_photo(0.0, 0.9)).save(data / "dark" / f"d{i}.bmp")
        Image.fromarray(_mask()).save(masks / "bright" / f"b{i}.png")
        Image.fromarray(_mask(32)).save(masks / "dark" / f"d{i}.png")  # other extension and size
    Image.fromarray(_photo(1.0, 0.2)).save(data / "bright" / "nomask.png")
    cutout = np.full((16, 16, 4), 255, np.uint8)  # white everywhere: only the alpha channel marks the animal
    cutout[..., 3] = _mask()
    Image.fromarray(cutout).save(masks / "bright" / "b0.png")
    res = explain.masked_evaluation(run, data, masks)
    assert res["n"] == 6 and res["missing_masks"] == ["bright/nomask.png"] and res["unreadable"] == []
    assert res["accuracy_original"] == pytest.approx(0.5)
    assert res["accuracy_masked"] == pytest.approx(1.0)
    assert res["change"] == pytest.approx(0.5)
    assert res["foreground_fraction"] == pytest.approx(0.25)
    assert res["per_class"]["bright"] == {"n": 3, "accuracy_original": 1.0, "accuracy_masked": 1.0, "change": 0.0}
    assert res["per_class"]["dark"] == {"n": 3, "accuracy_original": 0.0, "accuracy_masked": 1.0, "change": 1.0}
    # a white background makes the dark animals look bright again
    white = explain.masked_evaluation(run, data, masks, background_value=1.0)
    assert white["accuracy_masked"] == pytest.approx(0.5) and white["per_class"]["dark"]["accuracy_masked"] == 0
    # a folder of already-masked photos: only that accuracy
    pre = tmp_path / "premasked"
    for cls, center in (("bright", 1.0), ("dark", 0.0)):
        (pre / cls).mkdir(parents=True)
        Image.fromarray(_photo(center, 0.0)).save(pre / cls / "x.png")
    only = explain.masked_evaluation(run, pre)
    assert only["accuracy_masked"] == 1.0 and only["accuracy_original"] is None and only["change"] is None
    assert only["n"] == 2 and only["missing_masks"] == []
    (tmp_path / "no_masks").mkdir()
    with pytest.raises(ValueError, match="none of its photos has a mask"):
        explain.masked_evaluation(run, data, tmp_path / "no_masks")
    with pytest.raises(FileNotFoundError, match="masks folder"):
        explain.masked_evaluation(run, data, tmp_path / "nowhere")


# -- habitat reliance ------------------------------------------------------------------
def test_habitat_reliance_exact_shares():
    heat = np.array([[1.0, 2.0, 0.0, 3.0],
                     [0.0, 4.0, -5.0, 0.0]])       # the −5 is clipped to 0: heat total 10
    animal = np.array([[1, 1, 0, 0],
                       [0, 1, 0, 0]], dtype=bool)  # 3 of 8 pixels are animal
    r = explain.habitat_reliance(heat, animal)
    assert r["heat_share"] == pytest.approx(3.0 / 10.0, abs=1e-15)       # only the 3.0 is on the habitat
    assert r["area_share"] == pytest.approx(5.0 / 8.0, abs=1e-15)
    assert r["heat_total"] == pytest.approx(10.0, abs=1e-15)
    # a 0/255 mask reads the same as a boolean one; heat spread evenly gives the area share
    assert explain.habitat_reliance(heat, animal.astype(np.uint8) * 255) == r
    assert explain.habitat_reliance(np.ones((2, 4)), animal)["heat_share"] == pytest.approx(5.0 / 8.0, abs=1e-15)
    # all the heat on the animal, all on the habitat
    assert explain.habitat_reliance(animal * 7.0, animal)["heat_share"] == 0.0
    assert explain.habitat_reliance(~animal * 0.5, animal)["heat_share"] == 1.0


def test_habitat_reliance_errors():
    animal = np.zeros((3, 3), dtype=bool)
    animal[1, 1] = True
    with pytest.raises(ValueError, match="all black"):
        explain.habitat_reliance(np.ones((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="all white"):
        explain.habitat_reliance(np.ones((3, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="zero everywhere"):
        explain.habitat_reliance(-np.ones((3, 3)), animal)          # nothing positive: no division by zero
    with pytest.raises(ValueError, match=r"\(3, 3\) and mask \(3, 4\)"):
        explain.habitat_reliance(np.ones((3, 3)), np.ones((3, 4)))


@pytest.mark.parametrize("fit", ["crop", "squash", "pad"])
def test_mask_at_input_follows_the_photos_fit(tmp_path, fit):
    """A mask of another size than its photo is brought to the input exactly as the photo is: a photo
    whose white pixels are the animal gives back its own mask."""
    from nabi.data import load_image
    a = np.zeros((40, 80), dtype=np.uint8)
    a[10:30, 50:70] = 255                                   # the animal, off centre in a wide photo
    photo = tmp_path / "photo.png"
    Image.fromarray(np.stack([a] * 3, axis=2)).save(photo)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.kron(a, np.ones((2, 2), dtype=np.uint8))).save(mask)     # twice the photo's size
    m = explain.mask_at_input(mask, photo, (16, 16), fit)
    seen = load_image(photo, channels=1, image_size=(16, 16), fit=fit)[0] > 0.5
    assert m.shape == (16, 16) and m.dtype == bool and m.any()
    np.testing.assert_array_equal(m, seen)


def test_mask_at_input_bad_files(tmp_path):
    from nabi.data.folder import ImageDecodeError
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(photo)
    text = tmp_path / "mask.png"
    text.write_text("not an image")
    with pytest.raises(ImageDecodeError, match="mask.png"):
        explain.mask_at_input(text, photo, (8, 8))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        explain.mask_at_input(tmp_path / "missing.png", photo, (8, 8))
