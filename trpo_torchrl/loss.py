"""TRPOLoss: the TRPO surrogate, the mean KL to the behaviour policy and the critic loss, as a TorchRL loss."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import CompositeDistribution, dispatch
from tensordict.utils import NestedKey
from torch import distributions as D
from torchrl.modules import set_recurrent_mode
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import (
    ValueEstimators,
    _coerce_value_type,
    default_value_kwargs,
    dispatch_value_estimator,
    distance_loss,
)
from torchrl.objectives.value import TD0Estimator, ValueEstimatorBase

from .distributed import global_mean_std
from .distributions import (
    action_dims,
    actor_keys,
    analytic_kl,
    distribution_family,
    distribution_parameters,
    joint_log_prob,
)
from .distributions import entropy as _entropy
from .recurrent import recurrent_modules, replaying, state_keys
from .validation import check_choice, check_number
from .value import FusedGAE, check_time_order

__all__ = ["TRPOLoss", "PolicyBatch", "distribution_family", "distribution_parameters"]


class PolicyBatch(NamedTuple):
    """One on-policy batch, flattened to ``[N]`` states, with everything the actor step reads.

    ``inputs`` holds only the actor's input entries, so a policy evaluation never sees (or
    overwrites) the stored distribution parameters; ``old_params`` holds those stored parameters.

    For a recurrent actor (an ``LSTMModule``/``GRUModule`` in it) ``inputs`` keeps the ``[B, T]``
    sequence layout the policy is re-run over, and ``steps`` holds the flat positions (in ``B·T``) of
    the ``N`` states the other fields describe (``None``: all of them, in order). ``sequences`` is
    the whole ``[B, T]`` batch when the actor or the critic is recurrent (the critic loss reads it).
    """

    inputs: TensorDictBase
    action: torch.Tensor
    old_log_prob: torch.Tensor
    old_params: TensorDictBase
    advantage: torch.Tensor
    data: TensorDictBase
    steps: torch.Tensor | None = None
    sequences: TensorDictBase | None = None

    def index(self, idx: torch.Tensor) -> PolicyBatch:
        """The same batch restricted to the states ``idx`` (used for Fisher subsampling)."""
        if self.steps is not None or self.inputs.batch_dims != 1:
            raise ValueError("PolicyBatch.index: a sequence batch is subsampled by whole rows (PolicyBatch.rows)")
        return PolicyBatch(
            self.inputs[idx],
            self.action[idx],
            self.old_log_prob[idx],
            self.old_params[idx],
            self.advantage[idx],
            self.data[idx],
        )

    def rows(self, rows: torch.Tensor) -> PolicyBatch:
        """A sequence batch restricted to the whole rows ``rows`` (sorted): the states of those rows,
        in order, and their inputs ``[len(rows), T]`` (Fisher subsampling of a recurrent policy)."""
        steps_per_row = self.inputs.batch_size[1]
        positions = self.steps if self.steps is not None else torch.arange(self.advantage.shape[0], device=rows.device)
        row_of_state = torch.div(positions, steps_per_row, rounding_mode="floor")
        # one host sync: how many states the chosen rows hold
        states = torch.isin(row_of_state, rows).nonzero().squeeze(-1)
        new_row = torch.searchsorted(rows, row_of_state[states])
        new_steps = new_row * steps_per_row + positions[states] % steps_per_row
        sequences = None if self.sequences is None else self.sequences[rows]
        return PolicyBatch(
            self.inputs[rows],
            self.action[states],
            self.old_log_prob[states],
            self.old_params[states],
            self.advantage[states],
            self.data[states],
            new_steps,
            sequences,
        )

    def apply(self, fn) -> PolicyBatch:
        """``fn`` on every field that is set (e.g. one member's slice of a population's batch)."""
        return PolicyBatch(*(None if field is None else fn(field) for field in self))


class PolicyTerms(NamedTuple):
    """What one policy evaluation on a :class:`PolicyBatch` yields; all scalars are batch means."""

    objective: torch.Tensor  # surrogate + entropy_coeff * entropy: what the actor step maximises
    surrogate: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    ratio: torch.Tensor  # [N]
    dist: D.Distribution


def _action_shape(dist: D.Distribution) -> tuple[int, ...] | None:
    """The shape of the actions ``dist`` produces, from its deterministic action; None when the
    distribution has no such action to ask."""
    if isinstance(dist, CompositeDistribution):
        return None  # checked part by part (_check_action)
    for name in ("deterministic_sample", "mode"):
        try:
            return tuple(getattr(dist, name).shape)
        except (AttributeError, NotImplementedError):
            continue
    return None


class _DistParams(torch.nn.Module):
    """Wraps the actor so ``torch.func.functional_call`` can run its deterministic part alone."""

    def __init__(self, actor):
        super().__init__()
        self.actor = actor

    def forward(self, inputs: TensorDictBase) -> TensorDictBase:
        return self.actor.get_dist_params(inputs)


def _trainable_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


class TRPOLoss(LossModule):
    """Trust Region Policy Optimization loss.

    Computes, from one on-policy batch, the importance-sampled surrogate
    ``L(θ) = mean(π_θ(a|s) / π_old(a|s) · A)``, the mean analytic ``KL(π_old ‖ π_θ)`` over the batch
    states, the entropy and the critic regression loss. ``π_old`` is rebuilt from what the collector
    stored: the distribution parameters the actor wrote (e.g. ``loc``/``scale`` or ``logits``) and the
    log-probability of the stored action. The loss alone gives gradients; the constrained step itself is
    :class:`~trpo_torchrl.TrustRegionUpdate`, which uses this module's policy evaluation.

    Args:
        actor_network (ProbabilisticTensorDictSequential): the policy, e.g. a
            :class:`~torchrl.modules.ProbabilisticActor` run with ``return_log_prob=True``, so that the
            collected batch holds its distribution parameters and the log-probability.
        critic_network (TensorDictModule): the state-value network.

    A recurrent actor or critic (a TorchRL ``LSTMModule``/``GRUModule`` in it) is run over the
    ``[envs, time]`` sequences of the batch: see :mod:`trpo_torchrl.recurrent` and the usage guide's
    "Recurrent policies".

    Keyword Args:
        entropy_coeff (float): weight of the entropy bonus added to the surrogate. Defaults to ``0.0``
            (no ``loss_entropy`` entry).
        critic_coeff (float): weight of ``loss_critic``. Defaults to ``1.0``.
        normalize_advantage (bool): standardise the advantages over the batch. Defaults to ``True``.
        loss_critic_type (str): ``"l2"``, ``"l1"`` or ``"smooth_l1"``. Defaults to ``"l2"``.
        kl_estimate (str): ``"analytic"`` (default) uses ``torch.distributions.kl_divergence`` and fails
            for distributions that have none; ``"sampled"`` falls back, for those only, to the
            non-negative estimate ``mean(r - 1 - log r)``, ``r = π_θ/π_old`` on the stored actions.
        kl_reduction (str): how the KL of a multi-dimensional action is reduced per state. ``"sum"``
            (default) is the KL between the joint action distributions, the paper's measure.
            ``"mean"`` divides it by the number of independent action dimensions (1 for a categorical),
            which is how Stable-Baselines3-contrib's TRPO measures a diagonal Gaussian's KL: its
            ``target_kl`` and ``cg_damping`` (and rl-zoo3's tuned values) mean the same here only under
            ``"mean"``. ``"mean"`` with ``max_kl=δ, damping=λ`` takes exactly the step ``"sum"`` takes
            with ``δ·d, λ·d`` for ``d`` action dimensions.
        device (torch.device, optional): where the coefficient buffers live.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from trpo_torchrl import TRPOLoss, gaussian_actor
        >>> actor = gaussian_actor(torch.nn.Linear(3, 2), action_dim=2)
        >>> critic = TensorDictModule(torch.nn.Linear(3, 1), in_keys=["observation"], out_keys=["state_value"])
        >>> loss = TRPOLoss(actor, critic)
        >>> with torch.no_grad():  # as a collector runs the policy
        ...     td = actor(TensorDict({"observation": torch.randn(8, 3)}, [8]))
        >>> td["advantage"], td["value_target"] = torch.randn(8, 1), torch.randn(8, 1)
        >>> out = loss(td)
        >>> float(out["kl"])
        0.0

    Reference: Schulman et al., "Trust Region Policy Optimization", ICML 2015.
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys the loss reads, renamable with :meth:`set_keys`.

        Attributes:
            advantage (NestedKey): the advantage; computed by the value estimator when missing.
                Defaults to ``"advantage"``.
            value_target (NestedKey): the critic's regression target (λ-return). Defaults to ``"value_target"``.
            value (NestedKey): the critic's output. Defaults to ``"state_value"``.
            sample_log_prob (NestedKey): the stored log π_old(a|s). Defaults to the actor's log-prob key,
                else ``"action_log_prob"``.
            action (NestedKey): the stored action. Defaults to the actor's sample key, else ``"action"``.
            reward, done, terminated (NestedKey): forwarded to the value estimator.
            mask (NestedKey): which steps of a padded batch are real (``True``) and which are padding,
                as ``Collector(split_trajs=True)`` writes it. When the batch carries it, every mean is
                over the valid steps only. Defaults to ``("collector", "mask")``.
        """

        advantage: NestedKey = "advantage"
        value_target: NestedKey = "value_target"
        value: NestedKey = "state_value"
        sample_log_prob: NestedKey = "action_log_prob"
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        mask: NestedKey = ("collector", "mask")

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    default_value_estimator = ValueEstimators.GAE
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
        ValueEstimators.GAE,
    )

    actor_network: torch.nn.Module
    critic_network: torch.nn.Module
    actor_network_params: TensorDictBase
    critic_network_params: TensorDictBase
    target_actor_network_params: TensorDictBase
    target_critic_network_params: TensorDictBase

    def __init__(
        self,
        actor_network,
        critic_network,
        *,
        entropy_coeff: float = 0.0,
        critic_coeff: float = 1.0,
        normalize_advantage: bool = True,
        loss_critic_type: str = "l2",
        kl_estimate: str = "analytic",
        kl_reduction: str = "sum",
        device: torch.device | None = None,
    ):
        if not (hasattr(actor_network, "get_dist_params") and hasattr(actor_network, "build_dist_from_params")):
            raise TypeError(
                "TRPOLoss: actor_network must be a ProbabilisticTensorDictSequential (e.g. a torchrl "
                f"ProbabilisticActor), got {type(actor_network).__name__}"
            )
        if not _trainable_parameters(actor_network):
            raise ValueError("TRPOLoss: actor_network has no trainable parameters")
        if critic_network is None:
            raise TypeError("TRPOLoss: critic_network is required (it feeds the value estimator)")
        if not (hasattr(critic_network, "in_keys") and hasattr(critic_network, "out_keys")):
            raise TypeError(
                "TRPOLoss: critic_network must be a TensorDictModule (e.g. TensorDictModule(net, "
                f"in_keys=['observation'], out_keys=['state_value'])), got {type(critic_network).__name__}"
            )
        if not _trainable_parameters(critic_network):
            raise ValueError("TRPOLoss: critic_network has no trainable parameters")
        check_choice("TRPOLoss", "loss_critic_type", loss_critic_type, ("l1", "l2", "smooth_l1"))
        check_choice("TRPOLoss", "kl_estimate", kl_estimate, ("analytic", "sampled"))
        check_choice("TRPOLoss", "kl_reduction", kl_reduction, ("sum", "mean"))
        for name, value in (("critic_coeff", critic_coeff), ("entropy_coeff", entropy_coeff)):
            check_number("TRPOLoss", name, value, low=0)
        # recurrent modules are found (and checked) before anything is registered
        recurrent_actor = recurrent_modules(actor_network, "TRPOLoss")
        recurrent_critic = recurrent_modules(critic_network, "TRPOLoss")
        self._in_keys = None
        super().__init__()
        self._recurrent_actor = recurrent_actor
        self._recurrent_critic = recurrent_critic
        # the loss keeps the user's modules and their Parameter objects (no copies): an actor step
        # written into them is what the collector's policy runs next
        self.convert_to_functional(actor_network, "actor_network")
        self.convert_to_functional(critic_network, "critic_network")
        self.__dict__["_dist_params_module"] = _DistParams(actor_network)
        if device is None:
            device = next(actor_network.parameters()).device
        self.register_coeff_buffer("entropy_coeff", float(entropy_coeff), device=device)
        self.register_coeff_buffer("critic_coeff", float(critic_coeff), device=device)
        # decided on the host once, so forward never branches on a tensor
        self._use_entropy = entropy_coeff > 0
        self.normalize_advantage = normalize_advantage
        self.loss_critic_type = loss_critic_type
        self.kl_estimate = kl_estimate
        self.kl_reduction = kl_reduction
        keys = {}
        log_prob_keys, sample_keys = actor_keys(actor_network)
        if len(log_prob_keys) == 1:
            keys["sample_log_prob"] = log_prob_keys[0]
        if len(sample_keys) == 1:
            keys["action"] = sample_keys[0]
        # a composite action: the parts' samples (and, per part, their log-probabilities) are read
        # from where the actor wrote them, under their full keys
        self._action_parts = list(sample_keys) if len(sample_keys) > 1 else None
        self._log_prob_parts = list(log_prob_keys) if len(log_prob_keys) > 1 else None
        if keys:
            self.set_keys(**keys)

    # ---------------------------------------------------------------- TorchRL plumbing
    @property
    def dist_params_keys(self) -> list[NestedKey]:
        """Where the collector stored π_old's parameters (the actor's distribution-parameter keys)."""
        return list(self.actor_network.dist_params_keys)

    def _set_in_keys(self):
        keys = []
        for key in (
            *self.actor_network.in_keys,
            *self.dist_params_keys,
            *self.critic_network.in_keys,
            self.tensor_keys.action,
            self.tensor_keys.sample_log_prob,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *[("next", k) if isinstance(k, str) else ("next", *k) for k in self.critic_network.in_keys],
            # optional: present when the caller computed them, or when the batch is padded
            self.tensor_keys.advantage,
            self.tensor_keys.value_target,
            self.tensor_keys.mask,
        ):
            if key not in keys:
                keys.append(key)
        self._in_keys = keys

    @property
    def in_keys(self):
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @property
    def out_keys(self):
        keys = ["loss_objective", "loss_critic"]
        if self._use_entropy:
            keys.append("loss_entropy")
        return keys + ["kl", "entropy", "surrogate", "ratio_mean", "ratio_min", "ratio_max"]

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if getattr(self, "_value_estimator", None) is not None:
            self._value_estimator.set_keys(
                advantage=self.tensor_keys.advantage,
                value_target=self.tensor_keys.value_target,
                value=self.tensor_keys.value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
            if "mask" in self._value_estimator.tensor_keys.__dataclass_fields__:
                self._value_estimator.set_keys(mask=self.tensor_keys.mask)
        self._set_in_keys()

    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams) -> TRPOLoss:
        """Builds the advantage estimator; GAE (the default) is :class:`~trpo_torchrl.FusedGAE`. Returns ``self``."""
        if value_type is None:
            value_type = self.default_value_estimator
        if isinstance(value_type, ValueEstimatorBase) or (
            isinstance(value_type, type) and issubclass(value_type, ValueEstimatorBase)
        ):
            LossModule.make_value_estimator(self, value_type, **hyperparams)
            self._forward_value_estimator_keys()
            return self
        value_type = _coerce_value_type(value_type)
        hp = dict(default_value_kwargs(value_type))
        hp.update(hyperparams)
        if value_type == ValueEstimators.GAE:
            hp.pop("differentiable", None)
            self._value_estimator = FusedGAE(value_network=self.critic_network, **hp)
            self.value_type = value_type
        else:
            dispatch_value_estimator(self, value_type, supported=self.SUPPORTED_VALUE_ESTIMATORS, **hp)
        if self._recurrent_critic:
            # TorchRL's recurrent mode splits sequences at episode starts (data-dependent shapes),
            # which vmap cannot batch: the root and next values are two plain calls (FusedGAE also
            # decides this itself, and runs the critic in recurrent mode)
            self._value_estimator.deactivate_vmap = True
        self._forward_value_estimator_keys()
        return self

    # ---------------------------------------------------------------- the batch
    def policy_batch(self, tensordict: TensorDictBase, process_group=None) -> PolicyBatch:
        """Gathers and checks what the actor step needs; computes the advantage when it is missing.

        The batch dimensions are flattened: the surrogate and the KL are means over all states. A
        recurrent actor's inputs keep the ``[envs, time]`` layout (time last), which the policy is
        re-run over (:mod:`trpo_torchrl.recurrent`); a flattened batch is then a ValueError.
        Non-finite advantages raise a RuntimeError naming the key; the check is an assert on the
        tensor's device, so on CUDA it does not sync but fails as a device-side assert.

        With a ``process_group`` (see :mod:`trpo_torchrl.distributed`) this rank holds one equal
        shard of the batch: the advantages are standardised with the mean and std of all shards, and
        the finiteness check looks at those global statistics, so one rank's bad shard fails every
        rank at the same point instead of leaving the others waiting in a collective.
        """
        data = tensordict.clone(False)
        sequences = steps = None
        if self._recurrent_actor or (self._recurrent_critic and data.batch_dims >= 2):
            sequences = self._sequences(data)  # checked before anything reads the batch
        if data.get(self.tensor_keys.advantage, None) is None:
            self._estimate_advantage(data)
            if sequences is not None:
                sequences = self._sequences(data)
        if self._recurrent_actor:
            steps = self._valid_positions(sequences)
        data = self._valid_steps(data.reshape(-1), process_group)
        advantage = data.get(self.tensor_keys.advantage)
        num_states = data.numel()
        old_log_prob = self._stored_log_prob(data)
        if old_log_prob.requires_grad:
            raise RuntimeError(
                f"TRPOLoss: the stored {self.tensor_keys.sample_log_prob!r} requires grad; collect under torch.no_grad()"
            )
        missing = [key for key in self.dist_params_keys if data.get(key, None) is None]
        if missing:
            raise KeyError(
                f"TRPOLoss: the batch lacks the distribution parameters {missing} the actor stored while "
                "collecting; they are needed to rebuild π_old for the KL"
            )
        action = self._stored_action(data)
        if not advantage.is_floating_point():
            raise TypeError(
                f"TRPOLoss: the advantage {self.tensor_keys.advantage!r} must be floating-point, got {advantage.dtype}"
            )
        if advantage.numel() != num_states:
            raise ValueError(
                f"TRPOLoss: the advantage {self.tensor_keys.advantage!r} has shape {tuple(advantage.shape)}, "
                f"expected one value per state of the batch {tuple(tensordict.batch_size)}"
            )
        advantage = advantage.detach().reshape(num_states)
        if process_group is None:
            finite = torch.isfinite(advantage).all()
            normalize = self.normalize_advantage and num_states > 1
        else:
            # every rank joins these collectives whatever its shard holds; the global mean is
            # non-finite exactly when some rank's advantages are
            mean, std = global_mean_std(advantage, process_group)
            finite = torch.isfinite(mean)
            normalize = self.normalize_advantage and num_states * dist.get_world_size(process_group) > 1
        # an assert on the device: raises here on CPU, asynchronously on CUDA, never syncs the host
        torch._assert_async(finite, f"TRPOLoss: the advantage {self.tensor_keys.advantage!r} has non-finite values")
        if normalize and process_group is None:
            advantage = (advantage - advantage.mean()) / advantage.std().clamp_min(1e-8)
        elif normalize:
            advantage = (advantage - mean) / std.clamp_min(1e-8)
        if old_log_prob.numel() != num_states:
            raise ValueError(
                f"TRPOLoss: the stored log-probability {self.tensor_keys.sample_log_prob!r} has shape "
                f"{tuple(old_log_prob.shape)}, expected one value per state of the batch {tuple(tensordict.batch_size)} "
                "(the joint log-probability of the action, summed over its dimensions: use "
                "torchrl.modules.IndependentNormal for a Gaussian, torch.distributions.Independent(base, 1) "
                "for any other distribution)"
            )
        batch = PolicyBatch(
            inputs=self._policy_inputs(sequences if self._recurrent_actor else data),
            action=action.detach(),
            old_log_prob=old_log_prob.reshape(num_states),
            old_params=data.select(*self.dist_params_keys).detach(),
            advantage=advantage,
            data=data,
            steps=steps,
            sequences=sequences,
        )
        self._check_action(batch, num_states)
        return batch

    def _sequences(self, data: TensorDictBase, role: str | None = None) -> TensorDictBase:
        """The batch as ``[B, T]`` sequences (time last, leading dimensions folded into B), checked
        to hold what a recurrent actor re-runs from: the stored hidden states and ``is_init``.
        ``role`` (``"actor"`` or ``"critic"``) names the recurrent network in the errors."""
        role = role or ("actor" if self._recurrent_actor else "critic")
        modules = self._recurrent_actor if role == "actor" else self._recurrent_critic
        names = ", ".join(f"{name!r} ({type(m).__name__})" for name, m in modules)
        if data.batch_dims < 2:
            raise ValueError(
                f"TRPOLoss: the {role} is recurrent ({names}); the batch "
                f"must keep its [envs, time] layout as the collector returns it, got batch_size "
                f"{tuple(data.batch_size)}: a flattened batch would run each environment's steps on from "
                "the previous environment's hidden state"
            )
        sequences = data if data.batch_dims == 2 else data.reshape(-1, data.batch_size[-1])
        for name, module in self._recurrent_actor:
            missing = [key for key in state_keys(module) if sequences.get(key, None) is None]
            if missing:
                raise KeyError(
                    f"TRPOLoss: the batch lacks {missing}, which the recurrent module {name!r} "
                    f"({type(module).__name__}) is re-run from (the hidden state stored at each step and the "
                    "episode-start marker); collect with the module's make_tensordict_primer() and an "
                    "InitTracker() transform on the environment"
                )
        return sequences

    def _valid_positions(self, sequences: TensorDictBase) -> torch.Tensor | None:
        """The flat positions of the valid steps of a padded ``[B, T]`` batch (None without a mask)."""
        mask = sequences.get(self.tensor_keys.mask, None)
        if mask is None or mask.dtype != torch.bool or mask.numel() != sequences.numel():
            return None  # no mask, or a bad one: _valid_steps names the problem
        return mask.reshape(-1).nonzero().squeeze(-1)

    def _estimate_advantage(self, data: TensorDictBase) -> None:
        """Runs the value estimator on ``data`` in place, after checking that a multi-step estimator
        sees its steps in time order and that none would read across padding."""
        estimator = self.value_estimator
        if not isinstance(estimator, TD0Estimator):  # one-step targets need no order
            if data.get(self.tensor_keys.mask, None) is not None and not isinstance(estimator, FusedGAE):
                raise ValueError(
                    f"TRPOLoss: the batch carries a mask {self.tensor_keys.mask!r} (a padded batch), which "
                    f"{type(estimator).__name__} does not read; use the default GAE (make_value_estimator("
                    "ValueEstimators.GAE)) or compute the advantages before padding"
                )
            try:
                check_time_order(
                    data,
                    time_dim=estimator._get_time_dim(None, data),
                    done_key=("next", self.tensor_keys.done),
                    observation_keys=self.critic_network.in_keys,
                    mask_key=self.tensor_keys.mask,
                )
            except ValueError as err:
                raise ValueError(f"TRPOLoss: {err}") from None
        if self._recurrent_critic and data.batch_dims < 2:
            self._sequences(data, "critic")  # raises: the critic needs the [envs, time] layout
        with torch.no_grad(), self._critic_mode():
            estimator(data)

    def _critic_mode(self):
        """TorchRL's recurrent mode for a recurrent critic: it runs over whole sequences, splitting
        them at episode starts (``is_init``), from zero states where none are stored."""
        return set_recurrent_mode(True) if self._recurrent_critic else contextlib.nullcontext()

    def _valid_steps(self, data: TensorDictBase, process_group) -> TensorDictBase:
        """The flat batch ``data`` without its padding, when it carries a mask (one host sync)."""
        key = self.tensor_keys.mask
        mask = data.get(key, None)
        if mask is None:
            return data
        if process_group is not None:
            raise ValueError(
                f"TRPOLoss: the batch carries a mask {key!r}, but with a process group every rank's shard must "
                "hold the same number of states; remove the padding before sharding (batch[mask]) or collect "
                "without split_trajs"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"TRPOLoss: the mask {key!r} must be boolean (True on valid steps), got {mask.dtype}")
        if mask.numel() != data.numel():
            raise ValueError(
                f"TRPOLoss: the mask {key!r} has shape {tuple(mask.shape)}, expected one value per state "
                f"({data.numel()})"
            )
        data = data[mask.reshape(-1)]
        if data.batch_size[0] == 0:
            raise ValueError(f"TRPOLoss: the mask {key!r} marks no valid step in the batch")
        return data

    def _stored_log_prob(self, data: TensorDictBase) -> torch.Tensor:
        """log π_old(a|s) as collected: the one entry, or the sum of a composite's per-part entries."""
        key = self.tensor_keys.sample_log_prob
        old_log_prob = data.get(key, None)
        if old_log_prob is None and self._log_prob_parts is not None:
            parts = [data.get(part, None) for part in self._log_prob_parts]
            if all(part is not None for part in parts):
                # the joint log-probability of independent parts; a part over several dimensions
                # (e.g. a Normal without Independent) is summed over them
                return sum(part.reshape(data.numel(), -1).sum(-1) for part in parts)
            key = [k for k, part in zip(self._log_prob_parts, parts) if part is None]
        if old_log_prob is None:
            raise KeyError(
                f"TRPOLoss: the batch has no stored log-probability {key!r}; collect with an actor built "
                "with return_log_prob=True or rename the key with set_keys"
            )
        return old_log_prob

    def _stored_action(self, data: TensorDictBase):
        """The stored action: a tensor, or for a composite the TensorDict of its parts under their keys."""
        if self._action_parts is not None:
            missing = [key for key in self._action_parts if data.get(key, None) is None]
            if missing:
                raise KeyError(f"TRPOLoss: the batch has no composite action parts {missing}")
            return data.select(*self._action_parts)
        action = data.get(self.tensor_keys.action, None)
        if action is None:
            raise KeyError(f"TRPOLoss: the batch has no action {self.tensor_keys.action!r}")
        return action

    def _policy_inputs(self, data: TensorDictBase) -> TensorDictBase:
        """The actor's inputs alone. A nested group of distribution parameters that the network
        writes (a composite's ``params``) is listed among the actor's in_keys too: it stays out,
        so that evaluating π_θ never overwrites π_old's stored parameters (a plain input the
        distribution also reads, such as an action mask, stays in)."""
        params = set(self.dist_params_keys)
        keys = [
            key
            for key in self.actor_network.in_keys
            if not (key in params and isinstance(data.get(key, None), TensorDictBase))
        ]
        return data.select(*keys).detach()

    def _check_action(self, batch: PolicyBatch, num_states: int) -> None:
        # π_old's deterministic action says what an action must look like (event_shape does not:
        # a one-hot categorical reports none); a mismatched one would broadcast into the
        # log-probabilities without an error
        old = self.old_dist(batch)
        if isinstance(old, CompositeDistribution):
            pairs = [(key, batch.action.get(key), _action_shape(part)) for key, part in old.dists.items()]
        else:
            pairs = [(self.tensor_keys.action, batch.action, _action_shape(old))]
        for key, action, expected in pairs:
            if expected is not None and tuple(action.shape) != expected:
                raise ValueError(
                    f"TRPOLoss: the action {key!r} has shape {tuple(action.shape)} per batch of "
                    f"{num_states} states, but the actor's distribution gives actions of shape {expected}"
                )

    # ---------------------------------------------------------------- the policy terms
    def policy_dist(self, batch: PolicyBatch, params: dict[str, torch.Tensor] | None = None) -> D.Distribution:
        """π_θ on the batch states, with the actor's own parameters or with ``params`` (name → tensor,
        names as in ``actor_network.named_parameters()``) substituted functionally."""
        inputs = batch.inputs.copy()
        with replaying(self._recurrent_actor):
            if params is None:
                out = self.actor_network.get_dist_params(inputs)
            else:
                params = {"actor." + name: value for name, value in params.items()}
                out = torch.func.functional_call(self._dist_params_module, params, (inputs,))
        if self._recurrent_actor:
            # the sequences' outputs, flattened to the batch's states
            out = out.select(*self.dist_params_keys).reshape(-1)
            if batch.steps is not None:
                out = out[batch.steps]
        return self.actor_network.build_dist_from_params(out)

    def old_dist(self, batch: PolicyBatch) -> D.Distribution:
        """π_old rebuilt from the stored distribution parameters."""
        return self.actor_network.build_dist_from_params(batch.old_params.copy())

    def kl_divisor(self, dist: D.Distribution) -> int:
        """What the per-state KL is divided by: 1 under ``kl_reduction="sum"``, else the number of
        independent action dimensions (the event size; 1 for a categorical, one-hot or not; summed
        over a composite's parts)."""
        if self.kl_reduction == "sum":
            return 1
        return action_dims(dist)

    def mean_kl(self, batch: PolicyBatch, dist: D.Distribution, log_ratio: torch.Tensor) -> torch.Tensor:
        """Mean KL(π_old ‖ π_θ) over the states (reduced over action dimensions by ``kl_reduction``):
        analytic, or the sampled estimate when asked for. Dimensions of ``log_ratio`` before the
        states (``[..., N]``) are kept."""
        divisor = self.kl_divisor(dist)
        kl = self._state_kl(batch, dist, log_ratio)
        return kl if divisor == 1 else kl / divisor

    def _state_kl(self, batch: PolicyBatch, dist: D.Distribution, log_ratio: torch.Tensor) -> torch.Tensor:
        old = self.old_dist(batch)
        try:
            kl = analytic_kl(old, dist)
        except NotImplementedError:
            if self.kl_estimate != "sampled":
                raise NotImplementedError(
                    f"TRPOLoss: torch has no analytic KL for {type(dist).__name__}; pass "
                    "TRPOLoss(..., kl_estimate='sampled') to use a sampled estimate on the stored actions"
                ) from None
            # r - 1 - log r >= 0, unbiased for KL(π_old‖π_θ) under a ~ π_old, and its Hessian at θ_old
            # is the (empirical) Fisher, so the trust region keeps its meaning
            return torch.expm1(log_ratio).sub(log_ratio).mean(-1)
        return kl.reshape(log_ratio.shape).mean(-1)

    def policy_terms(self, batch: PolicyBatch, params: dict[str, torch.Tensor] | None = None) -> PolicyTerms:
        """Surrogate, KL, entropy and ratios at θ (the actor's parameters, or ``params``)."""
        return self.dist_terms(batch, self.policy_dist(batch, params))

    def dist_terms(self, batch: PolicyBatch, dist: D.Distribution, batch_dims: int = 0) -> PolicyTerms:
        """Surrogate, KL, entropy and ratios of the policy ``dist`` on the batch states (``dist`` as
        :meth:`policy_dist` returns it, however its parameters were computed).

        ``batch_dims`` leading dimensions of ``dist``'s batch shape come before the states (e.g. the
        K candidates of a line search, ``[K, N]``): the terms then have that shape (``[K]``).
        """
        lead = tuple(dist.batch_shape[:batch_dims])
        n_states = batch.old_log_prob.shape[-1]  # [N], or [M, N] for a population's batch
        log_prob = joint_log_prob(dist, batch.action)
        if log_prob.shape[:batch_dims] != lead or log_prob[(0,) * batch_dims].numel() != n_states:
            raise ValueError(
                f"TRPOLoss: {type(dist).__name__}.log_prob gave shape {tuple(log_prob.shape)}, expected one "
                f"value per state ({n_states}); use a distribution that sums over the action dimensions: "
                "torchrl.modules.IndependentNormal for a Gaussian, "
                "torch.distributions.Independent(base, 1) for any other"
            )
        log_prob = log_prob.reshape(*lead, n_states)
        log_ratio = log_prob - batch.old_log_prob
        ratio = log_ratio.exp()
        surrogate = (ratio * batch.advantage).mean(-1)
        kl = self.mean_kl(batch, dist, log_ratio)
        try:
            entropy = _entropy(dist).reshape(*lead, n_states).mean(-1)
        except NotImplementedError:
            # importance-weighted -log π_θ on the stored actions estimates π_θ's own entropy
            entropy = -(ratio * log_prob).mean(-1)
        objective = surrogate + self.entropy_coeff * entropy if self._use_entropy else surrogate
        return PolicyTerms(objective, surrogate, kl, entropy, ratio, dist)

    def critic_loss(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``critic_coeff ×`` the mean distance between the critic's output and the value target."""
        target = tensordict.get(self.tensor_keys.value_target, None)
        if target is None:
            raise KeyError(
                f"TRPOLoss: the batch has no value target {self.tensor_keys.value_target!r}; run the value "
                "estimator (loss.value_estimator(batch)) first"
            )
        if self._recurrent_critic:
            return self.critic_coeff * self._recurrent_critic_distance(tensordict, target).mean()
        inputs = tensordict.select(*self.critic_network.in_keys).copy()
        value = self.critic_network(inputs).get(self.tensor_keys.value)
        return self.critic_coeff * distance_loss(target.detach(), value, loss_function=self.loss_critic_type).mean()

    def _recurrent_critic_distance(self, tensordict: TensorDictBase, target: torch.Tensor) -> torch.Tensor:
        """Per valid step, the distance of a recurrent critic's values, run over the ``[B, T]``
        sequences of ``tensordict`` (its padding, when it carries a mask, left out)."""
        sequences = self._sequences(tensordict, "critic")
        inputs = sequences.select(*self.critic_network.in_keys, strict=False).copy()
        with self._critic_mode():
            value = self.critic_network(inputs).get(self.tensor_keys.value).reshape(-1)
        distance = distance_loss(target.detach().reshape(-1), value, loss_function=self.loss_critic_type)
        mask = sequences.get(self.tensor_keys.mask, None)
        return distance if mask is None else distance[mask.reshape(-1)]

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Losses (to minimise) and detached diagnostics for one batch."""
        batch = self.policy_batch(tensordict)
        terms = self.policy_terms(batch)
        out = TensorDict(
            {
                "loss_objective": -terms.surrogate,
                # a recurrent critic reads the sequences (a flat batch: critic_loss says it needs them)
                "loss_critic": self.critic_loss(
                    batch.sequences if self._recurrent_critic and batch.sequences is not None else batch.data
                ),
                "kl": terms.kl.detach(),
                "entropy": terms.entropy.detach(),
                "surrogate": terms.surrogate.detach(),
                "ratio_mean": terms.ratio.detach().mean(),
                "ratio_min": terms.ratio.detach().min(),
                "ratio_max": terms.ratio.detach().max(),
            },
            batch_size=[],
        )
        if self._use_entropy:
            out.set("loss_entropy", -self.entropy_coeff * terms.entropy)
        return out
