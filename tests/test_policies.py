"""collection_policy: the lean sampler of a Gaussian actor writes what the ProbabilisticActor writes,
with the same random draws, and follows the actor's parameters."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import (
    AddStateIndependentNormalScale,
    InteractionType,
    NormalParamExtractor,
    TensorDictModule,
    set_interaction_type,
)
from torch import nn
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor

from tests._trpo_batches import make_actor
from trpo_torchrl.collectors import _FrozenForward
from trpo_torchrl.policies import GaussianSampler, StateIndependentScale, collection_policy, gaussian_actor


def _actor(dtype=torch.float32):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    return gaussian_actor(net, 3, init_log_std=-0.5).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampler_draws_and_writes_what_the_actor_does(dtype):
    actor = _actor(dtype)
    sampler = collection_policy(actor)
    assert isinstance(sampler, GaussianSampler)
    td = TensorDict({"observation": torch.randn(7, 2, 5, dtype=dtype)}, [7, 2])
    torch.manual_seed(11)
    expected = actor(td.copy())
    torch.manual_seed(11)
    got = sampler(td.copy())
    assert set(got.keys()) == set(expected.keys())
    for key in expected.keys():
        assert torch.equal(got[key], expected[key]), key
    assert not torch.equal(got["action"], got["loc"])  # it sampled


def test_sampler_follows_the_actors_parameters_and_the_interaction_type():
    actor = _actor()
    sampler = collection_policy(actor)
    td = TensorDict({"observation": torch.randn(4, 5)}, [4])
    with torch.no_grad():
        next(actor.parameters()).add_(1.0)  # an update written into the actor
        expected_loc = actor.get_dist_params(td.copy())["loc"]
    with set_interaction_type(InteractionType.DETERMINISTIC):
        out = sampler(td.copy())
    assert torch.equal(out["loc"], expected_loc)
    assert torch.equal(out["action"], expected_loc)


@pytest.mark.parametrize("kind", ["categorical"])
def test_other_actors_collect_through_themselves(kind):
    actor = make_actor(kind)
    assert collection_policy(actor) is actor


def _torchrl_actor(head: nn.Module, out: int) -> ProbabilisticActor:
    torch.manual_seed(0)
    net = nn.Sequential(MLP(in_features=5, out_features=out, num_cells=[16], activation_class=nn.Tanh), head)
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=IndependentNormal,
        return_log_prob=True,
        default_interaction_type=InteractionType.RANDOM,
    )


TORCHRL_HEADS = {
    "extractor": lambda: _torchrl_actor(NormalParamExtractor(), 6),
    "extractor_exp_clamped": lambda: _torchrl_actor(NormalParamExtractor("exp", scale_lb=0.9), 6),
    "independent": lambda: _torchrl_actor(AddStateIndependentNormalScale(3, init_value=-0.5), 3),
    "independent_softplus": lambda: _torchrl_actor(
        AddStateIndependentNormalScale(3, scale_mapping="biased_softplus_1.0", scale_lb=0.2), 3
    ),
    "factory_state_scale": lambda: make_actor("gaussian_state_scale"),
}


@pytest.mark.parametrize("name", list(TORCHRL_HEADS))
def test_torchrl_heads_get_the_sampler_and_draw_what_the_actor_draws(name):
    actor = TORCHRL_HEADS[name]()
    sampler = collection_policy(actor)
    assert isinstance(sampler, GaussianSampler)
    obs_dim = actor.module[0].module[0][0].in_features
    td = TensorDict({"observation": torch.randn(7, 2, obs_dim)}, [7, 2])
    torch.manual_seed(11)
    expected = actor(td.copy())
    torch.manual_seed(11)
    got = sampler(td.copy())
    assert set(got.keys()) == set(expected.keys())
    for key in expected.keys():
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("name", list(TORCHRL_HEADS))
def test_the_collectors_frozen_forward_runs_torchrl_heads_exactly(name):
    net = TORCHRL_HEADS[name]().module[0].module
    frozen = _FrozenForward.freeze(net, torch.float32)
    assert frozen is not None
    x = torch.randn(9, net[0][0].in_features) * 3
    with torch.no_grad():
        want, got = net(x), frozen(x)
    assert len(want) == len(got) == 2
    for w, g in zip(want, got):
        assert torch.equal(w, g)


def test_hooks_on_the_actor_are_not_skipped():
    # the sampler bypasses the ProbabilisticActor and its TensorDict modules; while any of them has
    # a forward hook it must run the actor, so the hook sees (and may change) what is collected
    actor = _actor()
    sampler = collection_policy(actor)
    td = TensorDict({"observation": torch.randn(4, 5)}, [4])
    handle = actor.register_forward_hook(lambda module, args, out: out.set("hooked", torch.ones(4)))
    torch.manual_seed(3)
    got = sampler(td.copy())
    assert "hooked" in got.keys()
    handle.remove()
    handle = actor.module[0].register_forward_hook(lambda module, args, out: out.set("loc", out["loc"] + 100))
    torch.manual_seed(3)
    assert (sampler(td.copy())["loc"] > 50).all()
    handle.remove()
    torch.manual_seed(3)
    assert "hooked" not in sampler(td.copy()).keys()


class _Doubled(nn.Sequential):
    def forward(self, x):
        loc, scale = super().forward(x)
        return 2 * loc, scale


def test_a_sequential_subclass_is_not_opened():
    # collection_policy looks for the scale by what the network runs, not by indexing a Sequential
    torch.manual_seed(0)
    actor = gaussian_actor(nn.Linear(5, 3), 3)
    actor.module[0].module = _Doubled(*actor.module[0].module)
    assert collection_policy(actor) is actor


def test_the_scale_refuses_bad_sizes():
    for bad in (True, 0, 2.0):
        with pytest.raises(ValueError, match=f"StateIndependentScale: action_dim must be an int >= 1, got {bad!r}"):
            StateIndependentScale(bad)
    with pytest.raises(ValueError, match="StateIndependentScale: init_log_std must be a finite number, got nan"):
        StateIndependentScale(2, float("nan"))
    assert StateIndependentScale(2, -1).log_std.tolist() == [-1.0, -1.0]
