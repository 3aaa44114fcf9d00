"""Distributions TorchRL users build their actors with: TanhNormal, the categoricals, Bernoulli,
CompositeDistribution in every tensordict log-prob layout, and distributions without a closed-form
Fisher. Oracles: torch's and torchrl's own distributions (log_prob, kl_divergence) and the dense
Hessian of the mean KL built from them with autograd."""

from __future__ import annotations

import logging

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import (
    CompositeDistribution,
    InteractionType,
    NormalParamExtractor,
    TensorDictModule,
    TensorDictSequential,
    set_composite_lp_aggregate,
)
from torch import distributions as D
from torch import nn
from torchrl.modules import IndependentNormal, MaskedCategorical, OneHotCategorical, ProbabilisticActor, TanhNormal

from tests._trpo_batches import make_critic
from trpo_torchrl import TRPOLoss, TrustRegionUpdate

OBS, ACT, K, N = 3, 2, 4, 64
DT = torch.float64


class IndependentBernoulli(D.Independent):
    """MultiBinary: independent Bernoullis over the last dimension, one log-probability per state."""

    def __init__(self, logits):
        super().__init__(D.Bernoulli(logits=logits), 1)


def _independent_categorical(logits):
    return D.Independent(D.Categorical(logits=logits), 1)


def _actor(module, in_keys, dist_class, out_keys=None, **dist_kwargs):
    kwargs = {"out_keys": out_keys} if out_keys is not None else {}
    return ProbabilisticActor(
        module,
        in_keys=in_keys,
        distribution_class=dist_class,
        distribution_kwargs=dist_kwargs or None,
        return_log_prob=True,
        default_interaction_type=InteractionType.RANDOM,
        **kwargs,
    ).to(DT)


def _mlp(out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(OBS, 8), nn.Tanh(), nn.Linear(8, out))


def _composite(hybrid: bool, nested: bool):
    """Two categoricals (MultiDiscrete), or a categorical and a Gaussian (hybrid), as tensordict
    builds a composite policy: a network writing each part's parameters under ``params``."""
    sizes = [3, K + ACT * 2] if hybrid else [3, K]
    body = TensorDictModule(_mlp(sum(sizes)), in_keys=["observation"], out_keys=["h"])
    if hybrid:
        split = TensorDictModule(
            lambda h: (h[..., :3], h[..., 3 : 3 + ACT], nn.functional.softplus(h[..., 3 + ACT : 3 + 2 * ACT]) + 0.1),
            in_keys=["h"],
            out_keys=[("params", "a", "logits"), ("params", "b", "loc"), ("params", "b", "scale")],
        )
        dist_map = {"a": D.Categorical, "b": IndependentNormal}
    else:
        split = TensorDictModule(
            lambda h: (h[..., :3], h[..., 3 : 3 + K]),
            in_keys=["h"],
            out_keys=[("params", "a", "logits"), ("params", "b", "logits")],
        )
        dist_map = {"a": D.Categorical, "b": D.Categorical}
    names = {"a": ("action", "a"), "b": ("action", "b")} if nested else None
    extra = {"name_map": names} if nested else {}
    out_keys = list(names.values()) if nested else ["a", "b"]
    return _actor(
        TensorDictSequential(body, split),
        ["params"],
        CompositeDistribution,
        out_keys=out_keys,
        distribution_map=dist_map,
        **extra,
    )


