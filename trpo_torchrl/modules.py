"""What a network is, structurally: a plain MLP of these layers, or the reason it is not.

Every fast path replaces a module's own forward pass with its own arithmetic: the actor step's
explicit linearisation, the fused critic fit, the collection-time samplers. That is only correct
when the module computes exactly the composition its children describe, so they all ask one
question here, :func:`describe_mlp`, and take the general path whenever the answer is
:class:`NotPlain`.

What counts as plain: an optional parameter-free preprocessing prefix (e.g. an observation
normaliser), then ``Linear (activation Linear)*`` with every ``Linear`` biased and every hidden
activation ``Tanh`` or ``ReLU``, then optionally one head module of a type the caller names.
A Gaussian actor's head (:func:`gaussian_heads`: our ``StateIndependentScale``, tensordict's
``NormalParamExtractor`` and ``AddStateIndependentNormalScale``) is described further by
:func:`describe_scale_head`: which scale it makes, through which of tensordict's mappings.
Containers are opened only when their forward pass is known to be "run the children in order":
an exact ``nn.Sequential`` and torchrl's ``MLP`` with an integer output size. A subclass with its
own ``forward``, a forward set on one instance, or forward hooks anywhere make a module opaque.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from numbers import Real

import torch
from tensordict.nn import AddStateIndependentNormalScale, NormalParamExtractor, TensorDictModule
from tensordict.nn.utils import biased_softplus, mappings
from torch import nn
from torchrl.modules import MLP

__all__ = [
    "ACTIVATIONS",
    "MLPDescription",
    "NotPlain",
    "ScaleHead",
    "ScaleMapping",
    "describe_mlp",
    "describe_scale_head",
    "gaussian_heads",
    "has_forward_hooks",
    "plain_tensordict_module",
    "sequential_leaves",
]

# the hidden activations the fast paths compute themselves, by exact type
ACTIVATIONS: dict[type, str] = {nn.Tanh: "tanh", nn.ReLU: "relu"}
# a prefix runs once per batch, outside any training step: it must draw nothing and keep no
# per-call statistics
_STOCHASTIC_OR_STATEFUL = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)


def _runs_children_in_order(module: nn.Module) -> bool:
    """True for the containers whose forward pass is exactly their children applied in turn."""
    if "forward" in vars(module):  # a forward replaced on this one instance
        return False
    if type(module) is nn.Sequential:
        return True
    # torchrl's MLP reshapes its output when out_features is a shape; with an int it is Sequential's
    return type(module) is MLP and isinstance(module.out_features, int)


def sequential_leaves(module: nn.Module) -> Iterator[nn.Module]:
    """The modules a Sequential runs, nested Sequentials flattened. Exact ``nn.Sequential`` (and
    torchrl's ``MLP`` with one integer output size, whose forward is then the same) are opened;
    any other module, whose forward may differ, is a leaf."""
    if _runs_children_in_order(module):
        for child in module:
            yield from sequential_leaves(child)
    else:
        yield module


def has_forward_hooks(module: nn.Module, *, recurse: bool = True) -> bool:
    """Forward (pre-)hooks on ``module``, any module under it (unless ``recurse=False``), or all
    modules: calls a fast path that bypasses the modules' ``__call__`` would skip."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    modules = module.modules() if recurse else (module,)
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


@dataclass(frozen=True)
class MLPDescription:
    """A plain MLP: ``prefix`` (parameter-free, run as is), then ``linears[0]``,
    ``activations[0]``, ``linears[1]``, ..., ``linears[-1]``, then ``head`` (or none).

    ``activations`` holds one name per hidden layer (``"tanh"`` or ``"relu"``); ``leaves`` is every
    module the forward pass runs, in order, for callers that must notice a swapped module later.
    """

    prefix: tuple[nn.Module, ...]
    linears: tuple[nn.Linear, ...]
    activations: tuple[str, ...]
    head: nn.Module | None
    leaves: tuple[nn.Module, ...]

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """Each Linear's weight shape, ``(out_features, in_features)``."""
        return tuple(tuple(m.weight.shape) for m in self.linears)

    @property
    def parameters(self) -> tuple[nn.Parameter, ...]:
        """The Linears' weights and biases in layer order: ``w0, b0, w1, b1, ...``."""
        return tuple(p for m in self.linears for p in (m.weight, m.bias))

    def __str__(self) -> str:
        parts = [type(m).__name__ for m in self.prefix]
        for i, (out_dim, in_dim) in enumerate(self.shapes):
            parts.append(f"Linear({in_dim}, {out_dim})")
            if i < len(self.activations):
                parts.append(self.activations[i])
        if self.head is not None:
            parts.append(type(self.head).__name__)
        return " -> ".join(parts)


@dataclass(frozen=True)
class NotPlain:
    """Why a module is not a plain MLP, worded for a log line or an error message. Falsy, so
    ``if description:`` reads as "is a plain MLP"."""

    reason: str

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.reason


# what a TensorDictModule subclass may define and still run TensorDictModule's own call: a
# constructor (e.g. ValueOperator's default keys) and the class's plain data
_CLASS_DATA = {"__init__", "__module__", "__qualname__", "__doc__", "__firstlineno__", "__static_attributes__"}


def plain_tensordict_module(module: nn.Module) -> bool | NotPlain:
    """True when ``module`` computes ``module.module(*inputs)`` and writes it to its ``out_keys``,
    exactly as :class:`~tensordict.nn.TensorDictModule` does: the class itself, or a subclass that
    adds only a constructor (torchrl's ``ValueOperator``). Otherwise :class:`NotPlain` with the
    reason. Hooks are not looked at (see :func:`has_forward_hooks`)."""
    if not isinstance(module, TensorDictModule):
        return NotPlain(f"{type(module).__name__} is not a TensorDictModule")
    if "forward" in vars(module):
        return NotPlain(f"{type(module).__name__} has a forward set on the instance")
    for cls in type(module).__mro__:
        if cls is TensorDictModule:
            break
        extra = sorted(name for name in vars(cls) if name not in _CLASS_DATA)
        if extra:
            return NotPlain(f"{cls.__name__} overrides {', '.join(extra)} of TensorDictModule")
    return True


def _opaque(m: nn.Module) -> str:
    """The reason to give for a leaf that holds other modules: it was not opened, and why."""
    if "forward" in vars(m):
        return f"{type(m).__name__} has a forward set on the instance"
    if isinstance(m, nn.Sequential) or isinstance(m, MLP):
        return f"{type(m).__name__} subclasses {nn.Sequential.__name__} with its own forward"
    return f"{type(m).__name__} is not a Sequential of known layers"


def describe_mlp(module: nn.Module, *, head_types: tuple[type, ...] = ()) -> MLPDescription | NotPlain:
    """``module`` as an :class:`MLPDescription`, or :class:`NotPlain` with the reason.

    ``head_types``: module types (matched exactly) that may end the network after the last Linear,
    e.g. the actor's state-independent scale; the caller decides what the head means.
    """
    if has_forward_hooks(module):
        return NotPlain("it has forward hooks, which a fast path would skip")
    leaves = list(sequential_leaves(module))
    replaced = next((m for m in leaves if "forward" in vars(m)), None)
    if replaced is not None:
        return NotPlain(f"{type(replaced).__name__} has a forward set on the instance")
    head = leaves[-1] if leaves and type(leaves[-1]) in head_types else None
    body = leaves[:-1] if head is not None else leaves
    first = next((i for i, m in enumerate(body) if type(m) is nn.Linear), None)
    if first is None:
        opaque = next((m for m in body if next(m.children(), None) is not None), None)
        return NotPlain(_opaque(opaque) if opaque is not None else "it has no Linear layer")
    prefix, body = body[:first], body[first:]
    for m in prefix:
        if isinstance(m, _STOCHASTIC_OR_STATEFUL):
            return NotPlain(f"{type(m).__name__} before the first Linear is random or keeps statistics")
        if next(m.parameters(), None) is not None:
            if next(m.children(), None) is not None:
                return NotPlain(_opaque(m))
            return NotPlain(f"{type(m).__name__} before the first Linear has parameters")
    linears, acts = body[0::2], body[1::2]
    for i, m in enumerate(body):
        if i % 2 == 0 and type(m) is not nn.Linear:
            if next(m.children(), None) is not None:
                return NotPlain(_opaque(m))
            return NotPlain(f"{type(m).__name__} where a Linear belongs (after hidden layer {i // 2})")
        if i % 2 == 1 and type(m) not in ACTIVATIONS:
            if next(m.children(), None) is not None:
                return NotPlain(_opaque(m))
            return NotPlain(f"{type(m).__name__} after Linear {i // 2}: the hidden activations must be Tanh or ReLU")
    if len(body) % 2 == 0:
        return NotPlain(f"it ends in {type(body[-1]).__name__}, not a Linear")
    for i, m in enumerate(linears):
        if m.bias is None:
            return NotPlain(f"Linear {i} has no bias")
        if i and m.in_features != linears[i - 1].out_features:
            return NotPlain(
                f"Linear {i} takes {m.in_features} features, Linear {i - 1} gives {linears[i - 1].out_features}"
            )
    return MLPDescription(
        prefix=tuple(prefix),
        linears=tuple(linears),
        activations=tuple(ACTIVATIONS[type(m)] for m in acts),
        head=head,
        leaves=tuple(leaves),
    )


# -- the scale heads of Gaussian actors -----------------------------------------------------------

# torch's softplus returns its input above this threshold (beta = 1), and its derivative is then 1
_SOFTPLUS_THRESHOLD = 20.0


@dataclass(frozen=True)
class ScaleMapping:
    """One of tensordict's positive scale mappings, computed with the same operations:
    ``exp(x)``, ``relu(x)``, ``softplus(x)``, or ``softplus(x + shift) + floor`` (``biased_softplus``)."""

    kind: str  # "exp", "relu", "softplus" or "biased_softplus"
    shift: float = 0.0
    floor: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "exp":
            return torch.exp(x)
        if self.kind == "relu":
            return torch.relu(x)
        if self.kind == "softplus":
            return nn.functional.softplus(x)
        return nn.functional.softplus(x + self.shift) + self.floor

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """The mapping's derivative at ``x``, as torch's autograd takes it (relu: 0 at 0; softplus:
        1 above its threshold)."""
        if self.kind == "exp":
            return torch.exp(x)
        if self.kind == "relu":
            return (x > 0).to(x.dtype)
        if self.kind == "biased_softplus":
            x = x + self.shift
        return torch.where(x > _SOFTPLUS_THRESHOLD, torch.ones_like(x), torch.sigmoid(x))


@dataclass(frozen=True)
class ScaleHead:
    """A Gaussian actor's head after its last Linear ``[.., width]``, as it maps that output to ``(loc, scale)``:

    * ``"log_std"`` (``StateIndependentScale``): ``loc``, ``exp(log_std)``;
    * ``"state_independent"`` (``AddStateIndependentNormalScale``): ``loc``,
      ``mapping(parameter).clamp_min(lower_bound)``;
    * ``"state_dependent"`` (``NormalParamExtractor``): the output's halves ``loc, x``, and
      ``mapping(x).clamp_min(lower_bound)``.

    ``parameter`` is the state-independent scale's tensor (``None`` for a state-dependent one).
    """

    module: nn.Module
    kind: str
    mapping: ScaleMapping | None = None
    lower_bound: float = 0.0
    parameter: torch.Tensor | None = field(default=None, compare=False)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The scale from the mapping's input ``x`` (not for ``"log_std"``)."""
        return self.mapping(x).clamp_min(self.lower_bound)

    def slope(self, x: torch.Tensor) -> torch.Tensor:
        """``d scale / d x`` for ``scale = self.scale(x)``: zero where the lower bound holds it (torch's
        ``clamp_min`` passes the gradient where ``mapping(x) >= lower_bound``)."""
        mapped_through = self.mapping(x) >= self.lower_bound
        return self.mapping.derivative(x) * mapped_through.to(x.dtype)

    @property
    def signature(self) -> tuple:
        """What the fast paths rely on, to notice a head changed since it was described."""
        return (id(self.module), self.kind, self.mapping, self.lower_bound, id(self.parameter))


def gaussian_heads() -> tuple[type, ...]:
    """The head types a Gaussian actor's network may end in on the fast paths (``head_types`` of
    :func:`describe_mlp`)."""
    from .policies import StateIndependentScale  # policies builds on this module

    return (StateIndependentScale, NormalParamExtractor, AddStateIndependentNormalScale)


_SUPPORTED_MAPPINGS = "exp, softplus, relu or biased_softplus_<bias>[_<min_val>]"


def _describe_mapping(owner: str, mapping) -> ScaleMapping | NotPlain:
    """``mapping`` (a callable tensordict's ``mappings`` returned) as a :class:`ScaleMapping`."""
    if mapping is torch.exp:
        return ScaleMapping("exp")
    if mapping is torch.relu:
        return ScaleMapping("relu")
    if mapping is nn.functional.softplus:
        return ScaleMapping("softplus")
    if type(mapping) is biased_softplus:
        if "forward" in vars(mapping) or has_forward_hooks(mapping):
            return NotPlain(f"{owner}'s biased_softplus has its own forward or hooks")
        shift, floor = mapping.bias, mapping.min_val
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in (shift, floor)):
            return NotPlain(f"{owner}'s biased_softplus has a tensor bias or min_val, not numbers")
        return ScaleMapping("biased_softplus", float(shift), float(floor))
    name = getattr(mapping, "__name__", type(mapping).__name__)
    return NotPlain(f"{owner}'s scale_mapping {name} is not one the fast paths compute ({_SUPPORTED_MAPPINGS})")


