"""TrustRegionUpdate: the step stays in the trust region, improves the surrogate, follows F⁻¹g,
rejects cleanly, and never syncs with the host."""

import pytest
import torch

from tests._trpo_batches import (
    POLICY_KINDS,
    actor_state,
    collect,
    make_actor,
    make_critic,
    no_kl_actor,
    trajectory_batch,
)
from trpo_torchrl import TRPOLoss, TrustRegionUpdate

METRICS = {
    "kl",
    "surrogate_before",
    "surrogate_after",
    "expected_improvement",
    "actual_improvement",
    "step_accepted",
    "backtrack_steps",
    "step_fraction",
    "cg_residual",
    "cg_iterations",
}


@pytest.mark.parametrize("fvp", ["gauss_newton", "kl_hessian"])
@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_step_stays_in_the_trust_region_and_improves_the_surrogate(kind, fvp):
    actor = make_actor(kind)
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    before = loss(td)
    max_kl = 0.01
    metrics = TrustRegionUpdate(loss, max_kl=max_kl, fvp=fvp)(td)
    after = loss(td)
    assert METRICS <= set(metrics.keys())
    assert metrics["step_accepted"]
    assert 0 < after["kl"] <= max_kl
    assert after["surrogate"] > before["surrogate"] + 1e-3
    # the metrics describe the parameters that were written
    torch.testing.assert_close(metrics["kl"], after["kl"])
    torch.testing.assert_close(metrics["surrogate_after"], after["surrogate"])
    torch.testing.assert_close(metrics["surrogate_before"], before["surrogate"])
    assert metrics["expected_improvement"] > 0


def test_a_rejected_step_leaves_the_parameters_bit_identical():
    actor = make_actor("gaussian")
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    state = actor_state(actor)
    # no candidate can realise a million times the linear model's improvement
    metrics = TrustRegionUpdate(loss, accept_ratio=1e6, backtrack_iters=5)(td)
    assert not metrics["step_accepted"]
    assert metrics["backtrack_steps"] == 5
    assert metrics["surrogate_after"] == metrics["surrogate_before"]
    for a, b in zip(state, actor.parameters()):
        assert torch.equal(a, b)


def test_non_finite_candidates_are_rejected_and_do_not_corrupt_the_parameters():
    actor = make_actor("gaussian")
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    state = actor_state(actor)
    # a radius so large that every candidate overflows the policy to inf/nan
    metrics = TrustRegionUpdate(loss, max_kl=1e37, backtrack_iters=3)(td)
    assert not metrics["step_accepted"]
    for a, b in zip(state, actor.parameters()):
        assert torch.equal(a, b)


def test_backtracking_takes_the_first_candidate_inside_the_region():
    actor = make_actor("categorical")
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    # with a coarse damping the quadratic model underestimates the KL of the full step at a large
    # radius, so the search must shrink it; whatever it picks must satisfy the constraint
    update = TrustRegionUpdate(loss, max_kl=0.5, damping=0.0, backtrack_coeff=0.5, backtrack_iters=10)
    metrics = update(td)
    assert metrics["step_accepted"]
    assert metrics["kl"] <= 0.5
    k = int(metrics["backtrack_steps"])
    assert k >= 1  # this seed's full step overshoots the radius ...
    assert metrics["kl_full_step"] > 0.5
    torch.testing.assert_close(metrics["step_fraction"], torch.tensor(0.5**k))  # ... and β^k was taken


@pytest.mark.parametrize(
    "kind,fvp", [("gaussian", "gauss_newton"), ("gaussian", "kl_hessian"), ("categorical", "gauss_newton")]
)
def test_step_direction_matches_the_dense_natural_gradient(kind, fvp):
    actor = make_actor(kind, hidden=3, dtype=torch.float64)
    loss = TRPOLoss(actor, make_critic(dtype=torch.float64))
    td = collect(actor, num_states=128, dtype=torch.float64)
    damping, max_kl = 0.01, 1e-4
    update = TrustRegionUpdate(loss, max_kl=max_kl, damping=damping, cg_iters=update_size(actor) + 5, fvp=fvp)
    batch = loss.policy_batch(td)
    theta_old = update.flat_parameters()

    # dense F: the Hessian of the mean KL(π_old‖π_θ) at θ_old; dense g: the surrogate's gradient
    def kl(theta):
        return loss.policy_terms(batch, update.unflatten(theta)).kl

    def surrogate(theta):
        return loss.policy_terms(batch, update.unflatten(theta)).surrogate

    fisher = torch.autograd.functional.hessian(kl, theta_old)
    g = torch.autograd.functional.jacobian(surrogate, theta_old)
    damped = fisher + damping * torch.eye(theta_old.numel(), dtype=torch.float64)
    natural = torch.linalg.solve(damped, g)

    metrics = update(td)
    assert metrics["step_accepted"]
    step = update.flat_parameters() - theta_old
    cosine = torch.nn.functional.cosine_similarity(step, natural, dim=0)
    assert cosine > 0.999
    # and its length: the full step s satisfies ½ sᵀ(F + damping·I)s = max_kl
    full = step / metrics["step_fraction"]
    torch.testing.assert_close(0.5 * full @ damped @ full, torch.tensor(max_kl, dtype=torch.float64), rtol=1e-3, atol=0)


