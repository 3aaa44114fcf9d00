"""The compiled ops' Python faces. Each runs the ``trpo_torchrl._C`` kernel when it is loaded
and the pure-PyTorch reference (:mod:`trpo_torchrl.ops.reference`) otherwise."""

from ._extension import extension_loaded, library_loaded
from .cg import CGInfo, conjugate_gradient
from .gae import generalized_advantage_estimate
from .mlp_fit import mlp_fit_adam
from .tanh import tanh, tanh_

__all__ = [
    "CGInfo",
    "conjugate_gradient",
    "extension_loaded",
    "library_loaded",
    "generalized_advantage_estimate",
    "mlp_fit_adam",
    "tanh",
    "tanh_",
]
