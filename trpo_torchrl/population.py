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

from .fisher import gauss_newton_fisher_vector_product, kl_fisher_vector_product, subsample_indices
from .loss import PolicyBatch, TRPOLoss, distribution_family, distribution_parameters
from .ops import conjugate_gradient
from .update import TrustRegionUpdate, step_metrics

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
            (:mod:`trpo_torchrl.mlp_policy`) instead of member-vmapped ``torch.func`` transforms.

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
        fvp: str = "gauss_newton",
        fvp_subsample: float = 1.0,
        generator: torch.Generator | None = None,
        fast_mlp: bool = True,
    ):
        where = "PopulationTrustRegionUpdate"
        if not isinstance(params, TensorDictBase) or params.batch_dims != 1:
            shape = tuple(params.batch_size) if isinstance(params, TensorDictBase) else type(params).__name__
            raise ValueError(
                f"{where}: params must be a TensorDict of stacked member parameters with batch size [M] "
                f"(e.g. TensorDict.from_modules(*actors)), got {shape}"
            )
        num_members = params.batch_size[0]
        if isinstance(max_kl, (int, float)):
            radii = [float(max_kl)] * num_members
        else:
            radii = [float(r) for r in max_kl]
            if len(radii) != num_members:
                raise ValueError(f"{where}: max_kl has {len(radii)} values for {num_members} members")
        if not all(r > 0 and r != float("inf") for r in radii):
            raise ValueError(f"{where}: max_kl must be > 0 and finite for every member, got {radii}")
        # the single-member step validates the shared options and supplies the parameter layout
        self.single = TrustRegionUpdate(
            loss_module,
            max_kl=min(radii),
            damping=damping,
            cg_iters=cg_iters,
            backtrack_iters=backtrack_iters,
            backtrack_coeff=backtrack_coeff,
            accept_ratio=accept_ratio,
            fvp=fvp,
            fvp_subsample=fvp_subsample,
            generator=generator,
            fast_mlp=fast_mlp,
        )
        self.loss_module = loss_module
        self.params = params
        self.num_members = num_members
        self.max_kl = radii
        self._leaves = []
        for name, shape in zip(self.single._names, self.single._shapes):
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
        return self.single.num_parameters

    def flat_parameters(self) -> torch.Tensor:
        """The members' parameters as ``[M, n]`` (a detached copy)."""
        return torch.cat([t.detach().reshape(self.num_members, -1) for t in self._leaves], dim=1)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., n]`` → name → ``[..., *shape]`` views (the single-member layout, leading dims kept)."""
        return self.single.unflatten(theta)

    @torch.no_grad()
    def write_parameters(self, theta: torch.Tensor) -> None:
        """Copies ``theta [M, n]`` into ``params`` in place (every holder of the stack sees it)."""
        for leaf, chunk in zip(self._leaves, theta.split(self.single._numels, dim=-1)):
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
        key = loss.tensor_keys.advantage
        if tensordict.get(key, None) is None:
            tensordict = tensordict.clone(False)
            with torch.no_grad():
                loss.value_estimator(tensordict)
        flat = loss.policy_batch(tensordict.reshape(-1))  # the loss's checks, on every state
        members, per_member = self.num_members, flat.advantage.shape[0] // self.num_members

        def split(value):
            return value.reshape(members, per_member, *value.shape[1:])

        advantage = tensordict.get(key).detach().reshape(members, per_member)
        if loss.normalize_advantage and per_member > 1:
            mean = advantage.mean(dim=1, keepdim=True)
            advantage = (advantage - mean) / advantage.std(dim=1, keepdim=True).clamp_min(1e-8)
        inputs = split(flat.inputs)
        # `data` is for the critic, which this step never reads: an empty stand-in keeps every entry
        # of the batch out of the vmapped evaluations below
        return PolicyBatch(
            inputs, split(flat.action), split(flat.old_log_prob), split(flat.old_params), advantage,
            TensorDict({}, batch_size=inputs.batch_size, device=inputs.device),
        )

    # ---------------------------------------------------------------- the policy, per member
    def _member_buffers(self) -> dict[str, torch.Tensor]:
        return {name: leaf.detach() for name, leaf in self._buffers.items()}

    def _member_tensors(self, theta: torch.Tensor, buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One member's named tensors for the functional call: its parameters θ_m and its buffers."""
        return {**self.unflatten(theta), **buffers}

    def _member_terms(self, batch: PolicyBatch, theta: torch.Tensor):
        """Objective, surrogate and KL ``[M]`` for ``theta [M, n]`` on the members' own states."""

        def one(th, b, bufs):
            terms = self.loss_module.policy_terms(b, self._member_tensors(th, bufs))
            return terms.objective, terms.surrogate, terms.kl

        return torch.vmap(one)(theta, batch, self._member_buffers())

    def _first_member_dist(self, batch: PolicyBatch, theta: torch.Tensor):
        """The first member's policy on its states: what the family and the KL divisor are read from."""
        first = PolicyBatch(*(field[0] for field in batch))
        buffers = {name: value[0] for name, value in self._member_buffers().items()}
        with torch.no_grad():
            return self.loss_module.policy_dist(first, self._member_tensors(theta[0], buffers))

    def _plan_for(self, batch: PolicyBatch):
        """The single step's plain-MLP plan, when it applies to the members' batch."""
        plan = self.single.plan
        return plan if plan is not None and plan.accepts(batch.inputs, members=True) else None

    # members per line-search chunk: K · members · N rows of activations at most (~4 MB per 64-wide
    # layer in float32); measured on a 2-core CPU, 16 members × 256 states, K = 10: 24 ms in one
    # piece against ~10 ms in chunks of 1–6 members — the whole [K, M, N, 64] leaves the cache
    CANDIDATE_ROWS = 16_384
    # on a GPU the chunks only add kernel launches (H100, 64 members × 2048 states: one chunk per
    # member, 64 of them); 2**22 rows (1 GiB per 64-wide float32 layer) keeps that case in one piece
    CANDIDATE_ROWS_CUDA = 1 << 22

    def _plan_candidates(self, plan, batch: PolicyBatch, features: torch.Tensor, candidates: torch.Tensor):
        """Objective, surrogate and KL ``[K, M]`` of the candidates ``[K, M, n]`` through the plan,
        a chunk of members at a time."""
        num_candidates, members = candidates.shape[:2]
        rows = self.CANDIDATE_ROWS_CUDA if features.is_cuda else self.CANDIDATE_ROWS
        chunk = max(1, rows // (num_candidates * features.shape[1]))
        values = [
            plan.candidate_terms(
                self.loss_module, PolicyBatch(*(field[part] for field in batch)), features[part], candidates[:, part], 2
            )
            for part in (slice(start, start + chunk) for start in range(0, members, chunk))
        ]
        return torch.cat(values, dim=-1).unbind()

    def fisher_vector_product(self, batch: PolicyBatch, theta_old: torch.Tensor, linearization=None):
        """``v [M, n] ↦ (F_m + damping·I) v_m`` for every member at once (F is block diagonal).
        ``linearization``: the plain-MLP plan's forward pass at θ_old over the whole batch, when the
        caller has it."""
        single = self.single
        members, n = theta_old.shape
        if single.fvp_subsample < 1.0:
            num_states = batch.advantage.shape[1]
            idx = torch.stack(
                [subsample_indices(num_states, single.fvp_subsample, generator=single.generator) for _ in range(members)]
            ).to(theta_old.device)
            rows = torch.arange(members, device=idx.device)[:, None]
            batch = PolicyBatch(*(field[rows, idx] for field in batch))
            linearization = None
        num_states = batch.advantage.shape[1]
        loss = self.loss_module
        plan = self._plan_for(batch) if single.fvp == "gauss_newton" else None
        if plan is not None:
            if linearization is None:
                linearization = plan.linearize(plan.member_features(batch.inputs, self._member_buffers()), theta_old)
            # the divisor reads the distribution's event shape: the linearization's outputs give it
            # without another forward pass
            dist = plan.distribution(linearization.outputs)
            return linearization.fisher_vector_product(kl_scale=1.0 / loss.kl_divisor(dist), damping=single.damping)

        buffers = self._member_buffers()

        # the population's θ seen as one long vector [M·n]: every tested single-vector product of
        # trpo_torchrl.fisher then applies, and its Jacobian is block diagonal by construction
        def per_member(fn, data):
            return lambda flat: torch.vmap(fn)(flat.view(members, n), data, buffers)

        if single.fvp == "gauss_newton":
            dist = self._first_member_dist(batch, theta_old)
            family = distribution_family(dist)
            if family is None:
                raise TypeError(
                    "PopulationTrustRegionUpdate: fvp='gauss_newton' knows the Fisher of Gaussian and "
                    "categorical policies only; use fvp='kl_hessian'"
                )

            def params_of(th, inputs, bufs):
                # the policy reads only the inputs: vmapping those alone keeps each product lean
                b = PolicyBatch(inputs, None, None, None, None, None)
                return distribution_parameters(loss.policy_dist(b, self._member_tensors(th, bufs)), num_states)

            def dist_fn(flat):
                out = per_member(params_of, batch.inputs)(flat)
                # [M, N, d] → [M·N, d]: the product averages over all M·N states, so it is F / M
                if isinstance(out, tuple):
                    return tuple(o.reshape(members * num_states, -1) for o in out)
                return out.reshape(members * num_states, -1)

            # × M to undo that, and / d when the KL is averaged over d action dimensions
            product = gauss_newton_fisher_vector_product(
                dist_fn, theta_old.reshape(-1), family, kl_scale=members / loss.kl_divisor(dist)
            )
        else:

            def kl_of(th, b, bufs):
                d = loss.policy_dist(b, self._member_tensors(th, bufs))
                log_ratio = d.log_prob(b.action).reshape(-1) - b.old_log_prob
                return loss.mean_kl(b, d, log_ratio)

            # the Hessian of Σ_m KL_m(θ_m) is exactly diag(F_1, ..., F_M)
            product = kl_fisher_vector_product(lambda flat: per_member(kl_of, batch)(flat).sum(), theta_old.reshape(-1))
        damping = single.damping

        def fvp(v: torch.Tensor) -> torch.Tensor:
            if v.shape != theta_old.shape:
                raise ValueError(f"PopulationTrustRegionUpdate: v must be [{members}, {n}], got {tuple(v.shape)}")
            out = product(v.reshape(-1)).view(members, n)
            return out + damping * v if damping else out

        return fvp

    # ---------------------------------------------------------------- the step
    def __call__(self, tensordict: TensorDictBase) -> TensorDictBase:
        """One actor step for every member, in place on ``params``; returns ``[M]``-shaped metrics."""
        batch = self.population_batch(tensordict)
        theta_new, metrics = self.propose(batch, self.flat_parameters())
        self.write_parameters(theta_new)
        return metrics

    def propose(self, batch: PolicyBatch, theta_old: torch.Tensor) -> tuple[torch.Tensor, TensorDictBase]:
        """New member parameters ``[M, n]`` (a rejected member's row is its θ_old) and the metrics.

        A pure function of ``theta_old``, as :meth:`TrustRegionUpdate.propose` is.
        """
        single = self.single
        theta_old = theta_old.detach()
        members = theta_old.shape[0]
        max_kl = torch.tensor(self.max_kl, dtype=theta_old.dtype, device=theta_old.device)

        # 1. per-member objective and gradient: Σ_m L_m has ∂/∂θ_m = ∇L_m, so one backward gives all rows
        plan, linearization = self._plan_for(batch), None
        if plan is None:
            theta = theta_old.clone().requires_grad_(True)
            objective, surrogate, kl = self._member_terms(batch, theta)
            (g,) = torch.autograd.grad(objective.sum(), theta)
        else:
            # as TrustRegionUpdate's plan path, with every product batched over the members
            features = plan.member_features(batch.inputs, self._member_buffers())
            linearization = plan.linearize(features, theta_old)
            terms, g = linearization.objective_gradient(self.loss_module, batch, batch_dims=1)
            objective, surrogate, kl = terms.objective, terms.surrogate, terms.kl
        objective_old, surrogate_old, kl_old = objective.detach(), surrogate.detach(), kl.detach()

        # 2-3. the block-diagonal Fisher product and M CG systems in one solve
        fvp = self.fisher_vector_product(batch, theta_old, linearization)
        x, cg_info = conjugate_gradient(fvp, g, max_iter=single.cg_iters)

        # 4. each member's own step length: ½ s_mᵀF_m s_m = δ_m
        with torch.no_grad():
            curvature = (x * fvp(x)).sum(-1)
        curvature_ok = torch.isfinite(curvature) & (curvature > 0)
        safe_curvature = torch.where(curvature_ok, curvature, torch.ones_like(curvature))
        scale = torch.where(curvature_ok, torch.sqrt(2.0 * max_kl / safe_curvature), torch.zeros_like(curvature))
        full_step = x * scale[:, None]
        expected_improvement = (g * full_step).sum(-1)

        # 5. candidates [K, M, n], all evaluated in one nested vmap; each member picks its own first
        k = torch.arange(single.backtrack_iters, device=theta_old.device, dtype=theta_old.dtype)
        fractions = single.backtrack_coeff**k
        candidates = theta_old + fractions[:, None, None] * full_step
        with torch.no_grad():
            if plan is None:
                cand_objective, cand_surrogate, cand_kl = torch.vmap(lambda th: self._member_terms(batch, th))(candidates)
            else:
                cand_objective, cand_surrogate, cand_kl = self._plan_candidates(plan, batch, features, candidates)
        improvement = cand_objective - objective_old
        acceptable = (
            torch.isfinite(candidates).all(-1)
            & torch.isfinite(cand_objective)
            & torch.isfinite(cand_kl)
            & (cand_kl <= max_kl)
            & (improvement > 0)
            & (improvement >= single.accept_ratio * expected_improvement * fractions[:, None])
        )  # [K, M]
        accepted = acceptable.any(0)
        first = acceptable.to(torch.int32).argmax(dim=0)  # [M]; 0 where none, masked below

        def chosen(values: torch.Tensor) -> torch.Tensor:
            # gather along K with each member's own index (no host read of `first`)
            index = first.view(1, members, *([1] * (values.dim() - 2))).expand(1, *values.shape[1:])
            return values.gather(0, index).squeeze(0)

        theta_new = torch.where(accepted[:, None], chosen(candidates), theta_old)
        backtracks = torch.where(accepted, first.long(), torch.full_like(first.long(), single.backtrack_iters))
        fraction = torch.where(accepted, fractions[first.long()], torch.zeros_like(objective_old))

        metrics = step_metrics(
            chosen, accepted, fraction=fraction, backtracks=backtracks, kl_old=kl_old, surrogate_old=surrogate_old,
            objective_old=objective_old, cand_kl=cand_kl, cand_surrogate=cand_surrogate, cand_objective=cand_objective,
            improvement=improvement, expected_improvement=expected_improvement,
            step_norm=fraction * full_step.norm(dim=-1), grad_norm=g.norm(dim=-1), curvature=curvature,
            cg_info=cg_info, batch_size=[members],
        )
        return theta_new, metrics
