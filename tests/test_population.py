"""PopulationTrustRegionUpdate: M members in one step equal M separate steps, each member accepts or
rejects on its own, nothing syncs with the host, and bad populations fail with a clear message."""

import pytest
import torch
from tensordict import TensorDict

from tests._trpo_batches import assert_same_step, collect, make_actor, make_critic
from trpo_torchrl import TRPOLoss, TrustRegionUpdate
from trpo_torchrl.backends import MLPBackend
from trpo_torchrl.population import PopulationTrustRegionUpdate, population_policy

NUM_STATES = 64


def population(kind: str, members: int, *, dtype=torch.float64, kl_reduction: str = "sum", **options):
    """M actors of one architecture (different seeds), their own batches, and a population update
    over their stacked parameters (the template actor's own values are deliberately different)."""
    actors = [make_actor(kind, seed=10 + m, dtype=dtype) for m in range(members)]
    batches = [collect(a, NUM_STATES, seed=20 + m, dtype=dtype) for m, a in enumerate(actors)]
    params = TensorDict.from_modules(*actors, as_module=True)
    template = make_actor(kind, seed=99, dtype=dtype)
    loss = TRPOLoss(template, make_critic(dtype=dtype), kl_reduction=kl_reduction)
    update = PopulationTrustRegionUpdate(loss, params, **options)
    return actors, batches, params, update


@pytest.mark.parametrize(
    "kind,fvp,kl_reduction",
    [
        ("gaussian", "gauss_newton", "sum"),
        ("categorical", "gauss_newton", "sum"),
        ("gaussian_state_scale", "kl_hessian", "sum"),
        ("gaussian", "gauss_newton", "mean"),
        ("gaussian_state_scale", "kl_hessian", "mean"),
    ],
)
def test_population_equals_separate_single_member_updates(kind, fvp, kl_reduction):
    actors, batches, _, update = population(kind, 4, fvp=fvp, max_kl=0.02, kl_reduction=kl_reduction)
    metrics = update(torch.stack(batches))
    assert metrics.batch_size == torch.Size([4])
    after = update.flat_parameters()
    for m, (actor, batch) in enumerate(zip(actors, batches)):
        single_loss = TRPOLoss(actor, make_critic(dtype=torch.float64), kl_reduction=kl_reduction)
        # the same products as the population's (torch.func); the plain-MLP path agrees with it to
        # rounding, tested in test_backend_mlp.py
        single = TrustRegionUpdate(single_loss, fvp=fvp, max_kl=0.02, fast_mlp=False)
        before = single.flat_parameters()
        expected = single(batch)
        assert expected["step_accepted"] and metrics["step_accepted"][m]
        torch.testing.assert_close(after[m], single.flat_parameters(), rtol=0, atol=1e-10)
        assert not torch.equal(after[m], before)  # the member really moved
        for key in ("kl", "surrogate_after", "expected_improvement", "backtrack_steps", "cg_residual"):
            torch.testing.assert_close(metrics[key][m], expected[key], rtol=1e-8, atol=1e-10)


def test_each_member_accepts_or_rejects_on_its_own():
    actors, batches, params, update = population("gaussian", 3, max_kl=[0.01, 0.01, 0.04])
    # member 1's advantages carry no signal: no candidate improves, so its step must be rejected
    batches[1]["advantage"] = torch.zeros_like(batches[1]["advantage"])
    state = update.flat_parameters()
    leaves_before = params.clone()
    metrics = update(torch.stack(batches))
    assert metrics["step_accepted"].tolist() == [True, False, True]
    assert metrics["backtrack_steps"][1] == update.settings.backtrack_iters
    after = update.flat_parameters()
    assert torch.equal(after[1], state[1])
    for key, value in params.items(include_nested=True, leaves_only=True):
        assert torch.equal(value[1], leaves_before[key][1])  # the stored leaves too, bit for bit
    assert not torch.equal(after[0], state[0]) and not torch.equal(after[2], state[2])
    # each accepted member is inside its own radius, and the larger radius gave the larger step
    assert metrics["kl"][0] <= 0.01 and metrics["kl"][2] <= 0.04
    assert metrics["kl"][2] > metrics["kl"][0]
    # the metrics describe what was written: re-evaluate member 2 with a loss on its own parameters
    params[2].to_module(actors[2])
    check = TRPOLoss(actors[2], make_critic(dtype=torch.float64))(batches[2])
    torch.testing.assert_close(metrics["kl"][2], check["kl"])
    torch.testing.assert_close(metrics["surrogate_after"][2], check["surrogate"])


def test_the_population_update_never_syncs_with_the_host(monkeypatch):
    _, batches, _, update = population(
        "categorical", 3, dtype=torch.float32, fvp_subsample=0.5, generator=torch.Generator().manual_seed(0)
    )
    data = torch.stack(batches)
    state = update.flat_parameters()

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation inside the population update")

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "item", refuse)
        m.setattr(torch.Tensor, "__bool__", refuse)
        m.setattr(torch.Tensor, "tolist", refuse)
        metrics = update(data)
    assert metrics["step_accepted"].all()
    assert not torch.equal(update.flat_parameters(), state)


