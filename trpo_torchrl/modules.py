"""What a network is, structurally: a plain MLP of these layers, or the reason it is not.

Every fast path replaces a module's own forward pass with its own arithmetic: the actor step's
explicit linearisation, the fused critic fit, the collection-time samplers. That is only correct
when the module computes exactly the composition its children describe, so they all ask one
question here, :func:`describe_mlp`, and take the general path whenever the answer is
:class:`NotPlain`.

What counts as plain: an optional parameter-free preprocessing prefix (e.g. an observation
normaliser), then ``Linear (activation Linear)*`` with every ``Linear`` biased and every hidden
activation ``Tanh`` or ``ReLU``, then optionally one head module of a type the caller names.
Containers are opened only when their forward pass is known to be "run the children in order":
an exact ``nn.Sequential`` and torchrl's ``MLP`` with an integer output size. A subclass with its
own ``forward``, a forward set on one instance, or forward hooks anywhere make a module opaque.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import MLP

__all__ = [
    "MLPDescription",
    "NotPlain",
    "describe_mlp",
    "has_forward_hooks",
    "plain_tensordict_module",
    "sequential_leaves",
    "ACTIVATIONS",
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
