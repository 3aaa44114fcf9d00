"""Recurrent policies and critics: TorchRL ``LSTMModule``/``GRUModule`` re-run over whole sequences.

A recurrent policy's action distribution at step t depends on the hidden state
``h_t = f_θ(h_{t-1}, o_t)``, so π_θ on a batch is the recurrence re-run over each sequence with θ,
not one step at a time from the stored states. :func:`replaying` runs every ``LSTMModule`` and
``GRUModule`` of a module through :func:`lstm_sequence` / :func:`gru_sequence`: the same weights,
the cell written with plain tensor operations over the ``[B, T]`` batch, so that

* a segment (a batch row) starts from the hidden state the collector stored at its first step, and
  restarts from zero where ``is_init`` marks an episode start, exactly the inputs the module saw
  while collecting one step at a time (it zeroes the state at ``is_init`` itself): at θ_old the
  replay gives the collected distribution, ratio 1 up to rounding;
* the gradient flows through the recurrence (backpropagation through time within each segment);
* every ``torch.func`` transform the trust-region step uses works through it: ``vjp``, ``jvp``,
  the double-vjp of the Gauss–Newton product, the double backward of the KL-Hessian product and
  ``vmap`` over line-search candidates. PyTorch's fused kernels have no double backward (cuDNN's
  ``_cudnn_rnn``) and the packed sequences TorchRL's recurrent mode uses at episode boundaries
  cannot run under ``torch.func`` at all, which is why TRPO through the modules' own forward fails.

No host synchronisation and no data-dependent shape: resets are a mask inside the time loop.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torchrl.modules import GRUModule, LSTMModule

__all__ = ["gru_sequence", "lstm_sequence", "recurrent_modules", "replaying"]

RECURRENT_MODULES = (LSTMModule, GRUModule)


def recurrent_modules(module: nn.Module, where: str = "TRPOLoss") -> list[tuple[str, nn.Module]]:
    """The ``LSTMModule``/``GRUModule`` submodules of ``module`` (name, module), each checked to be
    one :func:`replaying` can re-run; a bidirectional, projected or dropout RNN is a ValueError."""
    found = [
        (name or type(module).__name__, m) for name, m in module.named_modules() if isinstance(m, RECURRENT_MODULES)
    ]
    for name, m in found:
        rnn = m.lstm if isinstance(m, LSTMModule) else m.gru
        problems = []
        if rnn.bidirectional:
            problems.append("bidirectional")
        if getattr(rnn, "proj_size", 0):
            problems.append(f"proj_size={rnn.proj_size}")
        if rnn.dropout:
            problems.append(f"dropout={rnn.dropout}")
        if problems:
            raise ValueError(
                f"{where}: the recurrent module {name!r} ({type(m).__name__}) has {', '.join(problems)}; the "
                "sequence replay supports unidirectional LSTM/GRU layers without projection or dropout"
            )
    return found


def state_keys(module: nn.Module) -> list:
    """The entries a recurrent module reads besides its input: its stored hidden state(s), ``is_init``."""
    return list(module.in_keys[1:])


def _layer_weights(rnn: nn.RNNBase, layer: int):
    names = [f"weight_ih_l{layer}", f"weight_hh_l{layer}", f"bias_ih_l{layer}", f"bias_hh_l{layer}"]
    return [getattr(rnn, n) if hasattr(rnn, n) else None for n in names]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight, bias)


def lstm_sequence(
    rnn: nn.RNNBase, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, is_init: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rnn``'s LSTM (weights read from it, so ``functional_call`` substitutes them) over ``x [B, T, in]``.

    ``h, c [B, T, layers, hidden]``: the stored states; each row starts from its step-0 entry, and
    the state is zero at steps where ``is_init [B, T]`` is set. Returns the last layer's outputs
    ``[B, T, hidden]`` and the states after each step ``[B, T, layers, hidden]``.
    """
    keep = (~is_init).unsqueeze(-1).to(x.dtype)  # [B, T, 1]: 0 at an episode start
    size = rnn.hidden_size
    hs, cs = [], []
    layer_in = x
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = _layer_weights(rnn, layer)
        # the input part of every step in one product, both biases folded in: the time loop then
        # runs few operations per step (each one a node every Fisher-vector product walks through)
        gates_x = _linear(layer_in, w_ih, b_ih)
        if b_hh is not None:
            gates_x = gates_x + b_hh
        w_hh_t = w_hh.t()
        h_t, c_t = h[:, 0, layer], c[:, 0, layer]
        outs, cells = [], []
        for t in range(x.shape[1]):
            h_t, c_t = h_t * keep[:, t], c_t * keep[:, t]
            gates = torch.addmm(gates_x[:, t], h_t, w_hh_t)  # i, f, g, o
            i, f, _, o = torch.sigmoid(gates).chunk(4, dim=-1)
            g = torch.tanh(gates[:, 2 * size : 3 * size])
            c_t = torch.addcmul(f * c_t, i, g)
            h_t = o * torch.tanh(c_t)
            outs.append(h_t)
            cells.append(c_t)
        layer_in = torch.stack(outs, 1)
        hs.append(layer_in)
        cs.append(torch.stack(cells, 1))
    return layer_in, torch.stack(hs, 2), torch.stack(cs, 2)


