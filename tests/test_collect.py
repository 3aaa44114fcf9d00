"""DirectCollector: its loop over the vector env gives the batch TorchRL's Collector over the same env
would give for the same actions, entry for entry; its actions are drawn from the policy; its
log-probabilities are the update's own; its per-step forward pass is the network's."""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from tests._support import needs_mujoco
from trpo_torchrl.app.config import build_config
from trpo_torchrl.app.envs import make_env
from trpo_torchrl.app.models import build_models
from trpo_torchrl.collectors import DirectCollector, _FrozenForward, gym_vector_env
from trpo_torchrl.policies import gaussian_actor


def our_config(env_id, **overrides):
    return build_config(
        {"env": env_id, "logger": "none", "progress": False, "checkpoint_every": 0, "eval_episodes": 0, **overrides}
    )


def _setup(env_id, num_envs, seed, **overrides):
    config = our_config(env_id, num_envs=num_envs, **overrides)
    env = make_env(env_id, num_envs, seed)
    venv = gym_vector_env(env)
    torch.manual_seed(seed)
    actor, critic, normalizer = build_models(config, venv.single_observation_space, venv.single_action_space)
    return env, actor, normalizer


def _replay_through_torchrl(env_id, num_envs, seed, actions):
    """Steps a TorchRL env made like the collector's with the given actions ``[n, T, ...]``; returns
    the stacked TorchRL steps and the first step at which every environment ended at once."""
    env = make_env(env_id, num_envs, seed)
    td = env.reset()
    steps, all_done_at = [], None
    for t in range(actions.shape[1]):
        td["action"] = actions[:, t]
        out, td = env.step_and_maybe_reset(td)
        steps.append(out.exclude(("next", "final")))
        if all_done_at is None and bool(out["next", "done"].all()):
            all_done_at = t
    env.close()
    return torch.stack(steps, dim=1), all_done_at


