"""The compiled ops' Python faces. Each runs the ``trpo_torchrl._C`` kernel when it is loaded
and the pure-PyTorch reference (:mod:`trpo_torchrl.ops.reference`) otherwise."""

from ._extension import extension_loaded, library_loaded
from .gae import generalized_advantage_estimate

__all__ = ["extension_loaded", "library_loaded", "generalized_advantage_estimate"]
