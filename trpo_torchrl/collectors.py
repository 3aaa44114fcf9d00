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
generator state the two give the same batch bit for bit (tests/test_collect.py); given a
``generator``, with the same calls on it.

:class:`PopulationCollector` collects for several DirectCollectors (the members of ``train --seeds
M``) in one loop: their sub-environments stepped together, their actors run as one batched network,
each member's draws on its own generator, each member's batch the one its own collector would give.

With ``env_workers=N`` a collector's sub-environments step in worker processes (gymnasium's
``AsyncVectorEnv``, forked from the live sub-environments): the same batches, bit for bit.

At a step where an episode ends, ``("next", "observation")`` is the episode's real final
observation (a truncated episode bootstraps from it) and the next step starts from the reset
observation. One difference from TorchRL: when every environment ends at the same step, TorchRL
resets the vector env a second time and starts from that reset; this collector keeps the vector
env's own autoreset observation (the same distribution, one reset fewer). The info dicts' other
entries are not collected.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial

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

__all__ = [
    "DirectCollector",
    "EnvWorkersError",
    "FrozenStandardize",
    "PopulationCollector",
    "default_env_threads",
    "gym_vector_env",
]


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


class FrozenStandardize:
    """``((x - mean) / std).clamp(-clip, clip)`` with fixed statistics: what an observation
    normaliser's ``frozen_forward`` returns, so that :class:`PopulationCollector` applies its
    members' normalisers as one operation over ``[M, n, features]`` (the same elementwise
    operations, so the same values)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, clip: float):
        self.mean, self.std, self.clip = mean, std, clip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).clamp(-self.clip, self.clip)

    @staticmethod
    def stacked(steps: list) -> FrozenStandardize | None:
        """The members' standardisations as one over ``[M, n, features]`` (statistics ``[M, 1,
        features]``), or ``None`` unless every step is a FrozenStandardize with one clip."""
        if not all(type(step) is FrozenStandardize for step in steps) or len({s.clip for s in steps}) != 1:
            return None
        shapes = {(s.mean.shape, s.std.shape, s.mean.dtype, s.mean.device) for s in steps}
        if len(shapes) != 1:
            return None
        mean = torch.stack([s.mean for s in steps]).unsqueeze(1)
        std = torch.stack([s.std for s in steps]).unsqueeze(1)
        return FrozenStandardize(mean, std, steps[0].clip)


_ACTIVATION_FNS = {"tanh": torch.tanh, "relu": torch.relu}


class _Plan:
    """One network's forward pass for one batch: its parameter-free prefix (each module, or its frozen
    form), its Linears' detached weights and biases with the hidden activations between them, and its
    head: a state-independent scale computed once (``scale``), a tensordict head called as it is
    (``head``), or none."""

    def __init__(self, prefix, layers, activations, scale, head):
        self.prefix = prefix
        self.layers = layers
        self.activations = activations
        self.scale = scale
        self.head = head

    def run_prefix(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.prefix:
            x = step(x)
        return x

    def __call__(self, x: torch.Tensor):
        x = self.run_prefix(x)
        for i, (weight, bias) in enumerate(self.layers):
            x = torch.nn.functional.linear(x, weight, bias)
            if i < len(self.activations):
                x = _ACTIVATION_FNS[self.activations[i]](x)
        if self.head is not None:
            return self.head(x)
        return x if self.scale is None else (x, self.scale.expand_as(x))


class _FrozenForward:
    """The actor network's forward pass for one batch, with what stays fixed while a batch is
    collected (normaliser statistics, the state-independent scale) computed once
    (``benchmarks/throughput.py`` measures collection). It runs only a network that
    :func:`~trpo_torchrl.modules.describe_mlp` calls a plain MLP, with the same operations as the
    modules' own forward passes; a tensordict scale head (``NormalParamExtractor``,
    ``AddStateIndependentNormalScale``) is called as it is. For any other network :meth:`freeze`
    returns ``None`` and the collector calls the network itself."""

    @staticmethod
    def plan(net: torch.nn.Module, dtype: torch.dtype) -> _Plan | None:
        """The :class:`_Plan` of the network's current structure, parameters and statistics, or
        ``None``. Described anew for each batch, so modules swapped or hooks added since the last one
        are seen."""
        description = describe_mlp(net, head_types=gaussian_heads())
        if not description:
            return None
        prefix = []
        for m in description.prefix:  # parameter-free: the module itself, or its frozen form
            forward = m.frozen_forward(dtype) if _has_frozen_forward(m) else m
            if forward is not None:
                prefix.append(forward)
        layers = [(linear.weight.detach(), linear.bias.detach()) for linear in description.linears]
        head = description.head
        scale = head.log_std.detach().exp() if type(head) is StateIndependentScale else None
        # tensordict's heads map the output (or their parameter) at each call: run as they are
        call_head = head if head is not None and scale is None else None
        return _Plan(prefix, layers, description.activations, scale, call_head)

    @staticmethod
    def freeze(net: torch.nn.Module, dtype: torch.dtype):
        """The per-step function for the network's current state (a :class:`_Plan`), or ``None``."""
        return _FrozenForward.plan(net, dtype)