@pytest.mark.parametrize(
    "env_id,num_envs,steps",
    [
        ("CartPole-v1", 3, 150),  # terminations at different steps, one-hot actions
        ("Pendulum-v1", 2, 230),  # every environment truncates at step 200 together
        pytest.param("HalfCheetah-v5", 2, 1010, marks=needs_mujoco),  # MuJoCo, float64 -> float32, clipping
    ],
)
def test_batch_equals_torchrls_for_the_same_actions(env_id, num_envs, steps):
    env, actor, normalizer = _setup(env_id, num_envs, seed=4)
    normalizer.update(torch.randn(64, normalizer.moments.mean.shape[0]) * 3 + 1)  # non-trivial statistics
    collector = DirectCollector(env, actor, frames_per_batch=env.batch_size[0] * steps)
    batch = collector.rollout()
    assert batch.batch_size == torch.Size([num_envs, steps])
    ref, all_done_at = _replay_through_torchrl(env_id, num_envs, 4, batch["action"])
    assert set(batch.keys(True, True)) >= set(ref.exclude("loc", "scale", "logits", "action_log_prob").keys(True, True))
    assert bool(batch["next", "done"].any()), "the window must hold episode ends"
    # after a step where every environment ended, TorchRL resets the vector env once more and the
    # observations part ways (module docstring); everything up to and including that step is equal
    end = steps if all_done_at is None else all_done_at + 1
    if env_id == "Pendulum-v1":
        assert all_done_at == 199
    for key in ref.keys(True, True):
        got, want = batch[key][:, :end], ref[key][:, :end]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert torch.equal(got, want), f"{key} differs"
    # the stored distribution and log-probabilities are those of the actor on the same observations
    with torch.no_grad():
        expected = actor.module[0](ref.select("observation").clone())
        for key in ("loc", "scale", "logits"):
            if key in batch.keys():
                torch.testing.assert_close(batch[key][:, :end], expected[key][:, :end], rtol=1e-5, atol=1e-6)
        dist = actor.module[-1].get_dist(expected)
        torch.testing.assert_close(
            batch["action_log_prob"][:, :end], dist.log_prob(ref["action"])[:, :end], rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_batches_are_torchrls_collectors_bit_for_bit(env_id):
    # the same actor, the same environments, torch's generator in the same state: two batches of 60
    # steps equal TorchRL's Collector's in every entry (actions, distribution parameters,
    # log-probabilities, the carried observation, the running return, trajectory ids) up to the
    # first step where every environment ended at once (Pendulum: its 200-step time limit)
    from torchrl.collectors import Collector

    from trpo_torchrl.policies import collection_policy

    n, steps = 2, 60
    batches = {}
    for which in ("direct", "torchrl"):
        env, actor, normalizer = _setup(env_id, n, seed=1)
        normalizer.update(torch.randn(64, normalizer.moments.mean.shape[0]) * 2)
        if which == "direct":
            collector = DirectCollector(env, actor, frames_per_batch=n * steps)
        else:
            collector = Collector(
                env,
                collection_policy(actor),
                frames_per_batch=n * steps,
                total_frames=-1,
                auto_register_policy_transforms=False,
            )
        torch.manual_seed(123)  # after construction: TorchRL's Collector draws once while it is built
        it = iter(collector)
        batches[which] = torch.cat([next(it) for _ in range(4 if env_id == "Pendulum-v1" else 2)], dim=1)
        if which == "torchrl":
            collector.shutdown()
    ours, ref = batches["direct"], batches["torchrl"]
    done = ref["next", "done"].squeeze(-1)
    all_done = done.all(0).nonzero()
    end = ref.shape[1] if all_done.numel() == 0 else int(all_done[0]) + 1
    assert end > steps and bool(done[:, :end].any())
    assert set(ours.keys(True, True)) == set(ref.keys(True, True))
    for key in ref.keys(True, True):
        assert ours[key].dtype == ref[key].dtype, key
        assert torch.equal(ours[key][:, :end], ref[key][:, :end]), f"{key} differs"


def test_state_dict_resumes_the_carried_step():
    env, actor, _ = _setup("CartPole-v1", 2, seed=2)
    collector = DirectCollector(env, actor, frames_per_batch=env.batch_size[0] * 40)
    collector.rollout()
    from trpo_torchrl.app.envs import env_state, load_env_state

    saved, sims = collector.state_dict(), env_state(env)
    rng = torch.get_rng_state()
    a = collector.rollout()
    collector.load_state_dict(saved)
    load_env_state(env, sims)
    torch.set_rng_state(rng)
    b = collector.rollout()
    assert (a == b).all()
    with pytest.raises(ValueError, match="observations"):
        collector.load_state_dict({**saved, "observation": np.zeros((3, 4), np.float32)})


def test_log_probabilities_are_those_of_the_stored_distribution():
    env, actor, _ = _setup("Pendulum-v1", 2, seed=0)
    batch = DirectCollector(env, actor, frames_per_batch=env.batch_size[0] * 64).rollout()
    dist = actor.module[-1].get_dist(batch.select("loc", "scale").clone())
    assert torch.equal(dist.log_prob(batch["action"]), batch["action_log_prob"])
    with torch.no_grad():  # and the stored parameters are the actor's on those observations
        again = actor.module[0](batch.select("observation").clone())
    torch.testing.assert_close(again["loc"], batch["loc"], rtol=1e-6, atol=1e-7)
    assert torch.equal(again["scale"], batch["scale"])


def test_gaussian_actions_are_drawn_from_the_policy():
    env, actor, _ = _setup("HalfCheetah-v5" if importlib.util.find_spec("mujoco") else "Pendulum-v1", 2, seed=3)
    with torch.no_grad():
        actor.module[0].module[-1].log_std.copy_(torch.linspace(-1.5, 0.5, actor.module[0].module[-1].log_std.numel()))
    batch = DirectCollector(env, actor, frames_per_batch=env.batch_size[0] * 2000).rollout()
    z = ((batch["action"] - batch["loc"]) / batch["scale"]).reshape(-1, batch["action"].shape[-1])
    n = z.shape[0]
    # standard normal per dimension: mean within 5 standard errors, variance within 5 of its own
    assert z.mean(0).abs().max() < 5 / math.sqrt(n)
    assert (z.var(0) - 1).abs().max() < 5 * math.sqrt(2 / n)
    assert z.std() > 0.5  # it sampled, it did not return the mean


def test_categorical_actions_are_drawn_from_the_policy():
    env, actor, _ = _setup("CartPole-v1", 2, seed=0)
    collector = DirectCollector(env, actor, frames_per_batch=env.batch_size[0])
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1]])
    draws = 20_000
    index = torch.stack([collector._sample(logits)[0] for _ in range(draws)])
    freq = (index == 0).double().mean(0)
    p = torch.softmax(logits.double(), -1)[:, 0]
    assert ((freq - p).abs() < 5 * (p * (1 - p) / draws).sqrt()).all(), (freq, p)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_frozen_forward_is_the_networks_own(env_id):
    env, actor, normalizer = _setup(env_id, 2, seed=0, normalize_observations=True)
    normalizer.update(torch.randn(100, normalizer.moments.mean.shape[0]) * 2 - 1)
    net = actor.module[0].module
    frozen = _FrozenForward.freeze(net, torch.float32)
    assert frozen is not None
    x = torch.randn(5, normalizer.moments.mean.shape[0]) * 4
    with torch.no_grad():
        want, got = net(x), frozen(x)
    for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
        assert torch.equal(w, g)


