"""``collector='direct'``: on-policy batches from the Gymnasium vector env without per-step TensorDicts.

TorchRL's ``Collector`` over ``GymWrapper`` spends about 1 ms of TensorDict machinery on each step of
a 2-environment HalfCheetah vector env on a small CPU, several times the simulators' own ~130 µs
(benchmarks/RESULTS.md). This loop steps the vector env's sub-environments with numpy arrays (the
same-step autoreset of gymnasium's ``SyncVectorEnv``, without its per-step merging of info dicts),
runs only the actor's network at each step (its fixed parts computed once per batch) and writes
into preallocated arrays; the log-probabilities are computed once, for the whole batch, from the
distribution parameters each action was drawn with.

The batch has the layout and entries of TorchRL's ``Collector`` over
:func:`~trpo_torchrl.app.envs.make_env` — ``[num_envs, steps]`` with ``observation``, ``action``,
``loc``/``scale`` or ``logits``, ``action_log_prob``, ``done``/``terminated``/``truncated``,
``episode_reward``, the same under ``"next"`` with ``reward``, and ``("collector", "traj_ids")`` — so
the rest of the training loop does not know which collector ran. Actions are drawn with the same
calls on torch's global generator as TorchRL's samplers, so from the same generator state the two
give the same batch bit for bit (tests/test_collect.py).

At a step where an episode ends, ``("next", "observation")`` is the episode's real final
observation (a truncated episode bootstraps from it) and the next step starts from the reset
observation. One difference from TorchRL: when every environment ends at the same step, TorchRL
resets the vector env a second time and starts from that reset; this loop keeps the vector env's own
autoreset observation (the same distribution, one reset fewer).
"""

from __future__ import annotations

from typing import Any, Iterator

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from torchrl.envs import TransformedEnv
from torchrl.modules import IndependentNormal, OneHotCategorical

from trpo_torchrl.backends.mlp import has_forward_hooks, sequential_leaves
from trpo_torchrl.policies import StateIndependentScale

from .envs import gym_vector_env
from .normalize import ObservationNormalizer

__all__ = ["DirectCollector"]


class _FrozenForward:
    """The actor network's forward pass for one batch, with what stays fixed while a batch is
    collected (normaliser statistics, the state-independent scale) computed once: the per-step
    cost of a 64×64 policy on 2 environments drops from ~70 to ~30 µs. The same operations as the
    modules' own forward passes; :meth:`plan` returns ``None`` for a network it does not know, and
    the collector then calls the network itself."""

    def __init__(self, net: torch.nn.Module, ops: list[tuple]):
        self.net = net
        self.ops = ops

    @classmethod
    def plan(cls, net: torch.nn.Module) -> "_FrozenForward | None":
        leaves = list(sequential_leaves(net))
        ops: list[tuple] = []
        for k, m in enumerate(leaves):
            kind = type(m)  # exact types: a subclass may change the forward pass
            if kind is ObservationNormalizer:
                ops.append(("normalize", m))
            elif kind is torch.nn.Linear:
                ops.append(("linear", m))
            elif kind in (torch.nn.Tanh, torch.nn.ReLU):
                ops.append((kind.__name__.lower(), m))
            elif kind is StateIndependentScale and k == len(leaves) - 1:
                ops.append(("scale", m))
            else:
                return None
        return cls(net, ops)

    def freeze(self, dtype: torch.dtype):
        """The per-step function for the current parameters and statistics; ``None`` while the
        network has forward hooks (they may be added after the plan was made)."""
        if has_forward_hooks(self.net):
            return None
        steps: list[tuple] = []
        for kind, m in self.ops:
            if kind == "normalize":
                if m.enabled:
                    mean = m.moments.mean.to(dtype)
                    std = (m.moments.var + m.eps).sqrt().to(dtype)
                    steps.append((kind, mean, std, m.clip))
            elif kind == "linear":
                steps.append((kind, m.weight.detach(), None if m.bias is None else m.bias.detach()))
            elif kind == "scale":
                steps.append((kind, m.log_std.detach().exp()))
            else:
                steps.append((kind,))

        def forward(x: torch.Tensor):
            for step in steps:
                kind = step[0]
                if kind == "linear":
                    x = torch.nn.functional.linear(x, step[1], step[2])
                elif kind == "tanh":
                    x = torch.tanh(x)
                elif kind == "relu":
                    x = torch.relu(x)
                elif kind == "normalize":
                    x = ((x - step[1]) / step[2]).clamp(-step[3], step[3])
                else:  # the state-independent scale, last
                    return x, step[1].expand_as(x)
            return x

        return forward