def gru_sequence(
    rnn: nn.RNNBase, x: torch.Tensor, h: torch.Tensor, is_init: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rnn``'s GRU over ``x [B, T, in]``, as :func:`lstm_sequence` (one state ``h``)."""
    keep = (~is_init).unsqueeze(-1).to(x.dtype)
    size = rnn.hidden_size
    hs = []
    layer_in = x
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = _layer_weights(rnn, layer)
        gates_x = _linear(layer_in, w_ih, b_ih)  # r, z, n
        w_hh_t = w_hh.t()
        h_t = h[:, 0, layer]
        outs = []
        for t in range(x.shape[1]):
            h_t = h_t * keep[:, t]
            gates_h = h_t @ w_hh_t if b_hh is None else torch.addmm(b_hh, h_t, w_hh_t)
            r, z = torch.sigmoid(gates_x[:, t, : 2 * size] + gates_h[:, : 2 * size]).chunk(2, dim=-1)
            n = torch.tanh(torch.addcmul(gates_x[:, t, 2 * size :], r, gates_h[:, 2 * size :]))
            h_t = n + z * (h_t - n)  # (1 - z) n + z h
            outs.append(h_t)
        layer_in = torch.stack(outs, 1)
        hs.append(layer_in)
    return layer_in, torch.stack(hs, 2)


def _replay_forward(module: nn.Module):
    """A forward for ``module`` (an LSTMModule or GRUModule) that runs the sequence replay on a
    ``[B, T]`` TensorDict and writes the module's outputs (features and the states after each step)."""
    is_lstm = isinstance(module, LSTMModule)
    rnn = module.lstm if is_lstm else module.gru

    def forward(tensordict, *args, **kwargs):
        if tensordict.batch_dims != 2:
            raise ValueError(
                f"the sequence replay of {type(module).__name__} needs a [B, T] batch, got batch_size "
                f"{tuple(tensordict.batch_size)}"
            )
        x = tensordict.get(module.in_keys[0])
        is_init = tensordict.get(module.in_keys[-1]).reshape(tensordict.batch_size)
        if is_lstm:
            y, h, c = lstm_sequence(
                rnn, x, tensordict.get(module.in_keys[1]), tensordict.get(module.in_keys[2]), is_init
            )
            outs = (y, h, c)
        else:
            y, h = gru_sequence(rnn, x, tensordict.get(module.in_keys[1]), is_init)
            outs = (y, h)
        for key, value in zip(module.out_keys, outs):
            tensordict.set(key, value)
        return tensordict

    return forward


@contextlib.contextmanager
def replaying(modules: list[tuple[str, nn.Module]]):
    """Within the block, each of ``modules`` (from :func:`recurrent_modules`) runs the sequence replay
    instead of its own forward (the instances' ``forward`` is swapped and restored after)."""
    saved = []
    try:
        for _, m in modules:
            saved.append((m, m.__dict__.get("forward")))
            m.forward = _replay_forward(m)
        yield
    finally:
        for m, previous in saved:
            if previous is None:
                del m.forward
            else:
                m.forward = previous
