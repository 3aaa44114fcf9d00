"""TRPOLoss: the surrogate, the KL to the stored policy, keys, value estimator and bad input."""

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import distributions as D
from torch import nn
from torchrl.objectives.utils import ValueEstimators
from torchrl.objectives.value import TD0Estimator

from tests._trpo_batches import (
    NUM_ACTIONS,
    POLICY_KINDS,
    collect,
    make_actor,
    make_critic,
    no_kl_actor,
    trajectory_batch,
)
from trpo_torchrl import FusedGAE, TRPOLoss


def _standardise(a):
    return (a - a.mean()) / a.std()


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_kl_zero_and_ratio_one_at_the_behaviour_policy(kind):
    actor = make_actor(kind)
    loss = TRPOLoss(actor, make_critic())
    out = loss(collect(actor))
    assert out["kl"].abs() < 1e-6
    for key in ("ratio_mean", "ratio_min", "ratio_max"):
        torch.testing.assert_close(out[key], torch.tensor(1.0), rtol=0, atol=1e-5)
    # with ratio 1 the surrogate is the mean of the standardised advantages, i.e. zero
    assert out["surrogate"].abs() < 1e-5
    assert set(loss.out_keys) <= set(out.keys())


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_surrogate_gradient_is_the_policy_gradient(kind):
    actor = make_actor(kind, dtype=torch.float64)
    loss = TRPOLoss(actor, make_critic(dtype=torch.float64))
    td = collect(actor, dtype=torch.float64)
    params = list(actor.parameters())
    surrogate_grad = torch.autograd.grad(-loss(td)["loss_objective"], params)
    # the score-function estimator E[A ∇log π(a|s)], written directly
    dist = actor.get_dist(td.select("observation").copy())
    log_prob = dist.log_prob(td["action"])
    adv = _standardise(td["advantage"].reshape(-1))
    policy_grad = torch.autograd.grad((adv * log_prob).mean(), params)
    assert any(g.abs().max() > 1e-3 for g in policy_grad)  # the batch is learnable
    for a, b in zip(surrogate_grad, policy_grad):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kl_reduction", ["sum", "mean"])
def test_kl_is_the_closed_form_gaussian_kl_after_a_change(kl_reduction):
    actor = make_actor("gaussian", dtype=torch.float64)
    loss = TRPOLoss(actor, make_critic(dtype=torch.float64), kl_reduction=kl_reduction)
    td = collect(actor, dtype=torch.float64)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.05 * torch.randn_like(p))
        new = actor.get_dist_params(td.select("observation").copy())
    mu0, s0, mu1, s1 = td["loc"], td["scale"], new["loc"], new["scale"]
    per_dim = torch.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5  # [N, d]
    # "sum": the KL of the joint action distribution; "mean": averaged over dimensions too (sb3-contrib)
    expected = per_dim.sum(-1).mean() if kl_reduction == "sum" else per_dim.mean()
    torch.testing.assert_close(loss(td)["kl"], expected)
    assert expected > 1e-4


