"""Data-parallel update over torch.distributed: two gloo ranks on loopback against one process."""

from __future__ import annotations

import math
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tensordict import TensorDict

from tests._support import free_port
from tests._trpo_batches import collect, make_actor, make_critic, trajectory_batch
from trpo_torchrl import CriticFit, PopulationTrustRegionUpdate, TRPOLoss, TrustRegionUpdate
from trpo_torchrl.distributed import all_gather_cat, all_reduce_mean, global_mean_std

WORLD = 2
ENVS, STEPS = 4, 16  # per rank
CRITIC_EPOCHS = 3


def _models():
    actor = make_actor("gaussian", dtype=torch.float64)
    critic = make_critic(dtype=torch.float64)
    loss = TRPOLoss(actor, critic).make_value_estimator(gamma=0.99, lmbda=0.95)
    return actor, critic, loss


def _shard(actor, loss, rank: int):
    """Rank ``rank``'s batch, built deterministically (no simulator): [ENVS, STEPS] in float64 with
    advantages and λ-returns computed on this shard alone, as a rank does."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        td = trajectory_batch(actor, ENVS, STEPS, seed=100 + rank)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        loss.value_estimator(td)
    return td


def _step(loss, batch, process_group):
    update = TrustRegionUpdate(loss, max_kl=0.02, cg_iters=10, process_group=process_group)
    metrics = update(batch)
    # the whole shard (or, for one process, the whole batch) per Adam step: the minibatch schedule is
    # then the same for the ranks and for the single process, whatever order the shuffle picks
    fit = CriticFit(
        loss,
        lr=1e-2,
        epochs=CRITIC_EPOCHS,
        minibatch_size=batch.numel(),
        process_group=process_group,
        generator=torch.Generator().manual_seed(0),
    )
    fit(batch)
    return metrics


# the population scenarios: the plain-MLP backend with Gauss-Newton products, and torch.func with the
# KL Hessian
POPULATION_OPTIONS = {"mlp": {}, "functional_kl_hessian": {"fast_mlp": False, "fvp": "kl_hessian"}}


def _population(process_group, **options):
    """Three members (own weights, own batches [3, 64], float64) and their population update."""
    actors = [make_actor("gaussian", seed=10 + m, dtype=torch.float64) for m in range(3)]
    batch = torch.stack([collect(a, 64, seed=20 + m, dtype=torch.float64) for m, a in enumerate(actors)])
    params = TensorDict.from_modules(*actors, as_module=True)
    loss = TRPOLoss(make_actor("gaussian", seed=99, dtype=torch.float64), make_critic(dtype=torch.float64))
    update = PopulationTrustRegionUpdate(
        loss, params, max_kl=[0.01, 0.02, 0.03], process_group=process_group, **options
    )
    return update, batch


def _params(actor, critic) -> dict[str, torch.Tensor]:
    return {
        **{f"actor.{k}": v.detach().clone() for k, v in actor.named_parameters()},
        **{f"critic.{k}": v.detach().clone() for k, v in critic.named_parameters()},
    }


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    """One rank: the same three scenarios in order, results written to ``rank<r>.pt``."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    results = {}
    try:
        # 1. a clean iteration
        actor, critic, loss = _models()
        metrics = _step(loss, _shard(actor, loss, rank), "world")
        results["clean"] = {"params": _params(actor, critic), "metrics": metrics.to_dict()}

        # 2. rank 1's stored log-probabilities are corrupted: its surrogate is NaN, and so is the
        #    averaged gradient every rank sees
        actor, critic, loss = _models()
        before = _params(actor, critic)
        batch = _shard(actor, loss, rank)
        if rank == 1:
            batch["action_log_prob"][0, 3] = math.nan
        update = TrustRegionUpdate(loss, max_kl=0.02, process_group="world")
        metrics = update(batch)
        results["nan_log_prob"] = {"before": before, "params": _params(actor, critic), "metrics": metrics.to_dict()}

        # 3. rank 1's advantages are NaN: the batch check fails on every rank, nobody waits forever
        actor, critic, loss = _models()
        batch = _shard(actor, loss, rank)
        if rank == 1:
            batch["advantage"][1, 2] = math.nan
        try:
            TrustRegionUpdate(loss, process_group="world")(batch)
            results["nan_advantage"] = None
        except RuntimeError as err:
            results["nan_advantage"] = str(err)

        # 4. a population: each rank holds half of every member's states
        for name, options in POPULATION_OPTIONS.items():
            update, batch = _population("world", **options)
            half = batch.shape[1] // WORLD
            metrics = update(batch[:, rank * half : (rank + 1) * half])
            results[f"population_{name}"] = {"params": update.flat_parameters(), "metrics": metrics.to_dict()}

        # 5. the helpers themselves
        x = torch.arange(6, dtype=torch.float64) + 10 * rank
        mean, std = global_mean_std(x, dist.group.WORLD)
        results["helpers"] = {
            "gathered": all_gather_cat(x, dist.group.WORLD),
            "mean_of_ranks": all_reduce_mean(torch.tensor([float(rank)]), dist.group.WORLD),
            "mean": mean,
            "std": std,
        }
    except Exception:
        results["error"] = traceback.format_exc()
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Runs the two ranks once for the whole module; returns each rank's results."""
    out = tmp_path_factory.mktemp("ranks")
    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():  # a hung collective must fail the test, not the whole run
            p.kill()
            p.join()
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r} failed:\n{res['error']}"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return results


