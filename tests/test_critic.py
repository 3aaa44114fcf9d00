"""CriticFit: regression of the critic on the λ-returns, leaving the actor alone."""

import logging

import pytest
import torch

from tests._trpo_batches import actor_state, collect, make_actor, make_critic
from trpo_torchrl import CriticFit, TRPOLoss


def test_fit_lowers_the_critic_loss_and_leaves_the_actor_alone():
    actor = make_actor("gaussian")
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor, num_states=512)
    before = loss(td)["loss_critic"]
    state = actor_state(actor)
    fit = CriticFit(loss, lr=1e-2, epochs=10, minibatch_size=64, generator=torch.Generator().manual_seed(0))
    metrics = fit(td)
    after = loss(td)["loss_critic"]
    assert after < 0.2 * before
    assert metrics["explained_variance"] > 0.8
    for a, b in zip(state, actor.parameters()):
        assert torch.equal(a, b)


def test_fit_needs_value_targets_and_sane_arguments():
    actor = make_actor("categorical")
    loss = TRPOLoss(actor, make_critic())
    with pytest.raises(KeyError, match="value_target"):
        CriticFit(loss)(collect(actor).exclude("value_target"))
    with pytest.raises(ValueError, match="epochs"):
        CriticFit(loss, epochs=0)
    with pytest.raises(ValueError, match="minibatch_size"):
        CriticFit(loss, minibatch_size=0)
    with pytest.raises(ValueError, match="eps"):
        CriticFit(loss, eps=0.0)
    with pytest.raises(ValueError, match="lr"):
        CriticFit(loss, lr=-1e-3)
    for bad in (-1.0, 0.0, float("inf"), "a"):
        with pytest.raises(ValueError, match="max_grad_norm"):
            CriticFit(loss, max_grad_norm=bad)
    with pytest.raises(TypeError, match="generator"):
        CriticFit(loss, generator=0)


@pytest.mark.parametrize("fused", [None, False])
def test_non_finite_value_targets_raise_before_the_critic_moves(fused):
    actor = make_actor("categorical")
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    td["value_target"][3] = float("nan")
    before = [p.detach().clone() for p in loss.critic_network.parameters()]
    with pytest.raises(RuntimeError, match="value target 'value_target' has non-finite values"):
        CriticFit(loss, fused=fused)(td)
    for a, b in zip(before, loss.critic_network.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="floating-point"):
        CriticFit(loss, fused=fused)(td.set("value_target", td["value_target"].nan_to_num().long()))
    assert CriticFit(loss, eps=1e-5).optimizer.param_groups[0]["eps"] == 1e-5


