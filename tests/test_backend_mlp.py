"""The plain-MLP plan of the actor step (trpo_torchrl.backends.mlp): which actors it takes, and that
its forward pass, gradient, Fisher-vector products and whole update equal the torch.func path."""

import copy
import logging

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import AddStateIndependentNormalScale, InteractionType, NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, TanhNormal

from tests._trpo_batches import ACT_DIM, OBS_DIM, assert_same_step, collect, make_actor, make_critic
from trpo_torchrl import PopulationTrustRegionUpdate, TRPOLoss, TrustRegionUpdate, gaussian_actor
from trpo_torchrl.fisher import gauss_newton_fisher_vector_product
from trpo_torchrl.loss import distribution_parameters
from trpo_torchrl.policies import StateIndependentScale, categorical_actor


class _Shift(nn.Module):
    """Parameter-free preprocessing with a buffer, like an observation normaliser."""

    def __init__(self):
        super().__init__()
        self.register_buffer("offset", torch.linspace(-0.5, 0.5, OBS_DIM))

    def forward(self, x):
        return (x - self.offset).clamp(-3, 3)


def deep_actor(kind: str, dtype=torch.float64, seed: int = 3):
    """Preprocessing, two hidden layers (ReLU then Tanh) inside torchrl's MLP wrapper."""
    torch.manual_seed(seed)
    out = 2 if kind == "gaussian" else 4
    body = nn.Sequential(nn.Linear(OBS_DIM, 12), nn.ReLU(), nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, out))
    net = nn.Sequential(_Shift(), body)
    if kind == "gaussian":
        actor = gaussian_actor(net, 2, init_log_std=-0.3)
    else:
        actor = categorical_actor(net, one_hot=kind == "categorical")
    return actor.to(dtype)


def torchrl_actor(
    head: str,
    dtype=torch.float64,
    *,
    seed: int = 4,
    activation=nn.Tanh,
    scale_mapping: str | None = None,
    scale_lb: float = 1e-4,
    scale_init=None,
):
    """A Gaussian actor as a TorchRL user builds it: torchrl's MLP, then tensordict's
    NormalParamExtractor (``head="extractor"``) or AddStateIndependentNormalScale (``"independent"``)."""
    torch.manual_seed(seed)
    out = 2 * ACT_DIM if head == "extractor" else ACT_DIM
    body = MLP(in_features=OBS_DIM, out_features=out, num_cells=[12, 10], activation_class=activation)
    mapping = {} if scale_mapping is None else {"scale_mapping": scale_mapping}
    if head == "extractor":
        scale = NormalParamExtractor(**mapping, scale_lb=scale_lb)
    else:
        scale = AddStateIndependentNormalScale(ACT_DIM, **mapping, scale_lb=scale_lb, init_value=-0.4)
        if scale_init is not None:
            with torch.no_grad():
                scale.state_independent_scale.copy_(torch.tensor(scale_init))
    module = TensorDictModule(nn.Sequential(body, scale), in_keys=["observation"], out_keys=["loc", "scale"])
    actor = ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        distribution_class=IndependentNormal,
        return_log_prob=True,
        default_interaction_type=InteractionType.RANDOM,
    )
    return actor.to(dtype)


def tanh_normal_actor(dtype, head: str = "extractor", **kwargs):
    """TorchRL's ppo_mujoco actor: MLP, NormalParamExtractor (or a state-independent scale), then a
    TanhNormal squashed into [low, high]."""
    actor = torchrl_actor(head, dtype)
    return ProbabilisticActor(
        actor.module[0],
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -2.0, "high": torch.tensor([1.0, 3.0]), "tanh_loc": False, **kwargs},
        return_log_prob=True,
        default_interaction_type=InteractionType.RANDOM,
    ).to(dtype)


def _factory_on_torchrl_mlp(dtype):
    """Our StateIndependentScale over torchrl's MLP (ReLU)."""
    torch.manual_seed(6)
    body = MLP(in_features=OBS_DIM, out_features=ACT_DIM, num_cells=[12, 10], activation_class=nn.ReLU)
    return gaussian_actor(body, ACT_DIM, init_log_std=-0.2).to(dtype)


