"""Conv2d keeps its im2col matrix (or Winograd's transformed arrays) as a workspace between training steps
(no fresh pages each step) and lets backward write wᵀ·δ over it. Neither may change a single bit of any result.
The tests run im2col unless they say otherwise (``conv_algo``)."""
import numpy as np
import pytest

from nabi import layers as L
from nabi import optim
from nabi.functional import conv_algo
from nabi.functional import conv_fast as C
from nabi.functional import cpu_kernels as K
from nabi.training.trainer import enable_fused_sgd


@pytest.fixture(autouse=True)
def _im2col():
    with conv_algo.algorithm("im2col"):
        yield


def net(rng):
    return L.Sequential(L.Conv2d(3, 4, 3, padding=1, rng=rng), L.ReLU(), L.MaxPool2d(2),
                        L.Conv2d(4, 6, 3, stride=2, rng=rng), L.ReLU(), L.Conv2d(6, 5, 1, rng=rng), L.ReLU(), L.Flatten(),
                        L.Linear(5 * 3 * 3, 3, rng=rng))


def train(model, steps, rng, batch, fused):
    opt = optim.SGD(model.named_parameters(), lr=0.1, momentum=0.0 if fused else 0.9)
    if fused:
        enable_fused_sgd(model, opt)
    loss_fn = L.CrossEntropyLoss()
    out = []
    for _ in range(steps):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        x0 = x.copy()
        loss = loss_fn(model(x), rng.integers(0, 3, batch))
        model.zero_grad()
        model.backward(loss_fn.backward())
        np.testing.assert_array_equal(x, x0)                  # the input is never written over
        out.append((loss, [] if fused else [p.grad.copy() for p in model.parameters()]))
        opt.step()
    return out, [p.data for p in model.parameters()]


@pytest.mark.parametrize("algo", ["im2col", "winograd", "winograd4"])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("batch", [1, 4])      # at batch 1 NumPy's 1×1 columns are a view of the input
@pytest.mark.parametrize("kernels", [True, False])
def test_workspace_changes_no_bit(kernels, batch, fused, algo, monkeypatch):
    if kernels and not K.available():
        pytest.skip("numba is not installed")
    with K.kernels(kernels), conv_algo.algorithm(algo):
        a = net(np.random.default_rng(0))
        hist_a, final_a = train(a, 3, np.random.default_rng(1), batch, fused)
        if kernels:
            assert any(m._workspace for m in a.modules() if isinstance(m, L.Conv2d))
        monkeypatch.setattr(C, "workspace_buffer", lambda *a: None)    # no workspace at all
        monkeypatch.setattr(C, "_reusable_columns", lambda cache: None)
        b = net(np.random.default_rng(0))
        hist_b, final_b = train(b, 3, np.random.default_rng(1), batch, fused)
    for (la, ga), (lb, gb) in zip(hist_a, hist_b):
        assert la == lb
        for p, q in zip(ga, gb):
            np.testing.assert_array_equal(p, q)
    for p, q in zip(final_a, final_b):
        np.testing.assert_array_equal(p, q)


@pytest.mark.skipif(not K.available(), reason="numba is not installed")
def test_workspace_is_reused_and_dropped_in_eval():
    """The columns are the layer's own; the GEMM buffer (its contents die within a call) is the thread's shared
    training scratch, one for every layer."""
    conv = L.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(0))
    other = L.Conv2d(3, 8, 3, padding=1, rng=np.random.default_rng(1))
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    C.release_training_scratch()
    with K.kernels(True):
        conv(x)
        ws = dict(conv._workspace)
        assert set(ws) == {"col"} and ws["col"].shape == (27, 128)
        shared = C.training_scratch()["gemm"]
        assert shared.nbytes == 4 * 128 * 4
        conv.backward(np.ones((2, 4, 8, 8), np.float32))
        conv(x)
        assert all(conv._workspace[k] is ws[k] for k in ws)                # the same buffers, refilled
        other(x)                                                           # a layer needing a larger one grows it
        assert C.training_scratch()["gemm"].nbytes == 8 * 128 * 4
        conv.backward(np.ones((2, 4, 8, 8), np.float32))
        other.backward(np.ones((2, 8, 8, 8), np.float32))
        assert C.training_scratch_bytes() == 8 * 128 * 4
        conv.eval()
        conv(x)
        assert conv._workspace == {}
    C.release_training_scratch()
    assert C.training_scratch_bytes() == 0


