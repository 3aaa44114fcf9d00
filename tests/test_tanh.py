"""trpo_torchrl::tanh (the fast float32 CPU tanh) against the exact tanh: every float in a wide
range to within 2.25 ulp, the special values, and the kernel's tails, threads and layouts."""

import math

import pytest
import torch

from trpo_torchrl.ops import extension_loaded, tanh, tanh_

needs_op = pytest.mark.skipif(not extension_loaded(), reason="compiled ops not built")


def _ulp_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|y − tanh(x)| in units of the last place of the float32 nearest tanh(x) (exact in float64)."""
    exact = torch.tanh(x.double())
    nearest = exact.float()
    ulp = (torch.nextafter(nearest.abs(), torch.tensor(math.inf)) - nearest.abs()).double()
    return (y.double() - exact).abs() / ulp


@needs_op
def test_a_strided_sweep_of_all_floats_is_within_2_25_ulp():
    # every 131st bit pattern of [0, 12) (tanh rounds to ±1 beyond), both signs: ~8M floats, every
    # binade from the subnormals up (an exhaustive sweep, ~1.1G floats, found the same 2.25 ulp)
    top = torch.tensor(12.0).view(torch.int32).item()
    bits = torch.arange(0, top, 131, dtype=torch.int32)
    x = bits.view(torch.float32)
    for sign in (1.0, -1.0):
        err = _ulp_error(sign * x, tanh(sign * x))
        assert err.max().item() <= 2.25, f"max error {err.max().item():.3f} ulp at x = {x[err.argmax()].item()!r}"


@needs_op
def test_dense_around_the_branch_points():
    # the polynomial / exponential switch at 0.55, the clamp at 10, exp's rounding steps near k·ln2/2
    centres = [0.55, 10.0] + [k * math.log(2) / 2 for k in range(1, 29)]
    x = torch.cat([torch.linspace(c - 1e-3, c + 1e-3, 20001) for c in centres])
    err = _ulp_error(x, tanh(x))
    assert err.max().item() <= 2.25


@needs_op
def test_special_values():
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-40, -1e-40, 1e-30, 3e38, -3e38])
    y = tanh(x)
    assert torch.equal(y[:2], x[:2]) and torch.signbit(y[1])  # tanh(-0) = -0
    assert y[2].item() == 1.0 and y[3].item() == -1.0
    assert math.isnan(y[4].item())
    assert torch.equal(y[5:8], x[5:8])  # subnormals and tiny values: tanh(x) = x
    assert y[8].item() == 1.0 and y[9].item() == -1.0


@needs_op
@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 100_003])  # vector tails; the last runs on several threads
def test_any_length_and_layout_matches_torch_within_2_25_ulp(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 3, generator=g) * 3
    y = tanh(x.t())  # non-contiguous input
    assert y.shape == (3, n)
    assert _ulp_error(x.t(), y).max().item() <= 2.25


@needs_op
def test_in_place_equals_out_of_place():
    x = torch.randn(1000, 37, generator=torch.Generator().manual_seed(0)) * 4
    expected = tanh(x)
    y = x.clone()
    version = y._version
    assert tanh_(y) is y and torch.equal(y, expected)
    assert y._version > version  # autograd is told, as by torch.Tensor.tanh_
    z = x.t().clone().t()  # non-contiguous: through ATen's tanh_, still in place
    assert tanh_(z) is z
    torch.testing.assert_close(z, torch.tanh(x))


def test_other_dtypes_and_the_fallback_are_torch_tanh():
    x = torch.randn(257, dtype=torch.float64)
    assert torch.equal(tanh(x), torch.tanh(x))
    assert tanh(torch.empty(0)).shape == (0,)
    if extension_loaded():  # every path of the op returns a contiguous tensor, as its fake kernel says
        for t in (torch.randn(64, 32, dtype=torch.float64).t(), torch.randn(64, 32).t()):
            out = torch.ops.trpo_torchrl.tanh(t)
            assert out.is_contiguous()
            torch.testing.assert_close(out, torch.tanh(t))


def test_refuses_what_it_cannot_do():
    with pytest.raises(TypeError, match="torch.Tensor"):
        tanh([1.0])
    with pytest.raises(RuntimeError, match="no gradient"):
        tanh(torch.ones(3, requires_grad=True))
    with pytest.raises(RuntimeError, match="no gradient"):
        tanh_(torch.ones(3, requires_grad=True))


@needs_op
def test_the_benchmark_that_times_it_runs(tmp_path):
    # benchmarks/tanh.py is where the kernel's speed is measured (the code's comments point there)
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "tanh.py"
    spec = importlib.util.spec_from_file_location("benchmark_tanh", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--quick", "--out", str(tmp_path / "tanh.json")])
    assert json.loads((tmp_path / "tanh.json").read_text())["rows"] == rows
    (row,) = rows
    assert row["ours_ns_per_element"] > 0 and row["aten_ns_per_element"] > 0
    assert row["max_ulp_error"] <= 2.25
