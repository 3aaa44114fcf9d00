"""TRPOLoss takes TorchRL's keyword call (tensordict's ``dispatch``), as ClipPPOLoss does."""

from __future__ import annotations

import torch

from tests._trpo_batches import collect, make_actor, make_critic, trajectory_batch
from trpo_torchrl import TRPOLoss


def keywords(loss, td):
    """The batch as keyword arguments, named as dispatch names them (``("next", "reward")`` -> ``next_reward``)."""
    return {"_".join(k) if isinstance(k, tuple) else k: td.get(k) for k in loss.in_keys if td.get(k, None) is not None}


def test_keyword_call_equals_the_tensordict_call_with_stored_advantages():
    actor, critic = make_actor("gaussian", dtype=torch.float64), make_critic(dtype=torch.float64)
    loss = TRPOLoss(actor, critic, entropy_coeff=0.01)
    td = collect(actor, 32, dtype=torch.float64)
    kwargs = keywords(loss, td)
    assert {"advantage", "value_target", "observation", "action", "action_log_prob"} <= kwargs.keys()
    values = loss(**kwargs)
    expected = loss(td)
    assert len(values) == len(loss.out_keys)
    for key, value in zip(loss.out_keys, values):
        torch.testing.assert_close(value, expected[key], msg=key)


def test_keyword_call_with_next_entries_estimates_the_advantages():
    actor, critic = make_actor("categorical"), make_critic()
    loss = TRPOLoss(actor, critic)
    td = trajectory_batch(actor)
    kwargs = keywords(loss, td)
    assert {"next_reward", "next_done", "next_terminated", "next_observation"} <= kwargs.keys()
    values = loss(**kwargs)
    expected = loss(td)
    for key, value in zip(loss.out_keys, values):
        torch.testing.assert_close(value, expected[key], msg=key)


def test_keyword_call_takes_the_mask():
    actor, critic = make_actor("gaussian", dtype=torch.float64), make_critic(dtype=torch.float64)
    loss = TRPOLoss(actor, critic)
    td = collect(actor, 32, dtype=torch.float64)
    td["collector", "mask"] = torch.arange(32) < 20
    values = dict(zip(loss.out_keys, loss(**keywords(loss, td))))
    torch.testing.assert_close(values["surrogate"], loss(td[:20].exclude("collector"))["surrogate"])