def test_two_forwards_then_backward_use_the_second():
    """A second training forward before backward replaces the pending cache; its gradient must be
    exactly that of the second input, workspace or not."""
    rng = np.random.default_rng(2)
    conv = L.Conv2d(2, 3, 3, rng=rng)
    x1, x2 = rng.standard_normal((2, 2, 2, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    ref = L.Conv2d(2, 3, 3, rng=np.random.default_rng(2))
    ref(x2)
    ref.backward(dy)
    conv(x1)
    conv.backward(dy)                   # a workspace now exists
    conv.zero_grad()
    conv(x1)                            # fills the workspace
    conv(x2)                            # a pending cache exists: fresh columns
    conv.backward(dy)
    np.testing.assert_array_equal(conv.weight.grad, ref.weight.grad)


@pytest.mark.parametrize("algo", ["im2col", "winograd", "winograd4"])
@pytest.mark.parametrize("kernels", [True, False])
def test_inference_scratch_changes_no_bit(kernels, algo, monkeypatch):
    """Eval-mode forwards share this thread's scratch buffers: same outputs as without them,
    one buffer reused by every layer, nothing over the size limit kept, and release frees them."""
    if kernels and not K.available():
        pytest.skip("numba is not installed")
    model = net(np.random.default_rng(0)).eval()
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with K.kernels(kernels), conv_algo.algorithm(algo):
        C.release_scratch()
        first = model(x)
        again = model(x)
        kept = dict(C.scratch())
        assert all(C.scratch()[k] is kept[k] for k in kept)
        if kernels:
            assert set(kept) == ({"col", "gemm"} if algo == "im2col" else {"col", "gemm", "wino_u", "wino_v",
                                                                            "wino_m"})
        monkeypatch.setattr(C, "workspace_buffer", lambda *a: None)
        plain = model(x)
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(again, plain)
    monkeypatch.undo()
    monkeypatch.setattr(C, "SCRATCH_MAX_BYTES", 64)
    C.release_scratch()
    with K.kernels(kernels), conv_algo.algorithm(algo):
        np.testing.assert_array_equal(model(x), plain)
    assert dict(C.scratch()) == {}
    C.release_scratch()


@pytest.mark.skipif(not K.available(), reason="numba is not installed")
def test_training_workspace_keeps_nothing_over_the_limit(monkeypatch):
    """Columns larger than ``Workspace.limit`` are allocated per step, not held between steps."""
    conv = L.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    monkeypatch.setattr(C.Workspace, "limit", 27 * 128 * 4 - 1)       # the columns: 27 × 128 float32
    with K.kernels(True):
        for _ in range(2):
            conv(x)
            conv.backward(np.ones((2, 4, 8, 8), np.float32))
    assert set(conv._workspace) == set()                               # the GEMM buffer is the shared one


def test_moving_a_layer_drops_its_workspace():
    conv = L.Conv2d(2, 3, 3, rng=np.random.default_rng(0))
    conv._workspace["col"] = np.empty(4)
    conv.to("cpu")
    assert conv._workspace == {}


def test_training_workspaces_keep_any_column_chunk_and_eval_scratch_is_capped():
    """A layer's training workspace keeps columns up to the im2col chunk budget (they exist during every
    step anyway; fresh ones cost page faults each step); each thread's eval scratch keeps at most
    SCRATCH_MAX_BYTES per buffer, since every serving thread holds its own."""
    assert C.Workspace().limit >= C.COL_BUDGET_BYTES
    C.release_scratch()
    assert C.scratch().limit == C.SCRATCH_MAX_BYTES < C.COL_BUDGET_BYTES
    big = (C.SCRATCH_MAX_BYTES // 4 + 1,)
    assert C.workspace_buffer(C.scratch(), "col", big, np.float32) is None
    kept = C.workspace_buffer(C.Workspace(), "col", big, np.float32)
    assert kept is not None and kept.shape == big
    C.release_scratch()


@pytest.mark.parametrize("kernels", [True, False])
def test_an_input_layer_rebuilds_its_columns_in_chunks_and_computes_the_same_layer(kernels, monkeypatch):
    """A training layer that computes no ∂L/∂x, with columns over INPUT_LAYER_COL_RATIO × its input (a stem:
    7×7 stride 2 on 3 channels), builds them in chunks and rebuilds them in backward instead of keeping them;
    its output and gradients equal those of the layer that keeps them up to float32 rounding: the products are
    cut differently (OpenBLAS's AVX-512 kernels round a product of fewer columns differently, so the output's bits
    can differ too), and ∂L/∂w adds the chunks' products."""
    if kernels and not K.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 20, 20)).astype(np.float32)
    dy = rng.standard_normal((5, 4, 10, 10)).astype(np.float32)
    monkeypatch.setattr(C, "INPUT_LAYER_CHUNK_BYTES", 147 * 100 * 4 * 2)   # two images' columns per chunk
    monkeypatch.setattr(C, "INPUT_LAYER_MIN_COL_BYTES", 147 * 100 * 4 * 5)  # all five images' columns
    with K.kernels(kernels):
        out = []
        for input_grad in (True, False):
            conv = L.Conv2d(3, 4, 7, stride=2, padding=3, rng=np.random.default_rng(1))
            conv.set_input_grad(input_grad)
            for _ in range(2):
                y = conv(x)
                chunked = conv._cache[5]
                conv.zero_grad()
                conv.backward(dy)
            out.append((y, conv.weight.grad.copy(), conv.bias.grad.copy()))
            assert (chunked is not None) == (not input_grad)
            assert ("col" in conv._workspace) == (kernels and input_grad)
    for a, b in zip(out[0], out[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_batch_norm_and_activations_free_their_caches_in_backward():
    """What backward needs is dropped once it has run, so it does not outlive the step (through the
    optimiser's update, the peak of a first step that allocates momentum buffers)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    for layer in (L.BatchNorm2d(3), L.ReLU(), L.Sigmoid(), L.Tanh()):
        layer.train()
        y = layer(x)
        assert layer._cache is not None
        layer.backward(np.ones_like(y))
        assert layer._cache is None
