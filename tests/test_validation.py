"""One validation rule: every class refuses the same bad counts and numbers (bools included) with a
message naming the class, the argument and the value."""

import math

import pytest
import torch
from tensordict import TensorDict

from tests._trpo_batches import make_actor, make_critic
from trpo_torchrl import CriticFit, FusedGAE, TRPOLoss, TrustRegionUpdate
from trpo_torchrl.population import PopulationTrustRegionUpdate
from trpo_torchrl.validation import check_choice, check_count, check_generator, check_number, is_count, is_finite_number


def test_counts():
    assert check_count("C", "n", 3) == 3 and type(check_count("C", "n", 3)) is int
    assert check_count("C", "n", 0, minimum=0) == 0
    for bad in (True, False, 0, -1, 1.0, 2.5, "3", None, torch.tensor(3)):
        with pytest.raises(ValueError, match=r"C: n must be an int >= 1, got "):
            check_count("C", "n", bad)
    with pytest.raises(ValueError, match=r"C: n must be an int >= 1, got True$"):
        check_count("C", "n", True)
    assert is_count(7) and not is_count(True) and not is_count(7.0)


def test_numbers():
    assert check_number("C", "x", 3) == 3.0 and type(check_number("C", "x", 3)) is float
    assert check_number("C", "x", 0.0, low=0) == 0.0
    assert check_number("C", "x", 1.0, low=0, high=1, low_open=True) == 1.0
    assert check_number("C", "x", None, low=0, optional=True) is None
    cases = [
        (dict(), True, "C: x must be a finite number, got True"),
        (dict(), float("nan"), "C: x must be a finite number, got nan"),
        (dict(), "0.1", "C: x must be a finite number, got '0.1'"),
        (dict(low=0, low_open=True), 0.0, "C: x must be a finite number > 0, got 0.0"),
        (dict(low=0), -1.0, "C: x must be a finite number >= 0, got -1.0"),
        (dict(high=1, high_open=True), 1, "C: x must be a finite number < 1, got 1"),
        (dict(low=0, high=1, low_open=True), 0.0, "C: x must be in (0, 1], got 0.0"),
        (dict(low=0, high=1, high_open=True), float("inf"), "C: x must be in [0, 1), got inf"),
        (dict(low=0, high=1), False, "C: x must be in [0, 1], got False"),
        (dict(low=0, low_open=True, optional=True), 0, "C: x must be None or a finite number > 0, got 0"),
        (dict(low=0, high=1, optional=True), 2, "C: x must be None or a number in [0, 1], got 2"),
        (dict(low=0), None, "C: x must be a finite number >= 0, got None"),
    ]
    for bounds, value, message in cases:
        with pytest.raises(ValueError) as info:
            check_number("C", "x", value, **bounds)
        assert str(info.value) == message
    assert is_finite_number(1e300) and not is_finite_number(math.inf) and not is_finite_number(True)


def test_choices_and_generators():
    assert check_choice("C", "mode", "a", ("a", "b")) == "a"
    assert check_choice("C", "fused", None, (None, True, False)) is None
    with pytest.raises(ValueError, match=r"^C: mode must be 'a', 'b' or 'c', got 'd'$"):
        check_choice("C", "mode", "d", ("a", "b", "c"))
    with pytest.raises(ValueError, match=r"^C: fused must be None, True or False, got 1$"):
        check_choice("C", "fused", 1, (None, True, False))  # 1 == True, but it is not a bool
    gen = torch.Generator()
    assert check_generator("C", "generator", gen) is gen and check_generator("C", "generator", None) is None
    with pytest.raises(TypeError, match=r"^C: generator must be a torch.Generator or None, got int$"):
        check_generator("C", "generator", 0)


# ---- every class, every count and number argument, the same bad values -------------------------

_COUNT_BAD = [True, False, 0, 2.0, "3"]
_POSITIVE_BAD = [True, 0.0, -1.0, float("nan"), float("inf"), "0.1"]
_NONNEGATIVE_BAD = [True, -1.0, float("nan"), float("inf"), "0.1"]
_UNIT_BAD = [True, -0.1, 1.5, float("nan"), "0.5"]  # outside [0, 1] (or not a number)

_ARGUMENTS = {
    "CriticFit": {
        "epochs": _COUNT_BAD,
        "minibatch_size": _COUNT_BAD,
        "lr": _POSITIVE_BAD,
        "eps": _POSITIVE_BAD,
        "max_grad_norm": _POSITIVE_BAD,
    },
    "TRPOLoss": {"critic_coeff": _NONNEGATIVE_BAD, "entropy_coeff": _NONNEGATIVE_BAD},
    "FusedGAE": {"gamma": _UNIT_BAD, "lmbda": _UNIT_BAD},
    "TrustRegionUpdate": {
        "max_kl": _POSITIVE_BAD,
        "damping": _NONNEGATIVE_BAD,
        "cg_iters": _COUNT_BAD,
        "backtrack_iters": _COUNT_BAD,
        "backtrack_coeff": [True, 0.0, 1.0, float("nan"), "0.5"],
        "accept_ratio": _NONNEGATIVE_BAD,
        "fvp_subsample": [True, 0.0, 1.5, float("nan"), "0.5"],
    },
}
_ARGUMENTS["PopulationTrustRegionUpdate"] = dict(_ARGUMENTS["TrustRegionUpdate"])


def _make(cls: str, **kwargs):
    actor = make_actor("gaussian", dtype=torch.float64)
    loss = TRPOLoss(actor, make_critic(dtype=torch.float64))
    if cls == "CriticFit":
        return CriticFit(loss, **kwargs)
    if cls == "TRPOLoss":
        return TRPOLoss(actor, make_critic(), **kwargs)
    if cls == "FusedGAE":
        return FusedGAE(**{"gamma": 0.99, "lmbda": 0.95, **kwargs}, value_network=None)
    if cls == "TrustRegionUpdate":
        return TrustRegionUpdate(loss, **kwargs)
    params = TensorDict.from_modules(*[make_actor("gaussian", dtype=torch.float64) for _ in range(2)], as_module=True)
    return PopulationTrustRegionUpdate(loss, params, **kwargs)


def _cases():
    for cls, arguments in _ARGUMENTS.items():
        for name, values in arguments.items():
            for value in values:
                yield pytest.param(cls, name, value, id=f"{cls}-{name}={value!r}")


@pytest.mark.parametrize("cls,name,value", list(_cases()))
def test_every_class_refuses_the_same_bad_values(cls, name, value):
    with pytest.raises(ValueError) as info:
        _make(cls, **{name: value})
    message = str(info.value)
    assert message.startswith(f"{cls}: {name} must be "), message
    assert message.endswith(f"got {value!r}"), message


@pytest.mark.parametrize("cls", list(_ARGUMENTS))
def test_good_values_still_pass(cls):
    # the edges of each range are accepted, and numbers of any real type
    good = {
        "CriticFit": dict(epochs=1, minibatch_size=1, lr=1, eps=1e-12, max_grad_norm=None),
        "TRPOLoss": dict(critic_coeff=0, entropy_coeff=0.0),
        "FusedGAE": dict(gamma=1, lmbda=0.0),
        "TrustRegionUpdate": dict(max_kl=1, damping=0, cg_iters=1, backtrack_iters=1, accept_ratio=0, fvp_subsample=1),
    }
    good["PopulationTrustRegionUpdate"] = good["TrustRegionUpdate"]
    _make(cls, **good[cls])
