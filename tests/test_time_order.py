"""GAE needs its batch in time order: the loss refuses to estimate advantages on a shuffled sample,
and takes every batch TorchRL's collectors hand over."""

from __future__ import annotations

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers import SamplerWithoutReplacement
from torchrl.envs import GymEnv, SerialEnv, StepCounter, TransformedEnv

from trpo_torchrl import TRPOLoss, categorical_actor
from trpo_torchrl.value import check_time_order

FRAMES = 200


def cartpole():
    return TransformedEnv(GymEnv("CartPole-v1"), StepCounter())


def two_cartpoles():
    return SerialEnv(2, cartpole)


def make_loss():
    torch.manual_seed(0)
    actor = categorical_actor(nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)))
    critic = TensorDictModule(nn.Linear(4, 1), in_keys=["observation"], out_keys=["state_value"])
    return TRPOLoss(actor, critic)


def first_batch(collector):
    collector.set_seed(0)
    batch = next(iter(collector))
    collector.shutdown()
    return batch


@pytest.fixture(scope="module")
def loss():
    return make_loss()


@pytest.fixture(scope="module")
def flat_batch(loss):
    return first_batch(Collector(cartpole, loss.actor_network, frames_per_batch=FRAMES, total_frames=FRAMES))


@pytest.mark.parametrize("layout", ["flat", "envs_time", "split_trajs"])
def test_collector_batches_are_in_time_order(loss, flat_batch, layout):
    if layout == "flat":
        batch = flat_batch
    else:
        batch = first_batch(
            Collector(
                two_cartpoles if layout == "envs_time" else cartpole,
                loss.actor_network,
                frames_per_batch=FRAMES,
                total_frames=FRAMES,
                split_trajs=layout == "split_trajs",
            )
        )
    loss(batch)  # estimates the advantages without complaint
    assert loss.policy_batch(batch).advantage.numel() == FRAMES


def test_multi_sync_collector_batch_is_in_time_order(loss):
    collector = MultiSyncCollector(
        [cartpole, cartpole], loss.actor_network, frames_per_batch=FRAMES, total_frames=FRAMES
    )
    batch = first_batch(collector)
    loss(batch)


def test_a_shuffled_replay_buffer_sample_is_refused(loss, flat_batch):
    buffer = ReplayBuffer(storage=LazyTensorStorage(FRAMES), sampler=SamplerWithoutReplacement(), batch_size=64)
    buffer.extend(flat_batch.reshape(-1))
    sample = buffer.sample()
    with pytest.raises(ValueError, match="not in time order.*before sampling"):
        loss(sample)
    # with the advantages computed first, the same sample is a valid minibatch
    batch = flat_batch.clone()
    loss.value_estimator(batch)
    buffer.empty()
    buffer.extend(batch.reshape(-1))
    loss(buffer.sample())


@pytest.mark.parametrize("evidence", ["traj_ids", "step_count", "observation"])
def test_each_signal_alone_shows_a_broken_order(flat_batch, evidence):
    # one trajectory's steps, out of order: the trajectory ids cannot tell, the other signals can
    length = int(flat_batch["next", "done"].squeeze(-1).float().argmax())
    batch = flat_batch[: length + 1].clone()
    keep = {"traj_ids": [("collector", "traj_ids")], "step_count": ["step_count", ("next", "step_count")]}
    swapped = batch[torch.tensor([0, 2, 1, *range(3, length + 1)])]
    args = dict(time_dim=0, done_key=("next", "done"), observation_keys=["observation"])
    check_time_order(batch, **args)
    if evidence == "traj_ids":
        spliced = torch.cat([flat_batch[:3], flat_batch[length + 2 : length + 5]])
        spliced["next", "done"][:] = False
        with pytest.raises(ValueError, match="traj_ids"):
            check_time_order(spliced.select(*keep["traj_ids"], ("next", "done")), **args)
        return
    fields = keep.get(evidence, ["observation", ("next", "observation")])
    with pytest.raises(ValueError, match=evidence):
        check_time_order(swapped.select(*fields, ("collector", "traj_ids"), ("next", "done")), **args)
