"""trpo_torchrl: Trust Region Policy Optimization for TorchRL, with fused C++/CUDA kernels.

* :class:`TRPOLoss` – the TRPO surrogate, mean KL and critic loss as a TorchRL loss module.
* :class:`TrustRegionUpdate` – the actor step: Fisher-vector products, CG, KL-scaled step, line search.
* :class:`PopulationTrustRegionUpdate` – M independent actor steps (seeds, agents) as one batched step.
* :class:`CriticFit` – the critic's regression on the λ-returns; :func:`fit_critics` fits M of them in one call.
* :func:`gaussian_actor`, :func:`categorical_actor` – policies whose batches hold what TRPOLoss reads.
* :class:`FusedGAE` – TorchRL's GAE value estimator on a fused C++/CUDA scan.
* :class:`DirectCollector` – a TorchRL collector over a Gymnasium vector env at a fraction of ``Collector``'s per-step cost.
* :class:`PopulationCollector` – several DirectCollectors' batches in one loop, their actors run as one batched network.
* :mod:`trpo_torchrl.ops` – the compiled ops and their pure-PyTorch references.
* :mod:`trpo_torchrl.envs` – registers ``CartPoleNoVel-v1`` and ``PendulumNoVel-v1`` with gymnasium (velocities removed).
"""

from . import envs  # noqa: F401  (registers the NoVel tasks with gymnasium)
from .collectors import DirectCollector, PopulationCollector
from .critic import CriticFit, fit_critics
from .loss import TRPOLoss
from .ops import extension_loaded
from .policies import StateIndependentScale, categorical_actor, gaussian_actor
from .population import PopulationTrustRegionUpdate, population_policy
from .update import TrustRegionUpdate
from .value import FusedGAE

__version__ = "0.1.0"

__all__ = [
    "CriticFit",
    "DirectCollector",
    "FusedGAE",
    "PopulationCollector",
    "PopulationTrustRegionUpdate",
    "StateIndependentScale",
    "TRPOLoss",
    "TrustRegionUpdate",
    "categorical_actor",
    "extension_loaded",
    "fit_critics",
    "gaussian_actor",
    "population_policy",
    "__version__",
]