def test_unknown_networks_are_called_as_they_are():
    env = make_env("Pendulum-v1", 2, seed=0)
    net = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    actor = gaussian_actor(net, 1)
    collector = DirectCollector(env, actor, frames_per_batch=env.batch_size[0] * 16)
    assert _FrozenForward.freeze(net, torch.float32) is None
    batch = collector.rollout()
    with torch.no_grad():
        again = actor.module[0](batch.select("observation").clone())
    torch.testing.assert_close(again["loc"], batch["loc"], rtol=1e-6, atol=1e-7)
    dist = actor.module[-1].get_dist(batch.select("loc", "scale").clone())
    assert torch.equal(dist.log_prob(batch["action"]), batch["action_log_prob"])


def test_an_interrupt_mid_batch_leaves_the_carried_step_on_the_simulators():
    # Ctrl-C lands while a batch is collected; the checkpoint then written must describe where the
    # simulators are, not where the batch started
    env, actor, _ = _setup("CartPole-v1", 2, seed=0)
    collector = DirectCollector(env, actor, frames_per_batch=env.batch_size[0] * 50)
    collector.rollout()
    first = gym_vector_env(env).envs[0]
    calls, step = [0], first.step

    def interrupting(action):
        calls[0] += 1
        if calls[0] == 21:  # step 20 of the second batch, before environment 0 moves
            raise KeyboardInterrupt
        return step(action)

    first.step = interrupting
    with pytest.raises(KeyboardInterrupt):
        collector.rollout()
    state = collector.state_dict()
    for i, sub in enumerate(gym_vector_env(env).envs):
        np.testing.assert_array_equal(state["observation"][i], np.asarray(sub.unwrapped.state, dtype=np.float32))
        elapsed = next(w._elapsed_steps for w in _chain(sub) if hasattr(w, "_elapsed_steps"))
        assert state["episode_reward"][i] == elapsed  # CartPole pays 1 a step: the return is the episode's length


def _chain(env):
    while True:
        yield env
        if not hasattr(env, "env"):
            return
        env = env.env


