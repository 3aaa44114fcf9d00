"""CriticFit: regress a TRPOLoss's critic on the batch's λ-returns, epochs × minibatches with Adam."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torchrl.objectives.utils import distance_loss

from .distributed import all_reduce_mean, resolve_process_group
from .loss import TRPOLoss

__all__ = ["CriticFit"]


class CriticFit:
    """Fits the critic of ``loss_module`` to the value targets already in a batch.

    TRPO constrains only the actor; the critic is plain regression on the λ-returns the value
    estimator wrote. The Adam state lives in this object, so it carries over from one iteration to
    the next like in any training loop.

    Args:
        loss_module (TRPOLoss): its ``critic_loss`` is minimised (``critic_coeff`` scales it).

    Keyword Args:
        lr (float): Adam's learning rate. Defaults to ``1e-3``.
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

    Examples:
        >>> fit = CriticFit(loss, lr=1e-3, epochs=5, minibatch_size=64)  # doctest: +SKIP
        >>> fit(batch)["loss_critic"]  # doctest: +SKIP
    """

    def __init__(
        self,
        loss_module: TRPOLoss,
        *,
        lr: float = 1e-3,
        epochs: int = 5,
        minibatch_size: int = 64,
        max_grad_norm: float | None = None,
        generator: torch.Generator | None = None,
        process_group=None,
    ):
        if not isinstance(loss_module, TRPOLoss):
            raise TypeError(f"CriticFit: loss_module must be a TRPOLoss, got {type(loss_module).__name__}")
        if not (isinstance(epochs, int) and epochs >= 1):
            raise ValueError(f"CriticFit: epochs must be an int >= 1, got {epochs!r}")
        if not (isinstance(minibatch_size, int) and minibatch_size >= 1):
            raise ValueError(f"CriticFit: minibatch_size must be an int >= 1, got {minibatch_size!r}")
        self.loss_module = loss_module
        self.epochs = epochs
        self.minibatch_size = minibatch_size
        self.max_grad_norm = max_grad_norm
        self.generator = generator
        self.process_group = resolve_process_group(process_group)
        self.parameters = [p for p in loss_module.critic_network.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=lr)

    def _average_gradients(self) -> None:
        # one collective for all the critic's gradients: flatten, average, copy back
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        flat = all_reduce_mean(torch.cat([g.reshape(-1) for g in grads]), self.process_group)
        for p, chunk in zip(self.parameters, flat.split([g.numel() for g in grads])):
            p.grad = chunk.view_as(p)

    def _tensor_minibatch_loss(self, data: TensorDictBase) -> "_TensorMinibatchLoss | None":
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
        if type(net) is not TensorDictModule or list(net.out_keys) != [loss.tensor_keys.value]:
            return None
        inputs = [data.get(key) for key in net.in_keys]
        target = data.get(loss.tensor_keys.value_target)
        if any(not isinstance(x, torch.Tensor) for x in (*inputs, target)):
            return None
        return _TensorMinibatchLoss(net.module, inputs, target.detach(), loss.critic_coeff, loss.loss_critic_type)

    def __call__(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Runs the fit; returns the mean critic loss of the last epoch and the explained variance after."""
        key = self.loss_module.tensor_keys.value_target
        if tensordict.get(key, None) is None:
            raise KeyError(
                f"CriticFit: the batch has no value target {key!r}; run loss.value_estimator(batch) first"
            )
        data = tensordict.reshape(-1)
        num_states = data.numel()
        minibatch_loss = self._tensor_minibatch_loss(data)
        last_epoch = []
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
        with torch.no_grad():
            target = data.get(key).reshape(num_states)
            value = self.loss_module.critic_network(data.select(*self.loss_module.critic_network.in_keys).copy())
            value = value.get(self.loss_module.tensor_keys.value).reshape(num_states)
            explained = 1 - (target - value).var(correction=0) / target.var(correction=0).clamp_min(1e-8)
        return TensorDict(
            {"loss_critic": torch.stack(last_epoch).mean(), "explained_variance": explained},
            batch_size=[],
        )


class _TensorMinibatchLoss:
    """``critic_coeff * mean(distance(target, module(*inputs)))`` on minibatches of plain tensors."""

    def __init__(self, module, inputs, target, coeff, loss_type):
        self.module, self.inputs, self.target = module, inputs, target
        self.coeff, self.loss_type = coeff, loss_type

    def shuffle(self, perm: torch.Tensor) -> "_TensorMinibatchLoss":
        """The same loss over the states reordered by ``perm`` (one gather per epoch; the
        minibatches are then contiguous slices, i.e. views)."""
        return _TensorMinibatchLoss(
            self.module, [x[perm] for x in self.inputs], self.target[perm], self.coeff, self.loss_type
        )

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        value = self.module(*[x[start:stop] for x in self.inputs])
        return self.coeff * distance_loss(self.target[start:stop], value, loss_function=self.loss_type).mean()