def test_kl_is_the_closed_form_categorical_kl_after_a_change():
    actor = make_actor("categorical", dtype=torch.float64)
    loss = TRPOLoss(actor, make_critic(dtype=torch.float64))
    td = collect(actor, dtype=torch.float64)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.1 * torch.randn_like(p))
        new_logits = actor.get_dist_params(td.select("observation").copy())["logits"]
    p0 = td["logits"].softmax(-1)
    expected = (p0 * (p0.log() - new_logits.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(loss(td)["kl"], expected)
    assert expected > 1e-4


def test_loss_entries_and_coefficients():
    actor = make_actor("gaussian")
    critic = make_critic()
    td = collect(actor)
    plain = TRPOLoss(actor, critic)(td)
    assert "loss_entropy" not in plain.keys()
    out = TRPOLoss(actor, critic, entropy_coeff=0.1, critic_coeff=0.5)(td)
    torch.testing.assert_close(out["loss_entropy"], -0.1 * out["entropy"])
    with torch.no_grad():
        value = critic(td.select("observation").copy())["state_value"]
    torch.testing.assert_close(out["loss_critic"], 0.5 * (value - td["value_target"]).pow(2).mean())
    # the standardisation can be switched off: then the surrogate at θ_old is the raw mean advantage
    raw = TRPOLoss(actor, critic, normalize_advantage=False)(td)
    torch.testing.assert_close(raw["surrogate"], td["advantage"].mean())


def test_set_keys_renames_what_the_loss_reads():
    actor = make_actor("gaussian")
    critic = make_critic()
    td = collect(actor)
    reference = TRPOLoss(actor, critic)(td)
    renamed = td.clone()
    for old, new in [("advantage", "adv"), ("value_target", "ret"), ("action_log_prob", "old_lp")]:
        renamed.rename_key_(old, new)
    loss = TRPOLoss(actor, critic)
    # under the default names the advantage is missing, so the loss tries to estimate it
    with pytest.raises(KeyError, match="reward"):
        loss(renamed)
    loss.set_keys(advantage="adv", value_target="ret", sample_log_prob="old_lp")
    assert "old_lp" in loss.in_keys
    out = loss(renamed)
    for key in ("loss_objective", "loss_critic", "kl", "surrogate"):
        torch.testing.assert_close(out[key], reference[key])
    with pytest.raises(ValueError):
        loss.set_keys(not_a_key="x")


def test_default_value_estimator_is_fused_gae_and_feeds_the_loss():
    actor = make_actor("gaussian")
    critic = make_critic()
    loss = TRPOLoss(actor, critic)
    assert loss.make_value_estimator(gamma=0.9, lmbda=0.8) is loss
    assert isinstance(loss.value_estimator, FusedGAE)
    td = trajectory_batch(actor)
    out = loss(td)  # no advantage in the batch: the loss computes it
    manual = td.clone()
    FusedGAE(gamma=0.9, lmbda=0.8, value_network=critic)(manual)
    td2 = td.clone()
    td2["advantage"], td2["value_target"] = manual["advantage"], manual["value_target"]
    expected = loss(td2)
    torch.testing.assert_close(out["loss_critic"], expected["loss_critic"])
    # renamed keys reach the estimator
    loss.set_keys(advantage="adv")
    batch = trajectory_batch(actor)
    loss.value_estimator(batch)
    assert "adv" in batch.keys() and "advantage" not in batch.keys()
    # other TorchRL estimators still work, and the call still returns self
    assert loss.make_value_estimator(ValueEstimators.TD0, gamma=0.9) is loss
    assert isinstance(loss.value_estimator, TD0Estimator)


# ------------------------------------------------------------------------------------------ bad input
def test_missing_log_prob_or_distribution_parameters_name_the_key():
    actor = make_actor("gaussian")
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    with pytest.raises(KeyError, match="action_log_prob"):
        loss(td.exclude("action_log_prob"))
    with pytest.raises(KeyError, match="scale"):
        loss(td.exclude("scale"))
    cat = make_actor("categorical")
    with pytest.raises(KeyError, match="logits"):
        TRPOLoss(cat, make_critic())(collect(cat).exclude("logits"))


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_actions_and_log_probs_of_the_wrong_shape_are_errors(kind):
    # they would otherwise broadcast into the log-probabilities and the step be taken on garbage
    actor = make_actor(kind)
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    loss(td)  # the collected batch itself is fine
    action = td["action"]
    if kind.startswith("gaussian"):
        wrong = [action[..., :1], action[..., None]]
    elif kind == "categorical":  # one-hot actions
        wrong = [action.argmax(-1), action[..., :2]]
    else:  # index actions
        wrong = [torch.nn.functional.one_hot(action, NUM_ACTIONS), action[:, None]]
    for bad in wrong:
        with pytest.raises(ValueError, match="the action 'action' has shape"):
            loss(td.clone().set("action", bad))
    log_prob = td["action_log_prob"]
    with pytest.raises(ValueError, match="the stored log-probability 'action_log_prob' has shape"):
        loss(td.clone().set("action_log_prob", torch.stack([log_prob, log_prob], -1)))


def test_non_finite_advantage_is_an_error():
    actor = make_actor("gaussian")
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    td["advantage"][3] = float("nan")
    with pytest.raises(RuntimeError, match="advantage"):
        loss(td)
    td["advantage"][3] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite"):
        loss(td)


def test_networks_without_parameters_are_rejected():
    actor = make_actor("gaussian")
    frozen = make_actor("gaussian")
    for p in frozen.parameters():
        p.requires_grad_(False)
    empty_critic = TensorDictModule(nn.Identity(), in_keys=["observation"], out_keys=["state_value"])
    with pytest.raises(ValueError, match="actor_network"):
        TRPOLoss(frozen, make_critic())
    with pytest.raises(ValueError, match="critic_network"):
        TRPOLoss(actor, empty_critic)
    with pytest.raises(TypeError, match="ProbabilisticTensorDictSequential"):
        TRPOLoss(make_critic(), make_critic())
    with pytest.raises(ValueError, match="loss_critic_type"):
        TRPOLoss(actor, make_critic(), loss_critic_type="huber?")
    with pytest.raises(ValueError, match="kl_reduction"):
        TRPOLoss(actor, make_critic(), kl_reduction="max")
    with pytest.raises(TypeError, match="critic_network must be a TensorDictModule"):
        TRPOLoss(actor, nn.Linear(3, 1))
    td = collect(actor)
    with pytest.raises(TypeError, match="the advantage 'advantage' must be floating-point"):
        TRPOLoss(actor, make_critic())(td.set("advantage", td["advantage"].long()))
    for bad in (-1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="critic_coeff"):
            TRPOLoss(actor, make_critic(), critic_coeff=bad)
        with pytest.raises(ValueError, match="entropy_coeff"):
            TRPOLoss(actor, make_critic(), entropy_coeff=bad)


def test_distribution_without_analytic_kl_needs_the_sampled_estimate():
    actor = no_kl_actor()
    td = collect(actor, num_states=4096)
    with pytest.raises(NotImplementedError, match="kl_estimate='sampled'"):
        TRPOLoss(actor, make_critic())(td)
    loss = TRPOLoss(actor, make_critic(), kl_estimate="sampled")
    assert loss(td)["kl"].abs() < 1e-6
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    kl = loss(td)["kl"]
    # r - 1 - log r is non-negative and close to the analytic value on a decent sample
    new = actor.get_dist_params(td.select("observation").copy()).detach()
    analytic = D.kl_divergence(
        D.Independent(D.Normal(td["loc"], td["scale"]), 1), D.Independent(D.Normal(new["loc"], new["scale"]), 1)
    ).mean()
    assert kl > 0
    torch.testing.assert_close(kl, analytic, rtol=0.5, atol=1e-4)
