"""trpo_torchrl.collectors.DirectCollector as a TorchRL user meets it: a BaseCollector in a plain
TorchRL loop, stopping at total_frames, taking weights, seeding, saving its state, refusing envs
and policies it cannot run, and importing nothing of the training app."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import pytest
import torch
from gymnasium.vector import AutoresetMode
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import BaseCollector
from torchrl.envs import GymWrapper, RewardSum, StepCounter

from trpo_torchrl import CriticFit, TRPOLoss, TrustRegionUpdate, categorical_actor
from trpo_torchrl.collectors import DirectCollector, _FrozenForward


def cartpole(num_envs: int = 2, seed: int = 0, reward_sum: bool = True):
    venv = gym.make_vec(
        "CartPole-v1",
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
    )
    venv.reset(seed=seed)
    env = GymWrapper(venv)
    if reward_sum:
        env = env.append_transform(RewardSum(in_keys=["reward"], out_keys=["episode_reward"]))
    return env


def mlp(inputs: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 32), nn.Tanh(), nn.Linear(32, outputs))


def test_it_is_a_torchrl_collector_in_a_plain_trpo_loop():
    torch.manual_seed(0)
    env = cartpole()
    actor = categorical_actor(mlp(4, 2))
    critic = TensorDictModule(mlp(4, 1), in_keys=["observation"], out_keys=["state_value"])
    loss = TRPOLoss(actor, critic).make_value_estimator(gamma=0.99, lmbda=0.95)
    actor_step = TrustRegionUpdate(loss, max_kl=0.01)
    critic_fit = CriticFit(loss, lr=1e-3, epochs=2, minibatch_size=64)
    collector = DirectCollector(env, actor, frames_per_batch=128, total_frames=200)
    assert isinstance(collector, BaseCollector)
    assert len(collector) == 2  # 200 frames: a second batch completes the budget, as TorchRL's collectors do
    before = TensorDict.from_module(actor).clone()
    kls = []
    for batch in collector:
        assert batch.batch_size == torch.Size([2, 64])
        # the batch was collected by the current policy: its stored log-probabilities are the actor's
        with torch.no_grad():
            dist = actor.get_dist(batch.select("observation").clone())
            torch.testing.assert_close(dist.log_prob(batch["action"]), batch["action_log_prob"])
            loss.value_estimator(batch)
        metrics = actor_step(batch)
        critic_fit(batch)
        collector.update_policy_weights_()
        kls.append(metrics["kl"].item())
    assert len(kls) == 2 and collector.stats()["frames"] == 256 and collector.stats()["completed"]
    assert all(0 < kl < 0.0101 for kl in kls)
    assert not (TensorDict.from_module(actor) == before).all()  # the policy moved, and the collector ran it
    collector.shutdown()
    assert env.is_closed


def test_update_policy_weights_copies_weights_handed_in():
    env = cartpole()
    actor = categorical_actor(mlp(4, 2))
    other = categorical_actor(mlp(4, 2))
    collector = DirectCollector(env, actor, frames_per_batch=8)
    collector.update_policy_weights_()  # the actor's own parameters: nothing to copy
    collector.update_policy_weights_(TensorDict.from_module(other))
    assert (TensorDict.from_module(actor) == TensorDict.from_module(other)).all()
    with torch.no_grad():
        other.module[0].module[0].weight.add_(1.0)
    collector.update_policy_weights_(policy=other)
    assert (TensorDict.from_module(actor) == TensorDict.from_module(other)).all()
    with pytest.raises(KeyError, match="its one model is 'policy'"):
        collector.update_policy_weights_(other, model_id="critic")


def test_set_seed_and_state_dict_replay_a_batch():
    actor = categorical_actor(mlp(4, 2))
    collector = DirectCollector(cartpole(), actor, frames_per_batch=80, total_frames=-1)
    assert collector.total_frames == float("inf")
    assert collector.set_seed(7, static_seed=True) == 7
    torch.manual_seed(1)
    first = collector.rollout()
    collector.set_seed(7)
    torch.manual_seed(1)
    assert (collector.rollout() == first).all()  # the same seed and generator state: the same batch
    assert bool(first["next", "done"].any())
    # the saved state carries the frame count and the step that continues into the next batch
    it = iter(collector)
    next(it)
    state = collector.state_dict()
    assert state["frames"] == 80 and state["observation"].shape == (2, 4)


def test_without_reward_sum_there_is_no_episode_reward():
    batch = DirectCollector(cartpole(reward_sum=False), categorical_actor(mlp(4, 2)), frames_per_batch=8).rollout()
    assert "episode_reward" not in batch.keys() and ("next", "episode_reward") not in batch.keys(True)


def test_envs_it_cannot_run_are_a_clear_error():
    actor = categorical_actor(mlp(4, 2))
    with pytest.raises(ValueError, match="reproduces only the transforms .* StepCounter"):
        DirectCollector(cartpole().append_transform(StepCounter()), actor, frames_per_batch=8)
    with pytest.raises(ValueError, match="GymWrapper over a gymnasium SyncVectorEnv"):
        DirectCollector(GymWrapper(gym.make("CartPole-v1")), actor, frames_per_batch=8)
    venv = gym.make_vec(
        "CartPole-v1", num_envs=2, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.DISABLED}
    )
    with pytest.raises(ValueError, match="same-step autoreset"):
        DirectCollector(GymWrapper(venv), actor, frames_per_batch=8)
    with pytest.raises(ValueError, match="ProbabilisticActor"):
        DirectCollector(cartpole(), TensorDictModule(mlp(4, 2), ["observation"], ["action"]), frames_per_batch=8)
    made = DirectCollector(cartpole, actor, frames_per_batch=8)  # a function making the env works too
    assert made.num_envs == 2


def test_normaliser_protocol_needs_forward_and_frozen_forward_from_one_class():
    class Shift(nn.Module):
        def forward(self, x):
            return x + 1.0

        def frozen_forward(self, dtype):
            return lambda x: x + 1.0

    class Changed(Shift):  # changes forward, inherits frozen_forward: not trusted
        def forward(self, x):
            return x * 2.0

    x = torch.randn(4, 3)
    for prefix in (Shift(), Changed()):
        net = nn.Sequential(prefix, nn.Linear(3, 2))
        frozen = _FrozenForward.freeze(net, torch.float32)
        # a subclass that changes forward runs its own forward, not the inherited frozen form
        torch.testing.assert_close(frozen(x), net(x), rtol=0, atol=0)


def test_the_library_never_imports_the_app():
    code = "import trpo_torchrl.collectors, sys; print(any(m.startswith('trpo_torchrl.app') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_hook_on_the_policy_around_the_network_is_an_error_not_skipped():
    actor = categorical_actor(mlp(4, 2))
    collector = DirectCollector(cartpole(), actor, frames_per_batch=8)
    handle = actor.module[0].register_forward_hook(lambda module, args, out: out)
    try:
        with pytest.raises(RuntimeError, match="TensorDictModule has forward hooks"):
            collector.rollout()
    finally:
        handle.remove()
    assert collector.rollout().batch_size == (2, 4)  # without the hook it collects as before
