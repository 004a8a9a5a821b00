"""Tests for apb_ref.optim: updates against plain re-statements of PyTorch's formulas, state round trips,
schedules, argument checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from apb_ref.nn.optim import (SGD, Adam, AdamW, ConstantLR, CosineLR, StepLR, WarmupLR,
                           build_optimizer, build_scheduler)


class P:
    """The smallest thing the optimizers accept as a parameter."""

    def __init__(self, data, grad=None, name=None):
        self.data = data
        self.grad = grad
        self.name = name


def make_params(seed=0, shapes=((3, 4), (5,)), dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [P(rng.standard_normal(s).astype(dtype)) for s in shapes]


def grad_sequence(seed, shapes, steps, dtype=np.float64):
    rng = np.random.default_rng(seed + 1000)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.copy()
        opt.step()


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# References: PyTorch's algorithms written out plainly, one parameter, one step at a time.
# ---------------------------------------------------------------------------------------------

def sgd_reference(p0, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p = p0.copy()
    buf = None
    for g in grads:
        d_p = g + weight_decay * p
        if momentum != 0:
            if buf is None:
                buf = d_p.copy()
            else:
                buf = momentum * buf + (1 - dampening) * d_p
            if nesterov:
                d_p = d_p + momentum * buf
            else:
                d_p = buf
        p = p - lr * d_p
    return p


def adam_reference(p0, grads, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False):
    p = p0.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


SHAPES = ((3, 4), (5,))


@pytest.mark.parametrize("kw", [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, dampening=0.3),
    dict(momentum=0.9, nesterov=True),
    dict(weight_decay=5e-4),
    dict(momentum=0.8, weight_decay=1e-2, nesterov=True),
])
def test_sgd_matches_reference(kw):
    params = make_params()
    p0 = [p.data.copy() for p in params]
    grads = grad_sequence(0, SHAPES, steps=6)
    run(SGD(params, lr=0.05, **kw), params, grads)
    for i, p in enumerate(params):
        close(p.data, sgd_reference(p0[i], [gs[i] for gs in grads], lr=0.05, **kw))


def test_sgd_momentum_by_hand():
    # f(p) = p²/2, g = p; lr 0.1, momentum 0.9: buf 1 → p 0.9; buf 0.9·1 + 0.9 = 1.8 → p 0.9 − 0.18 = 0.72
    p = P(np.array([1.0]))
    opt = SGD([p], lr=0.1, momentum=0.9)
    for expected in (0.9, 0.72):
        p.grad = p.data.copy()
        opt.step()
        np.testing.assert_allclose(p.data, [expected], rtol=1e-15)


@pytest.mark.parametrize("cls,kw,decoupled", [
    (Adam, dict(), False),
    (Adam, dict(weight_decay=1e-2), False),
    (Adam, dict(betas=(0.5, 0.9), eps=1e-6), False),
    (AdamW, dict(), True),
    (AdamW, dict(weight_decay=0.1, betas=(0.8, 0.99)), True),
])
def test_adam_matches_reference(cls, kw, decoupled):
    params = make_params(seed=1)
    p0 = [p.data.copy() for p in params]
    grads = grad_sequence(1, SHAPES, steps=7)
    opt = cls(params, lr=1e-2, **kw)
    run(opt, params, grads)
    g0 = opt.param_groups[0]
    for i, p in enumerate(params):
        ref = adam_reference(p0[i], [gs[i] for gs in grads], lr=1e-2, beta1=g0["betas"][0],
                             beta2=g0["betas"][1], eps=g0["eps"], weight_decay=g0["weight_decay"],
                             decoupled=decoupled)
        close(p.data, ref)


def test_adamw_default_weight_decay_is_decoupled():
    assert AdamW(make_params(), lr=1e-3).param_groups[0]["weight_decay"] == 1e-2
    assert Adam(make_params(), lr=1e-3).param_groups[0]["weight_decay"] == 0.0
    # With a zero gradient Adam's step is 0 but AdamW still shrinks p by (1 − lr·wd).
    p = P(np.array([2.0, -4.0]))
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = np.zeros(2)
    opt.step()
    np.testing.assert_array_equal(p.data, np.array([2.0, -4.0]) * (1 - 0.1 * 0.5))


def test_adam_first_step_moves_by_lr():
    # Bias correction makes the first step lr·g/(|g| + ε) ≈ lr·sign(g).
    p = P(np.zeros(4))
    opt = Adam([p], lr=0.01)
    p.grad = np.array([3.0, -0.2, 1e-3, -50.0])
    opt.step()
    np.testing.assert_allclose(p.data, -0.01 * np.sign(p.grad), rtol=1e-4)


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1),
    lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    lambda ps: Adam(ps, lr=0.05),
    lambda ps: AdamW(ps, lr=0.05, weight_decay=1e-4),
])
def test_converges_on_quadratic(make):
    # f(x) = ½ Σ a_i (x_i − c_i)², gradient a·(x − c), minimum at c.
    a = np.array([1.0, 3.0, 0.5, 2.0])
    c = np.array([1.0, -2.0, 0.5, 3.0])
    x = P(np.zeros(4))
    opt = make([x])
    for _ in range(2000):
        x.grad = a * (x.data - c)
        opt.step()
    np.testing.assert_allclose(x.data, c, atol=1e-2)


def test_param_groups_use_their_own_hyperparameters():
    a, b = P(np.ones(3)), P(np.ones(3))
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5, "weight_decay": 0.1}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["weight_decay"] == 0.0
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["weight_decay"] == 0.1
    a.grad, b.grad = np.ones(3), np.ones(3)
    opt.step()
    np.testing.assert_allclose(a.data, 1 - 0.1 * 1)
    np.testing.assert_allclose(b.data, 1 - 0.5 * (1 + 0.1 * 1))


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda ps: Adam(ps, lr=0.1, weight_decay=0.1),
    lambda ps: AdamW(ps, lr=0.1, weight_decay=0.1),
])
def test_params_without_grad_are_untouched(make):
    a, b = make_params()
    before = b.data.copy()
    opt = make([a, b])
    for _ in range(3):
        a.grad, b.grad = np.ones_like(a.data), None
        opt.step()
    np.testing.assert_array_equal(b.data, before)
    assert (0, 1) not in opt.state
    # Later gradients start b's state fresh (e.g. Adam's step count is 1, not 4).
    b.grad = np.ones_like(b.data)
    opt.step()
    if "step" in opt.state[(0, 1)]:
        assert opt.state[(0, 1)]["step"] == 1


def test_zero_grad_sets_none():
    params = make_params()
    for p in params:
        p.grad = np.ones_like(p.data)
    SGD(params, lr=0.1).zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    lambda ps: Adam(ps, lr=0.1, weight_decay=1e-3),
    lambda ps: AdamW(ps, lr=0.1),
])
def test_update_in_place_keeps_dtype_and_grad(make, dtype):
    params = make_params(dtype=dtype)
    arrays = [p.data for p in params]
    opt = make(params)
    for gs in grad_sequence(0, SHAPES, steps=3, dtype=np.float64):  # float64 grads are cast to the param dtype
        for p, g in zip(params, gs):
            p.grad = g
        grads = [g.copy() for g in gs]
        opt.step()
        for p, g in zip(params, grads):
            np.testing.assert_array_equal(p.grad, g)  # the gradient is not modified
    for p, arr in zip(params, arrays):
        assert p.data is arr and p.data.dtype == dtype
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, np.ndarray):
                assert v.dtype == dtype


def test_float32_close_to_float64():
    p64 = make_params(seed=3)
    p32 = [P(p.data.astype(np.float32)) for p in p64]
    grads = grad_sequence(3, SHAPES, steps=5)
    run(Adam(p64, lr=1e-2), p64, grads)
    run(Adam(p32, lr=1e-2), p32, [[g.astype(np.float32) for g in gs] for gs in grads])
    for a, b in zip(p32, p64):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)


def test_wrong_grad_shape_names_the_parameter():
    p = P(np.zeros(3), name="conv1.weight")
    p.grad = np.zeros(4)
    with pytest.raises(ValueError, match="conv1.weight"):
        SGD([p], lr=0.1).step()


# ---------------------------------------------------------------------------------------------
# state_dict
# ---------------------------------------------------------------------------------------------

OPTIMIZER_FACTORIES = {
    "sgd": lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
    "sgd_damp": lambda ps: SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.2}], lr=0.05,
                               momentum=0.5, dampening=0.1),
    "adam": lambda ps: Adam(ps, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda ps: AdamW([{"params": ps[:1], "weight_decay": 0.0}, {"params": ps[1:]}], lr=1e-2),
}


def check_resume(make, shapes, dtype, seed):
    """3 steps, save, 3 more; equals a fresh optimizer loaded from the save, 3 more — bit for bit."""
    grads = grad_sequence(seed, shapes, steps=6, dtype=dtype)
    params = make_params(seed, shapes, dtype)
    opt = make(params)
    run(opt, params, grads[:3])
    saved_data = [p.data.copy() for p in params]
    saved = opt.state_dict()
    run(opt, params, grads[3:])

    fresh = [P(d.copy()) for d in saved_data]
    opt2 = make(fresh)
    opt2.load_state_dict(saved)
    run(opt2, fresh, grads[3:])
    for a, b in zip(params, fresh):
        np.testing.assert_array_equal(a.data, b.data)
    return saved


@pytest.mark.parametrize("name", sorted(OPTIMIZER_FACTORIES))
def test_state_dict_resume_bit_for_bit(name):
    saved = check_resume(OPTIMIZER_FACTORIES[name], SHAPES, np.float32, seed=5)
    # The saved state is a copy: continuing the original optimizer did not change it.
    again = check_resume(OPTIMIZER_FACTORIES[name], SHAPES, np.float32, seed=5)
    for key, state in saved["state"].items():
        for k, v in state.items():
            np.testing.assert_array_equal(v, again["state"][key][k])


def test_state_dict_holds_hyperparameters_and_copies():
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9)
    sched = CosineLR(opt, t_max=10)
    sched.step()
    for p in params:
        p.grad = np.ones_like(p.data)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["lr"] == opt.param_groups[0]["lr"] < 0.1
    assert sd["param_groups"][0]["initial_lr"] == 0.1
    assert sd["param_groups"][0]["num_params"] == 2
    buf = opt.state[(0, 0)]["momentum_buffer"]
    assert sd["state"][(0, 0)]["momentum_buffer"] is not buf
    sd["state"][(0, 0)]["momentum_buffer"][...] = 123.0
    assert not np.any(buf == 123.0)

    fresh = SGD(make_params(), lr=0.7)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert fresh.param_groups[0]["momentum"] == 0.9
    assert fresh.state[(0, 0)]["momentum_buffer"] is not sd["state"][(0, 0)]["momentum_buffer"]


def test_load_state_dict_rejects_mismatch():
    opt = SGD(make_params(), lr=0.1, momentum=0.9)
    run(opt, opt.param_groups[0]["params"], grad_sequence(0, SHAPES, 1))
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="params"):
        SGD(make_params(shapes=((3, 4),)), lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="shape"):
        SGD(make_params(shapes=((4, 3), (5,))), lr=0.1).load_state_dict(sd)


# ---------------------------------------------------------------------------------------------
# Determinism (hypothesis)
# ---------------------------------------------------------------------------------------------

shape_st = st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(OPTIMIZER_FACTORIES)),
       shapes=st.lists(shape_st, min_size=2, max_size=3).map(tuple),
       dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_resume_bit_for_bit_random_shapes(name, shapes, dtype, seed):
    check_resume(OPTIMIZER_FACTORIES[name], shapes, dtype, seed)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["sgd", "adam", "adamw"]),
       lr=st.floats(1e-5, 1.0),
       weight_decay=st.floats(0.0, 0.1),
       shape=shape_st,
       dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_same_inputs_same_bits(kind, lr, weight_decay, shape, dtype, seed):
    results = []
    for _ in range(2):
        params = make_params(seed, (shape,), dtype)
        opt = build_optimizer(kind, params, lr=lr, weight_decay=weight_decay, nesterov=kind == "sgd")
        run(opt, params, grad_sequence(seed, (shape,), steps=4, dtype=dtype))
        assert params[0].data.dtype == dtype
        results.append(params[0].data)
    np.testing.assert_array_equal(results[0], results[1])


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(1e-4, 0.5), momentum=st.floats(0.0, 0.99), weight_decay=st.floats(0.0, 0.1),
       nesterov=st.booleans(), seed=st.integers(0, 2**16))
def test_sgd_reference_random_hyperparameters(lr, momentum, weight_decay, nesterov, seed):
    nesterov = nesterov and momentum > 0
    params = make_params(seed, ((6,),))
    p0 = params[0].data.copy()
    grads = grad_sequence(seed, ((6,),), steps=4)
    run(SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov), params, grads)
    close(params[0].data, sgd_reference(p0, [g[0] for g in grads], lr, momentum, 0.0, weight_decay, nesterov))


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,arg", [
    (lambda ps: SGD(ps, lr=-0.1), "lr"),
    (lambda ps: SGD(ps, lr=float("nan")), "lr"),
    (lambda ps: SGD(ps, lr=0.1, momentum=1.0), "momentum"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.1), "momentum"),
    (lambda ps: SGD(ps, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (lambda ps: SGD([{"params": ps, "lr": -1.0}], lr=0.1), "lr"),
    (lambda ps: Adam(ps, lr=-1e-3), "lr"),
    (lambda ps: Adam(ps, betas=(1.0, 0.999)), "betas"),
    (lambda ps: Adam(ps, betas=(0.9, -0.1)), "betas"),
    (lambda ps: Adam(ps, betas=(0.9,)), "betas"),
    (lambda ps: Adam(ps, eps=0.0), "eps"),
    (lambda ps: AdamW(ps, weight_decay=-0.01), "weight_decay"),
    (lambda ps: SGD([], lr=0.1), "params"),
    (lambda ps: SGD(ps + ps[:1], lr=0.1), "params"),
    (lambda ps: build_optimizer("rmsprop", ps, lr=0.1, weight_decay=0.0), "name"),
    (lambda ps: build_optimizer("adam", ps, lr=0.1, weight_decay=0.0, nesterov=True), "nesterov"),
])
def test_bad_arguments_raise_value_error_naming_them(make, arg):
    with pytest.raises(ValueError, match=arg) as info:
        make(make_params())
    assert str(info.value).startswith(arg)


def test_error_message_shows_the_value():
    with pytest.raises(ValueError, match=r"momentum: .*got 1\.5"):
        SGD(make_params(), lr=0.1, momentum=1.5)


def test_build_optimizer_kinds():
    ps = make_params()
    sgd = build_optimizer("sgd", ps, lr=0.1, weight_decay=5e-4, nesterov=True)
    assert isinstance(sgd, SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["nesterov"]
    assert type(build_optimizer("adam", make_params(), lr=1e-3, weight_decay=0.0)) is Adam
    assert type(build_optimizer("AdamW", make_params(), lr=1e-3, weight_decay=0.05)) is AdamW


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------

def two_group_opt(lr0=0.1, lr1=0.01):
    a, b = make_params()
    return SGD([{"params": [a]}, {"params": [b], "lr": lr1}], lr=lr0, momentum=0.9)


def test_cosine_endpoints_and_midpoint():
    opt = two_group_opt()
    sched = CosineLR(opt, t_max=10, eta_min=1e-4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.01)
    assert sched.get_lr(5) == pytest.approx([1e-4 + (0.1 - 1e-4) / 2, 1e-4 + (0.01 - 1e-4) / 2])
    assert sched.get_lr(10) == [1e-4, 1e-4]
    assert sched.get_lr(25) == [1e-4, 1e-4]  # stays at eta_min after t_max
    for e in range(1, 11):
        sched.step()
        assert sched.last_epoch == e
        assert sched.get_last_lr() == sched.get_lr(e)
    expected = 1e-4 + (0.1 - 1e-4) * (1 + math.cos(math.pi * 3 / 10)) / 2
    assert sched.get_lr(3)[0] == pytest.approx(expected, rel=1e-15)


def test_step_milestones():
    opt = two_group_opt()
    sched = StepLR(opt, milestones=[6, 3], gamma=0.5)
    lrs = [sched.get_lr(e)[0] for e in range(9)]
    assert lrs == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3)
    assert sched.get_lr(7)[1] == pytest.approx(0.0025)


def test_constant():
    opt = two_group_opt()
    sched = ConstantLR(opt)
    for _ in range(5):
        sched.step()
    assert sched.get_last_lr() == [0.1, 0.01]


def test_warmup_ramp_then_shifted_schedule():
    opt = two_group_opt()
    sched = WarmupLR(opt, 4, after=CosineLR(opt, t_max=6))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 5)
    ramp = [sched.get_lr(e)[0] for e in range(4)]
    assert ramp == pytest.approx([0.02, 0.04, 0.06, 0.08])
    assert sched.get_lr(2)[1] == pytest.approx(0.006)
    assert sched.get_lr(4) == pytest.approx([0.1, 0.01])       # the cosine's epoch 0
    assert sched.get_lr(7) == sched.after.get_lr(3)
    assert sched.get_lr(10) == [0.0, 0.0]                       # the cosine's end


def test_schedule_uses_initial_lr_not_the_current_one():
    opt = two_group_opt()
    sched = StepLR(opt, milestones=[1], gamma=0.1)
    sched.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.01, 0.001])  # not compounded: lr0·γ once
    sched2 = ConstantLR(opt)  # a second scheduler keeps the recorded initial_lr
    assert sched2.get_last_lr() == [0.1, 0.01]


def test_scheduler_state_dict_round_trip():
    opt = two_group_opt()
    sched = build_scheduler("cosine", opt, epochs=20, warmup=3)
    for _ in range(7):
        sched.step()
    sd = sched.state_dict()
    assert sd == {"last_epoch": 7}
    opt2 = two_group_opt()
    sched2 = build_scheduler("cosine", opt2, epochs=20, warmup=3)
    sched2.load_state_dict(sd)
    assert sched2.last_epoch == 7
    assert sched2.get_last_lr() == sched.get_last_lr()
    sched.step(), sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_build_scheduler():
    opt = two_group_opt()
    cos = build_scheduler("cosine", opt, epochs=10)
    assert isinstance(cos, CosineLR) and cos.t_max == 10
    step = build_scheduler("step", two_group_opt(), epochs=100)
    assert isinstance(step, StepLR) and step.milestones == [50, 75]
    warm = build_scheduler("step", two_group_opt(), epochs=100, warmup=20)
    assert isinstance(warm, WarmupLR) and warm.after.milestones == [40, 60]
    assert warm.get_lr(59)[0] == pytest.approx(0.1) and warm.get_lr(60)[0] == pytest.approx(0.01)
    wcos = build_scheduler("cosine", two_group_opt(), epochs=10, warmup=2)
    assert wcos.after.t_max == 8 and wcos.get_lr(10) == [0.0, 0.0]
    assert isinstance(build_scheduler("constant", two_group_opt(), epochs=5), ConstantLR)


@pytest.mark.parametrize("call,arg", [
    (lambda o: build_scheduler("linear", o, epochs=10), "name"),
    (lambda o: build_scheduler("cosine", o, epochs=0), "epochs"),
    (lambda o: build_scheduler("cosine", o, epochs=10, warmup=10), "warmup"),
    (lambda o: build_scheduler("cosine", o, epochs=10, warmup=-1), "warmup"),
    (lambda o: CosineLR(o, t_max=0), "t_max"),
    (lambda o: StepLR(o, milestones=[-1]), "milestones"),
    (lambda o: StepLR(o, milestones=[2], gamma=0.0), "gamma"),
    (lambda o: WarmupLR(o, -1, after=ConstantLR(o)), "warmup_epochs"),
    (lambda o: WarmupLR(o, 2, after=ConstantLR(two_group_opt())), "after"),
    (lambda o: ConstantLR(o).get_lr(-1), "epoch"),
])
def test_scheduler_bad_arguments(call, arg):
    with pytest.raises(ValueError, match=arg) as info:
        call(two_group_opt())
    assert str(info.value).startswith(arg)


def test_unknown_scheduler_lists_choices():
    with pytest.raises(ValueError, match="cosine, step, constant"):
        build_scheduler("poly", two_group_opt(), epochs=10)


@settings(max_examples=50, deadline=None)
@given(epochs=st.integers(1, 300), warmup=st.integers(0, 20), name=st.sampled_from(["cosine", "step", "constant"]))
def test_schedules_stay_within_zero_and_initial_lr(epochs, warmup, name):
    warmup = min(warmup, epochs - 1)
    sched = build_scheduler(name, two_group_opt(), epochs=epochs, warmup=warmup)
    lrs = [sched.get_lr(e)[0] for e in range(epochs + 5)]
    assert all(0.0 <= lr <= 0.1 + 1e-15 for lr in lrs)
    assert lrs[warmup] == pytest.approx(0.1)  # the peak right after the warm-up


def test_a_schedule_per_batch_is_the_epoch_curve_sampled_per_batch():
    steps = 7
    per_epoch = build_scheduler("cosine", SGD([P(np.zeros(1))], lr=0.1), epochs=4, warmup=1)
    per_batch = build_scheduler("cosine", SGD([P(np.zeros(1))], lr=0.1), epochs=4, warmup=1,
                                steps_per_epoch=steps)
    for epoch in range(4):
        if epoch >= 1:  # after the warm-up (finer steps there) both agree at each epoch boundary
            assert per_batch.get_last_lr() == pytest.approx(per_epoch.get_last_lr())
        seen = []
        for _ in range(steps):
            seen.append(per_batch.get_last_lr()[0])
            per_batch.step()
        per_epoch.step()
        # rising through the warm-up, then the cosine falls within each epoch
        assert all((a < b) if epoch < 1 else (a > b) for a, b in zip(seen, seen[1:]))
    assert per_batch.get_last_lr()[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_scheduler("cosine", SGD([P(np.zeros(1))], lr=0.1), epochs=4, steps_per_epoch=0)
