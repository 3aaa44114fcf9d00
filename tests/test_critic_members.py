"""fit_critics: M members' critic fits in one call of the fused op, against the same M CriticFits
called one after another (the reference), and the fallback when the members' fits differ."""

import logging

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn

import trpo_torchrl.critic as critic_module
from tests._trpo_batches import OBS_DIM, collect, make_actor
from trpo_torchrl import CriticFit, TRPOLoss, fit_critics
from trpo_torchrl.ops import extension_loaded

needs_op = pytest.mark.skipif(not extension_loaded(), reason="compiled ops not built")


class _Shift(nn.Module):
    """Parameter-free preprocessing with a buffer (an observation normaliser's role), per member."""

    def __init__(self, shift: float):
        super().__init__()
        self.register_buffer("mean", torch.full((OBS_DIM,), shift))

    def forward(self, x):
        return (x - self.mean).clamp(-3, 3)


def _fits(count, dtype=torch.float64, generator=None, activation=nn.Tanh, per_member=None, **options):
    """``count`` CriticFits on distinct critics (initialisation, preprocessing) with distinct
    shuffling seeds; ``per_member[m]`` overrides member m's CriticFit options."""
    actor = make_actor("gaussian", dtype=dtype)
    fits = []
    for m in range(count):
        torch.manual_seed(20 + m)
        body = nn.Sequential(nn.Linear(OBS_DIM, 32), activation(), nn.Linear(32, 32), activation(), nn.Linear(32, 1))
        critic = TensorDictModule(
            nn.Sequential(_Shift(0.1 * m), body), in_keys=["observation"], out_keys=["state_value"]
        ).to(dtype)
        kwargs = {"lr": 1e-2, "epochs": 3, "minibatch_size": 64, **options, **(per_member or {}).get(m, {})}
        gen = generator if generator is not None else torch.Generator().manual_seed(m)
        fits.append(CriticFit(TRPOLoss(actor, critic), generator=gen, **kwargs))
    return fits


def _batches(count, iteration, dtype=torch.float64, num_states=300):
    actor = make_actor("gaussian", dtype=dtype)
    sizes = num_states if isinstance(num_states, list) else [num_states] * count
    return [collect(actor, num_states=sizes[m], seed=10 * iteration + m, dtype=dtype) for m in range(count)]


def _snapshot(fit):
    """The critic's parameters and the optimiser's state, copied."""
    params = [p.detach().clone() for p in fit.parameters]
    state = [{k: v.clone() for k, v in fit.optimizer.state[p].items()} for p in fit.parameters]
    return params, state


