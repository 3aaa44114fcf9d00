"""trpo_torchrl: Trust Region Policy Optimization for TorchRL, with fused C++/CUDA kernels.

* :class:`FusedGAE` – TorchRL's GAE value estimator on a fused C++/CUDA scan.
* :mod:`trpo_torchrl.ops` – the compiled ops and their pure-PyTorch references.
"""

from .ops import extension_loaded
from .value import FusedGAE

__version__ = "0.1.0"

__all__ = ["FusedGAE", "extension_loaded", "__version__"]
