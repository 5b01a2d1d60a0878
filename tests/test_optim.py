"""Optimizers, clipping and schedules against torch.optim, in float64."""
import math

import numpy as np
import pytest

from nabi import optim
from nabi.layers.module import Parameter

torch = pytest.importorskip("torch")

SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "fc.weight": (5, 7)}
N_STEPS = 7


def _setup(seed=0):
    """The same float64 parameters for nabi and torch, and a fixed sequence of gradients."""
    rng = np.random.default_rng(seed)
    init = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(2 * N_STEPS)]
    named = [(k, Parameter(v.copy())) for k, v in init.items()]
    tparams = [torch.nn.Parameter(torch.tensor(v.copy(), dtype=torch.float64)) for v in init.values()]
    return named, tparams, grads


def _set_grads(named, tparams, g, skip=None):
    for (k, p), tp in zip(named, tparams):
        if k == skip:  # no gradient this step: both sides must leave it alone
            p.grad = None
            tp.grad = None
        else:
            p.grad = g[k].copy()
            tp.grad = torch.tensor(g[k], dtype=torch.float64)


def _assert_same(named, tparams, rtol=1e-10, atol=1e-12):
    for (k, p), tp in zip(named, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=rtol, atol=atol, err_msg=k)


CASES = [
    ("sgd", optim.SGD, torch.optim.SGD, dict(lr=0.1)),
    ("sgd_momentum", optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("sgd_nesterov", optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd_weight_decay", optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, weight_decay=1e-2)),
    ("sgd_dampening", optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("sgd_all", optim.SGD, torch.optim.SGD, dict(lr=0.03, momentum=0.7, weight_decay=5e-3, nesterov=True)),
    ("adam", optim.Adam, torch.optim.Adam, dict(lr=1e-2)),
    ("adam_wd", optim.Adam, torch.optim.Adam, dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("adam_amsgrad", optim.Adam, torch.optim.Adam, dict(lr=1e-2, amsgrad=True)),
    ("adamw", optim.AdamW, torch.optim.AdamW, dict(lr=1e-2)),
    ("adamw_wd", optim.AdamW, torch.optim.AdamW, dict(lr=5e-3, betas=(0.85, 0.995), weight_decay=0.3)),
]


@pytest.mark.parametrize("label,ours,theirs,kw", CASES, ids=[c[0] for c in CASES])
def test_update_matches_torch(label, ours, theirs, kw):
    named, tparams, grads = _setup()
    opt = ours(named, **kw)
    topt = theirs(tparams, **kw)
    start = {k: p.data.copy() for k, p in named}
    for i in range(N_STEPS):
        # step 3 gives fc.weight no gradient: skipped, state untouched, on both sides
        _set_grads(named, tparams, grads[i], skip="fc.weight" if i == 3 else None)
        opt.step()
        topt.step()
        _assert_same(named, tparams)
    assert opt.step_count == N_STEPS
    for k, p in named:  # the parameters really moved
        assert not np.allclose(p.data, start[k])
    if isinstance(opt, optim.Adam):
        assert int(opt.state["fc.weight"]["step"]) == N_STEPS - 1
        assert int(opt.state["conv.bias"]["step"]) == N_STEPS
        np.testing.assert_allclose(opt.state["conv.weight"]["exp_avg_sq"],
                                   topt.state[tparams[0]]["exp_avg_sq"].numpy(), rtol=1e-10, atol=1e-14)
    elif kw.get("momentum"):
        np.testing.assert_allclose(opt.state["conv.weight"]["momentum_buffer"],
                                   topt.state[tparams[0]]["momentum_buffer"].numpy(), rtol=1e-10, atol=1e-14)


def test_float32_stays_float32_and_in_place():
    p = Parameter(np.ones((3, 3), np.float32))
    data = p.data
    opt = optim.Adam([("w", p)], lr=0.1, weight_decay=0.1)
    p.grad = np.full((3, 3), 0.5, np.float32)
    opt.step()
    assert p.data is data and p.data.dtype == np.float32
    assert opt.state["w"]["exp_avg"].dtype == np.float32
    np.testing.assert_allclose(p.data, 0.9, rtol=1e-5)  # first Adam step moves by ~lr


@pytest.mark.parametrize("ours,kw", [(optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
                                     (optim.Adam, dict(lr=1e-2, amsgrad=True)),
                                     (optim.AdamW, dict(lr=1e-2, weight_decay=0.2))])
def test_state_dict_round_trip_continues_identically(ours, kw):
    named_a, _, grads = _setup(1)
    opt_a = ours(named_a, **kw)
    for i in range(3):
        for k, p in named_a:
            p.grad = grads[i][k].copy()
        opt_a.step()
    sd = opt_a.state_dict()
    # a fresh model with the current weights, and a fresh optimizer with other settings
    named_b = [(k, Parameter(p.data.copy())) for k, p in named_a]
    opt_b = ours(dict(named_b), lr=123.0)
    opt_b.load_state_dict(sd)
    assert opt_b.lr == opt_a.lr and opt_b.hyper == opt_a.hyper and opt_b.step_count == 3
    # the saved state is a host copy, not a view of live buffers
    some_key = next(iter(sd["state"]["conv.weight"]))
    before = np.array(sd["state"]["conv.weight"][some_key])
    for i in range(3, 3 + N_STEPS):
        for (k, pa), (_, pb) in zip(named_a, named_b):
            pa.grad = grads[i][k].copy()
            pb.grad = grads[i][k].copy()
        opt_a.step()
        opt_b.step()
        for (k, pa), (_, pb) in zip(named_a, named_b):
            np.testing.assert_array_equal(pa.data, pb.data, err_msg=k)
    np.testing.assert_array_equal(sd["state"]["conv.weight"][some_key], before)
    assert all(isinstance(v, np.ndarray) for st in sd["state"].values() for v in st.values())


def test_load_state_dict_errors_name_the_parameters():
    named, _, grads = _setup()
    opt = optim.SGD(named, lr=0.1, momentum=0.9)
    for k, p in named:
        p.grad = grads[0][k].copy()
    opt.step()
    sd = opt.state_dict()
    other = optim.SGD([("conv.weight", Parameter(named[0][1].data.copy())),
                       ("head.weight", Parameter(np.zeros((2, 2))))], lr=0.1, momentum=0.9)
    with pytest.raises(KeyError) as e:
        other.load_state_dict(sd)
    msg = str(e.value)
    assert "fc.weight" in msg and "conv.bias" in msg and "head.weight" in msg
    assert other.state == {}  # nothing applied
    with pytest.raises(ValueError, match="SGD"):
        optim.Adam(named, lr=0.1).load_state_dict(sd)
    sd["state"]["conv.bias"]["momentum_buffer"] = np.zeros(9)
    with pytest.raises(ValueError, match="conv.bias"):
        optim.SGD(named, lr=0.1, momentum=0.9).load_state_dict(sd)


@pytest.mark.parametrize("bad, error", [({"conv.weight": 0.0}, ValueError), ({"nowhere": 0.5}, KeyError)])
def test_load_state_dict_with_a_bad_lr_scale_leaves_the_optimiser_unchanged(bad, error):
    named, _, grads = _setup()
    saved = optim.SGD(named, lr=0.3, momentum=0.5, weight_decay=0.1)
    for k, p in named:
        p.grad = grads[0][k].copy()
    saved.step()
    sd = saved.state_dict()
    sd["lr_scale"] = bad
    opt = optim.SGD(named, lr=0.1, momentum=0.9, lr_scale={"conv.weight": 0.25})
    with pytest.raises(error, match="lr_scale"):
        opt.load_state_dict(sd)
    assert (opt.lr, opt.momentum, opt.weight_decay) == (0.1, 0.9, 0.0)
    assert opt.lr_scale == {"conv.weight": 0.25} and opt.step_count == 0 and opt.state == {}


def test_constructor_checks():
    p = Parameter(np.zeros(3))
    assert list(optim.SGD([p], lr=0.1).params) == ["0"]        # bare Parameters: named by position
    with pytest.raises(TypeError, match="not a mix"):
        optim.SGD([p, ("w", Parameter(np.zeros(2)))], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([("w", p)], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([("w", p)], betas=(1.0, 0.9))
    # a tied parameter listed under two names is updated once
    opt = optim.SGD([("a", p), ("b", p)], lr=1.0)
    assert list(opt.params) == ["a"]
    p.grad = np.ones(3)
    opt.step()
    np.testing.assert_array_equal(p.data, -np.ones(3))
    opt.zero_grad()
    np.testing.assert_array_equal(p.grad, 0)
    opt.zero_grad(set_to_none=True)
    assert p.grad is None


@pytest.mark.parametrize("max_norm,norm_type", [(0.5, 2.0), (1e3, 2.0), (0.3, math.inf), (2.0, 1.0)])
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    named, tparams, grads = _setup(2)
    _set_grads(named, tparams, grads[0], skip="conv.bias")
    total = optim.clip_grad_norm(named, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(float(ttotal), rel=1e-12)
    for (k, p), tp in zip(named, tparams):
        if tp.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12, err_msg=k)
    if max_norm < total:
        clipped = optim.clip_grad_norm([p for _, p in named], 1e9, norm_type=norm_type)
        assert clipped == pytest.approx(max_norm, rel=1e-5)


def _torch_lrs(make, n, lr=0.1):
    tp = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([tp], lr=lr)
    sched = make(topt)
    out = []
    for _ in range(n):
        out.append(topt.param_groups[0]["lr"])
        topt.step()
        sched.step()
    return out


def _our_lrs(make, n, lr=0.1):
    opt = optim.SGD([("w", Parameter(np.zeros(1)))], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.lr)
        sched.step()
    return out, sched, opt


def test_steplr_matches_torch():
    ours, sched, _ = _our_lrs(lambda o: optim.StepLR(o, step_size=3, gamma=0.5), 20)
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 20)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert [sched.get_lr(t) for t in range(20)] == ours


def test_cosine_matches_torch():
    ours, sched, _ = _our_lrs(lambda o: optim.CosineAnnealingLR(o, T_max=10, eta_min=1e-3), 31)
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-3), 31)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    assert ours[10] == pytest.approx(1e-3) and ours[0] == 0.1


def test_linear_warmup_then_cosine():
    def make(o):
        return optim.LinearWarmup(o, 4, after=optim.CosineAnnealingLR(o, T_max=6))
    lrs, sched, opt = _our_lrs(make, 12, lr=0.2)
    np.testing.assert_allclose(lrs[:4], [0.05, 0.1, 0.15, 0.2])
    cos = [0.2 * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(8)]
    np.testing.assert_allclose(lrs[4:], cos, atol=1e-15)
    plain, _, _ = _our_lrs(lambda o: optim.LinearWarmup(o, 2), 5, lr=0.4)
    assert plain == [0.2, 0.4, 0.4, 0.4, 0.4]
    # resume: a new schedule loaded from state_dict continues the same sequence
    sd = sched.state_dict()
    opt2 = optim.SGD([("w", Parameter(np.zeros(1)))], lr=9.0)
    sched2 = optim.LinearWarmup(opt2, 4, after=optim.CosineAnnealingLR(opt2, T_max=6))
    sched2.load_state_dict(sd)
    assert opt2.lr == opt.lr
    assert [sched2.step() for _ in range(3)] == [sched.step() for _ in range(3)]


def test_linear_step_decay():
    total = 55
    lrs, sched, _ = _our_lrs(lambda o: optim.LinearStepDecay(o, total_steps=total), total, lr=1.0)
    assert lrs[0] == 1.5e-5 and lrs[-1] == 5e-6
    diffs = np.diff(lrs)
    assert np.all(diffs <= 0)
    assert int(np.sum(diffs < 0)) == 10
    assert sorted(set(lrs), reverse=True) == pytest.approx(list(np.linspace(1.5e-5, 5e-6, 11)), rel=1e-12)
    assert sched.get_lr(10 * total) == 5e-6
    with pytest.raises(ValueError, match="total_steps"):
        optim.LinearStepDecay(optim.SGD([("w", Parameter(np.zeros(1)))], lr=1.0), total_steps=5)


def test_schedule_state_dict_round_trip():
    opt = optim.SGD([("w", Parameter(np.zeros(1)))], lr=0.1)
    s = optim.StepLR(opt, step_size=2, gamma=0.3)
    for _ in range(5):
        s.step()
    opt2 = optim.SGD([("w", Parameter(np.zeros(1)))], lr=0.1)
    s2 = optim.StepLR(opt2, step_size=2, gamma=0.3)
    s2.load_state_dict(s.state_dict())
    assert s2.t == 5 and opt2.lr == opt.lr == pytest.approx(0.1 * 0.3 ** 2)
    with pytest.raises(ValueError, match="StepLR"):
        optim.CosineAnnealingLR(opt2, T_max=3).load_state_dict(s.state_dict())


@pytest.mark.parametrize("total, pct", [(50, 0.3), (37, 0.25), (12, 0.5)])
def test_one_cycle_matches_torch(total, pct):
    """Smith & Topin's one-cycle rate equals torch's OneCycleLR (cosine, two phases, momentum not cycled)."""
    ours, sched, _ = _our_lrs(lambda o: optim.OneCycleLR(o, total_steps=total, pct_start=pct), total, lr=0.4)
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.4, total_steps=total, pct_start=pct, cycle_momentum=False), total, lr=0.4)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert ours[0] == pytest.approx(0.4 / 25) and 0.39 < max(ours) <= 0.4
    top = total * pct - 1                            # the rise ends here: exactly 0.4 when it is a whole step
    assert (max(ours) == pytest.approx(0.4)) == (top == int(top))
    assert ours[-1] == pytest.approx(0.4 / 25 / 1e4) and sched.get_lr(total + 5) == pytest.approx(0.4 / 25 / 1e4)
    # resume: a schedule loaded from state_dict continues the same sequence
    opt2 = optim.SGD([("w", Parameter(np.zeros(1)))], lr=9.0)
    sched2 = optim.OneCycleLR(opt2, total_steps=total, pct_start=pct)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.lr == sched.lr and sched2.base_lr == 0.4


def test_one_cycle_refuses_a_run_too_short_for_a_rise_and_a_fall():
    def opt():
        return optim.SGD([("w", Parameter(np.zeros(1)))], lr=0.1)
    with pytest.raises(ValueError, match=r"one_cycle needs its rising share × the run's steps above 1"):
        optim.OneCycleLR(opt(), total_steps=3, pct_start=0.3)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\), got 1"):
        optim.OneCycleLR(opt(), total_steps=30, pct_start=1.0)
    assert isinstance(optim.make_schedule("one_cycle", opt(), total_steps=30), optim.OneCycleLR)


def test_make_schedule():
    def opt():
        return optim.SGD([("w", Parameter(np.zeros(1)))], lr=0.1)
    assert isinstance(optim.make_schedule("constant", opt()), optim.ConstantLR)
    assert isinstance(optim.make_schedule("step", opt(), step_size=2), optim.StepLR)
    assert optim.make_schedule("cosine", opt(), total_steps=7).T_max == 7
    assert isinstance(optim.make_schedule("linear_step", opt(), total_steps=22), optim.LinearStepDecay)
    o = opt()
    wc = optim.make_schedule("warmup_cosine", o, warmup_steps=3, total_steps=10)
    assert isinstance(wc, optim.LinearWarmup) and wc.after.T_max == 7
    lrs = [o.lr] + [wc.step() for _ in range(10)]
    assert lrs[2] == pytest.approx(0.1) and lrs[3] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="linear_step"):
        optim.make_schedule("nope", opt())
    with pytest.warns(FutureWarning, match="'seed2019' is now called 'linear_step'"):   # the old name
        assert isinstance(optim.make_schedule("seed2019", opt(), total_steps=22), optim.LinearStepDecay)
    with pytest.warns(FutureWarning, match="LinearStepDecay"):
        assert optim.SeedStepDecay is optim.LinearStepDecay


