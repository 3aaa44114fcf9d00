"""CriticFit: regress a TRPOLoss's critic on the batch's λ-returns, epochs × minibatches with Adam;
fit_critics: M such fits (one per population member) in one call of the fused op."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives.utils import distance_loss

from .distributed import all_reduce_mean, resolve_process_group
from .loss import TRPOLoss
from .modules import describe_mlp, has_forward_hooks, plain_tensordict_module
from .ops import mlp_fit_adam
from .validation import check_choice, check_count, check_generator, check_number

__all__ = ["CriticFit", "fit_critics"]

_log = logging.getLogger("trpo_torchrl")


class CriticFit:
    """Fits the critic of ``loss_module`` to the value targets already in a batch.

    TRPO constrains only the actor; the critic is plain regression on the λ-returns the value
    estimator wrote. The Adam state lives in this object, so it carries over from one iteration to
    the next like in any training loop.

    Only the critic's own parameters are fitted. Parameters the actor also uses (a shared torso, as
    in TorchRL's ``ActorValueOperator``) belong to the trust-region step: moving them here would move
    the policy outside its trust region unchecked. They are left out of Adam (and get no gradient
    during the fit), with one ``UserWarning`` at construction naming them; a critic whose trainable
    parameters are all the actor's is refused with a ``ValueError``.

    A padded batch (TorchRL's ``split_trajs=True``) is fitted on its valid steps only: when the batch
    holds the mask ``("collector", "mask")`` (or the loss's ``mask`` key), the fit is the fit on the
    states it marks, in order, without the padding.

    Args:
        loss_module (TRPOLoss): its ``critic_loss`` is minimised (``critic_coeff`` scales it).

    Keyword Args:
        lr (float): Adam's learning rate. Defaults to ``1e-3``.
        eps (float): Adam's epsilon. Defaults to ``1e-8`` (torch's; Stable-Baselines3 uses ``1e-5``).
        epochs (int): passes over the batch. Defaults to ``5``.
        minibatch_size (int): states per Adam step; the last minibatch of an epoch may be smaller.
            Defaults to ``64``.
        max_grad_norm (float, optional): clips the critic's gradient norm. Defaults to ``None``.
        generator (torch.Generator, optional): drives the shuffling.
        process_group (ProcessGroup or "world", optional): data-parallel ranks, each holding an equal
            shard of the batch. Each Adam step averages the minibatch gradients over the group first,
            so every rank takes the same step; with equal shards every rank runs the same number of
            steps (``minibatch_size`` is per rank: a global minibatch is ``world_size`` times it).
            The returned metrics stay those of this rank's shard. Defaults to ``None`` (one process).
        fused (bool, optional): run the whole fit as one call of the compiled op
            :func:`~trpo_torchrl.ops.mlp_fit_adam` (the loop, the MLP's backward pass and Adam in
            C++; the same minibatches as the eager loop and the same parameters up to rounding:
            the CPU kernel fuses the work between the matrix products and uses its own float32
            tanh, within 2.25 ulp). It
            applies to the usual TRPO critic: a ``TensorDictModule`` (or torchrl's ``ValueOperator``,
            which only sets its default keys) over a plain MLP as
            :func:`~trpo_torchrl.modules.describe_mlp` recognises one (parameter-free preprocessing,
            e.g. an observation normaliser, then ``Linear``/``Tanh`` or ``Linear``/``ReLU`` layers
            ending in one output, in an exact ``nn.Sequential`` or torchrl ``MLP``, no forward
            hooks), with the l2 loss, plain Adam, no gradient clipping and no process group. ``None`` (default) uses it
            whenever it applies; ``True`` raises, saying why, when it does not; ``False`` never uses it.

    Examples:
        >>> fit = CriticFit(loss, lr=1e-3, epochs=5, minibatch_size=64)  # doctest: +SKIP
        >>> fit(batch)["loss_critic"]  # doctest: +SKIP
    """

    def __init__(
        self,
        loss_module: TRPOLoss,
        *,
        lr: float = 1e-3,
        eps: float = 1e-8,
        epochs: int = 5,
        minibatch_size: int = 64,
        max_grad_norm: float | None = None,
        generator: torch.Generator | None = None,
        process_group=None,
        fused: bool | None = None,
    ):
        if not isinstance(loss_module, TRPOLoss):
            raise TypeError(f"CriticFit: loss_module must be a TRPOLoss, got {type(loss_module).__name__}")
        where = "CriticFit"
        self.loss_module = loss_module
        self.epochs = check_count(where, "epochs", epochs)
        self.minibatch_size = check_count(where, "minibatch_size", minibatch_size)
        lr = check_number(where, "lr", lr, low=0, low_open=True)
        eps = check_number(where, "eps", eps, low=0, low_open=True)
        self.max_grad_norm = check_number(where, "max_grad_norm", max_grad_norm, low=0, low_open=True, optional=True)
        self.generator = check_generator(where, "generator", generator)
        self.fused = check_choice(where, "fused", fused, (None, True, False))
        self._eager_reason = None  # why the last fit took the eager loop, logged when it changes
        self._members_reason = None  # as first fit of fit_critics: why the members were last fitted apart
        self.process_group = resolve_process_group(process_group)
        self.parameters, self.shared_parameters = _own_and_shared_parameters(loss_module)
        self.optimizer = torch.optim.Adam(self.parameters, lr=lr, eps=eps)

    def _average_gradients(self) -> None:
        # one collective for all the critic's gradients: flatten, average, copy back
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        flat = all_reduce_mean(torch.cat([g.reshape(-1) for g in grads]), self.process_group)
        for p, chunk in zip(self.parameters, flat.split([g.numel() for g in grads])):
            p.grad = chunk.view_as(p)

    def _tensor_minibatch_loss(self, data: TensorDictBase) -> _TensorMinibatchLoss | None:
        """The critic loss on plain tensors, when the critic is a plain :class:`TensorDictModule`.

        Per Adam step, ``loss_module.critic_loss(data[idx])`` indexes a TensorDict, builds another
        and runs the TensorDictModule's key handling: on a 64x64 critic that bookkeeping costs more
        than the network itself (a 20 epochs x 16 minibatch fit is 320 such steps). A plain
        TensorDictModule computes ``module(*inputs)`` and writes the value, so for it the same
        loss is computed from tensors gathered once per epoch: the same states, the same
        minibatches, the same numbers. Any other critic (sequences, custom modules) takes the
        TensorDict path.
        """
        loss = self.loss_module
        net = loss.critic_network
        if not plain_tensordict_module(net) or list(net.out_keys) != [loss.tensor_keys.value]:
            return None
        if has_forward_hooks(net):  # hooks on the TensorDictModule would be skipped
            return None
        inputs = [data.get(key) for key in net.in_keys]
        target = data.get(loss.tensor_keys.value_target)
        if any(not isinstance(x, torch.Tensor) for x in (*inputs, target)):
            return None
        return _TensorMinibatchLoss(net.module, inputs, target.detach(), loss.critic_coeff, loss.loss_critic_type)

    def _draw_orders(self, num_states: int) -> torch.Tensor:
        """The epochs' permutations ``[epochs, N]`` (on the CPU), drawn from this fit's generator
        with the same calls, in the same order, as the eager loop draws them."""
        return torch.stack([torch.randperm(num_states, generator=self.generator) for _ in range(self.epochs)])

    def _fit_fused(self, plan: _FusedPlan, num_states: int) -> torch.Tensor:
        """Every step in one op call. Returns the last epoch's minibatch losses."""
        orders = self._draw_orders(num_states).to(plan.inputs.device)
        return plan.run(self, orders).split(plan.per_epoch)[-1]

    def _fit_eager(self, data: TensorDictBase) -> torch.Tensor:
        """The epochs × minibatches Adam loop in PyTorch. Returns the last epoch's minibatch losses."""
        num_states = data.numel()
        minibatch_loss = self._tensor_minibatch_loss(data)
        for _ in range(self.epochs):
            perm = torch.randperm(num_states, generator=self.generator).to(data.device)
            last_epoch = []
            shuffled = minibatch_loss.shuffle(perm) if minibatch_loss is not None else None
            for start in range(0, num_states, self.minibatch_size):
                if shuffled is not None:
                    loss = shuffled(start, start + self.minibatch_size)
                else:
                    loss = self.loss_module.critic_loss(data[perm[start : start + self.minibatch_size]])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.process_group is not None:
                    self._average_gradients()
                if self.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
                self.optimizer.step()
                last_epoch.append(loss.detach())
        return torch.stack(last_epoch)

    def _valid_states(self, data: TensorDictBase) -> TensorDictBase:
        """The flattened batch without its padding: the states its mask marks valid, in order.

        Selecting them once, before the epochs, makes the fit exactly the fit on the valid states
        alone (the same permutations, minibatches and Adam steps); padding never reaches a mean.
        """
        key = _mask_key(self.loss_module)
        mask = data.get(key, None)
        if mask is None:
            return data
        if mask.dtype != torch.bool:
            raise TypeError(
                f"CriticFit: the mask {key!r} must be a boolean tensor (True on valid steps), got {mask.dtype}"
            )
        if mask.numel() != data.numel():
            raise ValueError(
                f"CriticFit: the mask {key!r} has shape {tuple(mask.shape)}, expected one value per state "
                f"of the batch ({data.numel()} states)"
            )
        mask = mask.reshape(-1)
        if self.process_group is not None:
            # ranks with different numbers of valid steps would run different numbers of Adam
            # steps and wait for each other in a collective: every rank learns whether any has padding
            padded = all_reduce_mean((~mask.all()).to(torch.float32).reshape(1), self.process_group)[0] > 0
            if padded:
                raise ValueError(
                    f"CriticFit: with a process_group every rank needs the same number of valid steps; the "
                    f"batch is padded (mask {key!r}); collect without split_trajs=True for a data-parallel fit"
                )
            return data
        if not mask.any():
            raise ValueError(f"CriticFit: the mask {key!r} marks no valid step in the batch")
        return data[mask]

    def _prepare(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The batch's valid states, flattened, once their value targets are checked."""
        key = self.loss_module.tensor_keys.value_target
        if tensordict.get(key, None) is None:
            raise KeyError(f"CriticFit: the batch has no value target {key!r}; run loss.value_estimator(batch) first")
        data = self._valid_states(tensordict.reshape(-1))
        target = data.get(key)
        if not target.is_floating_point():
            raise TypeError(f"CriticFit: the value target {key!r} must be a floating-point tensor, got {target.dtype}")
        finite = torch.isfinite(target).all()
        if self.process_group is not None:
            # every rank learns whether any rank's targets are bad, so all raise together
            finite = all_reduce_mean(finite.to(target.dtype).reshape(1), self.process_group)[0] == 1
        # an assert on the device: raises here on CPU, asynchronously on CUDA, never syncs the host;
        # a NaN target would otherwise turn every critic parameter into NaN
        torch._assert_async(finite, f"CriticFit: the value target {key!r} has non-finite values")
        return data

    def _plan(self, data: TensorDictBase) -> _FusedPlan | None:
        """The fused op's plan for this batch, or None for the eager loop (``fused=True`` raises
        instead, saying why; the default logs the reason once per reason)."""
        plan = None if self.fused is False else _FusedPlan.build(self, data)
        if isinstance(plan, str):
            if self.fused:
                raise ValueError(f"CriticFit(fused=True): the fused fit does not apply here: {plan}")
            if plan != self._eager_reason:  # said once per reason, not at every call
                self._eager_reason = plan
                _log.info("CriticFit fits the critic with the eager loop: %s", plan)
            plan = None
        return plan

    def _metrics(self, data: TensorDictBase, last_epoch: torch.Tensor) -> TensorDict:
        """The mean loss of the last epoch's minibatches and the critic's explained variance after the fit."""
        num_states = data.numel()
        net = self.loss_module.critic_network
        with torch.no_grad():
            target = data.get(self.loss_module.tensor_keys.value_target).reshape(num_states)
            value = net(data.select(*net.in_keys).copy())
            value = value.get(self.loss_module.tensor_keys.value).reshape(num_states)
            explained = 1 - (target - value).var(correction=0) / target.var(correction=0).clamp_min(1e-8)
        return TensorDict({"loss_critic": last_epoch.mean(), "explained_variance": explained}, batch_size=[])

    def _fit_sequences(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The fit of a recurrent critic: minibatches of whole ``[envs, time]`` rows (as many rows as
        fit in ``minibatch_size`` states, at least one), each run over its sequences in TorchRL's
        recurrent mode; a padded batch's mask leaves its padding out of every mean."""
        loss = self.loss_module
        sequences = loss._sequences(tensordict, "critic")
        key = loss.tensor_keys.value_target
        target = sequences.get(key)
        if not target.is_floating_point():
            raise TypeError(f"CriticFit: the value target {key!r} must be a floating-point tensor, got {target.dtype}")
        torch._assert_async(torch.isfinite(target).all(), f"CriticFit: the value target {key!r} has non-finite values")
        if self._eager_reason is None:
            self._eager_reason = "the critic is recurrent: minibatches of whole sequences"
            _log.info("CriticFit fits the critic with the eager loop: %s", self._eager_reason)
        mask = sequences.get(_mask_key(loss), None)
        rows, steps = sequences.batch_size
        per_minibatch = max(1, self.minibatch_size // steps)
        last_epoch = []
        with _frozen(self.shared_parameters):
            for _ in range(self.epochs):
                perm = torch.randperm(rows, generator=self.generator).to(sequences.device)
                last_epoch = []
                for start in range(0, rows, per_minibatch):
                    chosen = perm[start : start + per_minibatch]
                    if mask is not None and not bool(mask[chosen].any()):
                        continue  # rows of padding alone: nothing to fit
                    value_loss = loss.critic_loss(sequences[chosen])
                    self.optimizer.zero_grad(set_to_none=True)
                    value_loss.backward()
                    if self.process_group is not None:
                        self._average_gradients()
                    if self.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
                    self.optimizer.step()
                    last_epoch.append(value_loss.detach())
        with torch.no_grad(), loss._critic_mode():
            inputs = sequences.select(*loss.critic_network.in_keys, strict=False).copy()
            value = loss.critic_network(inputs).get(loss.tensor_keys.value).reshape(-1)
            target = target.reshape(-1)
            if mask is not None:
                value, target = value[mask.reshape(-1)], target[mask.reshape(-1)]
            explained = 1 - (target - value).var(correction=0) / target.var(correction=0).clamp_min(1e-8)
        return TensorDict(
            {"loss_critic": torch.stack(last_epoch).mean(), "explained_variance": explained}, batch_size=[]
        )

    def __call__(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Runs the fit; returns the mean critic loss of the last epoch and the explained variance after."""
        if self.loss_module._recurrent_critic:
            key = self.loss_module.tensor_keys.value_target
            if tensordict.get(key, None) is None:
                raise KeyError(
                    f"CriticFit: the batch has no value target {key!r}; run loss.value_estimator(batch) first"
                )
            return self._fit_sequences(tensordict)
        data = self._prepare(tensordict)
        plan = self._plan(data)
        with _frozen(self.shared_parameters):
            last_epoch = self._fit_eager(data) if plan is None else self._fit_fused(plan, data.numel())
        return self._metrics(data, last_epoch)


def fit_critics(fits: Sequence[CriticFit], batches: Sequence[TensorDictBase]) -> list[TensorDict]:
    """Fits M critics, each :class:`CriticFit` on its own batch, in one call of the fused op.

    A population (``trpo-torchrl train --seeds M``) has one critic per member, each with its own
    ``CriticFit``. When every member's fit takes the fused op (see ``CriticFit``'s ``fused``) and
    their fits agree — the same layer shapes, activation, dtype and device, Adam hyperparameters,
    ``critic_coeff``, minibatch size, epochs, Adam step count and number of valid states — the M
    fits run as one call of :func:`~trpo_torchrl.ops.mlp_fit_adam` with a member dimension: each
    member keeps its own parameters, Adam state and minibatch order (drawn from its own
    ``generator``, as its own call would draw it), and ends where ``fits[m](batches[m])`` would,
    up to rounding (bit for bit when M = 1). Otherwise each fit runs on its own batch, one after
    another, with one log line saying why.

    Args:
        fits: one ``CriticFit`` per member (distinct critics and optimisers).
        batches: member m's batch, holding its value targets, for ``fits[m]``.

    Returns:
        per member, what ``fits[m](batches[m])`` returns: ``loss_critic`` and ``explained_variance``.

    Examples:
        >>> metrics = fit_critics([fit_0, fit_1], [batch_0, batch_1])  # doctest: +SKIP
        >>> metrics[1]["loss_critic"]  # doctest: +SKIP
    """
    fits, batches = list(fits), list(batches)
    if not all(isinstance(fit, CriticFit) for fit in fits):
        raise TypeError(f"fit_critics: fits must be CriticFit objects, got {[type(f).__name__ for f in fits]}")
    if len(fits) != len(batches):
        raise ValueError(f"fit_critics: one batch per fit is needed, got {len(fits)} fits and {len(batches)} batches")
    if not fits:
        return []
    if any(fit.loss_module._recurrent_critic for fit in fits):
        # a recurrent critic is fitted over whole sequences by its own CriticFit (no fused op)
        _log.info("fit_critics fits the %d critics one after another: a critic is recurrent", len(fits))
        return [fit(batch) for fit, batch in zip(fits, batches)]
    # every batch is checked (and every fused=True honoured) before any critic moves
    data = [fit._prepare(batch) for fit, batch in zip(fits, batches)]
    plans = [fit._plan(d) for fit, d in zip(fits, data)]
    kind, reason = _members_disagree(fits, plans)
    if kind is None:
        with contextlib.ExitStack() as frozen:
            for fit in fits:
                frozen.enter_context(_frozen(fit.shared_parameters))
            last_epochs = _fit_members(fits, plans)
        return [fit._metrics(d, last) for fit, d, last in zip(fits, data, last_epochs)]
    if kind != fits[0]._members_reason:  # said once per kind of reason, not at every call
        fits[0]._members_reason = kind
        _log.info("fit_critics fits the %d critics one after another: %s", len(fits), reason)
    # each fit on its own, exactly as its own call (a fit may share state with another one)
    return [fit(batch) for fit, batch in zip(fits, batches)]


def _members_disagree(fits: list[CriticFit], plans: list) -> tuple[str | None, str | None]:
    """Why the members' fits cannot be one stacked op call, as (kind, reason); (None, None) when they can."""
    for m, plan in enumerate(plans):
        if plan is None:
            return "eager", f"member {m}'s critic does not take the fused op (CriticFit's own log line says why)"
    if len({id(fit) for fit in fits}) < len(fits) or len({id(fit.optimizer) for fit in fits}) < len(fits):
        return "shared fit", "a CriticFit or optimiser appears for more than one member"
    storages = [{_storage(p) for p in plan.params} - {None} for plan in plans]
    if sum(len(s) for s in storages) != len(set().union(*storages)):
        return "shared parameters", "the members' critics share parameters"
    first = plans[0]
    checks = (
        ("layer shapes", lambda p, f: [tuple(t.shape) for t in p.params]),
        ("activations", lambda p, f: p.activation),
        ("dtypes", lambda p, f: p.inputs.dtype),
        ("devices", lambda p, f: p.inputs.device),
        ("Adam hyperparameters, critic_coeff and minibatch sizes", lambda p, f: p.options),
        ("epochs", lambda p, f: f.epochs),
        ("Adam step counts", lambda p, f: p.step),
        ("numbers of valid states", lambda p, f: p.inputs.shape[0]),
    )
    for what, value in checks:
        for m in range(1, len(plans)):
            a, b = value(first, fits[0]), value(plans[m], fits[m])
            if a != b:
                return what, f"the members' {what} differ ({a} for member 0, {b} for member {m})"
    return None, None


def _fit_members(fits: list[CriticFit], plans: list[_FusedPlan]) -> list[torch.Tensor]:
    """The agreeing members' fits as one stacked op call; each member's parameters, Adam moments and
    step count are written back to its own tensors. Returns each member's last-epoch losses."""
    first = plans[0]
    states = [plan.adam_state(fit) for fit, plan in zip(fits, plans)]
    num_states = first.inputs.shape[0]
    orders = torch.stack([fit._draw_orders(num_states) for fit in fits]).to(first.inputs.device)
    params = [torch.stack([plan.params[i].detach() for plan in plans]) for i in range(len(first.params))]
    exp_avgs = [torch.stack([st[i]["exp_avg"] for st in states]) for i in range(len(first.params))]
    exp_avg_sqs = [torch.stack([st[i]["exp_avg_sq"] for st in states]) for i in range(len(first.params))]
    losses = mlp_fit_adam(
        params,
        exp_avgs,
        exp_avg_sqs,
        torch.stack([plan.inputs for plan in plans]),
        torch.stack([plan.targets for plan in plans]),
        orders,
        step=first.step,
        **first.options,
    )
    with torch.no_grad():
        for m, (plan, st) in enumerate(zip(plans, states)):
            torch._foreach_copy_(
                [p.detach() for p in plan.params] + [s["exp_avg"] for s in st] + [s["exp_avg_sq"] for s in st],
                [t[m] for t in params] + [t[m] for t in exp_avgs] + [t[m] for t in exp_avg_sqs],
            )
            plan.advance(st, orders.shape[1])
    return [member.split(first.per_epoch)[-1] for member in losses]


def _storage(p: torch.Tensor):
    """Where a tensor's memory lives (for parameters tied through views), or None when it has none."""
    storage = p.untyped_storage()
    return (p.device, storage.data_ptr()) if storage.nbytes() and p.device.type != "meta" else None


def _own_and_shared_parameters(loss: TRPOLoss) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The critic's trainable parameters, split into its own and those the actor also uses.

    The actor's parameters belong to the trust-region step: a critic fit that moved them (a shared
    torso, as in TorchRL's ``ActorValueOperator``) would move the policy outside its trust region
    with no check. They are left out of the fit, said once here; a critic with nothing of its own
    to fit is refused.
    """
    actor = list(loss.actor_network.parameters())
    actor_ids = {id(p) for p in actor}
    actor_storage = {_storage(p) for p in actor} - {None}
    own, shared, shared_names = [], [], []
    for name, p in loss.critic_network.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in actor_ids or _storage(p) in actor_storage:
            shared.append(p)
            shared_names.append(name)
        else:
            own.append(p)
    names = ", ".join(shared_names)
    if shared and not own:
        raise ValueError(
            f"CriticFit: every trainable parameter of the critic ({names}) is the actor's, which only the "
            "trust-region step may move; give the critic a head of its own (e.g. ActorValueOperator's "
            "value head) or freeze the shared ones"
        )
    if shared:
        warnings.warn(
            f"CriticFit: the critic shares {len(shared)} parameters with the actor ({names}); the critic fit "
            "leaves them to the actor's trust-region step and fits only the critic's own parameters",
            UserWarning,
            stacklevel=3,
        )
    return own, shared


@contextlib.contextmanager
def _frozen(parameters: list[torch.nn.Parameter]):
    """``requires_grad`` off for ``parameters`` while the fit runs: no gradient reaches them (and
    none is left in their ``.grad``), and the backward pass stops at them."""
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in parameters:
            p.requires_grad_(True)


def _mask_key(loss: TRPOLoss):
    """The batch entry marking valid (unpadded) steps: the loss's ``mask`` key when it has one,
    else TorchRL's ``split_trajs`` mask."""
    return getattr(loss.tensor_keys, "mask", ("collector", "mask"))


class _TensorMinibatchLoss:
    """``critic_coeff * mean(distance(target, module(*inputs)))`` on minibatches of plain tensors."""

    def __init__(self, module, inputs, target, coeff, loss_type):
        self.module, self.inputs, self.target = module, inputs, target
        self.coeff, self.loss_type = coeff, loss_type

    def shuffle(self, perm: torch.Tensor) -> _TensorMinibatchLoss:
        """The same loss over the states reordered by ``perm`` (one gather per epoch; the
        minibatches are then contiguous slices, i.e. views)."""
        return _TensorMinibatchLoss(
            self.module, [x[perm] for x in self.inputs], self.target[perm], self.coeff, self.loss_type
        )

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        value = self.module(*[x[start:stop] for x in self.inputs])
        return self.coeff * distance_loss(self.target[start:stop], value, loss_function=self.loss_type).mean()


class _FusedPlan:
    """What one call of :func:`~trpo_torchrl.ops.mlp_fit_adam` needs, checked against the critic,
    the loss and the optimiser; :meth:`build` returns the reason as a string when it does not apply.

    ``options`` holds the op's keyword arguments (minibatch size, activation, coeff, lr, betas,
    eps) and ``step`` the Adam steps taken so far: what members must share to be fitted together."""

    def __init__(self, inputs, targets, params, activation, per_epoch, options, step):
        self.inputs, self.targets, self.params = inputs, targets, params
        self.activation, self.per_epoch = activation, per_epoch
        self.options, self.step = options, step

    @classmethod
    def build(cls, fit: CriticFit, data: TensorDictBase) -> _FusedPlan | str:
        loss = fit.loss_module
        net = loss.critic_network
        if fit.process_group is not None or fit.max_grad_norm is not None:
            return "it does not average gradients over a process group or clip them"
        if loss.loss_critic_type != "l2":
            return f"it fits the l2 loss, not {loss.loss_critic_type!r}"
        plain = plain_tensordict_module(net)
        if not plain:
            return f"the critic must run TensorDictModule's own forward: {plain.reason}"
        if list(net.out_keys) != [loss.tensor_keys.value] or len(net.in_keys) != 1:
            return (
                f"the critic must read one input and write the value {loss.tensor_keys.value!r}; "
                f"it reads {list(net.in_keys)} and writes {list(net.out_keys)}"
            )
        if has_forward_hooks(net):
            return "the critic has forward hooks, which the fused op would skip"
        mlp = describe_mlp(net.module)
        if not mlp:
            return (
                "it fits parameter-free preprocessing, then Linear layers with biases and hidden "
                f"activations all Tanh or all ReLU; this critic's network is not of that form: {mlp.reason}"
            )
        kinds = set(mlp.activations)
        if len(kinds) > 1:
            return f"the hidden activations must all be Tanh or all ReLU, got {sorted(kinds)}"
        prefix = mlp.prefix
        params = list(mlp.parameters)
        if [id(p) for p in params] != [id(p) for p in fit.parameters]:
            return "the critic's trainable parameters must be exactly its Linear layers'"
        opt = fit.optimizer
        group = opt.param_groups[0] if len(opt.param_groups) == 1 else None
        if (
            type(opt) is not torch.optim.Adam
            or group is None
            or group["amsgrad"]
            or group["weight_decay"] != 0
            or group["maximize"]
            or group["capturable"]
            or group["differentiable"]
            or group["fused"]
            or isinstance(group["lr"], torch.Tensor)
        ):
            return "the optimiser must be plain torch.optim.Adam (one group, no weight decay, amsgrad, fused or capturable)"
        states = [opt.state.get(p, {}) for p in params]
        if any(states) and not all("step" in st and "exp_avg" in st and "exp_avg_sq" in st for st in states):
            return "the optimiser state is incomplete"
        inputs = data.get(net.in_keys[0])
        target = data.get(loss.tensor_keys.value_target)
        if not isinstance(inputs, torch.Tensor) or not isinstance(target, torch.Tensor) or inputs.dim() != 2:
            return "the critic's input must be a [N, features] tensor"
        if target.numel() != inputs.shape[0]:
            return f"the value target must hold one value per state, got shape {tuple(target.shape)}"
        with torch.no_grad():
            for m in prefix:
                inputs = m(inputs)
        inputs = inputs.contiguous()
        if inputs.dtype not in (torch.float32, torch.float64):
            return f"it fits float32 or float64 networks, not {inputs.dtype}"
        if any(p.dtype != inputs.dtype or p.device != inputs.device or not p.is_contiguous() for p in params):
            return "parameters and inputs must share dtype and device, and be contiguous"
        activation = mlp.activations[0] if mlp.activations else "tanh"  # one layer: no activation to run
        per_epoch = -(-inputs.shape[0] // fit.minibatch_size)
        options = dict(
            minibatch_size=fit.minibatch_size,
            activation=activation,
            coeff=float(loss.critic_coeff),
            lr=float(group["lr"]),
            betas=tuple(float(b) for b in group["betas"]),
            eps=float(group["eps"]),
        )
        step = int(states[0]["step"]) if states[0] else 0
        target = target.detach().reshape(-1).to(inputs.dtype)
        return cls(inputs, target, params, activation, per_epoch, options, step)

    def adam_state(self, fit: CriticFit) -> list[dict]:
        """The optimiser's state of each parameter, created as torch.optim.Adam creates it lazily
        when the fit has none yet, so either path can continue from the other."""
        opt = fit.optimizer
        for p in self.params:
            if not opt.state.get(p):
                opt.state[p] = {
                    "step": torch.tensor(0.0, dtype=torch.float32),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        return [opt.state[p] for p in self.params]

    def advance(self, states: list[dict], epochs: int) -> None:
        """Counts the fit's Adam steps in the optimiser's state, as torch.optim.Adam would."""
        for st in states:
            st["step"] += epochs * self.per_epoch

    def run(self, fit: CriticFit, orders: torch.Tensor) -> torch.Tensor:
        """The whole fit as one op call, in place on the parameters and the optimiser's state."""
        states = self.adam_state(fit)
        losses = mlp_fit_adam(
            [p.detach() for p in self.params],
            [st["exp_avg"] for st in states],
            [st["exp_avg_sq"] for st in states],
            self.inputs,
            self.targets,
            orders,
            step=self.step,
            **self.options,
        )
        self.advance(states, orders.shape[0])
        return losses