class DirectCollector:
    """Yields ``[num_envs, steps_per_env]`` batches from ``env`` (made by
    :func:`~trpo_torchrl.app.envs.make_env`) under ``actor`` (the app's Gaussian or one-hot
    categorical actor), forever; shares the actor's parameters, so a new policy needs no copying.

    Actions are drawn at each step as the TorchRL actor draws them (``Normal.rsample``,
    ``Categorical.sample`` on torch's global generator); the batch keeps the distribution parameters
    they were drawn with. :meth:`state_dict` holds the step carried from one batch to the next (the
    current observations, the running episode returns, the trajectory ids); the simulators' state is
    :func:`~trpo_torchrl.app.envs.env_state`'s.
    """

    def __init__(self, env: TransformedEnv, actor, steps_per_env: int, device: str | torch.device = "cpu"):
        if steps_per_env < 1:
            raise ValueError(f"steps_per_env must be >= 1, got {steps_per_env}")
        self.env = env
        self.venv = gym_vector_env(env)
        self.actor = actor
        self.steps = steps_per_env
        self.device = torch.device(device)
        self.num_envs = self.venv.num_envs
        space = self.venv.single_action_space
        prob = actor.module[-1]
        dist = prob.distribution_class
        plain = (
            len(actor.module) == 2
            and not prob.distribution_kwargs  # e.g. tanh_loc would change what a sample means
            and not getattr(actor, "safe", False)  # a safe actor projects its samples into the spec
            and len(actor.module[0].in_keys) == 1
            and len(actor.dist_sample_keys) == 1
            and len(actor.log_prob_keys) == 1
        )
        if not plain:
            raise ValueError(
                "collector='direct' runs the app's actors: one observation in, a plain distribution "
                "(no distribution_kwargs, not safe), one action and its log-probability out (use collector='sync')"
            )
        if isinstance(space, gym.spaces.Discrete) and dist is OneHotCategorical:
            self._discrete, self._action_shape = True, (int(space.n),)
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and dist is IndependentNormal:
            self._discrete, self._action_shape = False, tuple(space.shape)
        else:
            raise ValueError(
                "collector='direct' runs the app's actors: a one-hot categorical over a Discrete space or "
                f"a diagonal Gaussian over a flat Box; got {dist.__name__} over {space} (use collector='sync')"
            )
        params = actor.module[0]  # the TensorDictModule that writes the distribution's parameters
        self._net = params.module
        self._frozen = _FrozenForward.plan(self._net)
        self._param_keys = list(params.out_keys)
        self._obs_key = params.in_keys[0]
        self._action_key = actor.dist_sample_keys[0]
        self._log_prob_key = actor.log_prob_keys[0]
        obs, _ = self.venv.reset()
        self._obs = np.array(obs, dtype=np.float32)
        self._episode_reward = np.zeros(self.num_envs, np.float32)
        self._traj_ids = np.arange(self.num_envs, dtype=np.int64)
        self._next_traj_id = self.num_envs

    # -- the collector interface the training loop uses ------------------------------------------

    def __iter__(self) -> Iterator[TensorDict]:
        while True:
            yield self.collect()

    def update_policy_weights_(self) -> None:
        """Nothing to send: the loop runs the actor itself."""

    def shutdown(self) -> None:
        self.env.close()

    def state_dict(self) -> dict[str, Any]:
        return {
            "observation": self._obs.copy(),
            "episode_reward": self._episode_reward.copy(),
            "traj_ids": self._traj_ids.copy(),
            "next_traj_id": self._next_traj_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["observation"].shape != self._obs.shape:
            raise ValueError(
                f"the saved collector state is for observations {state['observation'].shape}, "
                f"this collector has {self._obs.shape}"
            )
        self._obs = state["observation"].copy()
        self._episode_reward = state["episode_reward"].copy()
        self._traj_ids = state["traj_ids"].copy()
        self._next_traj_id = int(state["next_traj_id"])

    # -- one batch --------------------------------------------------------------------------------

    def _sample(self, out) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One step's action and distribution parameters, drawn with the same calls on torch's global
        generator as the TorchRL actor (``Normal.rsample``, ``Categorical.sample``), so the same
        generator state gives the same actions."""
        if self._discrete:
            return torch.distributions.Categorical(logits=out).sample(), (out,)
        loc, scale = out
        eps = torch.empty(loc.shape, dtype=loc.dtype, device=loc.device).normal_()
        return loc + eps * scale, (loc, scale)

    def _action_tensor(self, actions: torch.Tensor) -> torch.Tensor:
        if self._discrete:  # one-hot, as TorchRL's one-hot action spec holds it
            return torch.nn.functional.one_hot(actions, self._action_shape[0])
        return actions.to(next(self._net.parameters()).dtype)

    @torch.no_grad()
    def collect(self) -> TensorDict:
        n, steps = self.num_envs, self.steps
        first = next(self._net.parameters())
        obs = np.empty((steps + 1, n, self._obs.shape[-1]), np.float32)
        reward = np.empty((steps, n), np.float32)
        terminated = np.empty((steps, n), bool)
        truncated = np.empty((steps, n), bool)
        ep_before = np.empty((steps, n), np.float32)  # the running return before each step
        traj_ids = np.empty((steps, n), np.int64)
        finals: list[tuple[int, int, np.ndarray]] = []
        shape = () if self._discrete else self._action_shape
        actions = np.empty((steps, n, *shape), np.int64 if self._discrete else np.float32)
        params: list[tuple[torch.Tensor, ...]] = []
        device = first.device
        envs = self.venv.envs
        forward = (self._frozen.freeze(first.dtype) if self._frozen is not None else None) or self._net
        obs[0] = self._obs
        episode, ids = self._episode_reward, self._traj_ids
        for t in range(steps):
            x = torch.from_numpy(obs[t])
            action, dist_params = self._sample(forward(x if device.type == "cpu" else x.to(device)))
            params.append(dist_params)
            action = action.cpu().numpy()
            actions[t] = action
            # the sub-environments stepped as gymnasium's SyncVectorEnv does with same-step
            # autoreset, without its per-step merging of every sub-environment's info dict
            for i, sub in enumerate(envs):
                o, r, term, trunc, _ = sub.step(action[i])
                if term or trunc:
                    finals.append((t, i, np.array(o, dtype=np.float32)))
                    o, _ = sub.reset()
                obs[t + 1, i] = o
                reward[t, i] = r
                terminated[t, i] = term
                truncated[t, i] = trunc
            traj_ids[t] = ids
            ep_before[t] = episode
            episode = episode + reward[t]
            done = terminated[t] | truncated[t]
            if done.any():
                ended = np.flatnonzero(done)
                episode = np.where(done, np.float32(0), episode)
                ids = ids.copy()
                ids[ended] = np.arange(self._next_traj_id, self._next_traj_id + len(ended))
                self._next_traj_id += len(ended)
            # the carried step follows the simulators at every step: a checkpoint written when a
            # Ctrl-C lands mid-batch then still matches them (the partial batch is dropped)
            self._obs, self._episode_reward, self._traj_ids = obs[t + 1], episode, ids
        self._obs = obs[steps].copy()  # not a view: the batch's buffer is released

        next_obs = obs[1:].copy()
        for t, i, final in finals:
            next_obs[t, i] = final

        def batch(a: np.ndarray | torch.Tensor) -> torch.Tensor:  # [steps, n, ...] -> [n, steps, ...]
            x = a if isinstance(a, torch.Tensor) else torch.from_numpy(a)
            return x.transpose(0, 1).contiguous().to(self.device)

        not_done = torch.zeros(n, steps, 1, dtype=torch.bool, device=self.device)
        td = TensorDict(
            {
                self._obs_key: batch(obs[:steps]),
                self._action_key: self._action_tensor(batch(actions)),
                "done": not_done,
                "terminated": not_done.clone(),
                "truncated": not_done.clone(),
                "episode_reward": batch(ep_before[..., None]),
                "collector": {"traj_ids": batch(traj_ids)},
                "next": {
                    self._obs_key: batch(next_obs),
                    "reward": batch(reward[..., None]),
                    "done": batch((terminated | truncated)[..., None]),
                    "terminated": batch(terminated[..., None]),
                    "truncated": batch(truncated[..., None]),
                    "episode_reward": batch((ep_before + reward)[..., None]),  # the same float32 sums
                },
            },
            batch_size=[n, steps],
            device=self.device,
        )
        # the parameters each action was drawn with, and its log-probability under them
        for key, values in zip(self._param_keys, zip(*params)):
            td.set(key, batch(torch.stack(values)))
        dist = self.actor.module[-1].get_dist(td)
        td.set(self._log_prob_key, dist.log_prob(td.get(self._action_key)))
        return td