class _StackedForward:
    """Several members' plain-MLP plans as one forward pass over ``[M, n, features]``: each member's
    prefix (its own observation normaliser) on its own slice, then one batched matrix product per
    layer over the members' stacked weights. :meth:`of` returns ``None`` when the plans do not stack
    (a network that is not a plain MLP, different layer shapes or activations, a tensordict head)."""

    def __init__(self, plans: list[_Plan]):
        self.plans = plans
        self.has_prefix = any(p.prefix for p in plans)
        # every member's prefix one standardisation (the app's normaliser): one operation for all
        one_step = all(len(p.prefix) == 1 for p in plans)
        self.prefix = FrozenStandardize.stacked([p.prefix[0] for p in plans]) if one_step else None
        depth = len(plans[0].layers)
        # baddbmm(bias [M, 1, out], x [M, n, in], weightᵀ [M, in, out]): each member's F.linear
        self.weights = [torch.stack([p.layers[i][0] for p in plans]).transpose(1, 2) for i in range(depth)]
        self.biases = [torch.stack([p.layers[i][1] for p in plans]).unsqueeze(1) for i in range(depth)]
        self.activations = [_ACTIVATION_FNS[a] for a in plans[0].activations]
        first = plans[0].scale
        self.scale = None if first is None else torch.stack([p.scale for p in plans]).unsqueeze(1)

    @staticmethod
    def of(plans: list[_Plan | None]) -> _StackedForward | None:
        if any(p is None or p.head is not None for p in plans):
            return None
        first = plans[0]

        def signature(p: _Plan) -> tuple:
            tensors = [t for layer in p.layers for t in layer] + ([] if p.scale is None else [p.scale])
            return (p.activations, p.scale is None, tuple((t.shape, t.dtype, t.device) for t in tensors))

        if any(signature(p) != signature(first) for p in plans):
            return None
        return _StackedForward(plans)

    def __call__(self, x: torch.Tensor):
        if self.prefix is not None:
            x = self.prefix(x)
        elif self.has_prefix:
            x = torch.stack([p.run_prefix(x[m]) for m, p in enumerate(self.plans)])
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias, x, weight)
            if i < last:
                x = self.activations[i](x)
        return x if self.scale is None else (x, self.scale.expand_as(x))


# -- stepping the sub-environments ----------------------------------------------------------------


def _releases_gil(env: gym.Env) -> bool:
    """Whether a sub-environment's step spends most of its time in a simulator that releases the GIL
    while it runs (MuJoCo's ``mj_step``), so stepping several on threads runs them in parallel."""
    unwrapped = getattr(env, "unwrapped", env)
    return getattr(unwrapped, "model", None) is not None and getattr(unwrapped, "data", None) is not None


def default_env_threads(envs: Sequence[gym.Env]) -> int:
    """The threads :class:`DirectCollector` and :class:`PopulationCollector` step ``envs`` on when
    asked for ``env_threads=0``: one per core available to this process (at most one per
    sub-environment) for simulators that release the GIL (MuJoCo), else 1 (a pure-Python step, such
    as CartPole's, only slows down on threads: ``benchmarks/population.py`` measures both)."""
    if not envs or not all(_releases_gil(e) for e in envs):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, len(envs)))


def _check_env_threads(owner: str, env_threads) -> int:
    if isinstance(env_threads, bool) or not isinstance(env_threads, int) or env_threads < 0:
        raise ValueError(
            f"{owner}: env_threads must be an int >= 0 (0: one per core for MuJoCo tasks, 1: no thread pool), "
            f"got {env_threads!r}"
        )
    return env_threads