def make(kind: str):
    """``(actor, oracle KL(old params, new params) per state, extra inputs)`` for ``kind``."""
    torch.manual_seed(0)
    extra = {}
    if kind.startswith("tanh"):
        net = TensorDictModule(
            nn.Sequential(_mlp(2 * ACT), NormalParamExtractor()), in_keys=["observation"], out_keys=["loc", "scale"]
        )
        low, high = torch.tensor([-2.0, -1.0], dtype=DT), torch.tensor([3.0, 1.0], dtype=DT)
        actor = _actor(net, ["loc", "scale"], TanhNormal, low=low, high=high, tanh_loc=kind == "tanh_loc", upscale=2.0)

        def oracle(old, new):
            def build(p):
                return TanhNormal(p["loc"], p["scale"], low=low, high=high, tanh_loc=kind == "tanh_loc", upscale=2.0)

            return D.kl_divergence(build(old).base_dist, build(new).base_dist)

        return actor, oracle, extra
    if kind in ("categorical", "one_hot", "masked"):
        net = TensorDictModule(_mlp(K), in_keys=["observation"], out_keys=["logits"])
        if kind == "masked":
            actor = _actor(net, {"logits": "logits", "mask": "action_mask"}, MaskedCategorical)
            mask = torch.rand(N, K, generator=torch.Generator().manual_seed(5)) > 0.4
            mask[:, 0] = True
            extra["action_mask"] = mask

            def oracle(old, new):
                # over the allowed classes only, with torch's own Categorical on the masked softmax
                lo, ln = (p["logits"].masked_fill(~mask, -torch.inf).log_softmax(-1) for p in (old, new))
                return (lo.exp() * (lo - ln)).masked_fill(~mask, 0).sum(-1)

            return actor, oracle, extra
        actor = _actor(net, ["logits"], OneHotCategorical if kind == "one_hot" else D.Categorical)
        return (
            actor,
            lambda old, new: D.kl_divergence(D.Categorical(logits=old["logits"]), D.Categorical(logits=new["logits"])),
            extra,
        )
    if kind == "multicategorical":
        # MultiDiscrete as one Independent over m categoricals: each keeps its own softmax
        net = TensorDictModule(
            nn.Sequential(_mlp(3 * K), nn.Unflatten(-1, (3, K))), in_keys=["observation"], out_keys=["logits"]
        )
        actor = _actor(net, ["logits"], _independent_categorical)
        return (
            actor,
            lambda old, new: D.kl_divergence(
                _independent_categorical(old["logits"]), _independent_categorical(new["logits"])
            ),
            extra,
        )
    if kind == "bernoulli":
        net = TensorDictModule(_mlp(3), in_keys=["observation"], out_keys=["logits"])
        actor = _actor(net, ["logits"], IndependentBernoulli)
        return (
            actor,
            lambda old, new: D.kl_divergence(IndependentBernoulli(old["logits"]), IndependentBernoulli(new["logits"])),
            extra,
        )
    hybrid, nested = "hybrid" in kind, "nested" in kind
    actor = _composite(hybrid, nested)

    def oracle(old, new):
        kl = D.kl_divergence(
            D.Categorical(logits=old["params", "a", "logits"]), D.Categorical(logits=new["params", "a", "logits"])
        )
        if hybrid:
            part = lambda p: IndependentNormal(p["params", "b", "loc"], p["params", "b", "scale"])  # noqa: E731
        else:
            part = lambda p: D.Categorical(logits=p["params", "b", "logits"])  # noqa: E731
        return kl + D.kl_divergence(part(old), part(new))

    return actor, oracle, extra


KINDS = ["tanh", "tanh_loc", "categorical", "one_hot", "masked", "multicategorical", "bernoulli"]
COMPOSITES = ["multidiscrete", "multidiscrete_nested", "hybrid", "hybrid_nested"]


def collect(actor, extra, aggregate=False):
    obs = torch.randn(N, OBS, generator=torch.Generator().manual_seed(1), dtype=DT)
    torch.manual_seed(2)
    with torch.no_grad(), set_composite_lp_aggregate(aggregate):
        td = actor(TensorDict({"observation": obs, **extra}, [N]))
    td["advantage"] = torch.randn(N, 1, generator=torch.Generator().manual_seed(3), dtype=DT)
    td["value_target"] = torch.zeros(N, 1, dtype=DT)
    return td


class _DistParams(nn.Module):
    def __init__(self, actor):
        super().__init__()
        self.actor = actor

    def forward(self, td):
        return self.actor.get_dist_params(td)


def _setup(kind, aggregate=False):
    with set_composite_lp_aggregate(aggregate):
        actor, oracle, extra = make(kind)
        td = collect(actor, extra, aggregate)
    # the loss is built, and run, outside the flag the actor was built under
    loss = TRPOLoss(actor, make_critic(dtype=DT))
    return actor, oracle, td, loss


def _dense_kl_hessian(actor, oracle, td, update):
    """The Hessian of the mean oracle KL at θ_old, by autograd through the actor."""
    wrapper = _DistParams(actor)
    inputs = td.select("observation", *[k for k in ("action_mask",) if k in td.keys()])
    old = actor.get_dist_params(inputs.copy()).detach()
    theta0 = update.flat_parameters()

    def mean_kl(theta):
        params = {"actor." + k: v for k, v in update.unflatten(theta).items()}
        new = torch.func.functional_call(wrapper, params, (inputs.copy(),))
        return oracle(old, new).mean()

    return torch.autograd.functional.hessian(mean_kl, theta0), theta0


