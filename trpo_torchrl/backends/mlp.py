"""The explicit-MLP backend: a plain-MLP view of a TorchRL actor, for the actor step's two hot loops.

TRPO's actor step spends its time in ~26 Fisher-vector products and one line search over K
candidate parameter vectors. Through ``torch.func`` each product replays a recorded autograd graph
(a vjp of the vjp), and each candidate is a vmapped ``functional_call``; for the policies TRPO is
almost always run with (an MLP of Linear and Tanh/ReLU layers, then a Gaussian or a categorical)
the same numbers come from a handful of explicit matrix products over the activations of one
forward pass. The Gaussian's scale comes from its network's head, as
:func:`~trpo_torchrl.modules.describe_scale_head` describes it: our ``StateIndependentScale``,
tensordict's ``AddStateIndependentNormalScale`` (a learned scale through a positive mapping and a
lower bound) or ``NormalParamExtractor`` (the last Linear's output split into the mean and a
state-dependent scale through a mapping and a lower bound). :class:`MLPPolicyPlan` recognises
such an actor and computes:

* :meth:`Linearization.fisher_vector_product`: ``v ↦ (kl_scale · Jᵀ M J / N + damping·I) v`` —
  the Gauss-Newton product of :func:`~trpo_torchrl.fisher.gauss_newton_fisher_vector_product`,
  with ``J v`` as a forward pass of tangents (two products per layer, accumulated in place) and
  ``Jᵀ u`` as a backward pass, over cached activations and activation derivatives;
* :meth:`~MLPPolicyPlan.distribution_parameters`: the distribution parameters for a stack of
  ``K`` parameter vectors at once, as batched matrix products, with the hidden tanh through
  :func:`trpo_torchrl.ops.tanh_`.

Whether the network is a plain MLP is :func:`trpo_torchrl.modules.describe_mlp`'s answer, the one
every fast path asks. What is not recognised (another layer type, a scale mapping other than exp,
softplus, biased softplus or relu, distribution keyword arguments, trainable parameters outside the
MLP and its scale, forward hooks) keeps the
``torch.func`` path: :meth:`MLPPolicyPlan.describe` says why.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import nn
from torchrl.modules import IndependentNormal, OneHotCategorical, TanhNormal

from ..fisher import check_product_vector
from ..loss import PolicyBatch
from ..modules import (
    NotPlain,
    ScaleHead,
    describe_mlp,
    describe_scale_head,
    gaussian_heads,
    has_forward_hooks,
    plain_tensordict_module,
    sequential_leaves,
)
from ..ops import tanh_ as fast_tanh_
from .functional import subsample

__all__ = ["MLPBackend", "MLPPolicyPlan"]

_CATEGORICALS = (OneHotCategorical, torch.distributions.Categorical)
# TanhNormal keyword arguments that only fix the squashing bijection (upscale is read with tanh_loc only)
_TANH_NORMAL_FIXED = ("low", "high", "upscale", "safe_tanh", "tanh_loc")


class _Layer:
    """One Linear layer: where its weight and bias sit in the flat parameter vector, and the
    activation after it (``None`` for the output layer)."""

    def __init__(self, weight_slice: slice, bias_slice: slice, shape: tuple[int, int], activation: str | None):
        self.weight, self.bias, self.shape, self.activation = weight_slice, bias_slice, shape, activation


class MLPPolicyPlan:
    """The actor as prefix → MLP → head, with its parameters located in the flat vector θ.

    Built by :meth:`build` from a :class:`~trpo_torchrl.TRPOLoss`'s actor and the names and sizes
    of θ's pieces (as :class:`~trpo_torchrl.TrustRegionUpdate` lays θ out).
    """

    def __init__(
        self, actor, in_key, prefix, layers, head: ScaleHead | None, scale: slice | None, family: str, out_keys
    ):
        self.actor = actor
        self._structure = _structure(actor)
        self.in_key = in_key
        self.prefix = prefix  # parameter-free modules before the first Linear, run once per batch
        self.layers = layers
        self.head = head  # the Gaussian's scale head (normal family)
        self.scale = scale  # the state-independent scale's slice of θ (log-std or pre-mapping scale)
        self.family = family
        self.out_keys = out_keys  # the distribution's arguments -> the entries that hold them

    @classmethod
    def build(cls, actor, names: list[str], numels: list[int]) -> MLPPolicyPlan | None:
        """The plan for ``actor``, or ``None`` when it is not a plain MLP policy (see the module doc)."""
        plan = cls.describe(actor, names, numels)
        return plan if isinstance(plan, MLPPolicyPlan) else None

    @classmethod
    def describe(cls, actor, names: list[str], numels: list[int]) -> MLPPolicyPlan | NotPlain:
        """The plan for ``actor``, or :class:`~trpo_torchrl.modules.NotPlain` saying why there is none."""
        try:
            td_module, prob = actor.module[0], actor.module[-1]
            dist_class, dist_kwargs = prob.distribution_class, dict(prob.distribution_kwargs)
            # distribution argument name -> the TensorDict entry it is read from
            feeds = {(d[-1] if isinstance(d, tuple) else d): k for d, k in zip(prob.dist_keys, prob.in_keys)}
        except (AttributeError, IndexError, TypeError):
            return NotPlain(f"{type(actor).__name__} is not a ProbabilisticActor of a module and a distribution")
        if len(actor.module) != 2 or not plain_tensordict_module(td_module) or len(td_module.in_keys) != 1:
            return NotPlain("the actor is not one TensorDictModule with one input followed by its distribution")
        if dist_class is TanhNormal and not dist_kwargs.get("tanh_loc", False):
            # without tanh_loc the base Normal's loc and scale are the network's outputs, and a
            # TanhNormal's KL and Fisher are its base Normal's (tanh, then the low/high affine, is a
            # fixed bijection): the Gaussian products apply as they are
            dist_kwargs = {k: v for k, v in dist_kwargs.items() if k not in _TANH_NORMAL_FIXED}
            if dist_kwargs.get("event_dims", 1) == 1:
                dist_kwargs.pop("event_dims", None)
        if dist_kwargs:
            return NotPlain(f"the distribution takes keyword arguments {sorted(dist_kwargs)}")
        if dist_class in (IndependentNormal, TanhNormal) and set(feeds) == {"loc", "scale"}:
            family, order = "normal", ["loc", "scale"]
        elif dist_class in _CATEGORICALS and set(feeds) == {"logits"}:
            family, order = "categorical", ["logits"]
        else:
            return NotPlain(f"{dist_class.__name__} is not an IndependentNormal, a TanhNormal or a categorical")
        # the module writes exactly those entries, in the order its network returns them
        if list(td_module.out_keys) != [feeds[name] for name in order]:
            return NotPlain(f"the module writes {list(td_module.out_keys)}, not the distribution's {order}")
        if has_forward_hooks(td_module, recurse=False):
            return NotPlain("the TensorDictModule has forward hooks, which the explicit products would skip")
        description = describe_mlp(td_module.module, head_types=gaussian_heads())
        if not description:
            return description
        if (family == "normal") != (description.head is not None):
            return NotPlain(
                "a Gaussian's network must end in a scale head ("
                + ", ".join(t.__name__ for t in gaussian_heads())
                + ")"
                if family == "normal"
                else "a categorical's network ends in a scale head"
            )
        linears = description.linears
        head = None
        if description.head is not None:
            head = describe_scale_head(description.head)
            if not head:
                return head
            width = linears[-1].out_features
            if head.kind == "state_dependent" and width % 2:
                return NotPlain(
                    f"NormalParamExtractor splits the last Linear's {width} outputs into loc and scale halves; "
                    "an odd number does not split"
                )
            if head.kind == "log_std" and tuple(head.parameter.shape) != (width,):
                return NotPlain("the log-std is broadcast over the action dimensions")
            if head.kind == "state_independent":
                if not isinstance(head.parameter, nn.Parameter):
                    return NotPlain(
                        "AddStateIndependentNormalScale's scale is a buffer (make_param=False), not a trained parameter"
                    )
                if tuple(head.parameter.shape) != (width,):
                    return NotPlain(
                        f"AddStateIndependentNormalScale's scale has shape {tuple(head.parameter.shape)}, "
                        f"not the action size ({width},)"
                    )
        # θ's layout: exactly the Linears' weights and biases and the state-independent scale, each once
        offsets, start = {}, 0
        for name, numel in zip(names, numels):
            offsets[name] = slice(start, start + numel)
            start += numel
        named = dict(actor.named_parameters())
        by_id = {id(named[name]): offsets[name] for name in names}
        scale = head.parameter if head is not None else None
        wanted = [*description.parameters] + ([scale] if scale is not None else [])
        if len(wanted) != len(names) or any(id(p) not in by_id for p in wanted):
            return NotPlain("the actor has trainable parameters outside its MLP and scale")
        layers = []
        for i, m in enumerate(linears):
            activation = description.activations[i] if i < len(description.activations) else None
            layers.append(_Layer(by_id[id(m.weight)], by_id[id(m.bias)], tuple(m.weight.shape), activation))
        scale_slice = by_id[id(scale)] if scale is not None else None
        out_keys = {name: feeds[name] for name in order}
        return cls(actor, td_module.in_keys[0], list(description.prefix), layers, head, scale_slice, family, out_keys)

    # ------------------------------------------------------------------------------------------
    def applies(self) -> bool:
        """False while forward hooks exist, or once the actor's modules were swapped since the plan
        was built (both can change after the update was made)."""
        return not has_forward_hooks(self.actor) and _structure(self.actor) == self._structure

    def accepts(self, inputs, members: bool = False) -> bool:
        """True when the batch's actor input is ``[N, features]`` (``[M, N, features]`` for a
        population), the shape the plan computes on."""
        x = inputs.get(self.in_key, None)
        return isinstance(x, torch.Tensor) and x.dim() == 2 + int(members)

    @torch.no_grad()
    def features(self, inputs) -> torch.Tensor:
        """The MLP's input ``[N, in]``: the parameter-free prefix run on the batch's actor input."""
        x = inputs.get(self.in_key)
        for m in self.prefix:
            x = m(x)
        return x

    def _dist_out(self, out: torch.Tensor, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The distribution's arguments from the MLP's output ``[..., N, D]``."""
        if self.family == "categorical":
            return {"logits": out}
        kind = self.head.kind
        if kind == "state_dependent":
            loc, x = out.chunk(2, -1)  # NormalParamExtractor's split
            return {"loc": loc.contiguous(), "scale": self.head.scale(x)}
        # a state-independent scale on every state. Materialised, not an expanded view: torch's log
        # (in the log-density, KL and entropy) is several times slower on a stride-0 input
        scale = theta[..., self.scale].exp() if kind == "log_std" else self.head.scale(theta[..., self.scale])
        return {"loc": out, "scale": scale.unsqueeze(-2).expand_as(out).contiguous()}

    def _scale_slope(self, out: torch.Tensor, theta: torch.Tensor) -> torch.Tensor | None:
        """``d scale / d x`` for the mapping's input ``x``: ``[.., N, d]`` for a state-dependent scale,
        ``[.., d]`` for a state-independent one; ``None`` for the log-std (its slope is the scale)."""
        if self.family == "categorical" or self.head.kind == "log_std":
            return None
        if self.head.kind == "state_dependent":
            return self.head.slope(out.chunk(2, -1)[1])
        return self.head.slope(theta[..., self.scale])

    @torch.no_grad()
    def distribution_parameters(self, features: torch.Tensor, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        """The entries the actor module writes (``loc``/``scale`` or ``logits``, under the module's
        own keys), ``[K, ..., N, d]``, for the flat parameter vectors ``thetas [K, ..., n]``, by
        batched matrix products. ``features`` is ``[N, in]``, or ``[M, N, in]`` for ``thetas
        [K, M, n]`` (member m's states under each candidate's θ_m)."""
        lead, n_states = thetas.shape[:-1], features.shape[-2]
        flat = thetas.reshape(-1, thetas.shape[-1])
        h = features.expand(*lead, *features.shape[-2:]).reshape(-1, *features.shape[-2:])
        rows = flat.shape[0]
        for layer in self.layers:
            out_dim, in_dim = layer.shape
            weight = flat[:, layer.weight].view(rows, out_dim, in_dim)
            bias = flat[:, layer.bias].view(rows, out_dim, 1)
            if layer.activation is None:
                # the narrow output layer as [.., d, N]: several times faster than [.., N, d] here;
                # made contiguous again for the elementwise log-density and KL that follow
                h = torch.baddbmm(bias, weight, h.transpose(1, 2)).transpose(1, 2).contiguous()
            else:
                h = _activate(torch.baddbmm(bias.transpose(1, 2), h, weight.transpose(1, 2)), layer.activation)
        h = h.view(*lead, n_states, h.shape[-1])
        return self.entries(self._dist_out(h, thetas))

    def entries(self, args: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The distribution's arguments (``loc``/``scale``, ``logits``) under the actor module's keys."""
        return {self.out_keys[name]: value for name, value in args.items()}

    def distribution(self, entries: dict[str, torch.Tensor]):
        """The actor's distribution from its module outputs ``entries`` (as
        :meth:`distribution_parameters` or :attr:`Linearization.outputs` give them)."""
        return self.actor.build_dist_from_params(TensorDict(entries, batch_size=[]))

    def terms(self, loss, batch, entries: dict[str, torch.Tensor], batch_dims: int = 0):
        """``loss.dist_terms`` of the policy whose module outputs are ``entries``."""
        return loss.dist_terms(batch, self.distribution(entries), batch_dims=batch_dims)

    @torch.no_grad()
    def candidate_terms(
        self, loss, batch, features: torch.Tensor, thetas: torch.Tensor, batch_dims: int
    ) -> torch.Tensor:
        """``[3, ...]``: objective, surrogate and KL of the parameter vectors ``thetas`` (leading
        ``batch_dims`` dimensions, e.g. ``[K]`` candidates or ``[K, M]`` for a population)."""
        terms = self.terms(loss, batch, self.distribution_parameters(features, thetas), batch_dims)
        return torch.stack([terms.objective, terms.surrogate, terms.kl])

    @torch.no_grad()
    def linearize(self, features: torch.Tensor, theta: torch.Tensor) -> Linearization:
        """The forward pass at ``theta`` over ``features [N, in]``, kept for products with its Jacobian;
        or, for a population, at ``theta [M, n]`` over ``features [M, N, in]`` (member by member)."""
        return Linearization(self, features, theta)

    @torch.no_grad()
    def member_features(self, inputs, buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[M, N, in]``: each member's states through the prefix with that member's own buffers
        (``buffers``: the actor's buffer names → ``[M, ...]``, e.g. normaliser statistics)."""
        if not buffers:
            return torch.vmap(self.features)(inputs)
        holder = _Holder(self)
        return torch.vmap(
            lambda x, bufs: torch.func.functional_call(holder, {"actor." + k: v for k, v in bufs.items()}, (x,))
        )(inputs, buffers)


class _Holder(nn.Module):
    """The actor as a submodule, so ``functional_call`` can swap its buffers around the prefix."""

    def __init__(self, plan: MLPPolicyPlan):
        super().__init__()
        self.actor = plan.actor
        self.__dict__["plan"] = plan

    def forward(self, inputs):
        return self.plan.features(inputs)


def _structure(actor) -> tuple:
    """The identity and type of every module the plan relies on, and what its scale head computes
    (mapping, lower bound, parameter), to notice swapped or changed modules."""
    try:
        leaves = list(sequential_leaves(actor.module[0].module))
        modules = [actor.module[0], actor.module[-1], *leaves]
    except (AttributeError, IndexError, TypeError):
        return ()
    head = describe_scale_head(leaves[-1]) if leaves and type(leaves[-1]) in gaussian_heads() else None
    return (*((id(m), type(m)) for m in modules), head.signature if head else head)


def _activate(z: torch.Tensor, activation: str) -> torch.Tensor:
    """The hidden activation, in place on the fresh pre-activation ``z``."""
    return fast_tanh_(z) if activation == "tanh" else z.relu_()


# matrix products for one policy (2-D operands) or a population (3-D, member first)
def _affine(bias: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x wᵀ + b``: ``[.., N, out]``."""
    if x.dim() == 2:
        return torch.addmm(bias, x, w.t())
    return torch.baddbmm(bias.unsqueeze(-2), x, w.transpose(1, 2))


def _affine_transposed(bias: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(x wᵀ + b)ᵀ``: ``[.., out, N]`` — for the narrow output layer, several times faster."""
    if x.dim() == 2:
        return torch.addmm(bias.unsqueeze(-1), w, x.t())
    return torch.baddbmm(bias.unsqueeze(-1), w, x.transpose(1, 2))


def _accumulate(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``z += a b`` in place."""
    return z.addmm_(a, b) if z.dim() == 2 else z.baddbmm_(a, b)


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b) if a.dim() == 2 else torch.bmm(a, b)


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


class Linearization:
    """The policy at one θ over N states: its outputs, and products with the Jacobian ``J`` of the
    distribution's arguments in θ — :meth:`pullback` (``Jᵀ``, for the gradient) and
    :meth:`fisher_vector_product` (``Jᵀ M J``) — as explicit matrix products over the cached layer
    inputs and activation slopes. The narrow output layer is computed transposed (``[d, N]``).

    For a population (θ ``[M, n]``, states ``[M, N, in]``) every product is batched over the members;
    member m's rows depend on θ_m and its own states only (the Jacobian is block diagonal).
    """

    def __init__(self, plan: MLPPolicyPlan, features: torch.Tensor, theta: torch.Tensor):
        self.plan, self.theta = plan, theta
        self.lead = tuple(theta.shape[:-1])  # () for one policy, (M,) for a population
        if features.dim() != 2 + len(self.lead) or tuple(features.shape[: len(self.lead)]) != self.lead:
            raise ValueError(
                f"Linearization: features {tuple(features.shape)} do not match theta {tuple(theta.shape)} "
                "(expected [N, in] for [n], [M, N, in] for [M, n])"
            )
        self.n_states = features.shape[-2]
        self.weights = [theta[..., layer.weight].view(*self.lead, *layer.shape) for layer in plan.layers]
        self.inputs: list[torch.Tensor] = []  # the input of each layer
        self.slopes: list[torch.Tensor] = []  # the derivative of each hidden activation
        h = features
        for layer, w in zip(plan.layers, self.weights):
            self.inputs.append(h)
            bias = theta[..., layer.bias]
            if layer.activation is None:
                h = _t(_affine_transposed(bias, w, h)).contiguous()
            else:
                h = _activate(_affine(bias, h, w), layer.activation)
                self.slopes.append(1.0 - h * h if layer.activation == "tanh" else (h > 0).to(h.dtype))
        self.args = plan._dist_out(h, theta)  # the distribution's arguments, e.g. loc and scale
        # the scale's derivative in its mapping's input (zero where the lower bound holds it)
        self.scale_slope = plan._scale_slope(h, theta)

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """The entries the actor module writes, under its keys (``[.., N, d]`` each)."""
        return self.plan.entries(self.args)

    def _piece(self, out: torch.Tensor, layer_slice: slice, shape=None) -> torch.Tensor:
        piece = out[..., layer_slice]
        return piece if shape is None else piece.view(*self.lead, *shape)

    def _backward(self, u: torch.Tensor, out: torch.Tensor) -> None:
        """Writes ``Jᵀ u`` for the MLP's output cotangent ``u [.., N, d]`` into ``out``'s weight and bias pieces."""
        layers, last = self.plan.layers, len(self.plan.layers) - 1
        for i in range(last, -1, -1):
            layer = layers[i]
            weight = self._piece(out, layer.weight, layer.shape)
            if not self.lead and not (i == 0 and self.inputs[0].shape[-1] < layer.shape[0]):
                torch.mm(u.t(), self.inputs[i], out=weight)
            elif i == 0 and self.inputs[0].shape[-1] < layer.shape[0]:
                # a narrow input (the observation): uᵀx is faster computed as (xᵀu)ᵀ
                weight.copy_(_t(_matmul(_t(self.inputs[0]), u)))
            else:
                weight.copy_(_matmul(_t(u), self.inputs[i]))
            self._piece(out, layer.bias).copy_(u.sum(-2))
            if i > 0:
                u = _matmul(u, self.weights[i]).mul_(self.slopes[i - 1])

    def _forward_tangent(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` for the MLP's output, ``[.., N, d]`` (a transposed view)."""
        layers, last = self.plan.layers, len(self.plan.layers) - 1
        t = None
        for i, layer in enumerate(layers):
            dw, db = self._piece(v, layer.weight, layer.shape), v[..., layer.bias]
            if i == last:
                z = _affine_transposed(db, dw, self.inputs[i])
                if t is not None:
                    _accumulate(z, self.weights[i], _t(t))
                return _t(z)
            z = _affine(db, self.inputs[i], dw)
            if t is not None:
                _accumulate(z, t, _t(self.weights[i]))
            t = z.mul_(self.slopes[i])
        raise AssertionError("unreachable: the MLP has an output layer")

    @property
    def features(self) -> torch.Tensor:
        """The MLP's input the forward pass ran on."""
        return self.inputs[0]

    def objective_gradient(self, loss, batch, batch_dims: int = 0):
        """``(terms, g)``: ``loss``'s terms at θ and the gradient of the objective (summed over
        ``batch_dims`` leading dimensions, e.g. a population's members) in θ — autograd from the
        loss to the distribution's arguments only, then :meth:`pullback` through the network."""
        args = {name: value.detach().requires_grad_(True) for name, value in self.args.items()}
        terms = self.plan.terms(loss, batch, self.plan.entries(args), batch_dims)
        grads = torch.autograd.grad(terms.objective.sum(), list(args.values()), allow_unused=True)
        return terms, self.pullback(dict(zip(args, grads)))

    @torch.no_grad()
    def pullback(self, cotangents: dict[str, torch.Tensor]) -> torch.Tensor:
        """``Jᵀ c``, flat ``[.., n]``: the gradient in θ of a function of the distribution's arguments
        whose gradient in them is ``cotangents`` (``{"loc": .., "scale": ..}`` or ``{"logits": ..}``,
        each ``[.., N, d]``; a missing one counts as zero)."""
        plan = self.plan
        out = torch.zeros_like(self.theta)
        kind = plan.head.kind if plan.family == "normal" else None
        c_scale = cotangents.get("scale") if kind is not None else None
        if kind == "state_dependent":
            # the network's output is [loc, x] with scale = mapping(x): the cotangent of x is c_scale · slope
            c_loc = cotangents.get("loc")
            if c_loc is None and c_scale is None:
                return out
            c_loc = torch.zeros_like(self.args["loc"]) if c_loc is None else c_loc
            c_x = torch.zeros_like(self.args["scale"]) if c_scale is None else c_scale * self.scale_slope
            self._backward(torch.cat([c_loc, c_x], dim=-1), out)
            return out
        main = "loc" if plan.family == "normal" else "logits"
        if cotangents.get(main) is not None:
            self._backward(cotangents[main], out)
        if kind == "log_std" and c_scale is not None:
            # scale = exp(log_std) on every state: d/d log_std = Σ_states c_scale · scale
            out[..., plan.scale] = (c_scale * self.args["scale"]).sum(-2)
        elif kind == "state_independent" and c_scale is not None:
            # scale = mapping(p) on every state: d/dp = Σ_states c_scale · slope
            out[..., plan.scale] = (c_scale * self.scale_slope.unsqueeze(-2)).sum(-2)
        return out

    def fisher_vector_product(self, *, kl_scale: float, damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v ↦ (kl_scale · Jᵀ M J / N + damping·I) v`` over the N states (``v``: ``[n]`` or
        ``[B, n]``; for a population ``[M, n]``, one vector per member); M is the distribution's
        Fisher in its arguments (``1/σ²`` for the mean and ``2/σ²`` for the standard deviation of a
        Gaussian, per state, ``diag(p) − p pᵀ`` for a categorical's logits), as in
        :func:`~trpo_torchrl.fisher.gauss_newton_fisher_vector_product`. The scale's own Jacobian is
        diagonal (``σ'`` of its mapping's input), so its block is ``2σ'²/σ²`` per entry."""
        plan = self.plan
        kind = plan.head.kind if plan.family == "normal" else None
        scale_block = None
        if kind == "log_std":
            # the same for every state (the scale is state-independent); the log-std block is 2·kl_scale·I
            metric = ((kl_scale / self.n_states) * torch.exp(-2.0 * self.theta[..., plan.scale])).unsqueeze(-2)
        elif kind == "state_independent":
            sigma = self.args["scale"][..., 0, :]
            metric = ((kl_scale / self.n_states) / sigma.square()).unsqueeze(-2)
            # Σ over the N states of (kl_scale / N) · 2σ'²/σ²: the states cancel the 1/N
            scale_block = (2.0 * kl_scale) * self.scale_slope.square() / sigma.square()
        elif kind == "state_dependent":
            # per state: 1/σ² on the loc half of the output, 2σ'²/σ² on the scale's input half
            loc_metric = (kl_scale / self.n_states) / self.args["scale"].square()
            metric = torch.cat([loc_metric, 2.0 * loc_metric * self.scale_slope.square()], dim=-1)
        else:
            probs = torch.softmax(self.args["logits"], dim=-1)
            metric = kl_scale / self.n_states

        def single(v: torch.Tensor, out: torch.Tensor) -> None:
            t = self._forward_tangent(v)
            if kind is not None:
                u = t.mul_(metric)
            else:
                pu = probs * t
                u = (pu - probs * pu.sum(-1, keepdim=True)).mul_(metric)
            self._backward(u, out)
            if kind == "log_std":
                torch.mul(v[..., plan.scale], 2.0 * kl_scale, out=out[..., plan.scale])
            elif kind == "state_independent":
                torch.mul(v[..., plan.scale], scale_block, out=out[..., plan.scale])

        def fvp(v: torch.Tensor) -> torch.Tensor:
            if self.lead:
                if not isinstance(v, torch.Tensor) or v.shape != self.theta.shape:
                    raise ValueError(
                        f"Linearization.fisher_vector_product: v must be {list(self.theta.shape)} (one vector "
                        f"per member), got {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
                    )
            else:
                check_product_vector(v, self.theta, "Linearization.fisher_vector_product")
            out = torch.empty_like(v)
            with torch.no_grad():
                if v.dim() == 1 or self.lead:
                    single(v, out)
                else:
                    for row_v, row_out in zip(v, out):
                        single(row_v, row_out)
                if damping:
                    out.add_(v, alpha=damping)
            return out

        return fvp


class MLPBackend:
    """Evaluates a plain MLP policy through its :class:`MLPPolicyPlan`: the gradient's pullback, the
    Gauss-Newton products and the candidates as explicit (member-batched) matrix products. The KL
    Hessian product (``fvp="kl_hessian"``) is the functional backend's."""

    # members per line-search chunk: K · members · N rows of activations at most (~4 MB per 64-wide
    # layer in float32): the whole [K, M, N, 64] stack falls out of a CPU's cache, and chunks of a few
    # members are faster (benchmarks/population.py measures it)
    CANDIDATE_ROWS = 16_384
    # on a GPU the chunks only add kernel launches; 2**22 rows (1 GiB per 64-wide float32 layer)
    CANDIDATE_ROWS_CUDA = 1 << 22

    def __init__(self, plan: MLPPolicyPlan, functional):
        self.plan = plan
        self.functional = functional  # its settings, and the products the plan has no form for

    def evaluate(self, batch: PolicyBatch, theta_old: torch.Tensor, buffers: dict[str, torch.Tensor]) -> MLPEvaluation:
        return MLPEvaluation(self, batch, theta_old, buffers)

    def features(self, batch: PolicyBatch, buffers: dict[str, torch.Tensor], members: bool) -> torch.Tensor:
        """The MLP's input: ``[N, in]``, or ``[M, N, in]`` with each member's own buffers."""
        plan = self.plan
        return plan.member_features(batch.inputs, buffers) if members else plan.features(batch.inputs)

    def candidate_terms(self, batch: PolicyBatch, features: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``[3, K, *lead]`` for the candidates ``[K, *lead, n]``; a population a chunk of members at a time."""
        loss = self.functional.loss_module
        if candidates.dim() == 2:
            return self.plan.candidate_terms(loss, batch, features, candidates, batch_dims=1)
        num_candidates, members = candidates.shape[:2]
        rows = self.CANDIDATE_ROWS_CUDA if features.is_cuda else self.CANDIDATE_ROWS
        chunk = max(1, rows // (num_candidates * features.shape[1]))
        values = [
            self.plan.candidate_terms(
                loss, batch.apply(lambda field: field[part]), features[part], candidates[:, part], 2
            )
            for part in (slice(start, start + chunk) for start in range(0, members, chunk))
        ]
        return torch.cat(values, dim=-1)


class MLPEvaluation:
    """:class:`~trpo_torchrl.engine.Evaluation` through an :class:`MLPPolicyPlan`."""

    def __init__(self, backend: MLPBackend, batch: PolicyBatch, theta_old: torch.Tensor, buffers):
        self.backend, self.batch, self.theta_old, self.buffers = backend, batch, theta_old, buffers
        self.members = theta_old.dim() == 2
        self.linearization = backend.plan.linearize(backend.features(batch, buffers, self.members), theta_old)
        loss = backend.functional.loss_module
        terms, self.gradient = self.linearization.objective_gradient(loss, batch, batch_dims=int(self.members))
        self.terms = (terms.objective, terms.surrogate, terms.kl)

    def fisher_vector_product(self):
        backend, functional = self.backend, self.backend.functional
        if functional.fvp != "gauss_newton":
            return functional.fisher_vector_product(self.batch, self.theta_old, self.buffers)
        linearization = self.linearization
        if functional.fvp_subsample < 1.0:
            members = self.theta_old.shape[0] if self.members else None
            batch = subsample(self.batch, functional.fvp_subsample, functional.generator, members)
            linearization = backend.plan.linearize(backend.features(batch, self.buffers, self.members), self.theta_old)
        # the KL divisor reads the distribution's event shape: the linearization's outputs give it
        dist = backend.plan.distribution(linearization.outputs)
        kl_scale = 1.0 / functional.loss_module.kl_divisor(dist)
        return linearization.fisher_vector_product(kl_scale=kl_scale, damping=functional.damping)

    def candidate_terms(self, candidates: torch.Tensor) -> torch.Tensor:
        return self.backend.candidate_terms(self.batch, self.linearization.features, candidates)
