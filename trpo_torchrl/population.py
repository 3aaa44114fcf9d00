"""PopulationTrustRegionUpdate: many independent TRPO actor steps done as one batched step.

A population is M copies of one policy architecture whose parameters are stacked along a leading
member dimension (TorchRL's ensemble idiom: ``TensorDict.from_modules(*actors)``, the forward pass
vmapped over the members). Each member keeps its own trust region — its own data, surrogate
gradient, CG system, step size, line search and acceptance — but the work is shared: the Fisher of a
population is block diagonal, so one jvp/vjp through the member-vmapped policy gives every ``F_m v_m``
at once, and the M systems are the B axis of a single :func:`~trpo_torchrl.ops.conjugate_gradient`
call. Acceptance is a per-member mask: a member whose step is rejected keeps its exact bits while the
others move, and nothing reads a tensor back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase

from .backends import PolicyBackends
from .distributed import global_mean_std, resolve_process_group
from .distributions import resolve_fvp
from .engine import TrustRegionSettings, trust_region_step
from .loss import PolicyBatch, TRPOLoss
from .validation import check_generator, check_number

__all__ = ["PopulationTrustRegionUpdate", "population_policy"]


def population_policy(actor, params: TensorDictBase):
    """Returns ``td [M, ...] -> td [M, ...]``: ``actor`` run with member m's parameters on ``td[m]``.

    ``actor`` (a ProbabilisticActor) only gives the structure, its own parameter values are not used;
    ``params`` are the stacked member parameters (``TensorDict.from_modules(*actors)``). The network is
    vmapped over the members; the distribution is then built and sampled on the stacked ``[M, ...]``
    parameters outside the vmap (torch.distributions draws its noise into fresh unbatched tensors,
    which vmap cannot give different randomness per member), so every member gets its own draws, as
    M separate actors would. Use it under ``torch.no_grad()`` to collect.
    """

    def dist_params(p: TensorDictBase, td: TensorDictBase) -> TensorDictBase:
        with p.to_module(actor):
            return actor.get_dist_params(td)

    vmapped = torch.vmap(dist_params, (0, 0))

    def policy(td: TensorDictBase) -> TensorDictBase:
        if td.batch_size[:1] != params.batch_size[:1]:
            raise ValueError(
                f"population_policy: the input's leading (member) dimension is {tuple(td.batch_size[:1])}, "
                f"the population has {params.batch_size[0]} members"
            )
        # the sampling module has no parameters: one call draws the actions of every member
        return actor._last_module(vmapped(params, td))

    return policy


class PopulationTrustRegionUpdate:
    """The TRPO actor step for a population of M policies that share one architecture.

    ``loss_module``'s actor gives the structure and the policy evaluation (its own parameter values are
    never read); ``params`` holds the M members' parameters stacked on a leading dimension, and is
    updated in place. A call takes a batch whose leading dimension is the member (``[M, ...]``: each
    member its own data) and, for every member at once, runs the steps of
    :class:`~trpo_torchrl.TrustRegionUpdate`:

    1. the objective per member ``[M]`` and its gradient ``g [M, n]`` (one backward pass: member m's
       objective depends only on θ_m);
    2. the damped Fisher-vector product on ``[M, n]``: block diagonal, one jvp + one vjp through the
       member-vmapped policy per product;
    3. M CG systems solved together (``conjugate_gradient`` with B = M, per-system masks);
    4. per-member step sizes ``sqrt(2 δ_m / x_mᵀ F_m x_m)`` and expected improvements;
    5. a line search over ``[K, M]`` candidates in one vmap; each member takes its own first acceptable
       candidate, or keeps its parameters bit for bit.

    With M = 1 this is the same computation as ``TrustRegionUpdate``, and member m of a population gives
    the parameters a ``TrustRegionUpdate`` on member m alone would (up to floating-point rounding).
    Advantages are normalised per member. Every metric has shape ``[M]``.

    Args:
        loss_module (TRPOLoss): the loss whose actor is the members' architecture.
        params (TensorDictBase): stacked member parameters, batch size ``[M]``, with the actor's
            parameter names (e.g. ``TensorDict.from_modules(*actors, as_module=True)``). Buffers of the
            actor found there too (running statistics of an observation normaliser, say) are taken
            per member; the ones missing are shared from ``loss_module``'s actor.

    Keyword Args:
        max_kl (float or sequence of M floats): the trust-region radius, one for all members or one
            per member (a sweep over δ in one update). Defaults to ``0.01``.
        damping, cg_iters, backtrack_iters, backtrack_coeff, accept_ratio, fvp, fvp_subsample,
        generator, fast_mlp: as for :class:`~trpo_torchrl.TrustRegionUpdate`. With ``fvp_subsample < 1``
            every member draws its own subset of states. With ``fast_mlp`` (the default) a plain MLP
            policy's gradient, products and candidates are batched matrix products over the members
            (:mod:`trpo_torchrl.backends.mlp`) instead of member-vmapped ``torch.func`` transforms.

    Examples:
        >>> params = TensorDict.from_modules(*actors, as_module=True)  # doctest: +SKIP
        >>> update = PopulationTrustRegionUpdate(TRPOLoss(actors[0], critic), params, max_kl=0.01)
        >>> metrics = update(batch)  # batch: [M, ...], with advantages
        >>> metrics["step_accepted"]  # [M]
    """

    def __init__(
        self,
        loss_module: TRPOLoss,
        params: TensorDictBase,
        *,
        max_kl: float | Sequence[float] = 0.01,
        damping: float = 0.1,
        cg_iters: int = 10,
        backtrack_iters: int = 10,
        backtrack_coeff: float = 0.8,
        accept_ratio: float = 0.0,
        fvp: str | None = None,
        fvp_subsample: float = 1.0,
        generator: torch.Generator | None = None,
        fast_mlp: bool = True,
        process_group=None,
    ):
        where = "PopulationTrustRegionUpdate"
        if not isinstance(loss_module, TRPOLoss):
            raise TypeError(f"{where}: loss_module must be a TRPOLoss, got {type(loss_module).__name__}")
        if loss_module._recurrent_actor:
            raise ValueError(
                f"{where}: the actor is recurrent ({loss_module._recurrent_actor[0][0]!r}); a population step "
                "takes feed-forward policies: run a TrustRegionUpdate per member"
            )
        if not isinstance(params, TensorDictBase) or params.batch_dims != 1:
            shape = tuple(params.batch_size) if isinstance(params, TensorDictBase) else type(params).__name__
            raise ValueError(
                f"{where}: params must be a TensorDict of stacked member parameters with batch size [M] "
                f"(e.g. TensorDict.from_modules(*actors)), got {shape}"
            )
        num_members = params.batch_size[0]
        if isinstance(max_kl, torch.Tensor):
            max_kl = max_kl.tolist()
        per_member = isinstance(max_kl, Sequence) and not isinstance(max_kl, str)
        radii = list(max_kl) if per_member else [max_kl] * num_members
        if len(radii) != num_members:
            raise ValueError(f"{where}: max_kl has {len(radii)} values for {num_members} members")
        radii = [check_number(where, "max_kl", radius, low=0, low_open=True) for radius in radii]
        # the shared options, by the single step's rule; the radii are per member
        # the product the actor's distribution takes, decided now (refusals name the fix)
        fvp, automatic_fvp = resolve_fvp(where, loss_module.actor_network, fvp, loss_module.kl_estimate)
        self.settings = TrustRegionSettings.validated(
            where,
            max_kl=min(radii),
            damping=damping,
            cg_iters=cg_iters,
            backtrack_iters=backtrack_iters,
            backtrack_coeff=backtrack_coeff,
            accept_ratio=accept_ratio,
            fvp=fvp,
            fvp_subsample=fvp_subsample,
        )
        self.generator = check_generator(where, "generator", generator)
        self.loss_module = loss_module
        self.params = params
        self.num_members = num_members
        self.max_kl = radii
        self.process_group = resolve_process_group(process_group)
        self.backends = PolicyBackends(loss_module, self.settings, generator=self.generator, fast_mlp=fast_mlp)
        self.backends.functional.automatic_fvp = automatic_fvp
        self.layout = self.backends.layout
        self._leaves = []
        for name, shape in zip(self.layout.names, self.layout.shapes):
            leaf = params.get(tuple(name.split(".")), None)
            if leaf is None:
                raise KeyError(f"{where}: params has no entry for the actor's parameter {name!r}")
            if tuple(leaf.shape) != (num_members, *shape):
                raise ValueError(
                    f"{where}: params[{name!r}] has shape {tuple(leaf.shape)}, expected "
                    f"{(num_members, *tuple(shape))} (members first, then the actor's parameter shape)"
                )
            self._leaves.append(leaf)
        if len({(t.dtype, t.device) for t in self._leaves}) != 1:
            raise ValueError(f"{where}: every member parameter must share one dtype and device")
        # buffers stacked with the parameters (TensorDict.from_modules takes both) are each member's
        # own state, e.g. its observation-normaliser statistics: they go into its evaluations
        self._buffers = {}
        for name, buffer in loss_module.actor_network.named_buffers():
            leaf = params.get(tuple(name.split(".")), None)
            if leaf is None:
                continue
            if tuple(leaf.shape) != (num_members, *buffer.shape):
                raise ValueError(
                    f"{where}: params[{name!r}] (a buffer) has shape {tuple(leaf.shape)}, expected "
                    f"{(num_members, *tuple(buffer.shape))}"
                )
            self._buffers[name] = leaf

    # ---------------------------------------------------------------- flat parameter views
    @property
    def num_parameters(self) -> int:
        """n, the length of one member's flat parameter vector."""
        return self.layout.num_parameters

    def flat_parameters(self) -> torch.Tensor:
        """The members' parameters as ``[M, n]`` (a detached copy)."""
        return torch.cat([t.detach().reshape(self.num_members, -1) for t in self._leaves], dim=1)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., n]`` → name → ``[..., *shape]`` views (the single-member layout, leading dims kept)."""
        return self.layout.unflatten(theta)

    @torch.no_grad()
    def write_parameters(self, theta: torch.Tensor) -> None:
        """Copies ``theta [M, n]`` into ``params`` in place (every holder of the stack sees it)."""
        for leaf, chunk in zip(self._leaves, theta.split(self.layout.numels, dim=-1)):
            leaf.copy_(chunk.reshape(leaf.shape))

    # ---------------------------------------------------------------- the batch
    def population_batch(self, tensordict: TensorDictBase) -> PolicyBatch:
        """The members' batches as one :class:`~trpo_torchrl.loss.PolicyBatch` with ``[M, N]`` fields.

        The checks are the loss's own (run once on all members' states); advantages, when present, are
        standardised per member, as M separate updates would. When the batch has no advantage, the
        loss's value estimator computes it on the ``[M, ...]`` batch (one critic for every member; with
        a critic per member, compute the advantages before the call).
        """
        where = "PopulationTrustRegionUpdate"
        if not isinstance(tensordict, TensorDictBase):
            raise TypeError(f"{where}: the batch must be a TensorDict, got {type(tensordict).__name__}")
        size = tuple(tensordict.batch_size)
        if len(size) < 2 or size[0] != self.num_members:
            raise ValueError(
                f"{where}: the batch must be [M, ...] with the member first and at least one more "
                f"dimension; got batch size {size} for a population of M={self.num_members}"
            )
        loss = self.loss_module
        if tensordict.get(loss.tensor_keys.mask, None) is not None:
            # the members' valid states would differ in number, and the step is batched over [M, N]
            raise ValueError(
                f"{where}: the batch carries a mask {loss.tensor_keys.mask!r} (a padded batch); the members "
                "need the same number of states: collect without split_trajs, or run a TrustRegionUpdate "
                "per member, which takes masked batches"
            )
        key = loss.tensor_keys.advantage
        if tensordict.get(key, None) is None:
            tensordict = tensordict.clone(False)
            loss._estimate_advantage(tensordict)  # with the loss's time-order check
        # the loss's checks, on every state (and on every rank together)
        flat = loss.policy_batch(tensordict.reshape(-1), process_group=self.process_group)
        members, per_member = self.num_members, flat.advantage.shape[0] // self.num_members

        def split(value):
            return value.reshape(members, per_member, *value.shape[1:])

        advantage = tensordict.get(key).detach().reshape(members, per_member)
        world = 1 if self.process_group is None else torch.distributed.get_world_size(self.process_group)
        if loss.normalize_advantage and per_member * world > 1:
            mean, std = global_mean_std(advantage, self.process_group, dim=1)
            advantage = (advantage - mean) / std.clamp_min(1e-8)
        inputs = split(flat.inputs)
        # `data` is for the critic, which this step never reads: an empty stand-in keeps every entry
        # of the batch out of the vmapped evaluations below
        return PolicyBatch(
            inputs,
            split(flat.action),
            split(flat.old_log_prob),
            split(flat.old_params),
            advantage,
            TensorDict({}, batch_size=inputs.batch_size, device=inputs.device),
        )

    # ---------------------------------------------------------------- the step
    def _member_buffers(self) -> dict[str, torch.Tensor]:
        return {name: leaf.detach() for name, leaf in self._buffers.items()}

    def __call__(self, tensordict: TensorDictBase) -> TensorDictBase:
        """One actor step for every member, in place on ``params``; returns ``[M]``-shaped metrics."""
        batch = self.population_batch(tensordict)
        theta_new, metrics = self.propose(batch, self.flat_parameters())
        self.write_parameters(theta_new)
        return metrics

    def evaluate(self, batch: PolicyBatch, theta_old: torch.Tensor):
        """The backend's evaluation of the members' ``batch`` around ``theta_old [M, n]``."""
        return self.backends.evaluate(batch, theta_old, self._member_buffers())

    def fisher_vector_product(self, batch: PolicyBatch, theta_old: torch.Tensor):
        """``v [M, n] ↦ (F_m + damping·I) v_m`` for every member at once (F is block diagonal), over
        this process's states of each member (or a subsample of them)."""
        return self.evaluate(batch, theta_old).fisher_vector_product()

    def propose(self, batch: PolicyBatch, theta_old: torch.Tensor) -> tuple[torch.Tensor, TensorDictBase]:
        """New member parameters ``[M, n]`` (a rejected member's row is its θ_old) and the metrics.

        A pure function of ``theta_old``, as :meth:`TrustRegionUpdate.propose` is.
        """
        max_kl = torch.tensor(self.max_kl, dtype=theta_old.dtype, device=theta_old.device)
        evaluation = self.evaluate(batch, theta_old)
        return trust_region_step(evaluation, theta_old, self.settings, max_kl=max_kl, process_group=self.process_group)