# TorchRL's Gaussian heads, over each mapping the explicit products compute; the lower bounds of the
# "clamped" ones hold part of the scales (the derivative is zero there). The bounds stay well above
# zero: a scale near zero makes the Fisher so ill-conditioned that 10 CG iterations turn products
# equal to 1e-14 into steps 1e-3 apart (checked with one dense matrix against itself perturbed)
TORCHRL_ACTORS = {
    "torchrl_mlp_gaussian": lambda dtype: _factory_on_torchrl_mlp(dtype),
    "gaussian_state_scale": lambda dtype: make_actor("gaussian_state_scale", dtype=dtype),
    "extractor_gaussian": lambda dtype: torchrl_actor("extractor", dtype),
    "extractor_softplus_gaussian": lambda dtype: torchrl_actor("extractor", dtype, scale_mapping="softplus"),
    "extractor_exp_clamped_gaussian": lambda dtype: torchrl_actor(
        "extractor", dtype, scale_mapping="exp", scale_lb=0.95, activation=nn.ReLU
    ),
    "extractor_biased_gaussian": lambda dtype: torchrl_actor(
        "extractor", dtype, scale_mapping="biased_softplus_0.5_0.05"
    ),
    "extractor_relu_clamped_gaussian": lambda dtype: torchrl_actor(
        "extractor", dtype, scale_mapping="relu", scale_lb=0.2
    ),
    "independent_gaussian": lambda dtype: torchrl_actor("independent", dtype),
    "tanh_normal_gaussian": lambda dtype: tanh_normal_actor(dtype),
    "tanh_normal_independent_gaussian": lambda dtype: tanh_normal_actor(dtype, "independent", upscale=3.0),
    "independent_softplus_gaussian": lambda dtype: torchrl_actor(
        "independent", dtype, scale_mapping="biased_softplus_1.0", scale_init=[-0.3, 0.8]
    ),
    "independent_relu_clamped_gaussian": lambda dtype: torchrl_actor(
        "independent", dtype, scale_mapping="relu", scale_lb=0.5, scale_init=[0.9, 0.2]
    ),
}

ACTORS = {
    "gaussian": lambda dtype: make_actor("gaussian", dtype=dtype),
    "categorical": lambda dtype: make_actor("categorical", dtype=dtype),
    "categorical_index": lambda dtype: make_actor("categorical_index", dtype=dtype),
    "deep_gaussian": lambda dtype: deep_actor("gaussian", dtype),
    "deep_categorical": lambda dtype: deep_actor("categorical", dtype),
    **TORCHRL_ACTORS,
}


def _setup(name, dtype=torch.float64, num_states=200, loss_kwargs=None, **update_kwargs):
    actor = ACTORS[name](dtype)
    loss = TRPOLoss(actor, make_critic(dtype=dtype), **(loss_kwargs or {}))
    td = collect(actor, num_states, dtype=dtype)
    update = TrustRegionUpdate(loss, **update_kwargs)
    return actor, loss, td, update


@pytest.mark.parametrize("name", list(ACTORS))
def test_plain_mlp_policies_get_a_plan(name):
    _, _, _, update = _setup(name)
    assert update.plan is not None
    assert update.plan.family == ("normal" if "gaussian" in name else "categorical")


def _around(theta, k, spread, seed):
    """k parameter vectors near θ: line-search-like candidates."""
    return theta + spread * torch.randn(
        k, theta.numel(), generator=torch.Generator().manual_seed(seed), dtype=theta.dtype
    )


def _gaussian_with(net, **kwargs):
    module = TensorDictModule(
        nn.Sequential(net, StateIndependentScale(2)), in_keys=["observation"], out_keys=["loc", "scale"]
    )
    return ProbabilisticActor(
        module, in_keys=["loc", "scale"], distribution_class=IndependentNormal, return_log_prob=True, **kwargs
    )