def test_tensor_fast_path_equals_the_tensordict_path():
    # a plain TensorDictModule critic is fitted on tensors gathered once per epoch; the result
    # must be the one of loss.critic_loss on TensorDict minibatches, step for step
    actor = make_actor("gaussian")
    td = collect(actor, num_states=300)
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        critic = make_critic()
        loss = TRPOLoss(actor, critic)
        fit = CriticFit(
            loss, lr=1e-2, epochs=3, minibatch_size=64, generator=torch.Generator().manual_seed(1), fused=False
        )
        if not fast:
            fit._tensor_minibatch_loss = lambda data: None
        else:
            assert fit._tensor_minibatch_loss(td.reshape(-1)) is not None
        metrics = fit(td)
        results.append(([p.detach().clone() for p in critic.parameters()], metrics["loss_critic"]))
    (fast_params, fast_loss), (slow_params, slow_loss) = results
    for a, b in zip(fast_params, slow_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(fast_loss, slow_loss, rtol=0, atol=0)


class _DoubledSequential(torch.nn.Sequential):
    """Its forward is not the plain stack of its children: the output is doubled."""

    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize("hooked", [False, True])
def test_a_critic_whose_forward_is_not_its_children_is_fitted_as_itself(hooked):
    # the fused op computes Linear/Tanh/Linear itself: a critic whose forward differs from its
    # children in order (a Sequential subclass, a forward hook) must take the eager loop, whose
    # result is the reference
    from tensordict.nn import TensorDictModule

    actor = make_actor("gaussian", dtype=torch.float64)
    td = collect(actor, num_states=128, dtype=torch.float64)
    results = []
    for fused in (None, False):
        torch.manual_seed(0)
        layers = [torch.nn.Linear(td["observation"].shape[-1], 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)]
        net = torch.nn.Sequential(*layers) if hooked else _DoubledSequential(*layers)
        if hooked:
            net[2].register_forward_hook(lambda module, args, out: 2 * out)
        critic = TensorDictModule(net, in_keys=["observation"], out_keys=["state_value"]).double()
        fit = CriticFit(
            TRPOLoss(actor, critic),
            lr=1e-2,
            epochs=1,
            minibatch_size=32,
            generator=torch.Generator().manual_seed(1),
            fused=fused,
        )
        metrics = fit(td)
        results.append(([p.detach().clone() for p in critic.parameters()], metrics["loss_critic"]))
    (default_params, default_loss), (eager_params, eager_loss) = results
    for a, b in zip(default_params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(default_loss, eager_loss, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="_DoubledSequential subclasses Sequential" if not hooked else "forward hooks"):
        CriticFit(TRPOLoss(actor, critic), fused=True)(td)


def test_a_hook_on_the_critic_module_is_not_skipped():
    # the fused op and the eager loop's tensor path call the network directly; a hook on the
    # TensorDictModule around it must still shape the fit, as on the TensorDict path
    from tensordict.nn import TensorDictModule

    actor = make_actor("gaussian", dtype=torch.float64)
    td = collect(actor, num_states=128, dtype=torch.float64)
    finals = []
    for reference in (False, True):
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(td["observation"].shape[-1], 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
        )
        critic = TensorDictModule(net, in_keys=["observation"], out_keys=["state_value"]).double()
        critic.register_forward_hook(lambda module, args, out: out.set("state_value", 2 * out["state_value"]))
        fit = CriticFit(
            TRPOLoss(actor, critic),
            lr=1e-2,
            epochs=1,
            minibatch_size=32,
            generator=torch.Generator().manual_seed(1),
            fused=False if reference else None,
        )
        if reference:
            fit._tensor_minibatch_loss = lambda data: None
        fit(td)
        finals.append([p.detach().clone() for p in critic.parameters()])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _value_operator_mlp(dtype=torch.float64):
    from torchrl.modules import MLP, ValueOperator

    torch.manual_seed(0)
    return ValueOperator(MLP(in_features=3, out_features=1, num_cells=[16, 16])).to(dtype)


def test_a_value_operator_mlp_takes_the_fused_path_and_equals_the_eager_fit():
    # TorchRL's ValueOperator adds only default keys to TensorDictModule and MLP's default layers
    # are Linear/Tanh: the fused op and the tensor path apply, and give the eager loop's numbers
    actor = make_actor("gaussian", dtype=torch.float64)
    td = collect(actor, num_states=200, dtype=torch.float64)
    results = []
    for fused in (True, False):
        critic = _value_operator_mlp()
        fit = CriticFit(
            TRPOLoss(actor, critic),
            lr=1e-2,
            epochs=3,
            minibatch_size=64,
            generator=torch.Generator().manual_seed(1),
            fused=fused,
        )
        if not fused:
            assert fit._tensor_minibatch_loss(td.reshape(-1)) is not None
            fit._tensor_minibatch_loss = lambda data: None  # the TensorDict loop: the reference
        metrics = fit(td)
        results.append(([p.detach().clone() for p in critic.parameters()], metrics["loss_critic"]))
    (fused_params, fused_loss), (eager_params, eager_loss) = results
    for a, b in zip(fused_params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused_loss, eager_loss, rtol=1e-10, atol=1e-12)


def test_a_value_operator_subclass_with_its_own_call_is_fitted_as_itself():
    from torchrl.modules import MLP, ValueOperator

    class Halved(ValueOperator):
        def _call_module(self, tensors, **kwargs):
            return super()._call_module(tensors, **kwargs) / 2

    actor = make_actor("gaussian", dtype=torch.float64)
    td = collect(actor, num_states=64, dtype=torch.float64)
    critic = Halved(MLP(in_features=3, out_features=1, num_cells=[8])).double()
    fit = CriticFit(TRPOLoss(actor, critic))
    assert fit._tensor_minibatch_loss(td) is None
    with pytest.raises(ValueError, match="Halved overrides _call_module"):
        CriticFit(TRPOLoss(actor, critic), fused=True)(td)


def test_the_eager_loop_is_taken_with_one_log_line_saying_why(caplog):
    from torchrl.modules import MLP, ValueOperator

    class Halved(ValueOperator):
        def _call_module(self, tensors, **kwargs):
            return super()._call_module(tensors, **kwargs) / 2

    actor = make_actor("gaussian", dtype=torch.float64)
    td = collect(actor, num_states=64, dtype=torch.float64)
    fit = CriticFit(TRPOLoss(actor, Halved(MLP(in_features=3, out_features=1, num_cells=[8])).double()), epochs=1)
    with caplog.at_level(logging.INFO, logger="trpo_torchrl"):
        fit(td)
        fit(td)
    lines = [r.getMessage() for r in caplog.records if "eager loop" in r.getMessage()]
    assert len(lines) == 1 and "Halved overrides _call_module" in lines[0], lines


@pytest.mark.parametrize("fused", [None, False])
def test_a_padded_batch_fits_the_critic_on_its_valid_steps_only(fused):
    # split_trajs=True pads trajectories to [n_traj, max_len] and marks the real steps in
    # ("collector", "mask"); the fit must equal the fit on the valid states alone
    actor = make_actor("gaussian", dtype=torch.float64)
    lengths = [7, 3, 10, 5]
    flat = collect(actor, num_states=sum(lengths), dtype=torch.float64)
    padded = flat[:1].expand(len(lengths), max(lengths)).clone()
    padded["value_target"].fill_(1e6)  # padding that would dominate an unmasked fit
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    start = 0
    for i, n in enumerate(lengths):
        padded[i, :n] = flat[start : start + n]
        mask[i, :n] = True
        start += n
    padded["collector", "mask"] = mask
    results = []
    for batch in (padded, flat):
        critic = make_critic(dtype=torch.float64)
        fit = CriticFit(
            TRPOLoss(actor, critic),
            lr=1e-2,
            epochs=3,
            minibatch_size=8,
            generator=torch.Generator().manual_seed(1),
            fused=fused,
        )
        metrics = fit(batch)
        results.append(([p.detach().clone() for p in critic.parameters()], metrics))
    (masked_params, masked), (ref_params, ref) = results
    for a, b in zip(masked_params, ref_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for key in ("loss_critic", "explained_variance"):
        torch.testing.assert_close(masked[key], ref[key], rtol=0, atol=0)


def test_a_mask_that_is_not_boolean_or_not_one_per_state_is_refused():
    actor = make_actor("gaussian")
    td = collect(actor, num_states=32)
    fit = CriticFit(TRPOLoss(actor, make_critic()))
    with pytest.raises(TypeError, match=r"mask \('collector', 'mask'\) must be a boolean"):
        fit(td.clone().set(("collector", "mask"), torch.ones(32)))
    with pytest.raises(ValueError, match=r"mask \('collector', 'mask'\) .* one value per state"):
        fit(td.clone().set(("collector", "mask"), torch.ones(32, 2, dtype=torch.bool)))
    with pytest.raises(ValueError, match="no valid step"):
        fit(td.clone().set(("collector", "mask"), torch.zeros(32, dtype=torch.bool)))
