"""Recurrent policies (TorchRL LSTMModule / GRUModule) in TRPOLoss and TrustRegionUpdate, and the
NoVel tasks they are tried on.

Batches come from TorchRL's Collector over a small vector env of CartPoleNoVel-v1, with episode
starts inside the batch rows. Oracles: π_old as collected (the ratio at θ_old), and the
KL Hessian by double backward through TorchRL's own ``python_based=True`` module run in its
recurrent mode over the same sequences, with the same weights.
"""

from __future__ import annotations

import copy

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torch.distributions import Categorical
from torchrl.collectors import Collector
from torchrl.envs import GymWrapper, InitTracker, TransformedEnv
from torchrl.modules import MLP, GRUModule, LSTMModule, ProbabilisticActor, ValueOperator, set_recurrent_mode

import trpo_torchrl  # noqa: F401  (registers the NoVel tasks)
from trpo_torchrl import CriticFit, TRPOLoss, TrustRegionUpdate
from trpo_torchrl.population import PopulationTrustRegionUpdate
from trpo_torchrl.recurrent import gru_sequence, lstm_sequence

NUM_ENVS, STEPS, HIDDEN = 4, 40, 8


# ---------------------------------------------------------------- the NoVel tasks
@pytest.mark.parametrize(
    ("task", "full", "keep"),
    [("CartPoleNoVel-v1", "CartPole-v1", [0, 2]), ("PendulumNoVel-v1", "Pendulum-v1", [0, 1])],
)
def test_no_velocity_tasks_keep_the_full_tasks_position_entries(task, full, keep):
    env, ref = gymnasium.make(task), gymnasium.make(full)
    assert env.observation_space.shape == (2,)
    np.testing.assert_array_equal(env.observation_space.low, ref.observation_space.low[keep])
    np.testing.assert_array_equal(env.observation_space.high, ref.observation_space.high[keep])
    assert env.action_space == ref.action_space
    assert env.spec.max_episode_steps == ref.spec.max_episode_steps
    obs, _ = env.reset(seed=7)
    ref_obs, _ = ref.reset(seed=7)
    ref.action_space.seed(7)
    np.testing.assert_array_equal(obs, ref_obs[keep])
    for _ in range(30):
        action = ref.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        ref_obs, ref_reward, ref_terminated, ref_truncated, _ = ref.step(action)
        np.testing.assert_array_equal(obs, ref_obs[keep])
        assert (reward, terminated, truncated) == (ref_reward, ref_terminated, ref_truncated)
        if terminated or truncated:
            break


# ---------------------------------------------------------------- policies and batches
def make_env() -> TransformedEnv:
    vec = gymnasium.make_vec(
        "CartPoleNoVel-v1",
        NUM_ENVS,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
    )
    return TransformedEnv(GymWrapper(vec, categorical_action_encoding=True), InitTracker())


def make_policy(kind: str, seed: int = 0, python_based: bool = False):
    """A recurrent categorical actor as TorchRL's recurrent tutorials build one, and a feed-forward critic."""
    torch.manual_seed(seed)
    rnn_class = LSTMModule if kind == "lstm" else GRUModule
    rnn = rnn_class(
        input_size=2, hidden_size=HIDDEN, in_key="observation", out_key="features", python_based=python_based
    )
    head = TensorDictModule(nn.Linear(HIDDEN, 2), in_keys=["features"], out_keys=["logits"])
    actor = ProbabilisticActor(
        TensorDictSequential(rnn, head),
        in_keys=["logits"],
        out_keys=["action"],
        distribution_class=Categorical,
        return_log_prob=True,
    )
    critic = ValueOperator(MLP(in_features=2, out_features=1, num_cells=[16]), in_keys=["observation"])
    return actor, critic, rnn


def collect(actor, rnn, seed: int = 0):
    env = make_env()
    env.append_transform(rnn.make_tensordict_primer())
    env.set_seed(seed)
    torch.manual_seed(seed)
    collector = Collector(env, actor, frames_per_batch=NUM_ENVS * STEPS, total_frames=2 * NUM_ENVS * STEPS)
    # the second batch: its rows start mid-episode, from the states the first batch left
    batch = list(collector)[-1]
    collector.shutdown()
    return batch


