"""Python face of the fused critic regression: argument checks and dispatch of a whole
epochs × minibatches Adam fit of an MLP — or of M such fits stacked along a member dimension — to
``trpo_torchrl::mlp_fit_adam`` (or the reference)."""

from __future__ import annotations

import math
from numbers import Real

import torch

from . import reference
from ._extension import compiled_op, register_fake

__all__ = ["mlp_fit_adam"]


def mlp_fit_adam(
    params: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    order: torch.Tensor,
    *,
    minibatch_size: int,
    activation: str = "tanh",
    coeff: float = 1.0,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    step: int = 0,
) -> torch.Tensor:
    """Fits an MLP value function by Adam on squared error, every step of the fit in one call.

    M critics of one architecture fit in one call when every tensor carries a leading member
    dimension M (weights ``[M, out, in]``, biases ``[M, out]``, their Adam moments alike, ``inputs``
    ``[M, N, features]``, ``targets`` ``[M, N]``, ``order`` ``[M, epochs, N]``): member m is fitted
    on its own states in its own order with its own parameters and Adam state, exactly as a call
    with member m's slices alone; the hyperparameters and ``step`` are shared. An unstacked call is
    the stacked one with M = 1.

    Args:
        params: ``[W_0, b_0, W_1, b_1, ...]`` of an MLP whose hidden layers use ``activation`` and
            whose last layer is linear with one output; updated in place.
        exp_avgs, exp_avg_sqs: Adam's first and second moments, one per parameter; updated in place.
        inputs: ``[N, features]`` states (already through any parameter-free preprocessing).
        targets: ``[N]`` regression targets (λ-returns).
        order: ``[epochs, N]`` int64, one permutation of the states per epoch; epoch e's minibatches
            are consecutive slices of ``minibatch_size`` of ``order[e]`` (the last may be shorter).
        minibatch_size: states per Adam step.
        activation: ``"tanh"`` or ``"relu"``.
        coeff: the loss is ``coeff · mean((value − target)²)`` per minibatch.
        lr, betas, eps: Adam's hyperparameters (no weight decay, no amsgrad), as torch.optim.Adam.
        step: Adam steps already taken (sets the bias corrections).

    Returns:
        the loss of every minibatch, ``[epochs · ceil(N / minibatch_size)]``, in order
        (``[M, epochs · ceil(N / minibatch_size)]`` for M stacked critics).
    """
    for name, group in (("params", params), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        if not isinstance(group, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in group):
            raise TypeError(f"mlp_fit_adam: {name} must be a list of tensors")
    if any(t.requires_grad for t in (inputs, targets)):
        inputs, targets = inputs.detach(), targets.detach()
    if not (isinstance(minibatch_size, int) and minibatch_size >= 1):
        raise ValueError(f"mlp_fit_adam: minibatch_size must be an int >= 1, got {minibatch_size!r}")
    if activation not in ("tanh", "relu"):
        raise ValueError(f"mlp_fit_adam: activation must be 'tanh' or 'relu', got {activation!r}")
    if not (isinstance(step, int) and step >= 0):
        raise ValueError(f"mlp_fit_adam: step must be an int >= 0, got {step!r}")
    # torch.optim.Adam's own ranges, finite besides
    for name, value, low, high in (
        ("lr", lr, 0.0, math.inf),
        ("eps", eps, 0.0, math.inf),
        ("betas[0]", betas[0], 0.0, 1.0),
        ("betas[1]", betas[1], 0.0, 1.0),
    ):
        if not (isinstance(value, Real) and math.isfinite(value) and low <= value < high):
            raise ValueError(f"mlp_fit_adam: {name} must be a finite number in [{low}, {high}), got {value!r}")
    args = (
        list(params),
        list(exp_avgs),
        list(exp_avg_sqs),
        inputs,
        targets,
        order,
        minibatch_size,
        activation,
        float(coeff),
        float(lr),
        float(betas[0]),
        float(betas[1]),
        float(eps),
        step,
    )
    op = compiled_op("mlp_fit_adam", inputs.device, "mlp_fit_adam")
    if op is not None:
        with torch.no_grad():
            losses = op(*args)
        # the CPU kernel writes through data pointers: tell autograd these tensors changed, so a
        # graph that saved them fails loudly instead of differentiating through the new values
        for t in (*params, *exp_avgs, *exp_avg_sqs):
            torch.autograd.graph.increment_version(t)
        return losses
    _check_reference_args(params, exp_avgs, exp_avg_sqs, inputs, targets, order)
    return reference.mlp_fit_adam(*args)


def _check_reference_args(params, exp_avgs, exp_avg_sqs, inputs, targets, order) -> None:
    """The kernel's own shape checks, for the reference path (the kernel checks in C++)."""
    if len(params) == 0 or len(params) % 2 or len(exp_avgs) != len(params) or len(exp_avg_sqs) != len(params):
        raise ValueError("mlp_fit_adam: params must be [weight_0, bias_0, ...] with one Adam moment each")
    if inputs.dim() not in (2, 3):
        raise ValueError(
            f"mlp_fit_adam: inputs must be [N, features] (one critic) or [M, N, features] (M critics), "
            f"got {tuple(inputs.shape)}"
        )
    lead = tuple(inputs.shape[:-2])  # (M,) for stacked critics, () for one
    m, members = ("M, ", f"M = {lead[0]} members, ") if lead else ("", "")
    num_states = inputs.shape[-2]
    if tuple(targets.shape) != (*lead, num_states):
        raise ValueError(
            f"mlp_fit_adam: targets must be [{m}N] ({members}N = {num_states} states, as the inputs), "
            f"got {tuple(targets.shape)}"
        )
    if (
        order.dim() != len(lead) + 2
        or tuple(order.shape[: len(lead)]) != lead
        or order.shape[-1] != num_states
        or order.dtype != torch.int64
    ):
        raise ValueError(
            f"mlp_fit_adam: order must be int64 [{m}epochs, N] ({members}N = {num_states} states, as the "
            f"inputs), got {order.dtype} {tuple(order.shape)}"
        )
    width = inputs.shape[-1]
    for layer in range(len(params) // 2):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        if weight.dim() != len(lead) + 2 or tuple(weight.shape[: len(lead)]) != lead or weight.shape[-1] != width:
            raise ValueError(
                f"mlp_fit_adam: weight {layer} must be [{m}out, {width}]"
                f"{f' ({members}as the inputs)' if lead else ''}, got {tuple(weight.shape)}"
            )
        if tuple(bias.shape) != (*lead, weight.shape[-2]):
            raise ValueError(f"mlp_fit_adam: bias {layer} must be [{m}{weight.shape[-2]}], got {tuple(bias.shape)}")
        width = weight.shape[-2]
    if width != 1:
        raise ValueError(f"mlp_fit_adam: the last layer must have one output, got {width}")
    for i, p in enumerate(params):
        if exp_avgs[i].shape != p.shape or exp_avg_sqs[i].shape != p.shape:
            raise ValueError(f"mlp_fit_adam: the Adam state of parameter {i} must have its shape {tuple(p.shape)}")
    if order.numel():  # as the kernels' check: on the device, no host sync
        torch._assert_async(
            ((order >= 0) & (order < num_states)).all(),
            f"mlp_fit_adam: order holds indices outside [0, {num_states}) (each row must permute the states)",
        )


@register_fake("mlp_fit_adam")
def _mlp_fit_adam_fake(
    params,
    exp_avgs,
    exp_avg_sqs,
    inputs,
    targets,
    order,
    minibatch_size,
    activation,
    coeff,
    lr,
    beta1,
    beta2,
    eps,
    step,
):
    if minibatch_size < 1:
        raise ValueError(f"mlp_fit_adam: minibatch_size must be >= 1, got {minibatch_size}")
    if inputs.dim() not in (2, 3):
        raise ValueError(f"mlp_fit_adam: inputs must be [N, features] or [M, N, features], got {tuple(inputs.shape)}")
    per_member = order.shape[-2] * -(-inputs.shape[-2] // minibatch_size)
    return inputs.new_empty(*inputs.shape[:-2], per_member)