@pytest.fixture
def op_calls(monkeypatch):
    """The shapes of the inputs of every fused-op call fit_critics and CriticFit make."""
    calls = []
    real = critic_module.mlp_fit_adam

    def spy(*args, **kwargs):
        calls.append(tuple(args[3].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(critic_module, "mlp_fit_adam", spy)
    return calls


def _assert_same(a_fits, a_metrics, b_fits, b_metrics, exact):
    def close(x, y):
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)

    for fa, fb in zip(a_fits, b_fits):
        (pa, sa), (pb, sb) = _snapshot(fa), _snapshot(fb)
        for x, y in zip(pa, pb):
            close(x, y)
        for x, y in zip(sa, sb):
            assert float(x["step"]) == float(y["step"])
            close(x["exp_avg"], y["exp_avg"])
            close(x["exp_avg_sq"], y["exp_avg_sq"])
    for ma, mb in zip(a_metrics, b_metrics):
        assert set(ma.keys()) == set(mb.keys()) == {"loss_critic", "explained_variance"}
        close(ma["loss_critic"], mb["loss_critic"])
        close(ma["explained_variance"], mb["explained_variance"])


def _padded(batches):
    """The batches with a split_trajs-style mask marking 20 of each member's states as padding,
    at different places per member, and the padding's targets made huge."""
    out = []
    for m, batch in enumerate(batches):
        batch = batch.clone()
        mask = torch.ones(batch.numel(), dtype=torch.bool)
        mask[10 * m : 10 * m + 20] = False
        batch["value_target"][~mask] = 1e6
        batch["collector", "mask"] = mask
        out.append(batch)
    return out


@needs_op
@pytest.mark.parametrize("padded", [False, True])
def test_fit_critics_is_m_separate_critic_fits(padded, op_calls):
    # two iterations, so the Adam state carried from the first shapes the second
    members = 3
    together, apart = _fits(members), _fits(members)
    for iteration in range(2):
        batches = _batches(members, iteration)
        if padded:  # each member fits its valid states only, 280 of them
            batches = _padded(batches)
        calls_before = len(op_calls)
        metrics = fit_critics(together, batches)
        assert op_calls[calls_before:] == [(members, 280 if padded else 300, OBS_DIM)]  # one stacked call
        expected = [fit(batch) for fit, batch in zip(apart, batches)]
        _assert_same(together, metrics, apart, expected, exact=False)
    for fit in together:
        assert float(fit.optimizer.state[fit.parameters[0]]["step"]) == 2 * 3 * 5  # ceil(280 or 300 / 64) = 5
    # the members are different critics that each moved
    assert not torch.equal(together[0].parameters[0], together[1].parameters[0])


@needs_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_member_is_its_single_fit_bit_for_bit(dtype, op_calls):
    together, apart = _fits(1, dtype), _fits(1, dtype)
    for iteration in range(2):
        batches = _batches(1, iteration, dtype)
        metrics = fit_critics(together, batches)
        expected = [apart[0](batches[0])]
        _assert_same(together, metrics, apart, expected, exact=True)
    assert [len(shape) for shape in op_calls] == [3, 2, 3, 2]  # stacked (M = 1), then the single call


@needs_op
def test_members_sharing_one_generator_draw_in_member_order(op_calls):
    # one generator for all: member 0's epochs are drawn first, then member 1's, as in separate calls
    together = _fits(2, generator=torch.Generator().manual_seed(7))
    apart = _fits(2, generator=torch.Generator().manual_seed(7))
    batches = _batches(2, 0)
    metrics = fit_critics(together, batches)
    expected = [fit(batch) for fit, batch in zip(apart, batches)]
    assert op_calls[0] == (2, 300, OBS_DIM)
    _assert_same(together, metrics, apart, expected, exact=False)


def _differing(case):
    """Two runs' (fits, batches per iteration) for a population whose members cannot be stacked,
    and the words of the log line."""
    count, per_member, sizes, reason = 3, None, 300, None
    if case == "minibatch":
        per_member, reason = {1: dict(minibatch_size=32)}, "minibatch sizes"
    elif case == "epochs":
        per_member, reason = {2: dict(epochs=2)}, "epochs"
    elif case == "states":
        sizes, reason = [300, 290, 300], "numbers of valid states"  # the same 5 steps per epoch
    elif case == "eager":
        per_member, reason = {1: dict(fused=False)}, "member 1's critic does not take the fused op"
    elif case == "steps":
        reason = "Adam step counts"
    elif case == "same fit":
        reason = "appears for more than one member"
    runs = []
    for _ in range(2):
        fits = _fits(count, per_member=per_member)
        if case == "steps":  # member 0 has been fitted once more than the others
            fits[0](_batches(1, 5)[0])
        if case == "same fit":
            fits = [fits[0], fits[1], fits[0]]
        runs.append(fits)
    batches = [_batches(count, it, num_states=sizes) for it in range(2)]
    return runs, batches, reason


@needs_op
@pytest.mark.parametrize("case", ["minibatch", "epochs", "states", "eager", "steps", "same fit"])
def test_members_that_differ_are_fitted_one_after_another(case, caplog, op_calls):
    (together, apart), batches, reason = _differing(case)
    with caplog.at_level(logging.INFO, logger="trpo_torchrl"):
        for iteration_batches in batches:
            metrics = fit_critics(together, iteration_batches)
            expected = [fit(batch) for fit, batch in zip(apart, iteration_batches)]
            _assert_same(together, metrics, apart, expected, exact=True)
    assert all(len(shape) == 2 for shape in op_calls)  # never a stacked call
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fit_critics")]
    assert len(lines) == 1 and reason in lines[0], lines


@needs_op
def test_a_member_whose_fused_fit_cannot_apply_raises_before_any_critic_moves():
    fits = _fits(2, per_member={1: dict(fused=True)})
    odd = _fits(1, activation=nn.GELU, fused=True)[0]
    fits[1] = odd
    before = _snapshot(fits[0])[0]
    with pytest.raises(ValueError, match="CriticFit\\(fused=True\\): the fused fit does not apply"):
        fit_critics(fits, _batches(2, 0))
    for a, b in zip(before, fits[0].parameters):
        assert torch.equal(a, b)


def test_fit_critics_checks_its_arguments():
    fits = _fits(2)
    batches = _batches(2, 0)
    with pytest.raises(ValueError, match="one batch per fit is needed, got 2 fits and 1 batches"):
        fit_critics(fits, batches[:1])
    with pytest.raises(TypeError, match="fits must be CriticFit objects"):
        fit_critics([fits[0], "critic"], batches)
    assert fit_critics([], []) == []
    with pytest.raises(KeyError, match="value_target"):
        fit_critics(fits, [batches[0], batches[1].exclude("value_target")])


def test_fit_critics_on_the_pure_pytorch_path(monkeypatch, op_calls):
    # without the compiled ops the stacked call runs the reference, member after member
    monkeypatch.setenv("TRPO_TORCHRL_FORCE_REFERENCE", "1")
    together, apart = _fits(2, epochs=2), _fits(2, epochs=2)
    batches = _batches(2, 0, num_states=100)
    metrics = fit_critics(together, batches)
    expected = [fit(batch) for fit, batch in zip(apart, batches)]
    assert op_calls[0] == (2, 100, OBS_DIM)
    _assert_same(together, metrics, apart, expected, exact=False)