@pytest.fixture(scope="module", params=["lstm", "gru"])
def collected(request):
    actor, critic, rnn = make_policy(request.param)
    batch = collect(actor, rnn)
    assert batch.batch_size == (NUM_ENVS, STEPS)
    # episode starts inside the rows, and rows that start mid-episode from a stored state: a
    # flattened replay would carry states across the rows
    assert batch["is_init"][:, 1:].any()
    assert not batch["is_init"][:, 0].all()
    assert batch[rnn.in_keys[1]][:, 0].abs().sum() > 0
    return request.param, actor.state_dict(), batch


def fresh(collected):
    kind, state, batch = collected
    actor, critic, rnn = make_policy(kind)
    actor.load_state_dict(state)
    return actor, critic, rnn, batch.clone()


# ---------------------------------------------------------------- the sequence replay
@pytest.mark.parametrize("layers", [1, 2])
def test_the_replay_cells_equal_torch_recurrent_layers_on_each_segment(layers):
    torch.manual_seed(0)
    x = torch.randn(3, 9, 2, dtype=torch.float64)
    h0 = torch.randn(3, 9, layers, 5, dtype=torch.float64)
    c0 = torch.randn(3, 9, layers, 5, dtype=torch.float64)
    is_init = torch.zeros(3, 9, dtype=torch.bool)
    is_init[1, 4] = is_init[2, 0] = True
    lstm = nn.LSTM(2, 5, num_layers=layers, batch_first=True).double()
    gru = nn.GRU(2, 5, num_layers=layers, batch_first=True).double()
    y_lstm, h_lstm, _ = lstm_sequence(lstm, x, h0, c0, is_init)
    y_gru, h_gru = gru_sequence(gru, x, h0, is_init)
    for row in range(3):
        cuts = [0, *is_init[row].nonzero().flatten().tolist(), 9]
        cuts = sorted(set(cuts))
        for start, stop in zip(cuts[:-1], cuts[1:]):
            # a segment starts from the stored state, or from zero at an episode start
            scale = 0.0 if is_init[row, start] else 1.0
            h = (h0[row, start] * scale).unsqueeze(1).contiguous()
            c = (c0[row, start] * scale).unsqueeze(1).contiguous()
            ref, (h_n, _) = lstm(x[row : row + 1, start:stop], (h, c))
            torch.testing.assert_close(y_lstm[row, start:stop], ref[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(h_lstm[row, stop - 1], h_n[:, 0], rtol=0, atol=1e-12)
            ref, h_n = gru(x[row : row + 1, start:stop], h)
            torch.testing.assert_close(y_gru[row, start:stop], ref[0], rtol=0, atol=1e-12)
            torch.testing.assert_close(h_gru[row, stop - 1], h_n[:, 0], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- the loss at θ_old
def test_ratio_is_one_and_kl_zero_at_the_behaviour_policy(collected):
    actor, critic, _, batch = fresh(collected)
    out = TRPOLoss(actor, critic)(batch)
    for key in ("ratio_mean", "ratio_min", "ratio_max"):
        torch.testing.assert_close(out[key], torch.tensor(1.0), rtol=0, atol=1e-5)
    assert out["kl"].abs() < 1e-6


def test_a_flattened_recurrent_mode_replay_is_not_the_behaviour_policy(collected):
    # what the issue reports: TorchRL's recurrent mode on the flattened batch runs one sequence
    # across the environments' rows; the loss refuses that layout instead
    actor, critic, _, batch = fresh(collected)
    with torch.no_grad(), set_recurrent_mode(True):
        flat = actor.get_dist_params(batch.reshape(-1).select(*actor.in_keys).clone())
    ratio = (
        Categorical(logits=flat["logits"]).log_prob(batch["action"].reshape(-1)) - batch["action_log_prob"].reshape(-1)
    ).exp()
    assert (ratio - 1).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"recurrent .*\[envs, time\] layout"):
        TRPOLoss(actor, critic)(batch.reshape(-1))


@pytest.mark.parametrize("what", ["state", "is_init"])
def test_a_batch_without_stored_states_or_episode_starts_is_refused(collected, what):
    actor, critic, rnn, batch = fresh(collected)
    missing = rnn.in_keys[1] if what == "state" else "is_init"
    with pytest.raises(KeyError, match=f"lacks .*{missing}.*make_tensordict_primer"):
        TRPOLoss(actor, critic)(batch.exclude(missing))


def test_the_surrogate_gradient_flows_through_the_recurrence(collected):
    # the gradient of the loss reaches the recurrent weights through h_{t-1} (not only through the
    # stored states, which are data): compare with the one-step-from-stored-state gradient
    actor, critic, rnn, batch = fresh(collected)
    loss = TRPOLoss(actor, critic)
    weight = (rnn.lstm if hasattr(rnn, "lstm") else rnn.gru).weight_hh_l0
    (grad_seq,) = torch.autograd.grad(loss(batch)["loss_objective"], weight)
    b = loss.policy_batch(batch)
    with torch.enable_grad():
        stepwise = actor.get_dist_params(b.inputs.reshape(-1).clone())  # sequential mode: one step each
    lp = Categorical(logits=stepwise["logits"]).log_prob(b.action)
    (grad_step,) = torch.autograd.grad(-((lp - b.old_log_prob).exp() * b.advantage).mean(), weight)
    assert not torch.allclose(grad_seq, grad_step, atol=1e-6)


# ---------------------------------------------------------------- the Fisher-vector product
def _reference_fisher_product(actor, batch, v_named):
    """The Hessian of the mean KL(π_old ‖ π_θ) at θ_old times v, by double backward through
    TorchRL's python_based module in its recurrent mode (float64)."""
    params = dict(actor.named_parameters())
    with set_recurrent_mode(True):
        logits = actor.get_dist_params(batch.select(*actor.in_keys).clone())["logits"]
    old = Categorical(logits=logits.detach())
    kl = torch.distributions.kl_divergence(old, Categorical(logits=logits)).mean()
    grads = torch.autograd.grad(kl, list(params.values()), create_graph=True)
    dot = sum((g * v_named[name]).sum() for g, name in zip(grads, params))
    return torch.autograd.grad(dot, list(params.values()))


@pytest.mark.parametrize("fvp", ["gauss_newton", "kl_hessian"])
def test_fisher_product_through_the_default_module_equals_the_kl_hessian(collected, fvp):
    actor, critic, rnn, batch = fresh(collected)
    reference = copy.deepcopy(actor)
    reference.module[0].module[0].make_python_based()
    actor, reference = actor.double(), reference.double()
    batch = batch.apply(lambda x: x.double() if x.is_floating_point() else x)
    # π_old in float64: the stored logits as this actor gives them, so θ_old is exactly π_old
    with torch.no_grad(), set_recurrent_mode(True):
        batch["logits"] = reference.get_dist_params(batch.select(*actor.in_keys).clone())["logits"]
    loss = TRPOLoss(actor, critic.double())
    update = TrustRegionUpdate(loss, damping=0.0, fvp=fvp)
    theta = update.flat_parameters()
    product = update.fisher_vector_product(loss.policy_batch(batch), theta)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
    expected = torch.cat([g.reshape(-1) for g in _reference_fisher_product(reference, batch, update.unflatten(v))])
    torch.testing.assert_close(product(v), expected, rtol=1e-6, atol=1e-9)
    # the batched form CG uses gives the same vectors
    vs = torch.stack([v, 2 * v])
    torch.testing.assert_close(product(vs), torch.stack([expected, 2 * expected]), rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- the step
@pytest.mark.parametrize("fvp_subsample", [1.0, 0.5])
def test_the_update_steps_inside_the_trust_region_and_improves_the_surrogate(collected, fvp_subsample):
    # the regression: a default (fused-kernel) LSTMModule/GRUModule used to fail in the Fisher product
    actor, critic, _, batch = fresh(collected)
    loss = TRPOLoss(actor, critic)
    max_kl = 0.01
    update = TrustRegionUpdate(
        loss, max_kl=max_kl, fvp_subsample=fvp_subsample, generator=torch.Generator().manual_seed(1)
    )
    before = loss(batch)
    metrics = update(batch)
    after = loss(batch)
    assert bool(metrics["step_accepted"])
    assert 0 < float(after["kl"]) <= max_kl * (1 + 1e-5)
    assert float(after["surrogate"]) > float(before["surrogate"])
    torch.testing.assert_close(metrics["kl"], after["kl"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(metrics["surrogate_after"], after["surrogate"], rtol=1e-4, atol=1e-6)


def test_a_padded_sequence_batch_takes_the_step_of_its_valid_steps(collected):
    # split_trajs-style padding at the row ends: the padded steps never enter a mean, and the replay
    # of each row's valid prefix is unchanged by what follows it
    actor, critic, _, batch = fresh(collected)
    loss = TRPOLoss(actor, critic)
    lengths = torch.tensor([STEPS, 11, 27, 5])
    mask = torch.arange(STEPS).expand(NUM_ENVS, STEPS) < lengths[:, None]
    loss.value_estimator(batch)
    padded = batch.clone()
    padded["collector", "mask"] = mask
    full = loss.policy_batch(padded)
    assert full.advantage.shape == (int(lengths.sum()),)
    terms = loss.policy_terms(full)
    torch.testing.assert_close(terms.ratio, torch.ones_like(terms.ratio), rtol=0, atol=1e-5)
    update = TrustRegionUpdate(loss)
    metrics = update(padded)
    assert bool(metrics["step_accepted"])


def test_subsampled_rows_keep_their_whole_sequences(collected):
    actor, critic, _, batch = fresh(collected)
    loss = TRPOLoss(actor, critic)
    full = loss.policy_batch(batch)
    rows = torch.tensor([1, 3])
    part = full.rows(rows)
    assert part.inputs.batch_size == (2, STEPS)
    states = torch.cat([torch.arange(STEPS) + r * STEPS for r in rows.tolist()])
    with torch.no_grad():
        torch.testing.assert_close(loss.policy_dist(part).logits, loss.policy_dist(full).logits[states])
    torch.testing.assert_close(part.advantage, full.advantage[states])


def test_a_population_refuses_a_recurrent_actor(collected):
    actor, critic, _, _ = fresh(collected)
    from tensordict import TensorDict

    params = TensorDict.from_modules(actor, copy.deepcopy(actor), as_module=True)
    with pytest.raises(ValueError, match="recurrent"):
        PopulationTrustRegionUpdate(TRPOLoss(actor, critic), params)


# ---------------------------------------------------------------- a recurrent critic
def test_a_recurrent_critic_is_run_over_sequences_by_the_value_estimator_and_fitted(collected):
    actor, _, _, batch = fresh(collected)
    torch.manual_seed(3)
    critic_rnn = LSTMModule(
        input_size=2,
        hidden_size=HIDDEN,
        in_keys=["observation", "critic_h", "critic_c"],
        out_keys=["critic_features", ("next", "critic_h"), ("next", "critic_c")],
    )
    critic = TensorDictSequential(
        critic_rnn, TensorDictModule(nn.Linear(HIDDEN, 1), in_keys=["critic_features"], out_keys=["state_value"])
    )
    loss = TRPOLoss(actor, critic).make_value_estimator(gamma=0.99, lmbda=0.95)
    data = batch.clone()
    loss.value_estimator(data)
    # the oracle: the critic's LSTM run over each episode segment of each row from a zero state
    lstm = critic_rnn.lstm
    head = critic[1].module
    with torch.no_grad():
        for row in range(NUM_ENVS):
            starts = batch["is_init"][row].squeeze(-1).nonzero().flatten().tolist()
            cuts = sorted({0, *starts, STEPS})
            for start, stop in zip(cuts[:-1], cuts[1:]):
                features, _ = lstm(batch["observation"][row : row + 1, start:stop])
                torch.testing.assert_close(
                    data["state_value"][row, start:stop], head(features[0]), rtol=1e-5, atol=1e-6
                )
    fit = CriticFit(loss, epochs=20, minibatch_size=2 * STEPS, lr=3e-3)
    before = float(loss.critic_loss(data))
    fit(data)
    assert float(loss.critic_loss(data)) < before
    with pytest.raises(ValueError, match=r"critic is recurrent"):
        loss.critic_loss(data.reshape(-1))