def test_hooks_and_subclasses_are_run_as_they_are():
    env, actor, _ = _setup("Pendulum-v1", 2, seed=0)
    collector = DirectCollector(env, actor, frames_per_batch=env.batch_size[0] * 8)
    first_linear = next(m for m in actor.modules() if type(m) is nn.Linear)
    handle = first_linear.register_forward_hook(lambda module, args, out: out + 1.0)
    try:
        assert _FrozenForward.freeze(actor.module[0].module, torch.float32) is None  # the hook is seen at each batch
        batch = collector.rollout()
        with torch.no_grad():
            again = actor.module[0](batch.select("observation").clone())
        torch.testing.assert_close(batch["loc"], again["loc"], rtol=1e-6, atol=1e-6)
    finally:
        handle.remove()

    class Shifted(nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1.0

    net = nn.Sequential(Shifted(3, 8), nn.Tanh(), nn.Linear(8, 1))
    assert _FrozenForward.freeze(nn.Sequential(net), torch.float32) is None


def test_actors_it_cannot_run_are_a_clear_error():
    env = make_env("CartPole-v1", 2, seed=0)
    actor = gaussian_actor(nn.Linear(4, 2), 2)
    with pytest.raises(ValueError, match="DirectCollector runs a one-hot categorical over a Discrete space"):
        DirectCollector(env, actor, frames_per_batch=env.batch_size[0] * 8)
    pendulum = make_env("Pendulum-v1", 2, seed=0)
    squashed = gaussian_actor(nn.Linear(3, 1), 1)
    squashed.module[-1].distribution_kwargs["tanh_loc"] = True
    with pytest.raises(ValueError, match="no distribution_kwargs"):
        DirectCollector(pendulum, squashed, frames_per_batch=pendulum.batch_size[0] * 8)
    with pytest.raises(ValueError, match="frames_per_batch must be an int >= 1, got 0"):
        DirectCollector(env, actor, frames_per_batch=0)
    with pytest.raises(ValueError, match="frames_per_batch=3 is not a multiple of the env's num_envs=2"):
        DirectCollector(env, actor, frames_per_batch=3)


def test_training_runs_on_it_by_default(tmp_path):
    from trpo_torchrl.app.train import Trainer

    config = our_config(
        "CartPole-v1",
        num_envs=2,
        steps_per_env=32,
        critic_epochs=1,
        total_frames=128,
        logdir=str(tmp_path),
        run_name="r",
    )
    assert config.collector == "direct"
    trainer = Trainer(config)
    assert isinstance(trainer.collector, DirectCollector)
    result = trainer.train()
    assert result.frames == 128 and result.checkpoint.is_file()


# -- per-run generators and the population collector -------------------------------------------------


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_a_generator_draws_what_the_global_generator_draws(env_id):
    # the same calls on a collector's own generator as on torch's global one (Categorical.sample,
    # Normal.rsample): from the same state the two give the same batch bit for bit
    batches = []
    for own in (False, True):
        env, actor, _ = _setup(env_id, 2, seed=3)
        generator = torch.Generator().manual_seed(11) if own else None
        collector = DirectCollector(env, actor, frames_per_batch=env.batch_size[0] * 40, generator=generator)
        torch.manual_seed(11 if not own else 999)  # the global state must not matter with a generator
        batches.append(collector.rollout())
    assert (batches[0] == batches[1]).all()
    env, actor, _ = _setup("CartPole-v1", 2, seed=0)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        DirectCollector(env, actor, frames_per_batch=8, generator=7)
    with pytest.raises(ValueError, match="env_threads must be an int >= 0"):
        DirectCollector(env, actor, frames_per_batch=8, env_threads=-1)


def _members(env_id, count, *, num_envs=2, steps=48, hidden=None, **kw):
    """``count`` DirectCollectors, each over its own environments (seed 10 + m), actor (with its own
    normaliser statistics) and generator."""
    collectors = []
    statistics = torch.Generator().manual_seed(7)  # the same members whatever ran before
    for m in range(count):
        overrides = {"normalize_observations": True, **({"hidden_sizes": hidden[m]} if hidden else {})}
        env, actor, normalizer = _setup(env_id, num_envs, seed=10 + m, **overrides)
        normalizer.update(torch.randn(64, normalizer.moments.mean.shape[0], generator=statistics) * (m + 1))
        g = torch.Generator().manual_seed(100 + m)
        collectors.append(DirectCollector(env, actor, frames_per_batch=num_envs * steps, generator=g, **kw))
    return collectors


def _states(collectors):
    from trpo_torchrl.app.envs import env_state

    return [(c.state_dict(), env_state(c.env), c.generator.get_state()) for c in collectors]


def _restore(collectors, states):
    from trpo_torchrl.app.envs import load_env_state

    for c, (carried, sims, rng) in zip(collectors, states):
        c.load_state_dict(carried)
        load_env_state(c.env, sims)
        c.generator.set_state(rng)


@pytest.mark.parametrize(
    "env_id,hidden",
    [
        ("CartPole-v1", None),  # categorical, stacked forward
        ("Pendulum-v1", None),  # Gaussian, stacked forward, one truncation at step 200 of every env
        ("Pendulum-v1", [(16,), (8, 8), (16,)]),  # different networks: each member's own forward
    ],
)
def test_population_batches_are_each_members_own(env_id, hidden):
    from trpo_torchrl.collectors import PopulationCollector

    members = _members(env_id, 3, steps=70, hidden=hidden)
    for c in members:  # a first batch on their own: the population continues from any carried step
        next(iter(c))
    start = _states(members)
    own = [[next(iter(c)) for c in members] for _ in range(3)]  # 210 steps: Pendulum's episodes end
    counts = [(c._frames, c._iter) for c in members]
    _restore(members, start)
    population = PopulationCollector(members, env_threads=1)
    forward, stacked = population._forward()
    # one forward for all when the networks match, the normalisers applied as one operation
    assert stacked == (hidden is None) and (not stacked or forward.prefix is not None)
    batches = iter(population)
    together = [next(batches) for _ in range(3)]
    for it in range(3):
        for m in range(3):
            want, got = own[it][m], together[it][m]
            assert set(got.keys(True, True)) == set(want.keys(True, True))
            for key in want.keys(True, True):
                assert got[key].dtype == want[key].dtype, key
                # the stacked products are each member's own up to rounding (equal on the CPUs we test)
                torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6, msg=f"{it} {m} {key}")
            if it == 0:  # the carried step it starts from is the members' own, exactly
                assert torch.equal(got["observation"][:, 0], want["observation"][:, 0])
    assert any(bool(batches[0]["next", "done"].any()) for batches in together)
    # the members' collectors carried the step and counted the frames: their state is a single run's
    assert [(c._frames, c._iter) for c in members] == counts == [(4 * members[0].frames_per_batch, 3)] * 3
    population.shutdown()