class _Stepper:
    """Steps a list of sub-environments once per call: in turn on this thread, or, with ``threads``
    > 1, split into ``threads`` contiguous chunks, this thread stepping the first while a
    ``ThreadPoolExecutor`` steps the others. Each sub-environment writes only its own entries of its
    batch's buffers, so the results are those of stepping them in turn."""

    def __init__(self, threads: int):
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="trpo-env") if threads > 1 else None

    def chunks(self, items: list) -> list[list]:
        k = min(self.threads, len(items))
        bounds = [len(items) * j // k for j in range(k + 1)]
        return [items[a:b] for a, b in zip(bounds, bounds[1:])]

    def step(self, chunks: list[list], t: int, actions: list[np.ndarray]) -> None:
        """Steps every ``(rollout, member, i)`` of ``chunks`` at step ``t`` with ``actions[member][i]``."""

        def run(chunk):
            for rollout, member, i in chunk:
                rollout.step_env(t, i, actions[member][i])

        if self.pool is None or len(chunks) == 1:
            for chunk in chunks:
                run(chunk)
            return
        futures = [self.pool.submit(run, chunk) for chunk in chunks[1:]]
        try:
            run(chunks[0])
        finally:  # an error or Ctrl-C here: the other threads finish their step before it propagates
            wait(futures)
        for future in futures:
            future.result()

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


# -- stepping the sub-environments in worker processes --------------------------------------------


class EnvWorkersError(RuntimeError):
    """A sub-environment failed in its worker process, or the workers were stopped mid-step (their
    simulators' state is then out of reach)."""


def _env_name(env: gym.Env) -> str:
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(getattr(env, "unwrapped", env)).__name__


class _WorkerEnv(gym.Wrapper):
    """Sub-environment ``index`` as its worker process runs it: the live object of this process,
    copied into the worker when it forks, so the worker goes on from the very state (simulator, RNG,
    step counters) the in-process object had. It returns empty info dicts (the collector reads only
    the final observation, which the worker adds at an episode's end: no per-step pickling and
    merging of the rest), runs ``fn(env, *args)`` for :meth:`DirectCollector.map_envs`, and closes
    the environment only in the worker (this process's own copy is its owner's to close)."""

    def __init__(self, env: gym.Env, index: int, owner: int):
        super().__init__(env)
        self.index = index
        self.owner = owner
        if os.getpid() != owner:
            # a terminal's Ctrl-C reaches the whole process group: the worker leaves it to the main
            # process, which stops at an iteration boundary and then closes the workers. (SIGTERM
            # keeps its default: it is how gymnasium and multiprocessing stop a worker at once.)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def step(self, action):
        obs, reward, terminated, truncated, _ = self.env.step(action)
        return obs, reward, terminated, truncated, {}

    def reset(self, **kwargs):
        obs, _ = self.env.reset(**kwargs)
        return obs, {}

    def run_on_env(self, fn: Callable, args_per_env: Sequence[tuple] | None):
        return fn(self.env, *(() if args_per_env is None else args_per_env[self.index]))

    def close(self) -> None:
        if os.getpid() != self.owner:
            self.env.close()


def _check_env_workers(owner: str, env_workers) -> int:
    if isinstance(env_workers, bool) or not isinstance(env_workers, int) or env_workers < 0:
        raise ValueError(
            f"{owner}: env_workers must be an int >= 0 (0: step the sub-environments in this process, "
            f"N >= 1: in worker processes, at most N stepping at once), got {env_workers!r}"
        )
    if env_workers and "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError(
            f"{owner}: env_workers needs the 'fork' start method (the workers start from this process's "
            "live sub-environments), which this platform lacks; use env_workers=0"
        )
    return env_workers


