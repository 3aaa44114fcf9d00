"""What already works for a TorchRL user and must keep working: policies built from torchrl.modules
and tensordict.nn, Dict observations read through several in_keys, advantages computed before a
replay-buffer pass, and compiled policies (TorchRL's Collector(compile_policy=...) and
torch.compile of the actor)."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import SamplerWithoutReplacement
from torchrl.envs import GymEnv
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, ValueOperator

from trpo_torchrl import CriticFit, TRPOLoss, TrustRegionUpdate

MAX_KL = 0.01


def pendulum_actor(seed: int = 0) -> ProbabilisticActor:
    """A state-dependent-scale Gaussian as TorchRL's examples build it: MLP, then NormalParamExtractor."""
    torch.manual_seed(seed)
    net = nn.Sequential(MLP(in_features=3, out_features=2, num_cells=[32, 32]), NormalParamExtractor())
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module, in_keys=["loc", "scale"], distribution_class=IndependentNormal, return_log_prob=True
    )


def pendulum_critic() -> ValueOperator:
    return ValueOperator(MLP(in_features=3, out_features=1, num_cells=[32, 32]), in_keys=["observation"])


def collect(actor, frames: int = 256, seed: int = 0, **collector_kwargs):
    env = GymEnv("Pendulum-v1")
    env.set_seed(seed)
    torch.manual_seed(seed)
    collector = Collector(env, actor, frames_per_batch=frames, total_frames=frames, **collector_kwargs)
    batch = next(iter(collector))
    collector.shutdown()
    return batch


def kl_after(loss: TRPOLoss, batch) -> float:
    """KL(π_old ‖ π) of the actor as it is now, on the batch's states (the loss's own measure)."""
    with torch.no_grad():
        return float(loss.policy_terms(loss.policy_batch(batch)).kl)


def parameters(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


def test_a_state_dependent_scale_policy_steps_inside_the_trust_region():
    actor = pendulum_actor()
    loss = TRPOLoss(actor, pendulum_critic()).make_value_estimator(gamma=0.99, lmbda=0.95)
    batch = collect(actor)
    with torch.no_grad():
        loss.value_estimator(batch)
    before = parameters(actor)
    metrics = TrustRegionUpdate(loss, max_kl=MAX_KL)(batch)
    assert bool(metrics["step_accepted"])
    assert not torch.equal(parameters(actor), before)
    assert kl_after(loss, batch) <= MAX_KL * (1 + 1e-6)
    assert float(metrics["surrogate_after"]) > float(metrics["surrogate_before"])


class _TwoInputs(nn.Module):
    """A network over a Dict observation: its two entries are read through two in_keys."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
        self.split = NormalParamExtractor()

    def forward(self, position, velocity):
        return self.split(self.body(torch.cat([position, velocity], -1)))


def test_several_in_keys_read_a_dict_observation():
    torch.manual_seed(0)
    n = 128
    td = TensorDict({"position": torch.randn(n, 2), "velocity": torch.randn(n, 1)}, batch_size=[n])
    module = TensorDictModule(_TwoInputs(), in_keys=["position", "velocity"], out_keys=["loc", "scale"])
    actor = ProbabilisticActor(
        module, in_keys=["loc", "scale"], distribution_class=IndependentNormal, return_log_prob=True
    )
    critic = TensorDictModule(nn.Linear(2, 1), in_keys=["position"], out_keys=["state_value"])
    with torch.no_grad():
        actor(td)
    # an advantage that rewards larger actions: the step must move the mean up
    td["advantage"] = td["action"].sum(-1, keepdim=True)
    loss = TRPOLoss(actor, critic)
    metrics = TrustRegionUpdate(loss, max_kl=MAX_KL)(td)
    assert bool(metrics["step_accepted"])
    assert kl_after(loss, td) <= MAX_KL * (1 + 1e-6)
    with torch.no_grad():
        moved = actor.get_dist(td.select("position", "velocity").clone()).mean
    assert (moved - td["loc"]).mean() > 0


def test_advantages_before_a_replay_buffer_pass_feed_minibatch_steps():
    actor = pendulum_actor()
    critic = pendulum_critic()
    loss = TRPOLoss(actor, critic).make_value_estimator(gamma=0.99, lmbda=0.95)
    batch = collect(actor, frames=512)
    with torch.no_grad():
        loss.value_estimator(batch)  # in time order, before any shuffling
    flat = batch.reshape(-1)
    flat["index"] = torch.arange(flat.numel())
    buffer = ReplayBuffer(storage=LazyTensorStorage(flat.numel()), sampler=SamplerWithoutReplacement(), batch_size=128)
    buffer.extend(flat)
    update = TrustRegionUpdate(loss, max_kl=MAX_KL)
    fit = CriticFit(loss, epochs=1, minibatch_size=64)
    critic_before = parameters(critic)
    accepted = 0
    for minibatch in buffer:
        # each minibatch carries the advantages computed on the whole batch, in time order
        assert torch.equal(minibatch["advantage"], flat["advantage"][minibatch["index"]])
        accepted += int(bool(update(minibatch)["step_accepted"]))
        fit(minibatch)
    assert accepted >= 1
    assert not torch.equal(parameters(critic), critic_before)


def test_a_compiled_collection_policy_collects_the_same_batch():
    eager = collect(pendulum_actor(), frames=64)
    compiled = collect(pendulum_actor(), frames=64, compile_policy={"backend": "eager"})
    for key in ("observation", "action", "loc", "scale", "action_log_prob"):
        torch.testing.assert_close(compiled[key], eager[key], rtol=0, atol=0, msg=key)


def test_a_torch_compiled_actor_takes_the_same_step():
    results = []
    for compile_actor in (False, True):
        actor = pendulum_actor()
        batch = collect(actor, frames=128)
        batch["advantage"] = batch["action"].sum(-1, keepdim=True)
        stepped = torch.compile(actor, backend="eager") if compile_actor else actor
        loss = TRPOLoss(stepped, pendulum_critic())
        metrics = TrustRegionUpdate(loss, max_kl=MAX_KL)(batch)
        assert bool(metrics["step_accepted"])
        results.append(parameters(actor))
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)