@pytest.mark.parametrize("env_id", ["CartPole-v1", pytest.param("HalfCheetah-v5", marks=needs_mujoco)])
def test_population_thread_pool_gives_the_same_batches(env_id):
    # MuJoCo's step releases the GIL: there the threads really step side by side
    from trpo_torchrl.collectors import PopulationCollector

    members = _members(env_id, 3, num_envs=3, steps=40)
    start = _states(members)
    batches = {}
    for threads in (1, 3):
        _restore(members, start)
        population = PopulationCollector(members, env_threads=threads)
        assert population.env_threads == threads
        batches[threads] = [population.rollout() for _ in range(2)]
        population.shutdown()
    for a, b in zip(batches[1], batches[3]):
        for x, y in zip(a, b):
            assert (x == y).all()
    # auto: CartPole's pure-Python step stays on one thread, MuJoCo's goes on one per core
    auto = PopulationCollector(members, env_threads=0).env_threads
    assert auto == 1 if env_id == "CartPole-v1" else auto == min(9, len(os.sched_getaffinity(0)))


def test_population_collector_refuses_members_it_cannot_step_together():
    from trpo_torchrl.collectors import PopulationCollector

    a = _members("CartPole-v1", 1, num_envs=2, steps=8)
    b = _members("CartPole-v1", 1, num_envs=3, steps=8)
    with pytest.raises(ValueError, match="same num_envs, steps per batch"):
        PopulationCollector(a + b)
    with pytest.raises(ValueError, match="its own collector and its own environments"):
        PopulationCollector(a + a)
    with pytest.raises(ValueError, match="collects for DirectCollectors"):
        PopulationCollector([])
    with pytest.raises(ValueError, match="env_threads must be an int >= 0"):
        PopulationCollector(a, env_threads=1.5)
