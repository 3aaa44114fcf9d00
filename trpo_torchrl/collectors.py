"""A TorchRL collector for on-policy batches from a Gymnasium vector env, without per-step TensorDicts.

TorchRL's ``Collector`` over ``GymWrapper`` spends more time in TensorDict machinery at each step of a
small vector env than the simulators themselves (``benchmarks/throughput.py`` measures it). :class:`DirectCollector` steps the vector env's
sub-environments with numpy arrays (the same-step autoreset of gymnasium's ``SyncVectorEnv``, without
its per-step merging of info dicts), runs only the actor's network at each step (its fixed parts
computed once per batch) and writes into preallocated arrays; the log-probabilities are computed
once, for the whole batch, from the distribution parameters each action was drawn with.

The batch has the layout and entries of TorchRL's ``Collector`` over the same env —
``[num_envs, steps]`` with ``observation``, ``action``, ``loc``/``scale`` or ``logits``,
``action_log_prob``, ``done``/``terminated``/``truncated``, ``episode_reward`` (when the env has a
``RewardSum``), the same under ``"next"`` with ``reward``, and ``("collector", "traj_ids")``. Actions
are drawn with the same calls on torch's global generator as TorchRL's samplers, so from the same
generator state the two give the same batch bit for bit (tests/test_collect.py).

At a step where an episode ends, ``("next", "observation")`` is the episode's real final
observation (a truncated episode bootstraps from it) and the next step starts from the reset
observation. One difference from TorchRL: when every environment ends at the same step, TorchRL
resets the vector env a second time and starts from that reset; this collector keeps the vector
env's own autoreset observation (the same distribution, one reset fewer). The info dicts' other
entries are not collected.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential
from torchrl._utils import seed_generator
from torchrl.collectors import BaseCollector
from torchrl.envs import Compose, DoubleToFloat, EnvBase, GymWrapper, RewardSum, TransformedEnv, VecGymEnvTransform
from torchrl.modules import IndependentNormal, OneHotCategorical

from trpo_torchrl.modules import describe_mlp, gaussian_heads
from trpo_torchrl.policies import StateIndependentScale

__all__ = ["DirectCollector", "gym_vector_env"]


def gym_vector_env(env: EnvBase) -> gym.vector.SyncVectorEnv:
    """The Gymnasium ``SyncVectorEnv`` inside a TorchRL env (``GymWrapper`` over it, transforms allowed)."""
    base = getattr(env, "base_env", env)
    venv = getattr(base, "_env", None)
    if not isinstance(base, GymWrapper) or not isinstance(venv, gym.vector.SyncVectorEnv):
        raise ValueError(
            f"expected a TorchRL GymWrapper over a gymnasium SyncVectorEnv, got {type(base).__name__} over "
            f"{type(venv).__name__} (build it as GymWrapper(gymnasium.make_vec(..., vectorization_mode='sync')))"
        )
    return venv


# -- which networks the per-step forward pass can be planned for ----------------------------------


def _has_frozen_forward(module: torch.nn.Module) -> bool:
    """Whether ``module`` offers ``frozen_forward(dtype)`` — its forward for the current state, with
    what stays fixed until that state changes computed once (``None`` when it is the identity), as
    the training app's observation normaliser does. Trusted only when the class that defines
    ``forward`` also defines ``frozen_forward``: a subclass that changes one must change the other."""
    kind = type(module)
    if not callable(getattr(kind, "frozen_forward", None)):
        return False
    owner = lambda name: next(c for c in kind.__mro__ if name in vars(c))  # noqa: E731
    return owner("forward") is owner("frozen_forward")


class _FrozenForward:
    """The actor network's forward pass for one batch, with what stays fixed while a batch is
    collected (normaliser statistics, the state-independent scale) computed once
    (``benchmarks/throughput.py`` measures collection). It runs only a network that
    :func:`~trpo_torchrl.modules.describe_mlp` calls a plain MLP, with the same operations as the
    modules' own forward passes; a tensordict scale head (``NormalParamExtractor``,
    ``AddStateIndependentNormalScale``) is called as it is. For any other network :meth:`freeze`
    returns ``None`` and the collector calls the network itself."""

    @staticmethod
    def freeze(net: torch.nn.Module, dtype: torch.dtype):
        """The per-step function for the network's current structure, parameters and statistics, or
        ``None``. Described anew for each batch, so modules swapped or hooks added since the last one
        are seen."""
        description = describe_mlp(net, head_types=gaussian_heads())
        if not description:
            return None
        steps: list[tuple] = []
        for m in description.prefix:  # parameter-free: the module itself, or its frozen form
            forward = m.frozen_forward(dtype) if _has_frozen_forward(m) else m
            if forward is not None:
                steps.append(("call", forward))
        for i, linear in enumerate(description.linears):
            steps.append(("linear", linear.weight.detach(), linear.bias.detach()))
            if i < len(description.activations):
                steps.append((description.activations[i],))
        head = description.head
        scale = head.log_std.detach().exp() if type(head) is StateIndependentScale else None
        # tensordict's heads map the output (or their parameter) at each call: run as they are
        call_head = head if head is not None and scale is None else None

        def forward(x: torch.Tensor):
            for step in steps:
                kind = step[0]
                if kind == "linear":
                    x = torch.nn.functional.linear(x, step[1], step[2])
                elif kind == "tanh":
                    x = torch.tanh(x)
                elif kind == "relu":
                    x = torch.relu(x)
                else:
                    x = step[1](x)
            if call_head is not None:
                return call_head(x)
            return x if scale is None else (x, scale.expand_as(x))

        return forward


# -- the collector --------------------------------------------------------------------------------

# the transforms whose effect the collector reproduces (VecGymEnvTransform: GymWrapper's own for
# vector envs; DoubleToFloat: observations are written as float32 anyway; RewardSum: episode_reward)
_REPRODUCED_TRANSFORMS = (VecGymEnvTransform, DoubleToFloat, RewardSum)


class DirectCollector(BaseCollector):
    """Collects on-policy batches from a Gymnasium vector env at a fraction of ``Collector``'s per-step cost.

    Yields ``[num_envs, frames_per_batch // num_envs]`` TensorDicts with the entries and layout of
    :class:`torchrl.collectors.Collector` over the same env (see the module docstring); from the same
    state of torch's global generator the two give the same batch bit for bit. The collector shares
    the policy's parameters, so after an update there is nothing to copy:
    :meth:`update_policy_weights_` only copies weights handed to it.

    Args:
        create_env_fn (EnvBase or callable): a TorchRL ``GymWrapper`` over a gymnasium ``SyncVectorEnv``
            with same-step autoreset (``gymnasium.make_vec(..., vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})``), or a function returning one.
            Its transforms may be ``DoubleToFloat`` and ``RewardSum`` (reward -> episode_reward) only:
            the collector steps the sub-environments itself and reproduces just those.
        policy (ProbabilisticActor): one observation in, one ``TensorDictModule`` writing the
            distribution's parameters, a one-hot categorical (``OneHotCategorical``) over a ``Discrete``
            space or a diagonal Gaussian (``IndependentNormal``) over a flat ``Box``, no
            ``distribution_kwargs``, not ``safe``, with ``return_log_prob=True``.

    Keyword Args:
        frames_per_batch (int): frames in each batch; a multiple of the env's ``num_envs``.
        total_frames (int, optional): frames after which iteration stops (the last batch completes,
            as in TorchRL's collectors); ``-1`` or ``None`` (default) collects forever.
        device (torch.device, optional): where the batch is stored. Defaults to ``"cpu"``.

    Examples:
        >>> import gymnasium as gym
        >>> from gymnasium.vector import AutoresetMode
        >>> from torch import nn
        >>> from torchrl.envs import GymWrapper, RewardSum
        >>> from trpo_torchrl import categorical_actor
        >>> from trpo_torchrl.collectors import DirectCollector
        >>> venv = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync",
        ...                     vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
        >>> env = GymWrapper(venv)
        >>> env = env.append_transform(RewardSum(in_keys=["reward"], out_keys=["episode_reward"]))
        >>> actor = categorical_actor(nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2)))
        >>> collector = DirectCollector(env, actor, frames_per_batch=64, total_frames=128)
        >>> [batch.batch_size for batch in collector]
        [torch.Size([2, 32]), torch.Size([2, 32])]
        >>> collector.shutdown()
    """

    def __init__(
        self,
        create_env_fn: EnvBase | Callable[[], EnvBase],
        policy: ProbabilisticTensorDictSequential,
        *,
        frames_per_batch: int,
        total_frames: int | None = -1,
        device: str | torch.device | None = None,
    ):
        super().__init__()
        env = create_env_fn if isinstance(create_env_fn, EnvBase) else create_env_fn()
        if not isinstance(env, EnvBase):
            raise ValueError(
                f"DirectCollector: create_env_fn must be a TorchRL env or make one, got {type(env).__name__}"
            )
        self.env = env
        self.venv = gym_vector_env(env)
        self.num_envs = self.venv.num_envs
        if (
            getattr(self.venv, "autoreset_mode", gym.vector.AutoresetMode.SAME_STEP)
            != gym.vector.AutoresetMode.SAME_STEP
        ):
            raise ValueError(
                f"DirectCollector: the vector env autoresets in mode {self.venv.autoreset_mode}; it steps "
                "sub-environments with same-step autoreset (vector_kwargs={'autoreset_mode': AutoresetMode.SAME_STEP})"
            )
        self._check_transforms(env)
        if isinstance(frames_per_batch, bool) or not isinstance(frames_per_batch, int) or frames_per_batch < 1:
            raise ValueError(f"DirectCollector: frames_per_batch must be an int >= 1, got {frames_per_batch!r}")
        if frames_per_batch % self.num_envs:
            raise ValueError(
                f"DirectCollector: frames_per_batch={frames_per_batch} is not a multiple of the env's "
                f"num_envs={self.num_envs} (each batch holds the same number of steps of every environment)"
            )
        self.frames_per_batch = self.requested_frames_per_batch = frames_per_batch
        self.steps = frames_per_batch // self.num_envs
        # -1 or None: forever, as TorchRL's collectors read them
        self.total_frames = float("inf") if total_frames is None or total_frames < 0 else int(total_frames)
        self.device = torch.device("cpu" if device is None else device)
        self.policy = policy
        self._check_policy(policy)
        params = policy.module[0]  # the TensorDictModule that writes the distribution's parameters
        self._net = params.module
        self._param_keys = list(params.out_keys)
        self._obs_key = params.in_keys[0]
        self._action_key = policy.dist_sample_keys[0]
        self._log_prob_key = policy.log_prob_keys[0]
        self._episode_reward_key = next(
            (t.out_keys[0] for t in self._transforms(env) if isinstance(t, RewardSum)), None
        )
        self._frames = 0
        self._iter = -1
        self.closed = False
        obs, _ = self.venv.reset()
        self._start_trajectories(obs)

    @staticmethod
    def _transforms(env: EnvBase) -> list:
        if not isinstance(env, TransformedEnv):
            return []
        return list(env.transform) if isinstance(env.transform, Compose) else [env.transform]

    def _check_transforms(self, env: EnvBase) -> None:
        for t in self._transforms(env):
            if not isinstance(t, _REPRODUCED_TRANSFORMS) or (
                isinstance(t, RewardSum) and (list(t.in_keys) != ["reward"] or len(t.out_keys) != 1)
            ):
                raise ValueError(
                    f"DirectCollector steps the sub-environments itself and reproduces only the transforms "
                    f"DoubleToFloat and RewardSum(reward -> one key); the env has {t} "
                    "(torchrl.collectors.Collector runs any transform)"
                )

    def _check_policy(self, policy) -> None:
        if not isinstance(policy, ProbabilisticTensorDictSequential) or len(policy.module) != 2:
            raise ValueError(
                "DirectCollector runs a ProbabilisticActor of one parameter module and one distribution, "
                f"got {type(policy).__name__} (torchrl.collectors.Collector runs any policy)"
            )
        prob = policy.module[-1]
        plain = (
            not prob.distribution_kwargs  # e.g. tanh_loc would change what a sample means
            and not getattr(policy, "safe", False)  # a safe actor projects its samples into the spec
            and len(policy.module[0].in_keys) == 1
            and len(policy.dist_sample_keys) == 1
            and len(policy.log_prob_keys) == 1
        )
        if not plain:
            raise ValueError(
                "DirectCollector runs actors with one observation in, a plain distribution (no "
                "distribution_kwargs, not safe), one action and its log-probability out "
                "(torchrl.collectors.Collector runs any policy)"
            )
        space, dist = self.venv.single_action_space, prob.distribution_class
        if isinstance(space, gym.spaces.Discrete) and dist is OneHotCategorical:
            self._discrete, self._action_shape = True, (int(space.n),)
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and dist is IndependentNormal:
            self._discrete, self._action_shape = False, tuple(space.shape)
        else:
            raise ValueError(
                "DirectCollector runs a one-hot categorical over a Discrete space or a diagonal Gaussian "
                f"over a flat Box; got {dist.__name__} over {space} (torchrl.collectors.Collector runs any policy)"
            )

    def _start_trajectories(self, obs) -> None:
        self._obs = np.array(obs, dtype=np.float32)
        self._episode_reward = np.zeros(self.num_envs, np.float32)
        self._traj_ids = np.arange(self.num_envs, dtype=np.int64)
        self._next_traj_id = self.num_envs

    # -- BaseCollector --------------------------------------------------------------------------

    def iterator(self) -> Iterator[TensorDictBase]:
        while self._frames < self.total_frames:
            self._iter += 1
            batch = self.rollout()
            self._frames += batch.numel()
            if self.post_collect_hook is not None:
                self.post_collect_hook(batch)
            yield batch

    def _maybe_fallback_update(self, policy_or_weights=None, *, model_id: str | None = None) -> None:
        """``update_policy_weights_``: the policy's own parameters are collected with, so only
        weights handed in are copied into it."""
        if model_id not in (None, "policy"):
            raise KeyError(f"DirectCollector has no model {model_id!r}; its one model is 'policy'")
        if policy_or_weights is None:
            return
        weights = policy_or_weights
        if isinstance(weights, torch.nn.Module):
            weights = TensorDict.from_module(weights)
        elif not isinstance(weights, TensorDictBase):
            weights = TensorDict(weights).unflatten_keys(".")
        TensorDict.from_module(self.policy).data.update_(weights.data)

    def set_seed(self, seed: int, static_seed: bool = False) -> int:
        """Resets the vector env with ``seed`` (new trajectories start); returns the next seed."""
        obs, _ = self.venv.reset(seed=seed)
        self._start_trajectories(obs)
        return seed if static_seed else seed_generator(seed)

    def state_dict(self) -> OrderedDict:
        """The step carried from one batch to the next (current observations, running episode
        returns, trajectory ids) and the frame count. The simulators' own state is not in it."""
        return OrderedDict(
            observation=self._obs.copy(),
            episode_reward=self._episode_reward.copy(),
            traj_ids=self._traj_ids.copy(),
            next_traj_id=self._next_traj_id,
            frames=self._frames,
            iter=self._iter,
        )

    def load_state_dict(self, state_dict: OrderedDict) -> None:
        if state_dict["observation"].shape != self._obs.shape:
            raise ValueError(
                f"DirectCollector.load_state_dict: the saved state is for observations "
                f"{state_dict['observation'].shape}, this collector has {self._obs.shape}"
            )
        self._obs = state_dict["observation"].copy()
        self._episode_reward = state_dict["episode_reward"].copy()
        self._traj_ids = state_dict["traj_ids"].copy()
        self._next_traj_id = int(state_dict["next_traj_id"])
        self._frames = state_dict.get("frames", self._frames)
        self._iter = state_dict.get("iter", self._iter)

    def shutdown(self, timeout: float | None = None, close_env: bool = True, raise_on_error: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if close_env and not self.env.is_closed:
            self.env.close(raise_if_closed=raise_on_error)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_envs={self.num_envs}, frames_per_batch={self.frames_per_batch}, "
            f"total_frames={self.total_frames}, device={self.device})"
        )

    # -- one batch ------------------------------------------------------------------------------

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

    def _check_no_wrapper_hooks(self) -> None:
        """The collector runs the actor's network itself, around its TensorDictModule and distribution
        modules: a forward hook on one of those would be skipped, so it is an error, not a silent change
        (hooks inside the network run as usual)."""
        inside = {id(m) for m in self._net.modules()}
        hooked = [
            type(m).__name__
            for m in self.policy.modules()
            if id(m) not in inside and (m._forward_hooks or m._forward_pre_hooks)
        ]
        if hooked:
            raise RuntimeError(
                f"DirectCollector: the policy's {', '.join(hooked)} has forward hooks, which this collector would "
                "skip (it runs the network inside the TensorDictModule directly); remove them or use "
                "torchrl.collectors.Collector"
            )

    @torch.no_grad()
    def rollout(self) -> TensorDict:
        """Collects one batch of ``frames_per_batch`` frames (``[num_envs, steps]``)."""
        if self.pre_collect_hook is not None:
            self.pre_collect_hook()
        self._check_no_wrapper_hooks()
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
        forward = _FrozenForward.freeze(self._net, first.dtype) or self._net
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
        root = {
            self._obs_key: batch(obs[:steps]),
            self._action_key: self._action_tensor(batch(actions)),
            "done": not_done,
            "terminated": not_done.clone(),
            "truncated": not_done.clone(),
            "collector": {"traj_ids": batch(traj_ids)},
        }
        after = {
            self._obs_key: batch(next_obs),
            "reward": batch(reward[..., None]),
            "done": batch((terminated | truncated)[..., None]),
            "terminated": batch(terminated[..., None]),
            "truncated": batch(truncated[..., None]),
        }
        if self._episode_reward_key is not None:
            root[self._episode_reward_key] = batch(ep_before[..., None])
            after[self._episode_reward_key] = batch((ep_before + reward)[..., None])  # the same float32 sums
        td = TensorDict({**root, "next": after}, batch_size=[n, steps], device=self.device)
        # the parameters each action was drawn with, and its log-probability under them
        for key, values in zip(self._param_keys, zip(*params)):
            td.set(key, batch(torch.stack(values)))
        dist = self.policy.module[-1].get_dist(td)
        td.set(self._log_prob_key, dist.log_prob(td.get(self._action_key)))
        return td