@pytest.mark.parametrize(
    "why,actor",
    [
        ("an unknown scale mapping", lambda: torchrl_actor("extractor", torch.float32, scale_mapping="expln")),
        ("a scale without a mapping", lambda: torchrl_actor("extractor", torch.float32, scale_mapping="none")),
        ("a scale that is a buffer", lambda: _independent_buffer_scale()),
        ("an odd output split in two", lambda: _odd_extractor()),
        ("trained preprocessing", lambda: _gaussian_with(nn.Sequential(nn.LayerNorm(OBS_DIM), nn.Linear(OBS_DIM, 2)))),
        ("random preprocessing", lambda: _gaussian_with(nn.Sequential(nn.Dropout(0.1), nn.Linear(OBS_DIM, 2)))),
        ("unknown activation", lambda: _gaussian_with(nn.Sequential(nn.Linear(OBS_DIM, 8), nn.ELU(), nn.Linear(8, 2)))),
        ("no bias", lambda: _gaussian_with(nn.Linear(OBS_DIM, 2, bias=False))),
        ("distribution kwargs", lambda: _gaussian_with(nn.Linear(OBS_DIM, 2), distribution_kwargs={"tanh_loc": True})),
        ("a TanhNormal squashing its loc", lambda: tanh_normal_actor(torch.float32, tanh_loc=True)),
        (
            "a subclass's own forward",
            lambda: _gaussian_with(type("MySeq", (nn.Sequential,), {})(nn.Linear(OBS_DIM, 2))),
        ),
        (
            "a torchrl MLP reshaping its output",
            lambda: _gaussian_with(MLP(in_features=OBS_DIM, out_features=(1, 2), num_cells=[8])),
        ),
        (
            "a log-std broadcast over the actions",
            lambda: ProbabilisticActor(
                TensorDictModule(
                    nn.Sequential(nn.Linear(OBS_DIM, 2), StateIndependentScale(1)),
                    in_keys=["observation"],
                    out_keys=["loc", "scale"],
                ),
                in_keys=["loc", "scale"],
                distribution_class=IndependentNormal,
                return_log_prob=True,
            ),
        ),
        ("a forward replaced on one instance", lambda: _with_instance_forward()),
    ],
)
def test_other_actors_keep_the_torch_func_path(why, actor, caplog):
    actor = actor()
    with caplog.at_level(logging.INFO, logger="trpo_torchrl"):
        update = TrustRegionUpdate(TRPOLoss(actor, make_critic()))
    assert update.plan is None, why
    # the path taken, and why, is said once
    lines = [r.getMessage() for r in caplog.records if "torch.func" in r.getMessage()]
    assert len(lines) == 1 and len(lines[0]) > len("the actor step evaluates the policy through torch.func: "), lines


def _independent_buffer_scale():
    actor = torchrl_actor("independent", torch.float32)
    head = actor.module[0].module[-1]
    del head.state_independent_scale
    head.state_independent_scale = torch.nn.Buffer(torch.zeros(ACT_DIM))
    return actor


def _odd_extractor():
    torch.manual_seed(0)
    module = TensorDictModule(
        nn.Sequential(nn.Linear(OBS_DIM, 3), NormalParamExtractor()), in_keys=["observation"], out_keys=["loc", "scale"]
    )
    return ProbabilisticActor(module, in_keys=["loc", "scale"], distribution_class=IndependentNormal)


def _with_instance_forward():
    actor = make_actor("gaussian")
    tanh = actor.module[0].module[0][1]
    tanh.forward = lambda x: torch.tanh(2 * x)
    return actor


def test_a_frozen_layer_keeps_the_torch_func_path():
    actor = make_actor("gaussian")
    actor.module[0].module[0][0].weight.requires_grad_(False)
    assert TrustRegionUpdate(TRPOLoss(actor, make_critic())).plan is None


@pytest.mark.parametrize("name", list(ACTORS))
def test_forward_of_stacked_parameters_equals_the_actor(name):
    actor, loss, td, update = _setup(name)
    batch = loss.policy_batch(td)
    thetas = _around(update.flat_parameters(), 4, 0.1, seed=0)
    plan = update.plan
    out = plan.distribution_parameters(plan.features(batch.inputs), thetas)
    for k in range(4):
        expected = loss.policy_dist(batch, update.unflatten(thetas[k]))
        got = actor.build_dist_from_params(TensorDict({key: v[k] for key, v in out.items()}, []))
        exp_args = distribution_parameters(expected, 200)
        got_args = distribution_parameters(got, 200)
        for a, b in zip(
            exp_args if isinstance(exp_args, tuple) else (exp_args,),
            got_args if isinstance(got_args, tuple) else (got_args,),
        ):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_float32_forward_uses_the_fast_tanh_within_rounding():
    actor, loss, td, update = _setup("deep_gaussian", dtype=torch.float32)
    batch = loss.policy_batch(td)
    theta = update.flat_parameters()
    plan = update.plan
    out = plan.distribution_parameters(plan.features(batch.inputs), theta[None])
    expected = loss.policy_dist(batch, update.unflatten(theta))
    torch.testing.assert_close(out["loc"][0], distribution_parameters(expected, 200)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(ACTORS))
