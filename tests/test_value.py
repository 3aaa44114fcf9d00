"""FusedGAE against TorchRL's GAE on real rollouts."""

from __future__ import annotations

import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.envs import GymEnv
from torchrl.objectives.value import GAE

from trpo_torchrl import FusedGAE


@pytest.fixture(scope="module")
def rollout():
    """Two CartPole trajectories with resets inside them (random actions), stacked as [2, 120]."""
    env = GymEnv("CartPole-v1")
    env.set_seed(0)
    torch.manual_seed(0)
    tds = [env.rollout(120, break_when_any_done=False) for _ in range(2)]
    td = torch.stack(tds, 0).contiguous()
    assert td["next", "done"].any(), "the fixture should contain episode ends"
    return td


@pytest.fixture(scope="module")
def value_net():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return TensorDictModule(net, in_keys=["observation"], out_keys=["state_value"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"shifted": True},
        {"average_gae": True},
        {"differentiable": True},
        {"keys": {"advantage": "adv", "value_target": "vt"}},
        {"gamma": torch.tensor(0.97)},
    ],
)
def test_fused_gae_matches_torchrl_gae(rollout, value_net, kwargs):
    keys = kwargs.pop("keys", {})
    kwargs = {"gamma": 0.99, "lmbda": 0.95, **kwargs}
    ours = FusedGAE(value_network=value_net, **kwargs)
    theirs = GAE(value_network=value_net, vectorized=False, **kwargs)
    if keys:
        ours.set_keys(**{f"{k}": v for k, v in keys.items()})
        theirs.set_keys(**{f"{k}": v for k, v in keys.items()})
    out_ours = ours(rollout.clone())
    out_theirs = theirs(rollout.clone())
    adv_key = keys.get("advantage", "advantage")
    vt_key = keys.get("value_target", "value_target")
    torch.testing.assert_close(out_ours[adv_key], out_theirs[adv_key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_ours[vt_key], out_theirs[vt_key], rtol=1e-5, atol=1e-5)
    if kwargs.get("differentiable"):
        # the value target still carries the critic's graph, as TorchRL's does
        assert out_ours[vt_key].requires_grad == out_theirs[vt_key].requires_grad


def test_fused_gae_time_dim_and_value_estimate(rollout, value_net):
    td_tm = rollout.clone().transpose(0, 1)  # [T, B] with time first
    ours = FusedGAE(gamma=0.99, lmbda=0.95, value_network=value_net)
    theirs = GAE(gamma=0.99, lmbda=0.95, value_network=value_net, vectorized=False)
    a = ours(td_tm.clone(), time_dim=0)["advantage"]
    b = theirs(td_tm.clone(), time_dim=0)["advantage"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        ours.value_estimate(rollout.clone()), theirs.value_estimate(rollout.clone()), rtol=1e-5, atol=1e-5
    )


def test_fused_gae_without_value_network(rollout, value_net):
    td = rollout.clone()
    with torch.no_grad():
        value_net(td)
        value_net(td["next"])
    ours = FusedGAE(gamma=0.99, lmbda=0.95, value_network=None)(td.clone())
    theirs = GAE(gamma=0.99, lmbda=0.95, value_network=None, vectorized=False)(td.clone())
    torch.testing.assert_close(ours["advantage"], theirs["advantage"], rtol=1e-5, atol=1e-5)
    td_missing = rollout.clone()
    with pytest.raises(ValueError, match="state_value"):
        FusedGAE(gamma=0.99, lmbda=0.95, value_network=None)(td_missing)
    no_done = td.clone()
    del no_done["next", "done"]
    with pytest.raises(KeyError, match="no \\('next', 'done'\\) entry"):
        FusedGAE(gamma=0.99, lmbda=0.95, value_network=None)(no_done)


@pytest.mark.parametrize("kwargs", [{"gamma": 1.5}, {"gamma": -0.1}, {"lmbda": float("nan")}, {"lmbda": True}])
def test_fused_gae_refuses_discounts_outside_0_1(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must be in \\[0, 1\\]"):
        FusedGAE(**{"gamma": 0.99, "lmbda": 0.95, **kwargs}, value_network=None)


def test_fused_gae_is_a_torchrl_gae():
    assert issubclass(FusedGAE, GAE)