def update_size(actor) -> int:
    return sum(p.numel() for p in actor.parameters())


def test_fisher_subsample_and_entropy_bonus():
    actor = make_actor("gaussian_state_scale")
    loss = TRPOLoss(actor, make_critic(), entropy_coeff=0.01)
    td = collect(actor)
    update = TrustRegionUpdate(loss, max_kl=0.02, fvp_subsample=0.25, generator=torch.Generator().manual_seed(0))
    metrics = update(td)
    assert metrics["step_accepted"]
    assert metrics["kl"] <= 0.02
    assert metrics["objective_after"] > metrics["objective_before"]


@pytest.mark.parametrize("kind,fvp", [("gaussian", "gauss_newton"), ("categorical", "kl_hessian")])
def test_the_whole_update_never_syncs_with_the_host(monkeypatch, kind, fvp):
    actor = make_actor(kind)
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    update = TrustRegionUpdate(loss, fvp=fvp, fvp_subsample=0.5)
    state = actor_state(actor)

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation inside the update")

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "item", refuse)
        m.setattr(torch.Tensor, "__bool__", refuse)
        m.setattr(torch.Tensor, "tolist", refuse)
        metrics = update(td)
    # the patch was live: a bool() of a tensor inside it would have raised
    assert metrics["step_accepted"]
    assert any(not torch.equal(a, b) for a, b in zip(state, actor.parameters()))


def test_arguments_are_checked():
    actor = make_actor("gaussian")
    loss = TRPOLoss(actor, make_critic())
    for kwargs, name in [
        ({"max_kl": 0.0}, "max_kl"),
        ({"max_kl": -1.0}, "max_kl"),
        ({"damping": -0.1}, "damping"),
        ({"cg_iters": 0}, "cg_iters"),
        ({"backtrack_iters": 0}, "backtrack_iters"),
        ({"backtrack_coeff": 1.0}, "backtrack_coeff"),
        ({"accept_ratio": -1.0}, "accept_ratio"),
        ({"fvp": "dense"}, "fvp"),
        ({"fvp_subsample": 0.0}, "fvp_subsample"),
        # non-finite or non-numeric values would switch the step off without a word
        ({"max_kl": float("inf")}, "max_kl"),
        ({"max_kl": float("nan")}, "max_kl"),
        ({"damping": float("inf")}, "damping"),
        ({"accept_ratio": float("inf")}, "accept_ratio"),
        ({"cg_iters": True}, "cg_iters"),
    ]:
        with pytest.raises(ValueError, match=name):
            TrustRegionUpdate(loss, **kwargs)
    with pytest.raises(ValueError, match="max_kl"):
        TrustRegionUpdate(loss, max_kl="0.01")
    with pytest.raises(TypeError, match="generator"):
        TrustRegionUpdate(loss, generator="x")
    with pytest.raises(TypeError, match="TRPOLoss"):
        TrustRegionUpdate(actor)


def test_bad_batches_fail_before_touching_the_parameters():
    actor = make_actor("categorical")
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    update = TrustRegionUpdate(loss)
    state = actor_state(actor)
    with pytest.raises(KeyError, match="logits"):
        update(td.exclude("logits"))
    with pytest.raises(KeyError, match="action_log_prob"):
        update(td.exclude("action_log_prob"))
    td["advantage"][0] = float("nan")
    with pytest.raises(RuntimeError, match="advantage"):
        update(td)
    for a, b in zip(state, actor.parameters()):
        assert torch.equal(a, b)


def test_non_finite_stored_logits_reject_the_step():
    # a NaN among π_old's logits makes the KL NaN, so no candidate is inside the region; it must not
    # read as a zero-probability class (KL 0, region off)
    actor = make_actor("categorical")
    td = collect(actor)
    td["logits"][:] = float("nan")
    state = actor_state(actor)
    metrics = TrustRegionUpdate(TRPOLoss(actor, make_critic()))(td)
    assert not metrics["step_accepted"]
    for a, b in zip(state, actor.parameters()):
        assert torch.equal(a, b)


