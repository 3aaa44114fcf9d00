"""Small policies and on-policy batches shared by the loss, update and critic tests."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, NormalParamExtractor, TensorDictModule
from torch import distributions as D
from torch import nn
from torchrl.modules import ProbabilisticActor

from trpo_torchrl import categorical_actor, gaussian_actor

OBS_DIM = 3
ACT_DIM = 2
NUM_ACTIONS = 4

POLICY_KINDS = ["gaussian", "gaussian_state_scale", "categorical", "categorical_index"]


def make_actor(kind: str, *, hidden: int = 16, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    if kind in ("gaussian", "gaussian_state_scale"):
        state_scale = kind == "gaussian_state_scale"
        out = 2 * ACT_DIM if state_scale else ACT_DIM
        net = nn.Sequential(nn.Linear(OBS_DIM, hidden), nn.Tanh(), nn.Linear(hidden, out))
        actor = gaussian_actor(net, ACT_DIM, state_dependent_scale=state_scale, init_log_std=-0.5)
    else:
        net = nn.Sequential(nn.Linear(OBS_DIM, hidden), nn.Tanh(), nn.Linear(hidden, NUM_ACTIONS))
        actor = categorical_actor(net, one_hot=kind == "categorical")
    return actor.to(dtype)


def make_critic(*, seed: int = 1, dtype=torch.float32):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(OBS_DIM, 16), nn.Tanh(), nn.Linear(16, 1))
    return TensorDictModule(net, in_keys=["observation"], out_keys=["state_value"]).to(dtype)


def action_score(td: TensorDict) -> torch.Tensor:
    """A learnable advantage ``[N, 1]``: it rewards actions aligned with the first observation feature,
    so a policy step can raise the surrogate."""
    obs, action = td["observation"], td["action"]
    if "logits" in td.keys():
        if action.dim() < obs.dim():  # index actions
            action = torch.nn.functional.one_hot(action, NUM_ACTIONS)
        direction = torch.linspace(-1, 1, NUM_ACTIONS, dtype=obs.dtype)
    else:
        direction = torch.ones(action.shape[-1], dtype=obs.dtype)
    return (action.to(obs.dtype) * direction).sum(-1, keepdim=True) * obs[..., :1]


def collect(actor, num_states: int = 256, *, seed: int = 2, dtype=torch.float32) -> TensorDict:
    """What a collector would store: observation, action, distribution parameters, log-prob;
    plus a learnable advantage and a value target."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(num_states, OBS_DIM, generator=gen, dtype=dtype)
    torch.manual_seed(seed)
    with torch.no_grad():
        td = actor(TensorDict({"observation": obs}, [num_states]))
    td["advantage"] = action_score(td)
    td["value_target"] = obs[..., 1:2] * 2.0 + 0.5
    return td


def trajectory_batch(actor, num_envs: int = 4, steps: int = 16, *, seed: int = 3) -> TensorDict:
    """An [envs, time] batch with next/reward/done entries, for the value estimator."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(num_envs, steps, OBS_DIM, generator=gen)
    torch.manual_seed(seed)
    with torch.no_grad():
        td = actor(TensorDict({"observation": obs}, [num_envs, steps]))
    done = torch.zeros(num_envs, steps, 1, dtype=torch.bool)
    done[:, -1] = True
    terminated = done.clone()
    terminated[0, -1] = False  # one truncated trajectory
    td["next"] = TensorDict(
        {
            "observation": torch.randn(num_envs, steps, OBS_DIM, generator=gen),
            "reward": torch.randn(num_envs, steps, 1, generator=gen),
            "done": done,
            "terminated": terminated,
            "truncated": done & ~terminated,
        },
        [num_envs, steps],
    )
    return td


def actor_state(actor) -> list[torch.Tensor]:
    return [p.detach().clone() for p in actor.parameters()]


class _NoKLNormal(D.Distribution):
    """A Normal that torch.distributions has no registered KL for (a type of its own)."""

    arg_constraints = {}
    has_rsample = True

    def __init__(self, loc, scale):
        self._normal = D.Independent(D.Normal(loc, scale), 1)
        super().__init__(self._normal.batch_shape, self._normal.event_shape, validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        return self._normal.rsample(sample_shape)

    def log_prob(self, value):
        return self._normal.log_prob(value)

    def entropy(self):
        return self._normal.entropy()

    @property
    def deterministic_sample(self):
        return self._normal.mean


def no_kl_actor():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), NormalParamExtractor())
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        distribution_class=_NoKLNormal,
        return_log_prob=True,
        default_interaction_type=InteractionType.RANDOM,
    )


def assert_same_step(fast, reference) -> None:
    """Two actor steps, each ``(new flat parameters, metrics)``, agree to float64 rounding: the
    plain-MLP path against the torch.func one."""
    (fast_theta, fast_metrics), (ref_theta, ref_metrics) = fast, reference
    # a whole step (CG's iterations included) through two evaluation paths: float64 rounding, amplified
    torch.testing.assert_close(fast_theta, ref_theta, rtol=1e-8, atol=1e-10)
    assert torch.equal(fast_metrics["step_accepted"], ref_metrics["step_accepted"])
    assert torch.equal(fast_metrics["backtrack_steps"], ref_metrics["backtrack_steps"])
    for key in ("kl", "surrogate_before", "surrogate_after", "expected_improvement", "grad_norm", "fisher_curvature"):
        torch.testing.assert_close(fast_metrics[key], ref_metrics[key], rtol=1e-8, atol=1e-12)