class _EnvWorkers:
    """A vector env's sub-environments stepped in worker processes by gymnasium's ``AsyncVectorEnv``
    (one process per sub-environment, observations in shared memory, same-step autoreset, at most
    ``concurrency`` stepping at once). The workers are forked from this process after the
    sub-environments were made, seeded and reset, each running its live sub-environment
    (:class:`_WorkerEnv`): nothing is pickled but actions, rewards, flags, final observations and
    :meth:`map` calls, and each sub-environment steps exactly as it would here, so the batches are
    the same. :meth:`step_async` sends a step's actions and returns; :meth:`step_wait` writes the
    results into a :class:`_Rollout` (a :class:`PopulationCollector` sends every member's actions
    before it waits for any, so all members' workers run at once).

    A worker's error becomes an :class:`EnvWorkersError` naming the environment, and the workers
    are stopped. A KeyboardInterrupt while a step is pending propagates as it is, and also stops the
    workers (their state would no longer match the collector's carried step); any later call is an
    :class:`EnvWorkersError` that says so."""

    def __init__(self, venv: gym.vector.SyncVectorEnv, concurrency: int):
        self.name = _env_name(venv.envs[0])
        self.num_envs = venv.num_envs
        self.pending = False
        self.failed: str | None = None
        owner = os.getpid()
        fns = [partial(_WorkerEnv, sub, i, owner) for i, sub in enumerate(venv.envs)]
        try:
            self.vector = gym.vector.AsyncVectorEnv(
                fns,
                shared_memory=True,
                copy=False,  # step_wait's observations are copied into the batch's buffer at once
                context="fork",
                daemon=True,  # and closed by shutdown(); daemonic workers also end with this process
                autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
                max_concurrency=min(concurrency, venv.num_envs),
            )
        except (EOFError, OSError) as err:  # a worker that died while starting: its pipe closed
            raise EnvWorkersError(
                f"{self.name}: a worker process stepping its sub-environments failed to start "
                f"({type(err).__name__}: {err}); use env_workers=0 to step them in this process"
            ) from None

    @property
    def processes(self) -> list:
        return list(self.vector.processes)

    def _check(self) -> None:
        if self.failed is not None:
            raise EnvWorkersError(self.failed)

    def _fail(self, what: str, err: BaseException) -> str:
        """Stops the workers at once; the message that names the environment and what failed."""
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        self.failed = f"{self.name}: {what} ({detail}); its worker processes were stopped"
        self.pending = False
        self.close(terminate=True)
        return self.failed

    def step_async(self, actions: np.ndarray) -> None:
        self._check()
        self.pending = True
        try:
            self.vector.step_async(actions)
        except KeyboardInterrupt as err:
            self._fail("interrupted while its workers stepped", err)
            raise
        except Exception as err:  # noqa: BLE001 - e.g. a worker that died since the last step
            raise EnvWorkersError(self._fail("a worker process failed", err)) from err

    def _wait_for_answers(self) -> None:
        """Returns once every worker has answered the pending call; raises at once when a worker
        process ends instead (workers end only when closed; gymnasium's own wait would block for
        ever on the others when the one that ended held the concurrency semaphore they wait for)."""
        pipes = list(self.vector.parent_pipes)
        waiting = {pipe: process for pipe, process in zip(pipes, self.vector.processes) if pipe is not None}
        sentinels = {process.sentinel: pipe for pipe, process in waiting.items()}
        while waiting:
            for ready in multiprocessing.connection.wait([*waiting, *sentinels]):
                if ready in sentinels:
                    raise self._ended(pipes.index(sentinels[ready]))
                waiting.pop(ready, None)

    def _ended(self, index: int) -> RuntimeError:
        """The error of worker ``index``, which ended: the exception it reported, else its exit code."""
        process = self.vector.processes[index]
        process.join(1)
        try:
            _, kind, value, _ = self.vector.error_queue.get(timeout=1)
            detail = f"{getattr(kind, '__name__', kind)}: {value}"
        except (queue.Empty, OSError, EOFError):
            detail = f"exit code {process.exitcode}"
        return RuntimeError(f"the worker process of sub-environment {index} ended ({detail})")

    def step_wait(self, rollout: _Rollout, t: int) -> None:
        """Step ``t``'s results into ``rollout``: observations, rewards, flags, final observations."""
        try:
            self._wait_for_answers()
            obs, reward, terminated, truncated, info = self.vector.step_wait()
        except KeyboardInterrupt as err:  # the step's results are lost: the workers cannot go on
            self._fail("interrupted while its workers stepped", err)
            raise
        except Exception as err:  # noqa: BLE001 - any worker failure, named, instead of gymnasium's bare one
            raise EnvWorkersError(self._fail("a sub-environment failed in its worker process", err)) from err
        self.pending = False
        rollout.obs[t + 1] = obs
        rollout.reward[t] = reward
        rollout.terminated[t] = terminated
        rollout.truncated[t] = truncated
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                rollout.finals.append((t, int(i), np.array(info["final_obs"][i], dtype=np.float32)))

    def abort(self, err: BaseException) -> None:
        """An interruption between :meth:`step_async` and :meth:`step_wait`: the workers are stopped."""
        if self.pending:
            self._fail("interrupted while its workers stepped", err)

    def map(self, fn: Callable, args_per_env: Sequence[tuple] | None = None) -> list:
        self._check()
        try:
            self.vector.call_async("run_on_env", fn, args_per_env)
            self._wait_for_answers()
            return list(self.vector.call_wait())
        except Exception as err:  # noqa: BLE001
            raise EnvWorkersError(self._fail(f"{getattr(fn, '__name__', fn)} failed in a worker process", err)) from err

    def reset(self, seed: int | None = None) -> np.ndarray:
        self._check()
        try:
            self.vector.reset_async(seed=seed)
            self._wait_for_answers()
            obs, _ = self.vector.reset_wait()
        except Exception as err:  # noqa: BLE001
            raise EnvWorkersError(self._fail("reset failed in a worker process", err)) from err
        return np.array(obs, dtype=np.float32)

    def close(self, terminate: bool = False) -> None:
        vector = getattr(self, "vector", None)
        if vector is None or vector.closed:
            return
        try:
            vector.close(terminate=terminate)
        except Exception:  # noqa: BLE001 - a worker already gone: stop the others
            for process in vector.processes:
                if process.is_alive():
                    process.terminate()
                process.join()


