"""Tests of the Fisher-vector products: both forms against dense Fisher matrices built from
autograd Jacobians, on a tiny policy of each family."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from trpo_torchrl.fisher import gauss_newton_fisher_vector_product, kl_fisher_vector_product, subsample_indices
from trpo_torchrl.ops import conjugate_gradient

N_STATES, OBS, ACT, HIDDEN = 9, 3, 2, 5


class TinyPolicy:
    """A tanh MLP seen as a function of its flat parameter vector."""

    def __init__(self, family: str):
        self.family = family
        out = 2 * ACT if family == "normal" else 4  # normal: loc and log-scale; categorical: 4 actions
        self.net = torch.nn.Sequential(
            torch.nn.Linear(OBS, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, out)
        ).double()
        self.names = [k for k, _ in self.net.named_parameters()]
        self.shapes = [p.shape for p in self.net.parameters()]
        self.theta = torch.nn.utils.parameters_to_vector(self.net.parameters()).detach()
        self.obs = torch.randn(N_STATES, OBS, dtype=torch.float64)
        self.old = tuple(t.detach() for t in self._as_tuple(self.dist(self.theta)))

    def _as_tuple(self, out):
        return out if isinstance(out, tuple) else (out,)

    def params(self, theta):
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            k = shape.numel()
            out[name] = theta[i : i + k].view(shape)
            i += k
        return out

    def dist(self, theta):
        o = functional_call(self.net, self.params(theta), (self.obs,))
        if self.family == "normal":
            return o[:, :ACT], torch.exp(o[:, ACT:])
        return o

    def kl(self, theta):
        """Mean analytic KL(pi_old || pi_theta), pi_old held fixed."""
        if self.family == "normal":
            loc0, scale0 = self.old
            loc, scale = self.dist(theta)
            kl = torch.log(scale / scale0) + (scale0**2 + (loc0 - loc) ** 2) / (2 * scale**2) - 0.5
            return kl.sum(-1).mean()
        (logits0,) = self.old
        logp0 = torch.log_softmax(logits0, -1)
        return (logp0.exp() * (logp0 - torch.log_softmax(self.dist(theta), -1))).sum(-1).mean()

    def dense_fisher(self):
        """The Fisher from Jacobians of the distribution, independently of fisher.py.

        categorical: E_a[grad log pi grad log pi^T] summed exactly over the actions;
        normal: J_loc^T diag(1/s^2) J_loc + J_s^T diag(2/s^2) J_s, averaged over states.
        """
        theta = self.theta
        if self.family == "categorical":
            logp = lambda th: torch.log_softmax(self.dist(th), -1)  # noqa: E731
            J = torch.autograd.functional.jacobian(logp, theta)  # [N, k, n]
            probs = logp(theta).exp()
            return torch.einsum("sa,sai,saj->ij", probs, J, J) / N_STATES
        J_loc = torch.autograd.functional.jacobian(lambda th: self.dist(th)[0], theta)
        J_scale = torch.autograd.functional.jacobian(lambda th: self.dist(th)[1], theta)
        _, scale = self.old
        w = 1 / scale**2
        F = torch.einsum("sd,sdi,sdj->ij", w, J_loc, J_loc) + torch.einsum("sd,sdi,sdj->ij", 2 * w, J_scale, J_scale)
        return F / N_STATES


@pytest.mark.parametrize("use_linearize", [True, False])
@pytest.mark.parametrize("family", ["normal", "categorical"])
@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_both_forms_equal_dense_fisher(family, damping, use_linearize):
    pol = TinyPolicy(family)
    n = pol.theta.numel()
    F = pol.dense_fisher()
    # the Fisher really is the KL's Hessian at theta_old (checks the dense matrix itself)
    H = torch.autograd.functional.hessian(pol.kl, pol.theta)
    torch.testing.assert_close(H, F, rtol=1e-9, atol=1e-11)
    F_damped = F + damping * torch.eye(n, dtype=torch.float64)
    fvp_a = kl_fisher_vector_product(pol.kl, pol.theta, damping=damping)
    fvp_b = gauss_newton_fisher_vector_product(
        pol.dist, pol.theta, family, damping=damping, use_linearize=use_linearize
    )
    V = torch.randn(4, n, dtype=torch.float64)
    expected = V @ F_damped.T
    assert expected.abs().max() > 1e-3  # a zero Fisher would make the comparison empty
    for fvp in (fvp_a, fvp_b):
        torch.testing.assert_close(fvp(V), expected, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(fvp(V[1]), expected[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", ["normal", "categorical"])
def test_fvp_drives_cg_to_the_natural_gradient(family):
    pol = TinyPolicy(family)
    n = pol.theta.numel()
    A = pol.dense_fisher() + 0.05 * torch.eye(n, dtype=torch.float64)
    g = torch.randn(2, n, dtype=torch.float64)
    fvp = gauss_newton_fisher_vector_product(pol.dist, pol.theta, family, damping=0.05)
    x, info = conjugate_gradient(fvp, g, max_iter=4 * n, residual_tol=1e-22)
    assert info.converged.all() and not info.breakdown.any()
    torch.testing.assert_close(x, torch.linalg.solve(A, g.T).T, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("family", ["normal", "categorical"])
def test_kl_scale_scales_the_fisher_and_not_the_damping(family):
    pol = TinyPolicy(family)
    n = pol.theta.numel()
    v = torch.randn(n, dtype=torch.float64)
    fvp = gauss_newton_fisher_vector_product(pol.dist, pol.theta, family, damping=0.05, kl_scale=0.25)
    torch.testing.assert_close(fvp(v), 0.25 * (pol.dense_fisher() @ v) + 0.05 * v, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="kl_scale"):
        gauss_newton_fisher_vector_product(pol.dist, pol.theta, family, kl_scale=0.0)


def test_fvp_on_a_subsample_matches_the_subsampled_fisher():
    pol = TinyPolicy("categorical")
    idx = subsample_indices(N_STATES, 0.5, generator=torch.Generator().manual_seed(3))
    full_obs = pol.obs
    pol.obs = full_obs[idx]
    pol.old = (pol.old[0][idx],)
    F_sub = pol.dense_fisher() * N_STATES / len(idx)
    fvp = gauss_newton_fisher_vector_product(pol.dist, pol.theta, "categorical")
    v = torch.randn(pol.theta.numel(), dtype=torch.float64)
    torch.testing.assert_close(fvp(v), F_sub @ v, rtol=1e-9, atol=1e-12)


def test_subsample_indices():
    idx = subsample_indices(100, 0.25, generator=torch.Generator().manual_seed(0))
    assert idx.dtype == torch.long and idx.shape == (25,)
    assert (idx[1:] > idx[:-1]).all()  # sorted, no repeats
    assert idx.min() >= 0 and idx.max() < 100
    again = subsample_indices(100, 0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)
    assert subsample_indices(10, 1.0).tolist() == list(range(10))
    assert subsample_indices(10, 1e-6).numel() == 1
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            subsample_indices(10, bad)
    with pytest.raises(ValueError, match="num_states"):
        subsample_indices(0, 0.5)


def test_fisher_argument_errors():
    pol = TinyPolicy("normal")
    n = pol.theta.numel()
    with pytest.raises(ValueError, match="theta must be a 1-D"):
        kl_fisher_vector_product(pol.kl, pol.theta.view(1, -1))
    with pytest.raises(ValueError, match="damping"):
        kl_fisher_vector_product(pol.kl, pol.theta, damping=-1.0)
    with pytest.raises(ValueError, match="family"):
        gauss_newton_fisher_vector_product(pol.dist, pol.theta, "beta")
    with pytest.raises(ValueError, match="family"):
        gauss_newton_fisher_vector_product(pol.dist, pol.theta, ("normal", "beta"))
    with pytest.raises(ValueError, match="tuple of 3 parts"):
        gauss_newton_fisher_vector_product(pol.dist, pol.theta, ("normal", "categorical", "bernoulli"))
    with pytest.raises(ValueError, match="\\(loc, scale\\)"):
        gauss_newton_fisher_vector_product(lambda th: pol.dist(th)[0], pol.theta, "normal")
    with pytest.raises(ValueError, match="logits \\[N, k\\]"):
        gauss_newton_fisher_vector_product(lambda th: pol.dist(th)[0][0], pol.theta, "categorical")
    fvp = gauss_newton_fisher_vector_product(pol.dist, pol.theta, "normal")
    with pytest.raises(ValueError, match=f"v must have shape \\[{n}\\]"):
        fvp(torch.ones(n + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="v is torch.float32"):
        fvp(torch.ones(n))


def _conv_actor(seed: int = 0):
    """A categorical policy whose network holds a convolution (the observation read as a
    one-channel signal), float64."""
    from torch import nn

    from tests._trpo_batches import NUM_ACTIONS, OBS_DIM
    from trpo_torchrl.policies import categorical_actor

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Unflatten(-1, (1, OBS_DIM)),
        nn.Conv1d(1, 4, 2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * (OBS_DIM - 1), NUM_ACTIONS),
    ).double()
    return categorical_actor(net)


@pytest.mark.parametrize("max_kl,accept_ratio", [(0.02, 0.0), (3.0, 0.9)])
def test_a_convolutional_policy_takes_linearize_and_the_same_step(max_kl, accept_ratio):
    """A CPU policy with a convolution gets J v from linearize (cheaper than the transpose trick
    through a convolution's backward) and its line-search candidates one at a time: the step equals
    the transpose trick's with every candidate at once, to float64 rounding; an MLP policy keeps
    the transpose trick."""
    from tests._trpo_batches import assert_same_step, collect, make_actor, make_critic
    from trpo_torchrl import TRPOLoss, TrustRegionUpdate

    results, passes = [], {}
    for convolutional in (True, False):
        actor = _conv_actor()
        td = collect(actor, 128, dtype=torch.float64)
        update = TrustRegionUpdate(
            TRPOLoss(actor, make_critic(dtype=torch.float64)),
            max_kl=max_kl,
            accept_ratio=accept_ratio,
            backtrack_iters=6,
            generator=torch.Generator().manual_seed(1),
        )
        backend = update.backends.functional
        assert backend.convolutional
        backend.convolutional = convolutional  # False: the transpose trick, every candidate at once
        evaluate = backend.candidate_terms
        passes[convolutional] = []

        def counted(batch, candidates, buffers=None, record=passes[convolutional], evaluate=evaluate):
            record.append(candidates.shape[0])
            return evaluate(batch, candidates, buffers)

        backend.candidate_terms = counted
        metrics = update(td)
        assert bool(metrics["step_accepted"])
        results.append((update.flat_parameters(), metrics))
    assert_same_step(*results)
    # one candidate per pass, stopping at the accepted one; else all six in one pass
    accepted_at = int(results[0][1]["backtrack_steps"])
    assert (accepted_at > 0) == (accept_ratio > 0)  # the second case backtracks: several passes
    assert passes == {True: [1] * (accepted_at + 1), False: [6]}
    mlp = TrustRegionUpdate(TRPOLoss(make_actor("categorical", dtype=torch.float64), make_critic(dtype=torch.float64)))
    assert not mlp.backends.functional.convolutional