@pytest.mark.parametrize("aggregate", [False, True])
@pytest.mark.parametrize("kind", KINDS + COMPOSITES)
def test_default_product_is_gauss_newton_and_equals_the_dense_kl_hessian(kind, aggregate):
    if aggregate and kind not in COMPOSITES:
        pytest.skip("the aggregation flag concerns composites only")
    actor, oracle, td, loss = _setup(kind, aggregate)
    update = TrustRegionUpdate(loss, damping=0.0)
    assert update.settings.fvp == "gauss_newton"
    batch = loss.policy_batch(td)
    H, theta0 = _dense_kl_hessian(actor, oracle, td, update)
    assert H.abs().max() > 1e-3  # a policy whose Fisher is not trivially zero
    V = torch.randn(3, theta0.numel(), dtype=DT, generator=torch.Generator().manual_seed(4))
    fvp = update.fisher_vector_product(batch, theta0)
    torch.testing.assert_close(fvp(V), V @ H, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS + COMPOSITES)
def test_the_kl_hessian_product_agrees(kind):
    # the double backward through our KLs (masked logits, Bernoulli, composite sums) is finite and exact
    actor, oracle, td, loss = _setup(kind)
    update = TrustRegionUpdate(loss, damping=0.0, fvp="kl_hessian")
    H, theta0 = _dense_kl_hessian(actor, oracle, td, update)
    V = torch.randn(2, theta0.numel(), dtype=DT, generator=torch.Generator().manual_seed(4))
    fvp = update.fisher_vector_product(loss.policy_batch(td), theta0)
    torch.testing.assert_close(fvp(V), V @ H, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("aggregate", [False, True])
@pytest.mark.parametrize("kind", KINDS + COMPOSITES)
def test_loss_kl_log_prob_and_step_against_torch(kind, aggregate):
    if aggregate and kind not in COMPOSITES:
        pytest.skip("the aggregation flag concerns composites only")
    actor, oracle, td, loss = _setup(kind, aggregate)
    out = loss(td)
    # at the behaviour policy the stored log-probability is the joint one: ratio 1, KL 0
    assert out["kl"].abs() < 1e-12
    torch.testing.assert_close(out["ratio_max"], torch.tensor(1.0, dtype=DT), rtol=0, atol=1e-10)
    inputs = td.select("observation", *[k for k in ("action_mask",) if k in td.keys()])
    old = actor.get_dist_params(inputs.copy()).detach()
    metrics = TrustRegionUpdate(loss, max_kl=0.01)(td)
    assert metrics["step_accepted"]
    with torch.no_grad():
        new = actor.get_dist_params(inputs.copy())
    expected = oracle(old, new).mean()
    assert 0 < expected <= 0.01
    torch.testing.assert_close(loss(td)["kl"], expected, rtol=1e-9, atol=1e-12)


def test_composite_kl_mean_divides_by_every_parts_action_dimensions():
    actor, oracle, td, _ = _setup("hybrid")
    loss_sum = TRPOLoss(actor, make_critic(dtype=DT))
    loss_mean = TRPOLoss(actor, make_critic(dtype=DT), kl_reduction="mean")
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # one categorical and an ACT-dimensional Gaussian
    torch.testing.assert_close(loss_mean(td)["kl"], loss_sum(td)["kl"] / (1 + ACT))


# ------------------------------------------------------------------------ no closed-form Fisher
class _GammaHead(nn.Module):
    def forward(self, x):
        return nn.functional.softplus(x[..., :ACT]) + 0.5, nn.functional.softplus(x[..., ACT:]) + 0.5


def _gamma_actor(dist_class):
    torch.manual_seed(0)
    net = TensorDictModule(
        nn.Sequential(_mlp(2 * ACT), _GammaHead()), in_keys=["observation"], out_keys=["concentration", "rate"]
    )
    return _actor(net, ["concentration", "rate"], dist_class)


def _gamma_independent(concentration, rate):
    return D.Independent(D.Gamma(concentration, rate), 1)


def test_a_distribution_with_only_a_kl_takes_the_kl_hessian_product_saying_so(caplog):
    actor = _gamma_actor(_gamma_independent)  # a factory: the distribution is known from the first batch
    td = collect(actor, {})
    loss = TRPOLoss(actor, make_critic(dtype=DT))
    update = TrustRegionUpdate(loss, max_kl=0.01)
    with caplog.at_level(logging.INFO, logger="trpo_torchrl"):
        metrics = update(td)
        update(td)
    said = [r.getMessage() for r in caplog.records if "kl_hessian" in r.getMessage()]
    assert len(said) == 1 and "Independent" in said[0]
    assert metrics["step_accepted"]
    # an explicit gauss_newton is not silently replaced
    with pytest.raises(TypeError, match="fvp='kl_hessian'"):
        TrustRegionUpdate(TRPOLoss(actor, make_critic(dtype=DT)), fvp="gauss_newton")(td)


def test_a_known_class_without_a_closed_form_is_decided_at_construction(caplog):
    actor = _gamma_actor(D.Gamma)
    loss = TRPOLoss(actor, make_critic(dtype=DT))
    with caplog.at_level(logging.INFO, logger="trpo_torchrl"):
        update = TrustRegionUpdate(loss)
    assert update.settings.fvp == "kl_hessian"
    assert any("Gamma" in r.getMessage() and "kl_hessian" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="not Gamma; use fvp='kl_hessian'"):
        TrustRegionUpdate(loss, fvp="gauss_newton")
    assert TrustRegionUpdate(loss, fvp="kl_hessian").settings.fvp == "kl_hessian"
    from trpo_torchrl.population import PopulationTrustRegionUpdate

    params = TensorDict.from_modules(actor, _gamma_actor(D.Gamma), as_module=True)
    with pytest.raises(ValueError, match="PopulationTrustRegionUpdate: fvp='gauss_newton'.*not Gamma"):
        PopulationTrustRegionUpdate(loss, params, fvp="gauss_newton")
    assert PopulationTrustRegionUpdate(loss, params).settings.fvp == "kl_hessian"
    with pytest.raises(ValueError, match="fvp must be 'gauss_newton' or 'kl_hessian'"):
        TrustRegionUpdate(loss, fvp="exact")


def test_a_distribution_without_any_kl_is_refused_at_construction():
    from tests._trpo_batches import no_kl_actor

    loss = TRPOLoss(no_kl_actor(), make_critic())
    with pytest.raises(ValueError, match="_NoKLNormal.*kl_estimate='sampled'"):
        TrustRegionUpdate(loss)
    sampled = TRPOLoss(no_kl_actor(), make_critic(), kl_estimate="sampled")
    assert TrustRegionUpdate(sampled).settings.fvp == "kl_hessian"


def test_a_normal_over_several_dimensions_names_independent_normal():
    torch.manual_seed(0)
    net = TensorDictModule(
        nn.Sequential(nn.Linear(OBS, 12), NormalParamExtractor()), in_keys=["observation"], out_keys=["loc", "scale"]
    )
    actor = _actor(net, ["loc", "scale"], D.Normal)
    td = collect(actor, {})
    loss = TRPOLoss(actor, make_critic(dtype=DT))
    with pytest.raises(ValueError, match="IndependentNormal"):
        loss(td)
    with pytest.raises(ValueError, match="IndependentNormal"):
        TrustRegionUpdate(loss)(td)


@pytest.mark.parametrize("kind", ["tanh_loc", "bernoulli", "hybrid_nested"])
def test_population_steps_equal_separate_steps(kind):
    from trpo_torchrl.population import PopulationTrustRegionUpdate

    actors, batches = [], []
    for m in range(3):
        torch.manual_seed(10 + m)
        actor, _, extra = make(kind)
        for p in actor.parameters():  # members differ
            p.data.add_(0.1 * torch.randn_like(p))
        actors.append(actor)
        batches.append(collect(actor, extra))
    params = TensorDict.from_modules(*actors, as_module=True)
    template = make(kind)[0]
    update = PopulationTrustRegionUpdate(TRPOLoss(template, make_critic(dtype=DT)), params, max_kl=0.01)
    assert update.settings.fvp == "gauss_newton"
    metrics = update(torch.stack(batches))
    after = update.flat_parameters()
    for m, (actor, batch) in enumerate(zip(actors, batches)):
        single = TrustRegionUpdate(TRPOLoss(actor, make_critic(dtype=DT)), max_kl=0.01)
        expected = single(batch)
        assert expected["step_accepted"] and metrics["step_accepted"][m]
        torch.testing.assert_close(after[m], single.flat_parameters(), rtol=0, atol=1e-10)
        torch.testing.assert_close(metrics["kl"][m], expected["kl"], rtol=1e-8, atol=1e-10)