def _single_process_reference():
    """One process given both shards concatenated along the environment dimension."""
    actor, critic, loss = _models()
    # each shard is built (and its advantages computed) exactly as on its rank
    batch = torch.cat([_shard(actor, loss, r) for r in range(WORLD)], dim=0)
    metrics = _step(loss, batch, None)
    return _params(actor, critic), metrics


# the ranks fixture spawns two processes once for the module: every test that reads it is slow
@pytest.mark.slow
def test_two_ranks_take_the_single_process_step(ranks):
    expected, metrics = _single_process_reference()
    assert bool(metrics["step_accepted"])  # the step is real: the comparison below means something
    r0, r1 = ranks[0]["clean"], ranks[1]["clean"]
    initial = _params(*_models()[:2])
    for name, want in expected.items():
        # every rank writes bit-identical parameters...
        assert torch.equal(r0["params"][name], r1["params"][name]), name
        # ...equal to the single process on the whole batch
        torch.testing.assert_close(r0["params"][name], want, rtol=0, atol=1e-10, msg=name)
        assert not torch.equal(want, initial[name]), f"{name} did not move"
    for key in ("kl", "surrogate_after", "expected_improvement", "grad_norm", "fisher_curvature"):
        assert r0["metrics"][key] == r1["metrics"][key], key
        torch.testing.assert_close(r0["metrics"][key], metrics[key], rtol=0, atol=1e-10, msg=key)


@pytest.mark.parametrize("name", list(POPULATION_OPTIONS))
@pytest.mark.slow
def test_two_ranks_take_the_single_process_population_step(ranks, name):
    update, batch = _population(None, **POPULATION_OPTIONS[name])
    before = update.flat_parameters()
    metrics = update(batch)
    expected = update.flat_parameters()
    assert metrics["step_accepted"].all()  # every member really steps: the comparison means something
    r0, r1 = ranks[0][f"population_{name}"], ranks[1][f"population_{name}"]
    assert torch.equal(r0["params"], r1["params"])
    torch.testing.assert_close(r0["params"], expected, rtol=0, atol=1e-10)
    assert not torch.equal(expected, before)
    for key in ("kl", "surrogate_after", "expected_improvement", "grad_norm", "fisher_curvature"):
        assert torch.equal(r0["metrics"][key], r1["metrics"][key]), key
        torch.testing.assert_close(r0["metrics"][key], metrics[key], rtol=0, atol=1e-10, msg=key)


@pytest.mark.slow
def test_a_rank_with_a_non_finite_batch_makes_every_rank_reject(ranks):
    for r, res in enumerate(ranks):
        res = res["nan_log_prob"]
        assert not bool(res["metrics"]["step_accepted"]), f"rank {r} accepted a step"
        for name, value in res["before"].items():
            assert torch.equal(res["params"][name], value), f"rank {r}: {name} changed"


@pytest.mark.slow
def test_non_finite_advantages_on_one_rank_fail_every_rank(ranks):
    for r, res in enumerate(ranks):
        assert res["nan_advantage"] is not None and "non-finite" in res["nan_advantage"], f"rank {r}"


@pytest.mark.slow
def test_collective_helpers(ranks):
    full = torch.cat([torch.arange(6, dtype=torch.float64) + 10 * r for r in range(WORLD)])
    for res in ranks:
        h = res["helpers"]
        assert torch.equal(h["gathered"], full)
        assert h["mean_of_ranks"].item() == 0.5
        torch.testing.assert_close(h["mean"], full.mean(), rtol=0, atol=1e-12)
        torch.testing.assert_close(h["std"], full.std(), rtol=0, atol=1e-12)


def test_no_process_group_changes_nothing():
    x = torch.randn(5)
    assert all_reduce_mean(x, None) is x
    assert all_gather_cat(x, None) is x
    mean, std = global_mean_std(x, None)
    assert torch.equal(mean, x.mean()) and torch.equal(std, x.std())
    with pytest.raises(ValueError, match="process_group"):
        TrustRegionUpdate(_models()[2], process_group="everyone")
    with pytest.raises(RuntimeError, match="init_process_group"):
        CriticFit(_models()[2], process_group="world")