@pytest.mark.gpu
def test_gpu_updates_match_cpu():
    from nabi import backend
    if not backend.gpu_available():
        pytest.skip("needs CuPy and an NVIDIA GPU")
    import cupy
    for cls, kw in [(optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
                    (optim.Adam, dict(lr=1e-2, amsgrad=True)), (optim.AdamW, dict(lr=1e-2))]:
        named_c, _, grads = _setup(3)
        named_g = [(k, Parameter(cupy.asarray(p.data))) for k, p in named_c]
        oc, og = cls(named_c, **kw), cls(named_g, **kw)
        for i in range(N_STEPS):
            for (k, pc), (_, pg) in zip(named_c, named_g):
                pc.grad = grads[i][k].copy()
                pg.grad = cupy.asarray(grads[i][k])
            if i == 2:
                assert optim.clip_grad_norm(named_g, 1.0) == pytest.approx(optim.clip_grad_norm(named_c, 1.0),
                                                                             rel=1e-12)
            oc.step()
            og.step()
        for (k, pc), (_, pg) in zip(named_c, named_g):
            assert isinstance(pg.data, cupy.ndarray)
            np.testing.assert_allclose(cupy.asnumpy(pg.data), pc.data, rtol=1e-10, atol=1e-12, err_msg=k)
        sd = og.state_dict()
        assert all(isinstance(v, np.ndarray) for st in sd["state"].values() for v in st.values())
        og2 = cls([(k, Parameter(pg.data.copy())) for k, pg in named_g], **kw)
        og2.load_state_dict(sd)
        assert all(isinstance(v, cupy.ndarray) for st in og2.state.values() for v in st.values()
                   if not isinstance(v, int))
