"""A padded batch with a mask (TorchRL's ``split_trajs=True`` layout): every mean the loss and the
update take is over the valid steps only, checked against the same batch with the padding removed."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from tests._trpo_batches import collect, make_actor, make_critic
from trpo_torchrl import TRPOLoss, TrustRegionUpdate
from trpo_torchrl.population import PopulationTrustRegionUpdate

ROWS, MAX_LEN = 4, 24
LENGTHS = [24, 5, 17, 9]


def padded(td: TensorDict, mask_key=("collector", "mask")) -> tuple[TensorDict, TensorDict]:
    """``td`` ([ROWS * MAX_LEN]) as a zero-padded ``[ROWS, MAX_LEN]`` batch, as ``split_trajs`` pads,
    and the valid states alone (the oracle)."""
    td = td.reshape(ROWS, MAX_LEN).clone()
    mask = torch.arange(MAX_LEN).expand(ROWS, MAX_LEN) < torch.tensor(LENGTHS)[:, None]
    td.apply_(lambda x: x.masked_fill(~mask.reshape(*mask.shape, *[1] * (x.dim() - 2)), 0))
    valid = td[mask].clone()
    td.set(mask_key, mask)
    return td, valid


@pytest.fixture(params=["gaussian", "categorical"])
def setup(request):
    dtype = torch.float64
    actor, critic = make_actor(request.param, dtype=dtype), make_critic(dtype=dtype)
    td = collect(actor, ROWS * MAX_LEN, dtype=dtype)
    return actor, critic, td


def test_loss_on_a_padded_batch_equals_the_loss_on_its_valid_steps(setup):
    actor, critic, td = setup
    pad, valid = padded(td)
    loss = TRPOLoss(actor, critic)
    out_pad, out_valid = loss(pad), loss(valid)
    # at θ_old the KL over valid steps is 0; the zero-padded scale would make it inf (or NaN)
    assert abs(float(out_pad["kl"])) < 1e-12
    for key in loss.out_keys:
        torch.testing.assert_close(out_pad[key], out_valid[key], msg=key)
    b_pad, b_valid = loss.policy_batch(pad), loss.policy_batch(valid)
    torch.testing.assert_close(b_pad.advantage, b_valid.advantage)  # standardised over the valid steps
    assert b_pad.advantage.shape == (sum(LENGTHS),)


def test_update_on_a_padded_batch_takes_the_step_of_its_valid_steps(setup):
    actor, critic, td = setup
    pad, valid = padded(td)
    loss = TRPOLoss(actor, critic)
    update = TrustRegionUpdate(loss, max_kl=0.01)
    theta = update.flat_parameters().clone()
    m_valid = update(valid)
    step_valid = update.flat_parameters().clone()
    update.write_parameters(theta)
    m_pad = update(pad)
    assert bool(m_pad["step_accepted"])
    torch.testing.assert_close(update.flat_parameters(), step_valid)
    torch.testing.assert_close(m_pad["kl"], m_valid["kl"])


def test_the_mask_key_is_renamable_and_checked(setup):
    actor, critic, td = setup
    pad, valid = padded(td, mask_key="valid")
    loss = TRPOLoss(actor, critic)
    assert loss.tensor_keys.mask == ("collector", "mask")
    loss.set_keys(mask="valid")
    torch.testing.assert_close(loss(pad)["surrogate"], loss(valid)["surrogate"])
    bad = pad.clone()
    bad["valid"] = bad["valid"].float()
    with pytest.raises(TypeError, match="mask 'valid' must be boolean"):
        loss(bad)
    empty = pad.clone()
    empty["valid"] = torch.zeros_like(pad["valid"])
    with pytest.raises(ValueError, match="no valid step"):
        loss(empty)


def test_a_mask_under_a_process_group_is_refused(setup):
    actor, critic, td = setup
    pad, _ = padded(td)
    loss = TRPOLoss(actor, critic)
    # refused before any collective: the shards' valid counts would differ between ranks
    with pytest.raises(ValueError, match="process group"):
        loss.policy_batch(pad, process_group=object())


def test_population_refuses_a_mask():
    actors = [make_actor("gaussian", seed=10 + m, dtype=torch.float64) for m in range(2)]
    params = TensorDict.from_modules(*actors, as_module=True)
    loss = TRPOLoss(make_actor("gaussian", dtype=torch.float64), make_critic(dtype=torch.float64))
    update = PopulationTrustRegionUpdate(loss, params)
    batch = torch.stack([collect(a, 16, dtype=torch.float64) for a in actors])
    batch["collector", "mask"] = torch.ones(2, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match="PopulationTrustRegionUpdate: .*mask"):
        update(batch)
