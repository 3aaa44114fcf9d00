"""An actor and a critic that share parameters (TorchRL's ActorValueOperator torso): the critic fit
leaves every parameter the policy uses where the trust-region step put it."""

import warnings

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.modules import MLP, ActorValueOperator, ProbabilisticActor, ValueOperator
from torchrl.modules.distributions import IndependentNormal

from trpo_torchrl import CriticFit, TRPOLoss, TrustRegionUpdate


def _actor_value_operator(*, frozen_value_head: bool = False):
    # TorchRL's PPO-Atari pattern: a common torso, a policy head and a value head
    torch.manual_seed(0)
    torso = TensorDictModule(
        MLP(in_features=3, out_features=16, num_cells=[16], activate_last_layer=True), ["observation"], ["hidden"]
    )
    policy_head = ProbabilisticActor(
        TensorDictModule(nn.Sequential(nn.Linear(16, 4), NormalParamExtractor()), ["hidden"], ["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=IndependentNormal,
        return_log_prob=True,
    )
    value_head = ValueOperator(nn.Linear(16, 1).requires_grad_(not frozen_value_head), in_keys=["hidden"])
    return ActorValueOperator(torso, policy_head, value_head)


def _batch(actor, num_states=512):
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(num_states, 3, generator=gen)
    with torch.no_grad():
        td = actor(TensorDict({"observation": obs}, [num_states]))
    td["advantage"] = td["action"][:, :1] * obs[:, :1]
    td["value_target"] = 3 * obs[:, 1:2]
    return td


def test_the_critic_fit_leaves_the_shared_torso_to_the_trust_region_step():
    model = _actor_value_operator()
    actor, critic = model.get_policy_operator(), model.get_value_operator()
    loss = TRPOLoss(actor, critic)
    torso = model.module[0]
    shared = {id(p) for p in torso.parameters()}
    with pytest.warns(UserWarning, match=r"shares 4 parameters with the actor .*module\.0\.module\.0\.weight"):
        fit = CriticFit(loss, lr=1e-2, epochs=10, minibatch_size=64, generator=torch.Generator().manual_seed(2))
    assert {id(p) for p in fit.parameters} == {id(p) for p in model.module[2].parameters()}
    assert not shared & {id(p) for p in fit.parameters}

    td = _batch(actor)
    update = TrustRegionUpdate(loss, max_kl=0.01)
    metrics = update(td)
    assert metrics["step_accepted"]
    stepped = [p.detach().clone() for p in actor.parameters()]
    head_before = [p.detach().clone() for p in model.module[2].parameters()]
    critic_before = loss.critic_loss(td).detach()

    fit(td)

    # every actor parameter, the torso's included, is what the trust-region step wrote, bit for bit
    for a, b in zip(stepped, actor.parameters()):
        assert torch.equal(a, b)
    # so the iteration's policy change is the accepted step's, inside the trust region
    batch = loss.policy_batch(td)
    assert loss.policy_terms(batch).kl <= 0.01
    torch.testing.assert_close(loss.policy_terms(batch).kl, metrics["kl"])
    # the critic's own head did learn, and nothing the fit touched is left requiring no grad
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.module[2].parameters()))
    assert loss.critic_loss(td) < critic_before
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in torso.parameters())


def test_a_critic_made_only_of_the_actors_parameters_is_refused():
    model = _actor_value_operator(frozen_value_head=True)
    loss = TRPOLoss(model.get_policy_operator(), model.get_value_operator())
    with pytest.raises(
        ValueError, match=r"every trainable parameter of the critic \(module\.0\.module\.0\.weight, .*\) is the actor.s"
    ):
        CriticFit(loss)


def test_separate_networks_give_no_warning():
    model = _actor_value_operator()
    torch.manual_seed(3)
    critic = ValueOperator(MLP(in_features=3, out_features=1, num_cells=[8]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CriticFit(TRPOLoss(model.get_policy_operator(), critic))