def test_population_policy_runs_each_member_with_its_own_parameters():
    actors, _, params, _ = population("gaussian", 3)
    obs = torch.randn(3, 5, 3, dtype=torch.float64)
    with torch.no_grad():
        out = population_policy(make_actor("gaussian", seed=99, dtype=torch.float64), params)(
            TensorDict({"observation": obs}, [3, 5])
        )
        for m, actor in enumerate(actors):
            own = actor(TensorDict({"observation": obs[m]}, [5]))
            torch.testing.assert_close(out["loc"][m], own["loc"])
            torch.testing.assert_close(out["scale"][m], own["scale"])
            # the stored log-probability is member m's own density of the action drawn for it
            logp = actor.build_dist_from_params(own).log_prob(out["action"][m])
            torch.testing.assert_close(out["action_log_prob"][m], logp)
    assert out["action"].shape == (3, 5, 2)


def test_bad_populations_and_batches_are_refused_with_a_clear_message():
    actors, batches, params, update = population("gaussian", 4)
    state = update.flat_parameters()
    with pytest.raises(ValueError, match=r"M=4"):
        update(torch.stack(batches[:3]))  # three members' data for four members
    with pytest.raises(ValueError, match=r"member first"):
        update(batches[0])  # a single member's [N] batch has no member dimension to match
    assert torch.equal(update.flat_parameters(), state)
    loss = TRPOLoss(make_actor("gaussian", dtype=torch.float64), make_critic(dtype=torch.float64))
    with pytest.raises(ValueError, match="max_kl has 2 values for 4 members"):
        PopulationTrustRegionUpdate(loss, params, max_kl=[0.01, 0.02])
    with pytest.raises(ValueError, match="max_kl"):
        PopulationTrustRegionUpdate(loss, params, max_kl=0.0)
    with pytest.raises(ValueError, match="batch size"):
        PopulationTrustRegionUpdate(loss, params.unsqueeze(0))
    wider = TensorDict.from_modules(*[make_actor("gaussian", hidden=8, dtype=torch.float64) for _ in range(2)])
    with pytest.raises(ValueError, match="expected"):
        PopulationTrustRegionUpdate(loss, wider)
    with pytest.raises(KeyError, match="no entry"):
        PopulationTrustRegionUpdate(loss, TensorDict({"w": torch.zeros(4, 3)}, [4]))
    with pytest.raises(ValueError, match="cg_iters"):
        PopulationTrustRegionUpdate(loss, params, cg_iters=0)


class _Shift(torch.nn.Module):
    """Subtracts a stored offset: a buffer that is member state, like a normaliser's statistics."""

    def __init__(self, offset):
        super().__init__()
        self.register_buffer("offset", offset)

    def forward(self, x):
        return x - self.offset


def test_member_buffers_are_each_members_own():
    from trpo_torchrl import gaussian_actor

    def actor_with_offset(seed, offset):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            _Shift(torch.full((3,), offset)), torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
        )
        return gaussian_actor(net, 2).double()

    actors = [actor_with_offset(m, 2.0 * m - 1.0) for m in range(2)]
    batches = [collect(a, NUM_STATES, seed=5 + m, dtype=torch.float64) for m, a in enumerate(actors)]
    params = TensorDict.from_modules(*actors, as_module=True)
    template = actor_with_offset(7, 100.0)  # its offset would ruin every member's policy if used
    update = PopulationTrustRegionUpdate(TRPOLoss(template, make_critic(dtype=torch.float64)), params)
    metrics = update(torch.stack(batches))
    # at θ_old each member's policy is exactly the one that collected its batch: KL 0 there
    assert metrics["step_accepted"].all()
    for m, actor in enumerate(actors):
        single = TrustRegionUpdate(TRPOLoss(actor, make_critic(dtype=torch.float64)), fast_mlp=False)
        single(batches[m])
        torch.testing.assert_close(update.flat_parameters()[m], single.flat_parameters(), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "kind,options",
    [
        ("gaussian", {}),
        ("categorical", {"kl_reduction": "mean"}),
        ("categorical_index", {"fvp_subsample": 0.5}),
        ("gaussian", {"fvp": "kl_hessian"}),  # the plan then gives the gradient and the candidates only
        ("gaussian", {"max_kl": [0.01, 1e-9, 0.02]}),  # one radius per member, one of them tiny
    ],
)
def test_the_plain_mlp_population_path_equals_the_torch_func_one(kind, options):
    results = []
    for fast in (True, False):
        _, batches, _, update = population(
            kind, 3, fast_mlp=fast, generator=torch.Generator().manual_seed(3), **options
        )
        backend = update.backends.for_batch(update.population_batch(torch.stack(batches)), members=True)
        assert (backend is update.backends.mlp) == fast
        metrics = update(torch.stack(batches))
        results.append((update.flat_parameters(), metrics))
    assert_same_step(*results)


def test_candidates_in_member_chunks_equal_one_piece():
    # 3 members x 64 states x 10 candidates: 640 rows per member, so 700 rows means one member per chunk
    results = []
    for rows in (MLPBackend.CANDIDATE_ROWS, 700):
        _, batches, _, update = population("gaussian", 3, max_kl=0.05)
        update.backends.mlp.CANDIDATE_ROWS = rows
        metrics = update(torch.stack(batches))
        results.append((update.flat_parameters(), metrics))
    assert_same_step(*results)
