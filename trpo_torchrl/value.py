"""FusedGAE: TorchRL's GAE value estimator with the advantage scan done by our fused op."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, fields

import torch
from tensordict import TensorDictBase
from tensordict.nn import dispatch
from tensordict.utils import NestedKey
from torchrl.modules import set_recurrent_mode
from torchrl.objectives.utils import hold_out_net
from torchrl.objectives.value import GAE
from torchrl.objectives.value.advantages import _self_set_grad_enabled, _self_set_skip_existing

from .ops import generalized_advantage_estimate
from .recurrent import recurrent_modules
from .validation import check_number

__all__ = ["FusedGAE", "check_time_order"]


class FusedGAE(GAE):
    """Drop-in replacement for :class:`torchrl.objectives.value.GAE` on the fused scan.

    Same constructor, keys, value-network calls, ``shifted`` mode, ``average_gae``,
    ``auto_reset_env`` and ``time_dim`` handling; only the advantage recursion changes, from
    TorchRL's O(T·K) vectorized convolution (or its Python loop) to
    :func:`trpo_torchrl.ops.generalized_advantage_estimate`, an O(T) scan in C++/CUDA.
    The ``vectorized`` flag is accepted and ignored: there is one implementation.

    A padded batch (``Collector(split_trajs=True)``) carries a mask, ``("collector", "mask")`` by default
    (``set_keys(mask=...)`` renames it): the recursion stops at each row's last valid step, which still
    bootstraps from its next state's value as a truncated step does, and the padded entries of the
    advantage and the value target are zero; ``average_gae`` standardises over the valid steps only.
    (TorchRL's GAE reads no mask: the advantage of a row cut by the batch end runs on into its padding.)

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from trpo_torchrl import FusedGAE
        >>> value_net = TensorDictModule(torch.nn.Linear(3, 1), in_keys=["obs"], out_keys=["state_value"])
        >>> gae = FusedGAE(gamma=0.99, lmbda=0.95, value_network=value_net)
        >>> td = TensorDict({
        ...     "obs": torch.randn(4, 10, 3),
        ...     "next": {"obs": torch.randn(4, 10, 3), "reward": torch.randn(4, 10, 1),
        ...              "done": torch.zeros(4, 10, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(4, 10, 1, dtype=torch.bool)},
        ... }, [4, 10])
        >>> gae(td)["advantage"].shape
        torch.Size([4, 10, 1])
    """

    @dataclass
    class _AcceptedKeys(GAE._AcceptedKeys):
        """TorchRL's GAE keys, and ``mask``: the valid steps of a padded batch. Defaults to
        ``("collector", "mask")``."""

        mask: NestedKey = ("collector", "mask")

    # TorchRL's set_keys looks keys up in the class __dict__, where a dataclass keeps only its own
    # fields' defaults
    for _field in fields(GAE._AcceptedKeys):
        if _field.name not in vars(_AcceptedKeys):
            setattr(_AcceptedKeys, _field.name, _field.default)
    del _field
    default_keys = _AcceptedKeys

    def __init__(self, *, gamma, lmbda, **kwargs):
        for name, value in (("gamma", gamma), ("lmbda", lmbda)):
            if not isinstance(value, torch.Tensor):  # a tensor (TorchRL keeps it as a buffer) passes as is
                check_number("FusedGAE", name, value, low=0, high=1)
        super().__init__(gamma=gamma, lmbda=lmbda, **kwargs)

    def _gae_inputs(self, tensordict, params, target_params, time_dim):
        """Everything the recursion needs, gathered exactly as TorchRL's GAE gathers it."""
        if tensordict.batch_dims < 1:
            raise RuntimeError(
                "FusedGAE: the input tensordict needs at least one (time) dimension, got batch_size "
                f"{tensordict.batch_size}"
            )
        reward = tensordict.get(("next", self.tensor_keys.reward))
        if reward is None:
            raise KeyError(f"FusedGAE: the tensordict has no {('next', self.tensor_keys.reward)} entry")
        device = reward.device
        if self.gamma.device != device:
            self.gamma = self.gamma.to(device)
        if self.lmbda.device != device:
            self.lmbda = self.lmbda.to(device)
        gamma, lmbda = self.gamma, self.lmbda
        steps_to_next_obs = tensordict.get(self.tensor_keys.steps_to_next_obs, None)
        if steps_to_next_obs is not None:
            gamma = gamma ** steps_to_next_obs.view_as(reward)

        mask = self._mask(tensordict)
        if self.value_network is not None:
            if params is not None:
                params = params.detach()
                if target_params is None:
                    target_params = params.clone(False)
            no_params = params is None and target_params is None
            recurrent = bool(recurrent_modules(self.value_network, "FusedGAE"))
            if recurrent:
                # a recurrent critic runs over whole sequences (TorchRL's recurrent mode splits them at
                # episode starts, data-dependent shapes vmap cannot batch: root and next are two calls)
                self.deactivate_vmap = True
            with (
                hold_out_net(self.value_network) if no_params else nullcontext(),
                set_recurrent_mode(True) if recurrent else nullcontext(),
            ):
                value, next_value, valid = self._call_value_nets(
                    data=tensordict,
                    params=params,
                    next_params=target_params,
                    # shifted reads a row's next value from the following step, which padding
                    # replaces: a padded batch takes the two calls
                    single_call=self.shifted and mask is None,
                    value_key=self.tensor_keys.value,
                    detach_next=True,
                    vmap_randomness=self.vmap_randomness,
                )
            if valid is not None:
                tensordict.set("shifted_valid", valid)
        else:
            value = tensordict.get(self.tensor_keys.value)
            next_value = tensordict.get(("next", self.tensor_keys.value))
            for key, tensor in ((self.tensor_keys.value, value), (("next", self.tensor_keys.value), next_value)):
                if tensor is None:
                    raise ValueError(f"FusedGAE: the tensor with key {key} is missing and no value network was given")

        time_dim = self._get_time_dim(time_dim, tensordict)
        valid = tensordict.get("shifted_valid", default=None)
        data = self._prepare_shifted_tensordict(tensordict, valid, time_dim)
        reward = data.get(("next", self.tensor_keys.reward))
        done = data.get(("next", self.tensor_keys.done))
        if done is None:
            raise KeyError(f"FusedGAE: the tensordict has no {('next', self.tensor_keys.done)} entry (episode ends)")
        if mask is not None:
            # a trace cut after each row's last valid step: done, not terminated, so that step keeps
            # its bootstrap from the next state's value and nothing flows back from the padding
            done = done | self._expand_to_match(self._shifted_last_valid(mask, time_dim), done)
            valid = mask if valid is None else valid & mask
        terminated = data.get(("next", self.tensor_keys.terminated), default=done)
        reward, done, terminated = self._prepare_signals(reward, done, terminated, value)
        if self.auto_reset_env:
            # an auto-resetting env's "next" observation is the reset one: bootstrap a truncated
            # step from the value of the state it left instead
            truncated = self._broadcast_optional(tensordict.get(("next", "truncated")), value)
            reward = reward + gamma * value * truncated
            terminated = done
        return gamma, lmbda, value, next_value, reward, done, terminated, valid, mask, time_dim

    def _mask(self, tensordict: TensorDictBase) -> torch.Tensor | None:
        """The batch's mask of valid steps, checked, or None."""
        key = self.tensor_keys.mask
        mask = tensordict.get(key, None)
        if mask is None:
            return None
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(tensordict.batch_size):
            raise ValueError(
                f"FusedGAE: the mask {key!r} must be a boolean tensor of the batch's shape "
                f"{tuple(tensordict.batch_size)}, got {mask.dtype} of shape {tuple(mask.shape)}"
            )
        return mask

    @_self_set_skip_existing
    @_self_set_grad_enabled
    @dispatch
    def forward(
        self,
        tensordict: TensorDictBase,
        *,
        params: TensorDictBase | None = None,
        target_params: TensorDictBase | None = None,
        time_dim: int | None = None,
    ) -> TensorDictBase:
        """Writes the advantage and value target into ``tensordict`` (see :class:`torchrl.objectives.value.GAE`)."""
        gamma, lmbda, value, next_value, reward, done, terminated, valid, mask, time_dim = self._gae_inputs(
            tensordict, params, target_params, time_dim
        )
        adv, value_target = generalized_advantage_estimate(
            gamma, lmbda, value, next_value, reward, done=done, terminated=terminated, time_dim=time_dim
        )
        if self.average_gae:
            adv = self._normalize_advantage(adv, valid, groups=self._group_ids(tensordict))
        tensordict.set(self.tensor_keys.advantage, adv)
        tensordict.set(self.tensor_keys.value_target, value_target)
        if mask is None:
            self._mask_shifted_output(tensordict, valid)
        else:
            # TorchRL's own masking, without writing the mask as "shifted_valid"
            shifted = tensordict.get("shifted_valid", None)
            self._mask_shifted_output(tensordict, valid)
            if shifted is None:
                del tensordict["shifted_valid"]
            else:
                tensordict.set("shifted_valid", shifted)
        return tensordict

    def value_estimate(
        self,
        tensordict: TensorDictBase,
        params: TensorDictBase | None = None,
        target_params: TensorDictBase | None = None,
        time_dim: int | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The λ-return value target alone."""
        if self.is_stateless and params is None:
            raise RuntimeError("FusedGAE: expected params to be passed to a stateless value estimator")
        gamma, lmbda, value, next_value, reward, done, terminated, _, mask, time_dim = self._gae_inputs(
            tensordict, params, target_params, time_dim
        )
        _, value_target = generalized_advantage_estimate(
            gamma, lmbda, value, next_value, reward, done=done, terminated=terminated, time_dim=time_dim
        )
        if mask is not None:
            value_target = value_target.masked_fill(~self._expand_to_match(mask, value_target), 0)
        return value_target


def check_time_order(
    tensordict: TensorDictBase,
    *,
    time_dim: int,
    done_key: NestedKey = ("next", "done"),
    observation_keys=(),
    mask_key: NestedKey | None = None,
) -> None:
    """Raises a ValueError when ``tensordict`` is visibly not in time order along ``time_dim``.

    Within an episode (``done`` false at step t, both steps valid under the mask) step t + 1 must
    continue step t: the same ``("collector", "traj_ids")``, ``step_count`` one more (it equals
    ``("next", "step_count")`` at t), and each observation equal to ``("next", observation)`` at t.
    The observations are compared only on a batch that carries a collector's trajectory ids or a step
    count, so a hand-built batch with unrelated next observations is taken as it is. One host sync.
    """
    done = tensordict.get(done_key, None)
    if done is None or tensordict.batch_size[time_dim] < 2:
        return
    time_dim = time_dim % tensordict.batch_dims

    def now(x):
        return x.narrow(time_dim, 0, x.shape[time_dim] - 1)

    def after(x):
        return x.narrow(time_dim, 1, x.shape[time_dim] - 1)

    def per_step(x):  # reduce feature dimensions to one flag per step
        return x.reshape(*x.shape[: tensordict.batch_dims], -1).any(-1)

    continues = ~per_step(now(done))
    mask = None if mask_key is None else tensordict.get(mask_key, None)
    if mask is not None:
        continues = continues & now(mask) & after(mask)
    pairs = []
    traj_ids = tensordict.get(("collector", "traj_ids"), None)
    if traj_ids is not None:
        pairs.append(("('collector', 'traj_ids')", now(traj_ids), after(traj_ids)))
    step_count = tensordict.get("step_count", None)
    next_step_count = tensordict.get(("next", "step_count"), None)
    if step_count is not None and next_step_count is not None:
        pairs.append(("step_count", now(next_step_count), after(step_count)))
    if traj_ids is not None or step_count is not None:
        for key in observation_keys:
            current, following = (
                tensordict.get(key, None),
                tensordict.get(("next", key) if isinstance(key, str) else ("next", *key), None),
            )
            if current is not None and following is not None:
                pairs.append((f"{key!r} against ('next', {key!r})", now(following), after(current)))
    for what, expected, found in pairs:
        same = (
            (expected == found) | (expected.isnan() & found.isnan())
            if expected.is_floating_point()
            else expected == found
        )
        broken = continues & per_step(~same)
        if bool(broken.any()):
            raise ValueError(
                f"the batch is not in time order: within an episode, {what} does not continue from one step "
                f"to the next (along dim {time_dim}), as in a shuffled replay-buffer sample; GAE would run over "
                "unrelated steps. Compute the advantages (loss.value_estimator(batch)) on the collected batch "
                "before sampling or shuffling it"
            )