def describe_scale_head(head: nn.Module) -> ScaleHead | NotPlain:
    """``head`` (one of :func:`gaussian_heads`) as a :class:`ScaleHead`, or :class:`NotPlain` saying why not."""
    from .policies import StateIndependentScale

    kind = type(head)
    name = kind.__name__
    if "forward" in vars(head):
        return NotPlain(f"{name} has a forward set on the instance")
    if kind is StateIndependentScale:
        return ScaleHead(head, "log_std", parameter=head.log_std)
    if kind not in (NormalParamExtractor, AddStateIndependentNormalScale):
        known = ", ".join(t.__name__ for t in gaussian_heads())
        return NotPlain(f"{name} is not a scale head the fast paths know ({known})")
    lower_bound = head.scale_lb
    if not isinstance(lower_bound, Real) or isinstance(lower_bound, bool):
        return NotPlain(f"{name}'s scale_lb is a {type(lower_bound).__name__}, not a number")
    if kind is NormalParamExtractor:
        mapping = _describe_mapping(name, head.scale_mapping)
        if not mapping:
            return mapping
        return ScaleHead(head, "state_dependent", mapping, float(lower_bound))
    try:  # the mapping is named by a string and looked up by tensordict at each call
        resolved = mappings(head.scale_mapping)
    except Exception as error:  # tensordict raises NotImplementedError or ValueError for unknown names
        return NotPlain(f"{name}'s scale_mapping {head.scale_mapping!r} is not one of tensordict's mappings: {error}")
    mapping = _describe_mapping(name, resolved)
    if not mapping:
        return mapping
    return ScaleHead(head, "state_independent", mapping, float(lower_bound), head.state_independent_scale)