class _Rollout:
    """One batch of a :class:`DirectCollector` being collected: numpy buffers ``[steps(+1),
    num_envs, ...]`` filled a step at a time, then the batch's TensorDict. ``obs`` may be a view into
    a larger buffer (:class:`PopulationCollector` reads every member's observations at once)."""

    def __init__(self, collector: DirectCollector, obs: np.ndarray | None = None):
        c = self.collector = collector
        n, steps = c.num_envs, c.steps
        self.envs = c.venv.envs
        self.obs = np.empty((steps + 1, n, c._obs.shape[-1]), np.float32) if obs is None else obs
        self.obs[0] = c._obs
        self.reward = np.empty((steps, n), np.float32)
        self.terminated = np.empty((steps, n), bool)
        self.truncated = np.empty((steps, n), bool)
        self.ep_before = np.empty((steps, n), np.float32)  # the running return before each step
        self.traj_ids = np.empty((steps, n), np.int64)
        shape = () if c._discrete else c._action_shape
        self.actions = np.empty((steps, n, *shape), np.int64 if c._discrete else np.float32)
        self.params: list[tuple[torch.Tensor, ...]] = []
        self.finals: list[tuple[int, int, np.ndarray]] = []

    def record(self, t: int, action: np.ndarray, dist_params: tuple[torch.Tensor, ...]) -> None:
        self.params.append(dist_params)
        self.actions[t] = action

    def step_env(self, t: int, i: int, action: np.ndarray) -> None:
        """Sub-environment ``i``'s step ``t``, as gymnasium's SyncVectorEnv does it with same-step
        autoreset, without its per-step merging of every sub-environment's info dict."""
        sub = self.envs[i]
        o, r, term, trunc, _ = sub.step(action)
        if term or trunc:
            self.finals.append((t, i, np.array(o, dtype=np.float32)))
            o, _ = sub.reset()
        self.obs[t + 1, i] = o
        self.reward[t, i] = r
        self.terminated[t, i] = term
        self.truncated[t, i] = trunc

    def end_step(self, t: int) -> None:
        """Running returns and trajectory ids after step ``t``; the collector's carried step follows."""
        c = self.collector
        self.traj_ids[t] = ids = c._traj_ids
        self.ep_before[t] = c._episode_reward
        episode = c._episode_reward + self.reward[t]
        done = self.terminated[t] | self.truncated[t]
        if done.any():
            ended = np.flatnonzero(done)
            episode = np.where(done, np.float32(0), episode)
            ids = ids.copy()
            ids[ended] = np.arange(c._next_traj_id, c._next_traj_id + len(ended))
            c._next_traj_id += len(ended)
        # the carried step follows the simulators at every step: a checkpoint written when a
        # Ctrl-C lands mid-batch then still matches them (the partial batch is dropped)
        c._obs, c._episode_reward, c._traj_ids = self.obs[t + 1], episode, ids

    def finish(self) -> TensorDict:
        """The batch, ``[num_envs, steps]``, with its log-probabilities."""
        c = self.collector
        n, steps = c.num_envs, c.steps
        obs = self.obs
        c._obs = obs[steps].copy()  # not a view: the batch's buffer is released
        next_obs = obs[1:].copy()
        for t, i, final in self.finals:
            next_obs[t, i] = final

        def batch(a: np.ndarray | torch.Tensor) -> torch.Tensor:  # [steps, n, ...] -> [n, steps, ...]
            x = a if isinstance(a, torch.Tensor) else torch.from_numpy(a)
            return x.transpose(0, 1).contiguous().to(c.device)

        terminated, truncated, reward, ep_before = self.terminated, self.truncated, self.reward, self.ep_before
        not_done = torch.zeros(n, steps, 1, dtype=torch.bool, device=c.device)
        root = {
            c._obs_key: batch(obs[:steps]),
            c._action_key: c._action_tensor(batch(self.actions)),
            "done": not_done,
            "terminated": not_done.clone(),
            "truncated": not_done.clone(),
            "collector": {"traj_ids": batch(self.traj_ids)},
        }
        after = {
            c._obs_key: batch(next_obs),
            "reward": batch(reward[..., None]),
            "done": batch((terminated | truncated)[..., None]),
            "terminated": batch(terminated[..., None]),
            "truncated": batch(truncated[..., None]),
        }
        if c._episode_reward_key is not None:
            root[c._episode_reward_key] = batch(ep_before[..., None])
            after[c._episode_reward_key] = batch((ep_before + reward)[..., None])  # the same float32 sums
        td = TensorDict({**root, "next": after}, batch_size=[n, steps], device=c.device)
        # the parameters each action was drawn with, and its log-probability under them
        for key, values in zip(c._param_keys, zip(*self.params)):
            td.set(key, batch(torch.stack(values)))
        dist = c.policy.module[-1].get_dist(td)
        td.set(c._log_prob_key, dist.log_prob(td.get(c._action_key)))
        return td


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
        generator (torch.Generator, optional): draws the actions (on the actor's device). ``None``
            (default) draws them on torch's global generator, as TorchRL's samplers do; a run's own
            generator makes its batches independent of any other draws in the process.
        env_threads (int): threads stepping the sub-environments: 1 (default) steps them in turn
            on this thread; 0 one per core for MuJoCo tasks (whose step releases the GIL), else 1;
            N > 1 that many. The results do not depend on it.
        env_workers (int): 0 (default) steps the sub-environments in this process; N >= 1 in worker
            processes (gymnasium's ``AsyncVectorEnv`` with shared memory and same-step autoreset, one
            process per sub-environment, at most N stepping at once), forked from this process after
            the env was made, so each worker runs the live sub-environment from its current state.
            The results do not depend on it. A worker's pipe round trip costs more than a MuJoCo step
            on a small machine (``benchmarks/population.py --collection`` measures both): workers pay
            off only for sub-environments whose step is slow, on free cores. Needs the ``fork``
            start method (Linux, macOS); not with ``env_threads`` > 1.

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
        generator: torch.Generator | None = None,
        env_threads: int = 1,
        env_workers: int = 0,
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
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(
                f"DirectCollector: generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        actor_device = next(self._net.parameters()).device
        if generator is not None and generator.device.type != actor_device.type:
            raise ValueError(
                f"DirectCollector: the generator is on {generator.device}, the actor on {actor_device}; "
                "actions are drawn where the actor runs"
            )
        self.generator = generator
        threads = _check_env_threads("DirectCollector", env_threads)
        self.env_workers = _check_env_workers("DirectCollector", env_workers)
        if self.env_workers and threads > 1:
            raise ValueError(
                f"DirectCollector: env_workers={env_workers} steps the sub-environments in worker processes; "
                f"env_threads={env_threads} would step them on threads here: choose one"
            )
        self.env_threads = 1 if self.env_workers else threads or default_env_threads(self.venv.envs)
        self._stepper = _Stepper(self.env_threads)
        self._frames = 0
        self._iter = -1
        self.closed = False
        obs, _ = self.venv.reset()
        self._start_trajectories(obs)
        # after the reset: the workers start from the sub-environments' current state
        self._workers = _EnvWorkers(self.venv, self.env_workers) if self.env_workers else None

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
        if self._workers is not None:
            obs = self._workers.reset(seed=seed)
        else:
            obs, _ = self.venv.reset(seed=seed)
        self._start_trajectories(obs)
        return seed if static_seed else seed_generator(seed)

    def map_envs(self, fn: Callable, args_per_env: Sequence[tuple] | None = None) -> list:
        """``[fn(sub_env, *args_per_env[i]) for each sub-environment i]``, run where the
        sub-environments live: in this process, or in their worker processes (``env_workers``),
        where ``fn`` (a module-level function), its arguments and its result travel pickled. This is
        how a checkpoint reads and restores the simulators' state whichever way they are stepped."""
        if self._workers is not None:
            return self._workers.map(fn, args_per_env)
        return [fn(sub, *(() if args_per_env is None else args_per_env[i])) for i, sub in enumerate(self.venv.envs)]

    @property
    def worker_processes(self) -> list:
        """The worker processes stepping the sub-environments (empty with ``env_workers=0``)."""
        return [] if self._workers is None else self._workers.processes

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
        self._stepper.shutdown()
        if self._workers is not None:
            self._workers.close()
        if close_env and not self.env.is_closed:
            self.env.close(raise_if_closed=raise_on_error)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_envs={self.num_envs}, frames_per_batch={self.frames_per_batch}, "
            f"total_frames={self.total_frames}, device={self.device})"
        )

    # -- one batch ------------------------------------------------------------------------------

    def _sample(self, out) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One step's action and distribution parameters, drawn with the same calls as the TorchRL
        actor (``Normal.rsample``, ``Categorical.sample``): on torch's global generator by default,
        so the same generator state gives the same actions, or on the collector's ``generator``."""
        g = self.generator
        if self._discrete:
            if g is None:
                return torch.distributions.Categorical(logits=out).sample(), (out,)
            # Categorical(logits).sample(): softmax of the normalised logits, one multinomial draw per row
            probs = torch.softmax(out - out.logsumexp(-1, keepdim=True), -1)
            index = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, True, generator=g).T
            return index.reshape(out.shape[:-1]), (out,)
        loc, scale = out
        eps = torch.empty(loc.shape, dtype=loc.dtype, device=loc.device).normal_(generator=g)
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
                f"{type(self).__name__}: the policy's {', '.join(hooked)} has forward hooks, which this collector "
                "would skip (it runs the network inside the TensorDictModule directly); remove them or use "
                "torchrl.collectors.Collector"
            )

    def _forward(self):
        """This batch's per-step forward pass: the network's :class:`_Plan`, or the network itself."""
        first = next(self._net.parameters())
        return _FrozenForward.freeze(self._net, first.dtype) or self._net

    def _input(self) -> Callable[[np.ndarray], torch.Tensor]:
        """This batch's conversion of one step's observations into the network's input (its device
        and dtype, read once per batch rather than at every step)."""
        first = next(self._net.parameters())
        device, dtype = first.device, first.dtype
        return lambda obs: torch.from_numpy(obs).to(device=device, dtype=dtype)

    def _work(self, rollout: _Rollout, member: int = 0) -> list[tuple[_Rollout, int, int]]:
        return [(rollout, member, i) for i in range(self.num_envs)]

    @torch.no_grad()
    def rollout(self) -> TensorDict:
        """Collects one batch of ``frames_per_batch`` frames (``[num_envs, steps]``)."""
        if self.pre_collect_hook is not None:
            self.pre_collect_hook()
        self._check_no_wrapper_hooks()
        rollout = _Rollout(self)
        forward = self._forward()
        chunks = self._stepper.chunks(self._work(rollout))
        as_input = self._input()
        for t in range(self.steps):
            action, dist_params = self._sample(forward(as_input(rollout.obs[t])))
            action = action.cpu().numpy()
            rollout.record(t, action, dist_params)
            if self._workers is not None:
                try:
                    self._workers.step_async(action)
                    self._workers.step_wait(rollout, t)
                except BaseException as err:  # a Ctrl-C between the two: the workers are left mid-step
                    self._workers.abort(err)
                    raise
            else:
                self._stepper.step(chunks, t, [action])
            rollout.end_step(t)
        return rollout.finish()


