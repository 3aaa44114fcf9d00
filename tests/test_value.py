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


@pytest.fixture(scope="module")
def padded_batch():
    """A ``Collector(split_trajs=True)`` batch: ``[n_traj, max_len]`` with ``("collector", "mask")``;
    its last row is cut by the batch end (not done), the others end with an episode end."""
    from torchrl.collectors import Collector

    torch.manual_seed(0)
    collector = Collector(lambda: GymEnv("CartPole-v1"), None, frames_per_batch=150, total_frames=150, split_trajs=True)
    collector.set_seed(0)
    batch = next(iter(collector))
    collector.shutdown()
    mask = batch["collector", "mask"]
    last = mask.sum(-1) - 1
    done_at_last = batch["next", "done"].squeeze(-1).gather(-1, last[:, None]).squeeze(-1)
    assert (~mask).any() and done_at_last.any() and not done_at_last.all()
    return batch


@pytest.mark.parametrize("kwargs", [{}, {"shifted": True}])
def test_fused_gae_on_a_padded_batch_equals_each_trajectory_alone(padded_batch, value_net, kwargs):
    gae = FusedGAE(gamma=0.99, lmbda=0.95, value_network=value_net, **kwargs)
    out = gae(padded_batch.clone())
    mask = padded_batch["collector", "mask"]
    for row, length in enumerate(mask.sum(-1).tolist()):
        alone = gae(padded_batch[row : row + 1, :length].exclude("collector").clone())
        torch.testing.assert_close(out["advantage"][row, :length], alone["advantage"][0])
        torch.testing.assert_close(out["value_target"][row, :length], alone["value_target"][0])
    # the padding is zero, never a value that a mean could pick up
    assert (out["advantage"][~mask] == 0).all() and (out["value_target"][~mask] == 0).all()


def test_fused_gae_mask_key_is_renamable_and_average_gae_uses_valid_steps(padded_batch, value_net):
    td = padded_batch.clone()
    td["valid"] = td["collector", "mask"]
    del td["collector", "mask"]
    gae = FusedGAE(gamma=0.99, lmbda=0.95, value_network=value_net, average_gae=True)
    gae.set_keys(mask="valid")
    out = gae(td)
    mask = td["valid"]
    raw = FusedGAE(gamma=0.99, lmbda=0.95, value_network=value_net)(padded_batch.clone())["advantage"][mask]
    torch.testing.assert_close(out["advantage"][mask], (raw - raw.mean()) / raw.std(correction=0), rtol=1e-4, atol=1e-4)