def test_batched_candidates_match_one_at_a_time_evaluation():
    actor = make_actor("gaussian_state_scale")
    loss = TRPOLoss(actor, make_critic())
    td = collect(actor)
    update = TrustRegionUpdate(loss)
    batch = loss.policy_batch(td)
    theta_old = update.flat_parameters()
    candidates = theta_old + 0.05 * torch.randn(4, theta_old.numel(), generator=torch.Generator().manual_seed(0))
    # unflatten keeps leading dimensions: the layout a population of actors would use
    assert all(v.shape[0] == 4 for v in update.unflatten(candidates).values())
    with torch.no_grad():
        objective, surrogate, kl = update.backends.functional.candidate_terms(batch, candidates)
    for i, theta in enumerate(candidates):
        update.write_parameters(theta)
        out = loss(td)
        torch.testing.assert_close(surrogate[i], out["surrogate"])
        torch.testing.assert_close(kl[i], out["kl"])
    update.write_parameters(theta_old)


def test_update_on_a_trajectory_batch_estimates_the_advantages_itself():
    actor = make_actor("categorical")
    loss = TRPOLoss(actor, make_critic()).make_value_estimator(gamma=0.95, lmbda=0.9)
    td = trajectory_batch(actor, num_envs=4, steps=32)
    state = actor_state(actor)
    metrics = TrustRegionUpdate(loss, max_kl=0.01)(td)
    assert metrics["kl"] <= 0.01
    # rewards are noise here, so a step may or may not be found; either way the outcome is consistent
    changed = any(not torch.equal(a, b) for a, b in zip(state, actor.parameters()))
    assert changed == bool(metrics["step_accepted"])


def test_sampled_kl_policy_steps_with_the_kl_hessian_product():
    actor = no_kl_actor()
    loss = TRPOLoss(actor, make_critic(), kl_estimate="sampled")
    td = collect(actor, num_states=512)
    # refused when built, not after a batch: gauss_newton has no closed form for it
    with pytest.raises(ValueError, match="kl_hessian"):
        TrustRegionUpdate(loss, fvp="gauss_newton")
    assert TrustRegionUpdate(loss).settings.fvp == "kl_hessian"  # the default takes it by itself
    metrics = TrustRegionUpdate(loss, fvp="kl_hessian", max_kl=0.01)(td)
    assert metrics["step_accepted"]
    after = loss(td)
    assert 0 < after["kl"] <= 0.01
    assert after["surrogate"] > metrics["surrogate_before"]


@pytest.mark.parametrize("kind,fvp", [("gaussian", "gauss_newton"), ("gaussian_state_scale", "kl_hessian")])
def test_kl_averaged_over_action_dims_is_the_summed_kl_with_a_d_times_larger_region(kind, fvp):
    # kl_reduction="mean" (sb3-contrib's measure) with (δ, λ) must take exactly the step of "sum"
    # with (d·δ, d·λ), and report the KL divided by d
    actor = make_actor(kind, dtype=torch.float64)
    td = collect(actor, dtype=torch.float64)
    d = td["action"].shape[-1]
    assert d > 1
    start = actor_state(actor)
    mean_update = TrustRegionUpdate(
        TRPOLoss(actor, make_critic(dtype=torch.float64), kl_reduction="mean"), max_kl=0.005, damping=0.05, fvp=fvp
    )
    mean_metrics = mean_update(td)
    mean_theta = mean_update.flat_parameters()
    with torch.no_grad():
        for p, p0 in zip(actor.parameters(), start):
            p.copy_(p0)
    sum_update = TrustRegionUpdate(
        TRPOLoss(actor, make_critic(dtype=torch.float64)), max_kl=0.005 * d, damping=0.05 * d, fvp=fvp
    )
    sum_metrics = sum_update(td)
    assert mean_metrics["step_accepted"] and sum_metrics["step_accepted"]
    torch.testing.assert_close(mean_theta, sum_update.flat_parameters(), rtol=0, atol=1e-12)
    torch.testing.assert_close(mean_metrics["kl"] * d, sum_metrics["kl"])
    assert 0 < mean_metrics["kl"] <= 0.005 < sum_metrics["kl"]


def test_kl_reduction_does_not_change_a_categorical_step():
    # one categorical is one action dimension: "mean" and "sum" are the same measure
    thetas = []
    for reduction in ("sum", "mean"):
        actor = make_actor("categorical", dtype=torch.float64)
        td = collect(actor, dtype=torch.float64)
        update = TrustRegionUpdate(TRPOLoss(actor, make_critic(dtype=torch.float64), kl_reduction=reduction))
        assert update(td)["step_accepted"]
        thetas.append(update.flat_parameters())
    assert torch.equal(thetas[0], thetas[1])