class PopulationCollector:
    """Collects the next batch of several :class:`DirectCollector` s ("members") in one loop: their
    sub-environments stepped together (on a thread pool where the simulator releases the GIL), one
    batched forward pass per step for every member's actor.

    Each member's batch is the one its own collector's :meth:`~DirectCollector.rollout` would give:
    the same entries and layout, its actions drawn with the same calls on its own ``generator``, its
    carried step, frame and iteration counts kept in its own collector (so its ``state_dict`` is as
    exact as a single run's). The members' actors are run as one network when every one is a plain
    MLP of the same shapes (:func:`~trpo_torchrl.modules.describe_mlp`, with a state-independent
    scale or no head): each member's parameter-free prefix (its own observation normaliser) on its own
    observations, then one batched matrix product per layer over the members' stacked weights; other
    actors are called one member at a time (the same batch, more calls).

    Args:
        collectors: the members' collectors, each over its own environments and actor, with the same
            ``num_envs``, steps per batch, observation size and actor device.

    Keyword Args:
        env_threads (int): threads stepping the members' sub-environments: 1 (default) steps them
            in turn on this thread; N > 1 on N threads (this one and a pool of N - 1); 0 one per
            core for MuJoCo tasks (whose step releases the GIL), else 1. The results do not depend
            on it.

    Members whose collectors step their sub-environments in worker processes (``env_workers``) are
    stepped in lockstep: at each step every member's actions go to its workers before any member's
    results are read, so all members' workers run at once while this process waits.
    """

    def __init__(self, collectors: Sequence[DirectCollector], *, env_threads: int = 1):
        collectors = list(collectors)
        if not collectors or not all(isinstance(c, DirectCollector) for c in collectors):
            raise ValueError(
                f"PopulationCollector collects for DirectCollectors, got "
                f"{[type(c).__name__ for c in collectors] or 'none'}"
            )
        first = collectors[0]

        def layout(c: DirectCollector) -> tuple:
            p = next(c._net.parameters())
            return (c.num_envs, c.steps, c._obs.shape[-1], p.device, c.device)

        if any(layout(c) != layout(first) for c in collectors):
            shown = ", ".join(
                f"(num_envs={n}, steps={s}, observation size={o}, actor on {d}, batch on {b})"
                for n, s, o, d, b in map(layout, collectors)
            )
            raise ValueError(
                "PopulationCollector steps its members together and stacks their observations: every "
                f"member needs the same num_envs, steps per batch, observation size and devices; got {shown}"
            )
        if len({id(c) for c in collectors}) != len(collectors) or len({id(c.venv) for c in collectors}) != len(
            collectors
        ):
            raise ValueError("PopulationCollector: each member needs its own collector and its own environments")
        self.collectors = collectors
        threads = _check_env_threads("PopulationCollector", env_threads)
        envs = [e for c in collectors if c._workers is None for e in c.venv.envs]
        if threads > 1 and len(envs) < sum(c.num_envs for c in collectors):
            raise ValueError(
                f"PopulationCollector: env_threads={env_threads}, but members step their sub-environments in worker "
                "processes (env_workers): choose one"
            )
        self.env_threads = threads or default_env_threads(envs)
        self._stepper = _Stepper(self.env_threads)

    def __iter__(self) -> Iterator[list[TensorDict]]:
        """Every member's batches (:meth:`collect`) until a member reaches its ``total_frames``."""
        while all(c._frames < c.total_frames for c in self.collectors):
            yield self.collect()

    def collect(self) -> list[TensorDict]:
        """Every member's next batch, counted in each member's collector (its frames and iterations,
        and its ``post_collect_hook``) as iterating over that collector counts them."""
        members = self.collectors
        for c in members:
            c._iter += 1
        batches = self.rollout()
        for c, batch in zip(members, batches):
            c._frames += batch.numel()
            if c.post_collect_hook is not None:
                c.post_collect_hook(batch)
        return batches

    def _forward(self):
        """This batch's per-step forward over ``[M, num_envs, features]``: the members' stacked
        plans, else each member's own forward on its slice."""
        plans = [_FrozenForward.plan(c._net, next(c._net.parameters()).dtype) for c in self.collectors]
        stacked = _StackedForward.of(plans)
        if stacked is not None:
            return stacked, True
        forwards = [plan or c._net for plan, c in zip(plans, self.collectors)]
        return (lambda x: [f(x[m]) for m, f in enumerate(forwards)]), False

    @torch.no_grad()
    def rollout(self) -> list[TensorDict]:
        """One batch per member, ``[num_envs, steps]`` each, collected together."""
        members = self.collectors
        for c in members:
            if c.closed:
                raise RuntimeError("PopulationCollector: a member's collector was shut down")
            if c.pre_collect_hook is not None:
                c.pre_collect_hook()
            c._check_no_wrapper_hooks()
        first = members[0]
        steps, n = first.steps, first.num_envs
        obs = np.empty((steps + 1, len(members), n, first._obs.shape[-1]), np.float32)
        rollouts = [_Rollout(c, obs[:, m]) for m, c in enumerate(members)]
        forward, stacked = self._forward()
        own_generators = all(c.generator is not None for c in members)
        # members whose sub-environments live in worker processes step there, the others here
        workers = [(c._workers, r) for c, r in zip(members, rollouts) if c._workers is not None]
        here = [w for m, (c, r) in enumerate(zip(members, rollouts)) if c._workers is None for w in c._work(r, m)]
        chunks = self._stepper.chunks(here) if here else []
        as_input = first._input()
        for t in range(steps):
            out = forward(as_input(obs[t]))
            if stacked and own_generators:
                actions, params = self._draw_stacked(out)
            else:
                if stacked:  # [M, n, ...] or a (loc, scale) pair of them: member m's is row m
                    out = [tuple(o[m] for o in out) if isinstance(out, tuple) else out[m] for m in range(len(members))]
                drawn = [c._sample(o) for c, o in zip(members, out)]
                actions, params = torch.stack([a for a, _ in drawn]), [p for _, p in drawn]
            actions = actions.cpu().numpy()
            for r, action, dist_params in zip(rollouts, actions, params):
                r.record(t, action, dist_params)
            if workers:
                self._step_with_workers(workers, chunks, t, actions)
            else:
                self._stepper.step(chunks, t, actions)
            for r in rollouts:
                r.end_step(t)
        return [r.finish() for r in rollouts]

    def _step_with_workers(self, workers: list, chunks: list, t: int, actions: np.ndarray) -> None:
        """Every member's step ``t`` with workers in lockstep: each member's actions sent to its
        workers first, so all of them step at once (and the members stepped here meanwhile), then
        each member's results read."""
        members = {id(c._workers): m for m, c in enumerate(self.collectors)}
        try:
            for engine, _ in workers:
                engine.step_async(actions[members[id(engine)]])
            self._stepper.step(chunks, t, actions)
            for engine, rollout in workers:
                engine.step_wait(rollout, t)
        except BaseException as err:  # a member's failure or a Ctrl-C: no member's workers are left mid-step
            for engine, _ in workers:
                engine.abort(err)
            raise

    def _draw_stacked(self, out) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """Every member's actions from the stacked output ``[M, n, ...]``: the elementwise and
        row-wise work done once for all, each member's draws on its own generator with the calls of
        :meth:`DirectCollector._sample` (so the same values)."""
        members = self.collectors
        if members[0]._discrete:
            probs = torch.softmax(out - out.logsumexp(-1, keepdim=True), -1)
            index = [torch.multinomial(probs[m], 1, True, generator=c.generator)[:, 0] for m, c in enumerate(members)]
            return torch.stack(index), [(out[m],) for m in range(len(members))]
        loc, scale = out
        eps = torch.empty(loc.shape, dtype=loc.dtype, device=loc.device)
        for m, c in enumerate(members):
            eps[m].normal_(generator=c.generator)
        return loc + eps * scale, [(loc[m], scale[m]) for m in range(len(members))]

    def shutdown(self) -> None:
        """Stops the thread pool (the members' collectors and environments are their owners' to close)."""
        self._stepper.shutdown()

    def __repr__(self) -> str:
        first = self.collectors[0]
        return (
            f"{type(self).__name__}(members={len(self.collectors)}, num_envs={first.num_envs}, "
            f"frames_per_batch={first.frames_per_batch}, env_threads={self.env_threads})"
        )
