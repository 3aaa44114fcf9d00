"""The GAE op: compiled kernels vs the pure-PyTorch reference, and both vs TorchRL."""

from __future__ import annotations

import os
import warnings
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrl.objectives.value.functional import generalized_advantage_estimate as torchrl_gae

from tests._support import cpu_and_cuda
from trpo_torchrl.ops import _extension, extension_loaded, generalized_advantage_estimate
from trpo_torchrl.ops.gae import _reference_rows

needs_ext = pytest.mark.skipif(not extension_loaded(), reason="compiled extension not built")


def make_inputs(shape, dtype=torch.float64, device="cpu", p_done=0.1, p_term=0.5):
    v, nv, r = (torch.randn(shape, dtype=dtype, device=device) for _ in range(3))
    done = torch.rand(shape, device=device) < p_done
    terminated = done & (torch.rand(shape, device=device) < p_term)
    return v, nv, r, done, terminated


def f64(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.fixture
def force_reference(monkeypatch):
    monkeypatch.setenv("TRPO_TORCHRL_FORCE_REFERENCE", "1")


# -- parity with TorchRL ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    T=st.integers(1, 40),
    feat=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    p_done=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    gamma=st.floats(0.5, 1.0),
    lmbda=st.floats(0.0, 1.0),
    use_reference=st.booleans(),
)
def test_matches_torchrl_float64(batch, T, feat, p_done, gamma, lmbda, use_reference):
    shape = (*batch, T, *feat)
    v, nv, r, done, term = make_inputs(shape, p_done=p_done)
    # gamma/lmbda as float64 tensors: TorchRL multiplies a float by an int tensor, which rounds
    # a Python float to float32; a tensor keeps both sides in float64
    g, l = f64(gamma), f64(lmbda)
    with mock.patch.dict(os.environ, {"TRPO_TORCHRL_FORCE_REFERENCE": "1" if use_reference else "0"}):
        adv, vt = generalized_advantage_estimate(g, l, v, nv, r, done, term)
    adv_ref, vt_ref = torchrl_gae(g, l, v, nv, r, done, term)
    torch.testing.assert_close(adv, adv_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vt, vt_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pattern", ["all_done", "none_done", "all_terminated", "truncated_only", "last_step"])
@pytest.mark.parametrize("use_reference", [False, True])
def test_done_patterns(pattern, use_reference, monkeypatch):
    monkeypatch.setenv("TRPO_TORCHRL_FORCE_REFERENCE", "1" if use_reference else "0")
    shape = (3, 17, 1)
    v, nv, r, _, _ = make_inputs(shape)
    zeros = torch.zeros(shape, dtype=torch.bool)
    done, term = {
        "all_done": (~zeros, zeros),
        "none_done": (zeros, zeros),
        "all_terminated": (~zeros, ~zeros),
        "truncated_only": (torch.rand(shape) < 0.3, zeros),
        "last_step": (zeros.clone().index_fill_(1, torch.tensor([16]), True), zeros),
    }[pattern]
    g, l = f64(0.97), f64(0.9)
    adv, vt = generalized_advantage_estimate(g, l, v, nv, r, done, term)
    adv_ref, vt_ref = torchrl_gae(g, l, v, nv, r, done, term)
    torch.testing.assert_close(adv, adv_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vt, vt_ref, rtol=1e-12, atol=1e-12)
    if pattern == "all_terminated":  # no bootstrap, no trace: A = r - V
        torch.testing.assert_close(adv, r - v)
    if pattern == "all_done":  # one-step TD error, bootstrapping through truncation
        torch.testing.assert_close(adv, r + 0.97 * nv - v)


def test_lambda_limits():
    """lmbda = 0 gives the one-step TD error; lmbda = 1 the discounted return minus V (no dones)."""
    shape = (2, 25, 1)
    r = torch.randn(shape, dtype=torch.float64)
    v = torch.randn(2, 26, 1, dtype=torch.float64)
    v, nv = v[:, :-1], v[:, 1:]  # a trajectory: V(s_{t+1}) is the next step's V(s)
    none = torch.zeros(shape, dtype=torch.bool)
    gamma = 0.9
    adv0, _ = generalized_advantage_estimate(gamma, 0.0, v, nv, r, none)
    torch.testing.assert_close(adv0, r + gamma * nv - v)
    adv1, vt1 = generalized_advantage_estimate(gamma, 1.0, v, nv, r, none)
    T = shape[1]
    ret = nv[:, -1]
    expected = torch.empty_like(r)
    for t in range(T - 1, -1, -1):
        ret = r[:, t] + gamma * ret
        expected[:, t] = ret
    torch.testing.assert_close(vt1, expected)  # the Monte-Carlo return bootstrapped at the end


@pytest.mark.parametrize(
    "shape,time_dim",
    [((10, 3, 1), 0), ((4, 2, 30), -1), ((4, 2, 30), 2), ((5, 12, 2, 3), 1), ((30,), -1), ((30,), 0)],
)
def test_time_dim(shape, time_dim):
    v, nv, r, done, term = make_inputs(shape)
    g, l = f64(0.99), f64(0.95)
    adv, vt = generalized_advantage_estimate(g, l, v, nv, r, done, term, time_dim=time_dim)
    adv_ref, vt_ref = torchrl_gae(g, l, v, nv, r, done, term, time_dim=time_dim)
    assert adv.shape == shape and vt.shape == shape
    # (TorchRL returns [T, 1] for a 1-D input with time_dim=0; the values are what matter)
    torch.testing.assert_close(adv, adv_ref.reshape(shape), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vt, vt_ref.reshape(shape), rtol=1e-12, atol=1e-12)


def test_non_contiguous_views():
    base = make_inputs((6, 40, 4))
    views = [t.transpose(0, 2)[:, ::2].transpose(0, 2) for t in base]  # [6, 20, 4], strided time
    assert not views[0].is_contiguous()
    g, l = f64(0.99), f64(0.9)
    adv, vt = generalized_advantage_estimate(g, l, *views)
    adv_ref, vt_ref = torchrl_gae(g, l, *(t.contiguous() for t in views))
    torch.testing.assert_close(adv, adv_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vt, vt_ref, rtol=1e-12, atol=1e-12)
    # time-major storage read through a batch-major view
    tm = [t.transpose(0, 1).contiguous().transpose(0, 1) for t in base]
    adv2, _ = generalized_advantage_estimate(g, l, *tm)
    torch.testing.assert_close(adv2, torchrl_gae(g, l, *base)[0], rtol=1e-12, atol=1e-12)


def test_python_float_coefficients_are_exact():
    """A float gamma is used in the values' dtype, not rounded through float32."""
    v, nv, r, done, term = make_inputs((3, 20, 1))
    adv, _ = generalized_advantage_estimate(0.99, 0.95, v, nv, r, done, term)
    adv_t, _ = generalized_advantage_estimate(f64(0.99), f64(0.95), v, nv, r, done, term)
    torch.testing.assert_close(adv, adv_t, rtol=0, atol=0)


def test_per_step_gamma_and_integer_flags():
    shape = (4, 30, 1)
    v, nv, r, done, term = make_inputs(shape)
    gamma = torch.rand(shape, dtype=torch.float64) * 0.2 + 0.8
    lmbda = torch.rand(4, 1, 1, dtype=torch.float64)  # broadcast over time
    adv, vt = generalized_advantage_estimate(gamma, lmbda, v, nv, r, done.int(), term.to(torch.uint8) * 7)
    adv_ref, vt_ref = torchrl_gae(gamma, lmbda.expand(shape), v, nv, r, done, term)
    torch.testing.assert_close(adv, adv_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vt, vt_ref, rtol=1e-12, atol=1e-12)


# -- compiled kernels vs the reference ----------------------------------------------------------


def _rows(shape, dtype, device):
    v, nv, r, done, term = make_inputs(shape, dtype=dtype, device=device, p_done=0.002)
    g = torch.full((), 0.99, dtype=dtype, device=device).expand(shape)
    l = torch.full((), 0.95, dtype=dtype, device=device).expand(shape)
    return [g, l, v, nv, r, done, term]


@needs_ext
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(
    "shape",
    [(1, 1), (3, 1), (5, 7), (64, 130), (9, 1000), (1, 70_001), (2, 50_000), (1000, 3)],
)
def test_compiled_vs_reference(device, shape):
    """float64 to 1e-12 and float32 to 1e-5 of max|A| against a float64 reference, including the
    long-row paths that split time into chunks (CPU: rows < threads and T >= 32768)."""
    args64 = _rows(shape, torch.float64, device)
    adv_ref, vt_ref = _reference_rows(*args64)
    adv, vt = torch.ops.trpo_torchrl.gae(*args64)
    scale = adv_ref.abs().max().clamp_min(1.0)
    torch.testing.assert_close(adv / scale, adv_ref / scale, rtol=0, atol=1e-12)
    torch.testing.assert_close(vt / scale, vt_ref / scale, rtol=0, atol=1e-12)
    args32 = [a.float() if a.is_floating_point() else a for a in args64]
    adv32, vt32 = torch.ops.trpo_torchrl.gae(*args32)
    assert adv32.dtype == torch.float32
    torch.testing.assert_close(adv32.double() / scale, adv_ref / scale, rtol=0, atol=1e-5)
    torch.testing.assert_close(vt32.double() / scale, vt_ref / scale, rtol=0, atol=1e-5)


@needs_ext
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(device, dtype):
    args64 = _rows((8, 300), torch.float64, device)
    args64[:5] = [a.to(dtype).double() for a in args64[:5]]  # inputs representable in dtype
    adv_ref, _ = _reference_rows(*args64)
    args = [a.to(dtype) if a.is_floating_point() else a for a in args64]
    adv, _ = torch.ops.trpo_torchrl.gae(*args)
    assert adv.dtype == dtype
    scale = adv_ref.abs().max()
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(adv.double() / scale, adv_ref / scale, rtol=0, atol=tol)


@needs_ext
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_compiled_strided_and_per_step_coefficients(device):
    v, nv, r, done, term = make_inputs((50, 8, 3), device=device)
    gamma = torch.rand(50, 8, 3, dtype=torch.float64, device=device)
    args = [gamma, gamma.flip(0)] + [t.permute(1, 2, 0).reshape(24, 50) for t in (v, nv, r, done, term)]
    args[:2] = [t.permute(1, 2, 0).reshape(24, 50) for t in args[:2]]
    assert not args[2].is_contiguous()
    adv, vt = torch.ops.trpo_torchrl.gae(*args)
    adv_ref, vt_ref = _reference_rows(*args)
    torch.testing.assert_close(adv, adv_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vt, vt_ref, rtol=1e-12, atol=1e-12)


@needs_ext
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", [(0, 5), (4, 0)])
def test_empty(device, shape):
    adv, vt = torch.ops.trpo_torchrl.gae(*_rows(shape, torch.float32, device))
    assert adv.shape == shape and vt.shape == shape


@needs_ext
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", [(3, 9), (1, 40)])
def test_opcheck(device, shape):
    torch.library.opcheck(torch.ops.trpo_torchrl.gae.default, _rows(shape, torch.float32, device))


@needs_ext
def test_torch_compile_fullgraph():
    v, nv, r, done, term = make_inputs((4, 20, 1), dtype=torch.float32)

    def fn(v, nv, r, done, term):
        adv, vt = generalized_advantage_estimate(0.99, 0.95, v, nv, r, done, term)
        return adv * 2, vt

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    adv, vt = compiled(v, nv, r, done, term)
    adv_e, vt_e = fn(v, nv, r, done, term)
    torch.testing.assert_close(adv, adv_e)
    torch.testing.assert_close(vt, vt_e)


@needs_ext
def test_grad_falls_back_to_differentiable_reference():
    v, nv, r, done, term = make_inputs((2, 10, 1))
    v.requires_grad_(True)
    adv, _ = generalized_advantage_estimate(0.9, 0.8, v, nv, r, done, term)
    adv.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()
    # dA_t/dV(s_t) = -1 for every step
    assert (v.grad <= -1 + 1e-12).all()


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.update(reward=a["reward"][:, :-1]), "reward has shape"),
        (lambda a: a.update(done=a["done"][..., :1].expand(3, 8, 2).clone()[:, :, :1].squeeze(-1)), "done has shape"),
        (lambda a: a.update(state_value=a["state_value"].long()), "state_value must be a floating"),
        (lambda a: a.update(next_state_value=a["next_state_value"].float()), "next_state_value has dtype"),
        (lambda a: a.update(done=a["done"].double()), "done must be a bool or integer"),
        (lambda a: a.update(time_dim=3), "time_dim=3 is out of range"),
        (lambda a: a.update(time_dim=-4), "time_dim=-4 is out of range"),
        (lambda a: a.update(reward=a["reward"].to("meta")), "reward is on meta"),
        (lambda a: a.update(gamma=torch.ones(5, dtype=torch.float64)), "gamma of shape"),
        (lambda a: a.update(lmbda="0.9"), "lmbda must be a float or a tensor"),
        (lambda a: a.update(gamma=1.5), r"gamma must be in \[0, 1\]"),
        (lambda a: a.update(lmbda=float("nan")), r"lmbda must be in \[0, 1\]"),
        (lambda a: a.update(gamma=True), "gamma must be a float or a tensor"),
        (lambda a: a.update(time_dim=True), "time_dim=True is out of range"),
    ],
)
def test_bad_input(mutate, match):
    v, nv, r, done, term = make_inputs((3, 8, 1))
    kwargs = dict(
        gamma=0.99, lmbda=0.95, state_value=v, next_state_value=nv, reward=r, done=done, terminated=term, time_dim=-2
    )
    mutate(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        generalized_advantage_estimate(**kwargs)


@needs_ext
def test_op_rejects_bad_input_itself():
    args = _rows((3, 5), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="reward has shape"):
        torch.ops.trpo_torchrl.gae(*args[:4], args[4][:, :2], *args[5:])
    with pytest.raises(RuntimeError, match="done must be a bool"):
        torch.ops.trpo_torchrl.gae(*args[:5], args[5].int(), args[6])


def test_missing_library_warns_once(monkeypatch):
    monkeypatch.setattr(_extension, "_LOAD_ERROR", ImportError("no _C"))
    monkeypatch.setattr(_extension, "_warned", False)
    monkeypatch.delenv("TRPO_TORCHRL_FORCE_REFERENCE", raising=False)
    v, nv, r, done, term = make_inputs((2, 5, 1))
    with pytest.warns(RuntimeWarning, match="pip install --no-build-isolation"):
        adv, _ = generalized_advantage_estimate(0.9, 0.9, v, nv, r, done, term)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adv2, _ = generalized_advantage_estimate(0.9, 0.9, v, nv, r, done, term)
    torch.testing.assert_close(adv, adv2)
    assert not _extension.extension_loaded()
