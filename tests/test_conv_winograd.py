"""Winograd F(2×2, 3×3) and F(4×4, 3×3) convolutions (``functional.conv_winograd``) and the choice of algorithm
(``conv_algo``).

Per tile size and shape family (stride 1 padding 1; odd sizes; batch 1; channel counts that are no multiple of anything;
padding 0 and 2): the compiled transforms equal their array-code reference; forward and both gradients equal
the im2col convolution in float64 and stay within the stated error of float64 in float32; the layer's backward
passes finite differences in float64 with a random upstream gradient and equals PyTorch; fused ReLU, fused SGD
and kept workspaces change nothing. ``conv_algo``: the setting, the measurement and its cache file.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as tnn
from hypothesis import given, settings, strategies as st

from nabi import backend, gradcheck
from nabi import layers as L
from nabi.functional import conv, conv_algo, conv_fast, conv_winograd as CW, cpu_kernels as K
from nabi.functional.conv import conv_geometry
from nabi.functional.dispatch import NUMBA, for_arrays
from helpers import compare_with_torch

ROOT = Path(__file__).resolve().parents[1]

# (N, C, F, H, W, padding)
FAMILIES = {
    "s1p1": (2, 4, 6, 8, 8, 1),
    "odd_sizes": (2, 3, 5, 7, 9, 1),
    "batch1": (1, 5, 4, 6, 5, 1),
    "odd_channels": (3, 7, 11, 5, 6, 1),
    "pad0": (2, 3, 4, 7, 6, 0),
    "pad2": (2, 2, 3, 5, 4, 2),
    "large_planes": (1, 2, 3, 17, 18, 1),     # ≥ SMALL_PLANE tiles per plane for both tile sizes: slices, not cells
}
FLOAT32_BOUND = {2: 1.5e-6, 4: 1e-5}   # norm-relative error against float64, per output and gradient, per tile
                                       # size (stated in conv_winograd)
TILES = {2: "winograd", 4: "winograd4"}                 # tile size → conv_algo's name


def _paths():
    return [False, True] if K.available() else [False]


def _data(n, c, f, h, w, p, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, 3, 3)) * np.sqrt(2.0 / (9 * c))
    b = rng.standard_normal(f)
    geom = conv_geometry(x, wt, 1, p)
    dy = rng.standard_normal((n, f, geom[6], geom[7]))
    return [a.astype(dtype) for a in (x, wt, b, dy)] + [geom]


def _rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


@pytest.mark.parametrize("tile", sorted(TILES))
@pytest.mark.parametrize("kernels", _paths(), ids=lambda k: "numba" if k else "reference")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_winograd_equals_im2col_in_float64(family, kernels, tile):
    x, w, b, dy, geom = _data(*FAMILIES[family])
    y_ref, cache_ref = conv.conv2d_forward(x, w, b, 1, geom[4:6])
    dx_ref, dw_ref, db_ref = conv.conv2d_backward(dy, cache_ref)
    with K.kernels(kernels):
        y, cache = CW.conv2d_forward(x, w, b, geom, tile=tile)
        assert cache.tile == tile
        dx, dw, db = CW.conv2d_backward(dy, cache)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        assert got.shape == want.shape and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("tile", sorted(TILES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_error_against_float64_is_within_the_stated_bound(family, tile):
    n, c, f, h, w, p = FAMILIES[family]
    x, wt, b, dy, geom = _data(n, c + 29, f + 31, h, w, p)          # wider sums: the error of real layers
    y64, cache = conv.conv2d_forward(x, wt, b, 1, p)
    dx64, dw64, _ = conv.conv2d_backward(dy, cache)
    y, cache = CW.conv2d_forward(*(a.astype(np.float32) for a in (x, wt, b)), geom, tile=tile)
    dx, dw, _ = CW.conv2d_backward(dy.astype(np.float32), cache)
    for got, want in ((y, y64), (dx, dx64), (dw, dw64)):
        assert got.dtype == np.float32
        assert _rel(got, want) < FLOAT32_BOUND[tile]


def test_the_larger_tile_is_the_less_exact_one_as_stated():
    # F(4×4, 3×3)'s float32 error exceeds F(2×2, 3×3)'s on a 64-channel layer, within its own bound.
    x, wt, b, dy, geom = _data(2, 64, 64, 12, 12, 1)
    y64 = conv.conv2d_forward(x, wt, b, 1, 1)[0]
    errors = {t: _rel(CW.conv2d_forward(*(a.astype(np.float32) for a in (x, wt, b)), geom, tile=t)[0], y64)
              for t in TILES}
    assert errors[2] < errors[4] < FLOAT32_BOUND[4]


def test_the_families_cover_small_and_large_planes_for_both_tile_sizes():
    for tile in TILES:
        planes = {int(np.prod(CW.tiles(_data(*FAMILIES[name])[-1], tile))) for name in FAMILIES}
        assert min(planes) < K.SMALL_PLANE <= max(planes), (tile, planes)


def test_an_unknown_tile_size_is_named():
    x, w, b, dy, geom = _data(*FAMILIES["s1p1"])
    with pytest.raises(ValueError, match="tile must be one of"):
        CW.conv2d_forward(x, w, b, geom, tile=3)


@pytest.mark.skipif(not K.available(), reason="numba is not installed")
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 5), f=st.integers(1, 5), h=st.integers(1, 13), w=st.integers(1, 13),
       p=st.integers(0, 2), relu=st.booleans(), bias=st.booleans(), f32=st.booleans(), tile=st.sampled_from([2, 4]))
def test_compiled_transforms_equal_the_array_code(n, c, f, h, w, p, relu, bias, f32, tile):
    if h + 2 * p < 3 or w + 2 * p < 3:
        return
    dtype = np.float32 if f32 else np.float64
    x, wt, b, dy, geom = _data(n, c, f, h, w, p, seed=n + 7 * h + 11 * w, dtype=dtype)
    b = b if bias else None
    th, tw = CW.tiles(geom, tile)
    a2 = CW.positions(tile)
    m = np.random.default_rng(1).standard_normal((a2, f, n * th * tw)).astype(dtype)
    dv = np.random.default_rng(2).standard_normal((a2, c, n * th * tw)).astype(dtype)
    relu_y = np.maximum(dy, 0) if relu else None
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5 * tile ** 2)

    def run():
        impl = for_arrays(x)
        return (impl.winograd_weight(wt, tile=tile), impl.winograd_input(x, geom, tile=tile),
                impl.winograd_output(m, b, n, geom, relu, tile=tile),
                *impl.winograd_output_backward(dy, geom, relu_y, need_db=True, tile=tile),
                impl.winograd_input_backward(dv, x.shape, geom, tile=tile),
                impl.winograd_weight_backward(np.ascontiguousarray(m[:, :, :c]), tile=tile))
    with K.kernels(True):
        assert for_arrays(x) is NUMBA
        got = run()
    with K.kernels(False):
        want = run()
    for a, e in zip(got, want):
        assert a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_allclose(a, e, **tol)


@pytest.mark.parametrize("tile", sorted(TILES))
@pytest.mark.parametrize("chunks", ["whole", "per_image"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layer_gradients_pass_finite_differences(family, chunks, tile, monkeypatch):
    if chunks == "per_image":
        monkeypatch.setattr(CW, "CHUNK_BYTES", 1)                   # one image per chunk
    n, c, f, h, w, p = FAMILIES[family]
    rng = np.random.default_rng(3)
    with backend.default_dtype(np.float64), conv_algo.algorithm(TILES[tile]):
        net = L.Sequential(L.Conv2d(c, f, 3, padding=p), L.ReLU(), L.Conv2d(f, 3, 3, padding=1, bias=False))
        x = rng.standard_normal((n, c, h, w))
        net(x)
        assert isinstance(net[0]._cache, CW.WinogradCache) and isinstance(net[2]._cache, CW.WinogradCache)
        assert net[0]._cache.tile == net[2]._cache.tile == tile
        errors = gradcheck.check_module(net, x)
    assert max(errors.values()) < 1e-7, errors


class _TorchPair(tnn.Module):
    def __init__(self, c, f, p):
        super().__init__()
        self.a = tnn.Conv2d(c, f, 3, padding=p)
        self.b = tnn.Conv2d(f, 3, 3, padding=1, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("tile", sorted(TILES))
@pytest.mark.parametrize("chunks", ["whole", "per_image"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layer_equals_torch(family, dtype, chunks, tile, monkeypatch):
    if chunks == "per_image":
        monkeypatch.setattr(CW, "CHUNK_BYTES", 1)                   # one image per chunk
    n, c, f, h, w, p = FAMILIES[family]
    with backend.default_dtype(dtype), conv_algo.algorithm(TILES[tile]):
        net = L.Sequential(OrderedDictOf(a=L.Conv2d(c, f, 3, padding=p), r=L.ReLU(),
                                         b=L.Conv2d(f, 3, 3, padding=1, bias=False)))
        # float32: F(4×4, 3×3)'s error is about 10× F(2×2, 3×3)'s (module docstring), the element bound with it
        tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5 * tile ** 2)
        compare_with_torch(net, _TorchPair(c, f, p), np.random.default_rng(5).standard_normal((n, c, h, w)),
                           dtype=dtype, **tol)


def OrderedDictOf(**kw):
    from collections import OrderedDict
    return OrderedDict(kw)


@pytest.mark.parametrize("tile", sorted(TILES))
def test_a_residual_network_equals_torch_with_winograd(tile):
    from test_vs_torch import TorchBasicBlock, nabi_basic_block
    rng = np.random.default_rng(4)
    with backend.default_dtype(np.float64), conv_algo.algorithm(TILES[tile]):
        net = L.Sequential(nabi_basic_block(), L.ReLU(), L.AdaptiveAvgPool2d(1), L.Flatten(), L.Linear(4, 3))
        tnet = tnn.Sequential(TorchBasicBlock(), tnn.ReLU(), tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(4, 3))
        compare_with_torch(net, tnet, rng.standard_normal((3, 3, 9, 8)), dtype=np.float64, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("tile", sorted(TILES))
@pytest.mark.parametrize("chunks", ["whole", "uneven"])
@pytest.mark.parametrize("kernels", _paths(), ids=lambda k: "numba" if k else "reference")
@pytest.mark.parametrize("relu", [False, True])
def test_fused_relu_fused_sgd_and_kept_buffers_change_nothing(kernels, relu, chunks, tile, monkeypatch):
    x, w, b, dy, geom = _data(5, 3, 5, 9, 10, 1)
    if chunks == "uneven":                     # chunks of 2, 2 and 1 images through the same buffers
        th, tw = CW.tiles(geom, tile)
        monkeypatch.setattr(CW, "CHUNK_BYTES", 2 * CW.positions(tile) * 5 * th * tw * 8)
        assert CW.chunk_bounds(5, 3, 5, geom, 8, tile=tile) == [(0, 2), (2, 4), (4, 5)]
    y_ref, cache_ref = conv.conv2d_forward(x, w, b, 1, 1)
    if relu:
        y_ref = np.maximum(y_ref, 0)
    dx_ref, dw_ref, db_ref = conv.conv2d_backward(dy * (y_ref > 0) if relu else dy, cache_ref)
    with K.kernels(kernels), conv_algo.algorithm(TILES[tile]):
        for step in range(2):                                      # the second step reuses the kept buffers
            ws = conv_fast.Workspace() if step == 0 else ws
            y, cache = conv_fast.conv2d_forward(x, w, b, 1, 1, relu=relu, workspace=ws)
            assert isinstance(cache, CW.WinogradCache) and cache.tile == tile
            dx, dw, db = conv_fast.conv2d_backward(dy, cache, relu_y=y if relu else None, consume=True, workspace=ws)
            for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
                np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
        w2, b2 = w.copy(), b.copy()
        y2, cache2 = conv_fast.conv2d_forward(x, w2, b2, 1, 1, relu=relu, workspace=ws)
        dx2 = conv_fast.conv2d_sgd_backward(dy, cache2, w2, b2, 0.5, relu_y=y2 if relu else None, workspace=ws)
    np.testing.assert_allclose(dx2, dx_ref, rtol=1e-11, atol=1e-12)        # with the old weights
    np.testing.assert_allclose(w2, w - 0.5 * dw_ref, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b2, b - 0.5 * db_ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("tile", sorted(TILES))
def test_winograd_only_where_it_applies(tile):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 9, 9))
    with conv_algo.algorithm(TILES[tile]):
        for k, s in ((3, 2), (5, 1), (1, 1)):
            w = rng.standard_normal((3, 2, k, k))
            y, cache = conv_fast.conv2d_forward(x, w, None, s, k // 2)
            assert not isinstance(cache, CW.WinogradCache)
            np.testing.assert_allclose(y, conv.conv2d_forward(x, w, None, s, k // 2)[0], rtol=1e-12)
        _, cache = conv_fast.conv2d_forward(x, rng.standard_normal((3, 2, 3, 3)), None, 1, 1)
        assert isinstance(cache, CW.WinogradCache) and cache.tile == tile
    with conv_algo.algorithm("im2col"):
        _, cache = conv_fast.conv2d_forward(x, rng.standard_normal((3, 2, 3, 3)), None, 1, 1)
        assert not isinstance(cache, CW.WinogradCache)


# ---------------------------------------------------------------------------
# conv_algo: the setting, the measurement, the cache file
# ---------------------------------------------------------------------------
@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NABI_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NABI_CONV_ALGO", raising=False)
    conv_algo.forget()
    yield tmp_path
    conv_algo.forget()


def test_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv("NABI_CONV_ALGO", "fastest")
    with pytest.raises(ValueError, match="NABI_CONV_ALGO='fastest'.*auto, im2col, winograd"):
        conv_algo.setting()
    with pytest.raises(ValueError, match="set_algorithm"):
        conv_algo.set_algorithm("fft")


def test_the_environment_forces_an_algorithm(monkeypatch, cache_dir):
    monkeypatch.setenv("NABI_CONV_ALGO", "winograd")
    asked = []
    pick = conv_algo.choose(("im2col", "winograd"), "k", 10**12, True, lambda a: asked.append(a))
    assert pick == "winograd" and not asked
    assert conv_algo.choose(("im2col",), "k", 10**12, True, lambda a: asked.append(a)) == "im2col"
    with conv_algo.algorithm("im2col"):                              # code wins over the environment
        assert conv_algo.choose(("im2col", "winograd"), "k", 10**12, True, None) == "im2col"
    assert not cache_dir.joinpath(conv_algo.CACHE_FILE).exists()


def _sleeper(ms_by_algorithm, calls):
    import time

    def trial(name):
        def run():
            calls.append(name)
            time.sleep(ms_by_algorithm[name] / 1e3)
        return run
    return trial


def test_auto_measures_once_and_keeps_the_choice_in_the_cache_file(cache_dir):
    calls = []
    trial = _sleeper({"im2col": 30, "winograd": 2}, calls)
    assert conv_algo.choose(("im2col", "winograd"), "train shape A", 10**9, True, trial) == "winograd"
    assert calls.count("im2col") == calls.count("winograd") == 1 + conv_algo.ROUNDS
    data = json.loads(cache_dir.joinpath(conv_algo.CACHE_FILE).read_text())
    entry = data["machines"][conv_algo.machine_key()]["train shape A"]
    assert entry["algorithm"] == "winograd" and entry["ms"]["im2col"] > entry["ms"]["winograd"]
    assert not [p for p in cache_dir.iterdir() if p.name != conv_algo.CACHE_FILE]     # no temporary file left
    calls.clear()
    conv_algo.forget()                                               # a new process: reads the file
    assert conv_algo.choose(("im2col", "winograd"), "train shape A", 10**9, True, trial) == "winograd"
    assert not calls
    trial = _sleeper({"im2col": 2, "winograd": 30}, calls)          # another shape: measured, added to the file
    assert conv_algo.choose(("im2col", "winograd"), "train shape B", 10**9, True, trial) == "im2col"
    table = json.loads(cache_dir.joinpath(conv_algo.CACHE_FILE).read_text())["machines"][conv_algo.machine_key()]
    assert set(table) == {"train shape A", "train shape B"}


def test_the_less_exact_tile_size_is_chosen_only_where_clearly_faster(cache_dir):
    assert conv_algo.LESS_EXACT["winograd4"] > 1
    near = _sleeper({"im2col": 80, "winograd": 40, "winograd4": 38}, [])             # 5 % faster: a tie
    assert conv_algo.choose(("im2col", "winograd", "winograd4"), "near", 10**9, True, near) == "winograd"
    clear = _sleeper({"im2col": 80, "winograd": 40, "winograd4": 24}, [])            # 40 % faster
    assert conv_algo.choose(("im2col", "winograd", "winograd4"), "clear", 10**9, True, clear) == "winograd4"


def test_small_layers_and_uncompiled_arrays_are_not_measured(cache_dir):
    calls = []
    trial = _sleeper({"im2col": 5, "winograd": 1}, calls)
    assert conv_algo.choose(("im2col", "winograd"), "s", conv_algo.MIN_TUNED_MACS - 1, True, trial) == "im2col"
    assert conv_algo.choose(("im2col", "winograd"), "s", 10**9, False, trial) == "im2col"
    assert not calls


def test_an_unreadable_cache_is_reported_once_and_replaced(cache_dir, capsys):
    cache_dir.joinpath(conv_algo.CACHE_FILE).write_text("{ not json")
    trial = _sleeper({"im2col": 1, "winograd": 10}, [])
    assert conv_algo.choose(("im2col", "winograd"), "k", 10**9, True, trial) == "im2col"
    err = capsys.readouterr().err
    assert err.count("cannot read the convolution-algorithm cache") == 1 and str(cache_dir) in err
    data = json.loads(cache_dir.joinpath(conv_algo.CACHE_FILE).read_text())
    assert data["format"] == conv_algo.FORMAT


def test_an_unwritable_cache_folder_keeps_the_choices_in_memory(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("NABI_CACHE_DIR", str(blocker / "sub"))           # a folder under a file: cannot exist
    monkeypatch.delenv("NABI_CONV_ALGO", raising=False)
    conv_algo.forget()
    calls = []
    trial = _sleeper({"im2col": 10, "winograd": 1}, calls)
    assert conv_algo.choose(("im2col", "winograd"), "k", 10**9, True, trial) == "winograd"
    assert "cannot write the convolution-algorithm cache" in capsys.readouterr().err
    calls.clear()
    assert conv_algo.choose(("im2col", "winograd"), "k", 10**9, True, trial) == "winograd"
    assert not calls
    conv_algo.forget()


@pytest.mark.skipif(not K.available(), reason="numba is not installed")
def test_a_real_layer_is_timed_once_and_runs_the_choice(cache_dir):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 48, 16, 16)).astype(np.float32)
    w = (rng.standard_normal((48, 48, 3, 3)) / 20).astype(np.float32)
    assert 8 * 48 * 48 * 9 * 256 >= conv_algo.MIN_TUNED_MACS
    y, cache = conv_fast.conv2d_forward(x, w, None, 1, 1)
    table = json.loads(cache_dir.joinpath(conv_algo.CACHE_FILE).read_text())["machines"][conv_algo.machine_key()]
    (key, entry), = table.items()
    assert key == "train 8x48x16x16 -> 48 3x3 p1x1 float32"
    assert set(entry["ms"]) == {"im2col", "winograd", "winograd4", "direct"}
    tile = {name: t for t, name in TILES.items()}.get(entry["algorithm"])
    assert isinstance(cache, CW.WinogradCache) == (tile is not None)
    assert tile is None or cache.tile == tile
    y_ref, _ = conv.conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, 1, 1)
    assert _rel(y, y_ref) < FLOAT32_BOUND[tile or 2]


@pytest.mark.skipif(not K.available(), reason="numba is not installed")
def test_auto_times_the_larger_tile_only_on_outputs_of_at_least_8x8(cache_dir):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((96, 96, 3, 3)) / 30).astype(np.float32)
    for h in (8, 7):
        x = rng.standard_normal((16, 96, h, h)).astype(np.float32)
        assert 16 * 96 * 96 * 9 * h * h >= conv_algo.MIN_TUNED_MACS
        conv_fast.conv2d_forward(x, w, None, 1, 1)
    table = json.loads(cache_dir.joinpath(conv_algo.CACHE_FILE).read_text())["machines"][conv_algo.machine_key()]
    assert set(table["train 16x96x8x8 -> 96 3x3 p1x1 float32"]["ms"]) == {"im2col", "winograd", "winograd4"}
    assert set(table["train 16x96x7x7 -> 96 3x3 p1x1 float32"]["ms"]) == {"im2col", "winograd"}


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NABI_CACHE_DIR", str(tmp_path / "c"))
    assert conv_algo.cache_path() == tmp_path / "c" / conv_algo.CACHE_FILE
    monkeypatch.delenv("NABI_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert conv_algo.cache_path() == tmp_path / "x" / "nabi" / conv_algo.CACHE_FILE


def test_the_machine_key_tells_cpu_generations_with_one_name_apart():
    # Virtual machines name Zen 3 and Zen 4 alike ("AMD EPYC"); their vector units differ, and so do the timings.
    zen3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n" \
           "flags\t\t: fpu sse2 avx fma avx2\n\nprocessor\t: 1\nmodel name\t: other\n"
    zen4 = zen3.replace("model\t\t: 1", "model\t\t: 17").replace("avx2\n", "avx2 avx512f avx512bw\n")
    assert conv_algo.describe_cpu(zen3) == "AMD EPYC (family 25 model 1), avx2"
    assert conv_algo.describe_cpu(zen4) == "AMD EPYC (family 25 model 17), avx512f"
    assert conv_algo.describe_cpu("") != ""                        # no /proc/cpuinfo: still a name
