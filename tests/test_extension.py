"""The compiled library as built and registered: it loads where it must, every op has its kernels
and its fake kernel, and every op face follows one rule (the compiled op, else the reference with
one warning), also when the library is missing altogether."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from trpo_torchrl.ops import _extension, library_loaded

ROOT = Path(__file__).resolve().parent.parent
OPS = ("cg_step", "gae", "mlp_fit_adam", "tanh", "tanh_")  # every op csrc/ defines
CUDA_OPS = ("cg_step", "gae", "mlp_fit_adam")  # csrc/cuda/*.cu, each registered for CUDA

needs_lib = pytest.mark.skipif(not library_loaded(), reason="trpo_torchrl._C is not built")


def _own_kernel(op: str, key: str) -> bool:
    """True when trpo_torchrl::<op> has a kernel registered for ``key`` itself (the dispatch table
    marks it ``[kernel]``), not one inherited from the CompositeExplicitAutograd registration."""
    table = torch._C._dispatch_dump_table(f"trpo_torchrl::{op}")
    return any(line.startswith(f"{key}:") and line.endswith("[kernel]") for line in table.splitlines())


def _run_python(code: str, **env: str) -> str:
    """Runs ``code`` in a fresh interpreter on this checkout; returns its stdout."""
    full_env = {k: v for k, v in os.environ.items() if k != "TRPO_TORCHRL_FORCE_REFERENCE"}
    full_env.update(PYTHONPATH=str(ROOT), **env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- the build -----------------------------------------------------------------------------------


def test_extension_is_built_in_ci():
    # CI builds the extension; a silent fallback there would leave the kernels untested
    if os.environ.get("CI"):
        assert library_loaded(), f"compiled ops failed to load: {_extension._LOAD_ERROR}"
    if os.environ.get("TRPO_TORCHRL_EXPECT_CUDA_KERNELS") == "1":
        for op in CUDA_OPS:
            # a CUDA kernel of its own, not the composite one every backend inherits
            assert _own_kernel(op, "CUDA"), torch._C._dispatch_dump_table(f"trpo_torchrl::{op}")


@needs_lib
def test_the_library_defines_exactly_these_ops():
    # OPS is what the tests below walk: a new op must be added to it (and get a fake kernel)
    defined = sorted(
        name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("trpo_torchrl::")
    )
    assert defined == sorted(OPS)


@needs_lib
@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_cpu_kernel_of_its_own(op):
    assert _own_kernel(op, "CPU"), torch._C._dispatch_dump_table(f"trpo_torchrl::{op}")


@needs_lib
@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_registered_fake_kernel(op):
    from torch._library.simple_registry import singleton

    assert singleton.find(f"trpo_torchrl::{op}").fake_impl.kernel is not None


@needs_lib
def test_fake_kernels_are_registered_whatever_force_reference_says_at_import():
    # TRPO_TORCHRL_FORCE_REFERENCE picks the path per call and may change after import; the fake
    # kernels must be there for the compiled path all the same (tanh's once were not)
    out = _run_python(
        f"""
        import trpo_torchrl.ops
        from torch._library.simple_registry import singleton
        print([op for op in {OPS!r} if singleton.find("trpo_torchrl::" + op).fake_impl.kernel is None])
        """,
        TRPO_TORCHRL_FORCE_REFERENCE="1",
    )
    assert out.strip() == "[]"


# -- compiled op, else the reference with one warning ---------------------------------------------


@needs_lib
def test_compiled_op_is_the_op_where_it_has_a_kernel():
    for op in OPS:
        assert _extension.compiled_op(op, torch.device("cpu"), op) is getattr(torch.ops.trpo_torchrl, op)


@needs_lib
def test_compiled_op_is_none_without_a_warning_where_the_library_is_not_the_reason(monkeypatch):
    monkeypatch.setattr(_extension, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _extension.compiled_op("gae", torch.device("meta"), "generalized_advantage_estimate") is None
        monkeypatch.setenv("TRPO_TORCHRL_FORCE_REFERENCE", "1")
        assert _extension.compiled_op("gae", torch.device("cpu"), "generalized_advantage_estimate") is None


def test_compiled_op_warns_once_when_the_library_is_missing(monkeypatch):
    monkeypatch.setattr(_extension, "_LOAD_ERROR", ImportError("no _C"))
    monkeypatch.setattr(_extension, "_warned", False)
    monkeypatch.delenv("TRPO_TORCHRL_FORCE_REFERENCE", raising=False)
    with pytest.warns(RuntimeWarning, match=r"\(no _C\); conjugate_gradient and the other ops run"):
        assert _extension.compiled_op("cg_step", torch.device("cpu"), "conjugate_gradient") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _extension.compiled_op("gae", torch.device("cpu"), "generalized_advantage_estimate") is None


def test_register_fake_registers_nothing_without_the_op(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("registered a fake kernel for an op that does not exist")

    monkeypatch.setattr(torch.library, "register_fake", refuse)

    def fake(x):
        return x

    assert _extension.register_fake("no_such_op")(fake) is fake
    monkeypatch.setattr(_extension, "_LOAD_ERROR", ImportError("no _C"))
    assert _extension.register_fake("gae")(fake) is fake


def test_every_op_face_runs_on_its_reference_without_the_library():
    # a fresh interpreter in which trpo_torchrl._C cannot be imported: the package imports, every
    # op face gives the reference's result, and the whole run warns once
    out = _run_python(
        """
        import sys, warnings
        sys.modules["trpo_torchrl._C"] = None  # `from trpo_torchrl import _C` raises ImportError
        import torch
        from trpo_torchrl import ops
        from trpo_torchrl.ops import reference
        assert not ops.library_loaded() and not ops.extension_loaded()
        torch.manual_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            v, nv, r = (torch.randn(2, 6, 1, dtype=torch.float64) for _ in range(3))
            done = torch.zeros(2, 6, 1, dtype=torch.bool)
            adv, _ = ops.generalized_advantage_estimate(0.9, 0.8, v, nv, r, done, done)
            rows = [t[..., 0] for t in (v, nv, r, done, done)]
            expected, _ = reference.gae_scan(torch.full_like(rows[0], 0.9), torch.full_like(rows[0], 0.8), *rows)
            assert torch.equal(adv[..., 0], expected)
            x, _ = ops.conjugate_gradient(lambda p: 2 * p, torch.ones(3, dtype=torch.float64), max_iter=2)
            assert torch.equal(x, torch.full((3,), 0.5, dtype=torch.float64))
            w = [torch.zeros(1, 2), torch.zeros(1)]
            losses = ops.mlp_fit_adam(w, [torch.zeros_like(t) for t in w], [torch.zeros_like(t) for t in w],
                                      torch.ones(4, 2), torch.ones(4), torch.arange(4)[None], minibatch_size=2)
            assert losses.shape == (2,)
            t = torch.linspace(-3, 3, 11)
            assert torch.equal(ops.tanh(t), torch.tanh(t))
        print(len([w for w in caught if issubclass(w.category, RuntimeWarning)]))
        """
    )
    assert out.strip() == "1"