def test_gradient_and_fisher_products_equal_torch_func(name):
    actor, loss, td, update = _setup(name)
    batch = loss.policy_batch(td)
    theta = update.flat_parameters()
    plan = update.plan
    lin = plan.linearize(plan.features(batch.inputs), theta)
    # the gradient: autograd to the distribution's arguments, then the plan's pullback
    args = {k: v.detach().requires_grad_(True) for k, v in lin.args.items()}
    terms = loss.dist_terms(batch, actor.build_dist_from_params(TensorDict(plan.entries(args), [])))
    grads = torch.autograd.grad(terms.objective, list(args.values()))
    g = lin.pullback(dict(zip(args, grads)))
    t = theta.clone().requires_grad_(True)
    (expected_g,) = torch.autograd.grad(loss.policy_terms(batch, update.unflatten(t)).objective, t)
    torch.testing.assert_close(g, expected_g, rtol=1e-10, atol=1e-13)
    # the damped Gauss-Newton product, for one vector and for a stack of three
    family = plan.family

    def dist_fn(th):
        return distribution_parameters(loss.policy_dist(batch, update.unflatten(th)), 200)

    reference = gauss_newton_fisher_vector_product(dist_fn, theta, family, damping=0.1, kl_scale=0.5)
    fvp = lin.fisher_vector_product(kl_scale=0.5, damping=0.1)
    vs = torch.randn(3, theta.numel(), generator=torch.Generator().manual_seed(1), dtype=theta.dtype)
    torch.testing.assert_close(fvp(vs[0]), reference(vs[0]), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(fvp(vs), reference(vs), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", list(ACTORS))
def test_line_search_candidates_equal_torch_func(name):
    _, loss, td, update = _setup(name)
    batch = loss.policy_batch(td)
    cands = _around(update.flat_parameters(), 5, 0.05, seed=2)
    assert update.backends.for_batch(batch) is update.backends.mlp
    evaluation = update.evaluate(batch, update.flat_parameters())
    with torch.no_grad():
        got = evaluation.candidate_terms(cands)
        expected = update.backends.functional.candidate_terms(batch, cands)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "name,options",
    [
        ("gaussian", {}),
        ("deep_gaussian", {"max_kl": 0.05}),
        ("categorical", {}),
        ("deep_categorical", {"fvp_subsample": 0.5}),
        ("categorical_index", {"fvp": "kl_hessian"}),
        ("gaussian", {"accept_ratio": 1e6}),  # every candidate rejected
        ("deep_gaussian", {"loss_kwargs": {"entropy_coeff": 0.05, "kl_reduction": "mean"}}),
        ("deep_categorical", {"loss_kwargs": {"entropy_coeff": 0.05}}),
        ("gaussian_state_scale", {}),
        ("torchrl_mlp_gaussian", {}),
        ("extractor_gaussian", {"max_kl": 0.05}),
        ("extractor_softplus_gaussian", {"fvp_subsample": 0.5}),
        ("extractor_exp_clamped_gaussian", {}),
        ("extractor_biased_gaussian", {"loss_kwargs": {"entropy_coeff": 0.05, "kl_reduction": "mean"}}),
        ("extractor_relu_clamped_gaussian", {}),
        ("extractor_gaussian", {"fvp": "kl_hessian"}),
        ("independent_gaussian", {"max_kl": 0.05}),
        ("tanh_normal_gaussian", {"max_kl": 0.05}),
        ("tanh_normal_independent_gaussian", {"loss_kwargs": {"kl_reduction": "mean"}}),
        ("independent_softplus_gaussian", {"loss_kwargs": {"entropy_coeff": 0.05}}),
        ("independent_relu_clamped_gaussian", {"fvp_subsample": 0.5}),
    ],
)
def test_whole_update_equals_the_torch_func_path(name, options):
    results = []
    for fast in (True, False):
        actor, loss, td, update = _setup(name, fast_mlp=fast, generator=torch.Generator().manual_seed(5), **options)
        assert (update.plan is not None) == fast
        metrics = update(td)
        results.append((update.flat_parameters(), metrics))
    assert_same_step(*results)


def test_forward_hooks_send_the_update_back_to_torch_func():
    actor, loss, td, update = _setup("gaussian")
    calls = []
    handle = actor.module[0].module[0][0].register_forward_hook(lambda *args: calls.append(1))
    assert update.plan is None
    metrics = update(td)
    assert metrics["step_accepted"] and calls  # the hook saw the policy evaluations
    handle.remove()
    assert update.plan is not None


def test_the_plan_sees_parameter_changes_and_buffers_at_each_call():
    # the plan keeps module references and θ's layout, never values
    actor, loss, td, update = _setup("deep_gaussian")
    copy_actor = copy.deepcopy(actor)
    update(td)
    shift = actor.module[0].module[0][0]
    shift.offset += 0.25
    copy_actor.module[0].module[0][0].offset += 0.25
    batch = loss.policy_batch(td)
    plan = update.plan
    out = plan.distribution_parameters(plan.features(batch.inputs), update.flat_parameters()[None])
    expected = loss.policy_dist(batch)
    torch.testing.assert_close(out["loc"][0], expected.base_dist.loc, rtol=1e-12, atol=1e-12)


def test_swapped_modules_send_the_update_back_to_torch_func():
    actor, loss, td, update = _setup("gaussian")
    assert update.plan is not None
    actor.module[0].module[0][1] = nn.ReLU()  # the plan was built for Tanh
    assert update.plan is None
    reference = TrustRegionUpdate(TRPOLoss(copy.deepcopy(actor), make_critic(dtype=torch.float64)), fast_mlp=False)
    update(td)
    reference(td)
    torch.testing.assert_close(update.flat_parameters(), reference.flat_parameters(), rtol=0, atol=0)


def test_inputs_with_extra_dimensions_take_the_torch_func_path():
    # observations [N, 1, obs] (e.g. one agent per state): the plan computes on [N, features] only
    results = []
    for fast in (True, False):
        actor = make_actor("gaussian", dtype=torch.float64)
        gen = torch.Generator().manual_seed(0)
        obs = torch.randn(64, 1, OBS_DIM, generator=gen, dtype=torch.float64)
        torch.manual_seed(0)
        with torch.no_grad():
            td = actor(TensorDict({"observation": obs}, [64]))
        td["advantage"] = torch.randn(64, 1, 1, generator=gen, dtype=torch.float64)
        update = TrustRegionUpdate(TRPOLoss(actor, make_critic(dtype=torch.float64)), fast_mlp=fast)
        assert update.plan is None or not update.plan.accepts(update.loss_module.policy_batch(td).inputs)
        update(td)
        results.append(update.flat_parameters())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_the_plan_product_checks_its_vector():
    _, loss, td, update = _setup("gaussian")
    batch = loss.policy_batch(td)
    theta = update.flat_parameters()
    fvp = update.plan.linearize(update.plan.features(batch.inputs), theta).fisher_vector_product(
        kl_scale=1.0, damping=0.1
    )
    with pytest.raises(ValueError, match="shape"):
        fvp(torch.zeros(theta.numel() + 1, dtype=theta.dtype))
    with pytest.raises(ValueError, match="float32"):
        fvp(torch.zeros(theta.numel(), dtype=torch.float32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fvp([0.0])


@pytest.mark.parametrize("name", ["extractor_exp_clamped_gaussian", "independent_relu_clamped_gaussian"])
def test_the_lower_bound_holds_some_scales_in_the_clamped_cases(name):
    # the clamped cases test the zero derivative only if the bound really holds some scales
    actor = TORCHRL_ACTORS[name](torch.float64)
    td = collect(actor, 200, dtype=torch.float64)
    lower_bound = actor.module[0].module[-1].scale_lb
    held = td["scale"] == lower_bound
    assert held.any() and not held.all()


def test_a_head_changed_after_the_plan_sends_the_update_back_to_torch_func():
    actor, loss, td, update = _setup("extractor_gaussian")
    assert update.plan is not None
    actor.module[0].module[-1].scale_lb = 0.5  # the plan was built for 1e-4
    assert update.plan is None
    actor.module[0].module[-1].scale_lb = 1e-4
    assert update.plan is not None


def _population(name, members, **options):
    actors = [TORCHRL_ACTORS[name](torch.float64) for _ in range(members)]
    for m, actor in enumerate(actors):  # members differ: perturbed copies of one architecture
        with torch.no_grad():
            for p in actor.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(10 + m), dtype=p.dtype))
    batches = [collect(a, 64, seed=20 + m, dtype=torch.float64) for m, a in enumerate(actors)]
    params = TensorDict.from_modules(*actors, as_module=True)
    loss = TRPOLoss(TORCHRL_ACTORS[name](torch.float64), make_critic(dtype=torch.float64))
    return batches, PopulationTrustRegionUpdate(loss, params, **options)


@pytest.mark.parametrize(
    "name,options",
    [
        ("extractor_gaussian", {}),
        ("extractor_exp_clamped_gaussian", {"max_kl": [0.01, 1e-9, 0.02], "damping": 0.3}),
        ("independent_gaussian", {"fvp_subsample": 0.5}),
        ("independent_relu_clamped_gaussian", {}),
    ],
)
def test_populations_of_torchrl_heads_equal_the_torch_func_path(name, options):
    results = []
    for fast in (True, False):
        batches, update = _population(name, 3, fast_mlp=fast, generator=torch.Generator().manual_seed(3), **options)
        backend = update.backends.for_batch(update.population_batch(torch.stack(batches)), members=True)
        assert (backend is update.backends.mlp) == fast
        metrics = update(torch.stack(batches))
        results.append((update.flat_parameters(), metrics))
    assert_same_step(*results)
