"""The actor step on a GPU equals the same step on the CPU (float64): the CUDA CG op, the plain-MLP
plan's products and candidates, and the population's one-piece line search on the device.
Skipped without a CUDA device."""

import copy

import pytest
import torch
from tensordict import TensorDict

from tests._support import needs_cuda
from tests._trpo_batches import assert_same_step, collect, make_actor, make_critic
from trpo_torchrl import TRPOLoss, TrustRegionUpdate
from trpo_torchrl.population import PopulationTrustRegionUpdate

pytestmark = needs_cuda

CUDA = torch.device("cuda")


def _step(actor, batch, **options):
    update = TrustRegionUpdate(TRPOLoss(actor, make_critic(dtype=torch.float64).to(batch.device)), **options)
    metrics = update(batch)
    return update.flat_parameters().cpu(), metrics.cpu()


@pytest.mark.parametrize("fast_mlp", [True, False])
@pytest.mark.parametrize(
    "kind,fvp",
    [("gaussian", "gauss_newton"), ("categorical", "gauss_newton"), ("gaussian_state_scale", "kl_hessian")],
)
def test_the_update_on_cuda_equals_the_update_on_cpu(kind, fvp, fast_mlp):
    actor = make_actor(kind, seed=5, dtype=torch.float64)
    batch = collect(actor, 256, seed=6, dtype=torch.float64)
    gpu_actor = copy.deepcopy(actor).to(CUDA)
    on_cpu = _step(actor, batch, fvp=fvp, max_kl=0.02, fast_mlp=fast_mlp)
    on_gpu = _step(gpu_actor, batch.to(CUDA), fvp=fvp, max_kl=0.02, fast_mlp=fast_mlp)
    assert on_gpu[1]["step_accepted"]
    assert_same_step(on_gpu, on_cpu)


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_the_population_update_on_cuda_equals_the_one_on_cpu(kind):
    # 4 members x 128 states x 10 candidates: one piece on the GPU, member chunks on the CPU
    actors = [make_actor(kind, seed=10 + m, dtype=torch.float64) for m in range(4)]
    batches = [collect(a, 128, seed=20 + m, dtype=torch.float64) for m, a in enumerate(actors)]
    results = []
    for device in (torch.device("cpu"), CUDA):
        params = TensorDict.from_modules(*(copy.deepcopy(a).to(device) for a in actors), as_module=True)
        loss = TRPOLoss(
            make_actor(kind, seed=99, dtype=torch.float64).to(device), make_critic(dtype=torch.float64).to(device)
        )
        update = PopulationTrustRegionUpdate(loss, params, max_kl=[0.01, 0.02, 1e-9, 0.04])
        update.CANDIDATE_ROWS = 1280  # one member per chunk on the CPU
        metrics = update(torch.stack(batches).to(device))
        results.append((update.flat_parameters().cpu(), metrics.cpu()))
    assert results[1][1]["step_accepted"].sum() >= 3
    assert_same_step(results[1], results[0])
