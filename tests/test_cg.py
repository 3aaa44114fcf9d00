"""Tests of the batched, sync-free conjugate-gradient solver and its fused ``cg_step`` op."""

from __future__ import annotations

import pytest
import torch

import trpo_torchrl.ops.cg as cg_module
from tests._support import cpu_and_cuda, needs_cuda
from trpo_torchrl.ops import CGInfo, _extension, conjugate_gradient, library_loaded, reference
from trpo_torchrl.ops._extension import has_kernel

HAS_OP = library_loaded() and hasattr(torch.ops.trpo_torchrl, "cg_step")
needs_op = pytest.mark.skipif(not HAS_OP, reason="trpo_torchrl._C (cg_step) is not built")


@pytest.fixture(params=["op", "reference"])
def path(request, monkeypatch):
    """Runs a solver test once through the compiled op and once through the reference."""
    if request.param == "op":
        if not HAS_OP:
            pytest.skip("trpo_torchrl._C (cg_step) is not built")
        monkeypatch.delenv("TRPO_TORCHRL_FORCE_REFERENCE", raising=False)
    else:
        monkeypatch.setenv("TRPO_TORCHRL_FORCE_REFERENCE", "1")
    return request.param


def _bmv(A):
    return lambda v: (A @ v[..., None])[..., 0]


def _low_rank_spd(n, ranks, lam, dtype, device):
    """A_i = lam_i I + U_i U_i^T with rank(U_i) = ranks[i]: CG converges in at most rank + 1 steps."""
    mats = []
    for k, l in zip(ranks, lam):
        U = torch.randn(n, k, dtype=dtype, device=device)
        mats.append(l * torch.eye(n, dtype=dtype, device=device) + U @ U.T)
    return torch.stack(mats)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_matches_solve_and_stops_per_system(path, device):
    n = 24
    ranks = [1, 3, 7, n]
    A = _low_rank_spd(n, ranks, [1.0, 0.5, 2.0, 0.3], torch.float64, device)
    b = torch.randn(len(ranks), n, dtype=torch.float64, device=device)
    x, info = conjugate_gradient(_bmv(A), b, max_iter=60, residual_tol=1e-20)
    expected = torch.linalg.solve(A, b)
    torch.testing.assert_close(x, expected, rtol=1e-8, atol=1e-9)
    assert isinstance(info, CGInfo)
    assert info.converged.all() and not info.breakdown.any()
    its = info.iterations.cpu()
    # a rank-k update of a multiple of I has k + 1 distinct eigenvalues: CG needs at most k + 1
    for i, k in enumerate(ranks[:3]):
        assert 1 <= its[i] <= k + 1, (i, its)
    assert its[3] > its[2], its  # the full-rank system keeps iterating after the others stopped
    assert (info.residual_norm**2 <= 1e-20).all()
    true_res = torch.linalg.vector_norm(b - _bmv(A)(x), dim=-1)
    assert (true_res < 1e-8).all()


@needs_op
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_batches_over_a_calls_limit_go_in_slices(monkeypatch, device):
    # CUDA takes at most 65 535 systems per call; a larger batch is stepped in row slices, which must
    # give the one-call result bit for bit (checked here with a limit of 3 on each device)
    n = 16
    A = _low_rank_spd(n, [1, 3, 5, 16, 2, 8, 16], [1.0, 0.5, 2.0, 0.3, 1.5, 0.7, 1.1], torch.float64, device)
    b = torch.randn(7, n, dtype=torch.float64, device=device)
    whole = conjugate_gradient(_bmv(A), b, max_iter=30, residual_tol=1e-20)
    calls = []

    def counted(step):
        def call(*args):
            calls.append(args[0].shape[0])
            step(*args)

        return call

    real_slices = cg_module._in_slices
    monkeypatch.setattr(cg_module, "MAX_SYSTEMS_PER_CALL", {device: 3})
    monkeypatch.setattr(cg_module, "_in_slices", lambda step, limit: real_slices(counted(step), limit))
    sliced = conjugate_gradient(_bmv(A), b, max_iter=30, residual_tol=1e-20)
    assert calls[:3] == [3, 3, 1]
    for u, v in zip((whole[0], *whole[1]), (sliced[0], *sliced[1])):
        assert torch.equal(u, v)


@pytest.mark.parametrize("cond_shift", [1e-2, 1.0, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_varied_conditioning(path, cond_shift, dtype):
    n, B = 16, 6
    M = torch.randn(B, n, n, dtype=torch.float64)
    A64 = M @ M.mT + cond_shift * torch.eye(n, dtype=torch.float64)
    b64 = torch.randn(B, n, dtype=torch.float64)
    expected = torch.linalg.solve(A64, b64)
    A, b = A64.to(dtype), b64.to(dtype)
    max_iter = 4 * n if dtype == torch.float64 else 3 * n
    x, info = conjugate_gradient(_bmv(A), b, max_iter=max_iter, residual_tol=1e-24)
    assert not info.breakdown.any()
    cond = torch.linalg.cond(A64).max().item()
    if dtype == torch.float64:
        assert info.converged.all()
    rel = torch.linalg.vector_norm(x.double() - expected, dim=-1) / torch.linalg.vector_norm(expected, dim=-1)
    # forward error <= cond * relative residual, plus what the arithmetic itself loses
    rel_res = torch.linalg.vector_norm(b64 - _bmv(A64)(x.double()), dim=-1) / torch.linalg.vector_norm(b64, dim=-1)
    eps = torch.finfo(dtype).eps
    bound = cond * rel_res + 100 * cond * eps
    assert (rel <= bound).all(), (rel, bound)
    assert (rel_res < (1e-9 if dtype == torch.float64 else 1e-3)).all(), rel_res


def test_one_dimensional_b_and_x0(path):
    n = 10
    A = _low_rank_spd(n, [n], [1.0], torch.float64, "cpu")[0]
    b = torch.randn(n, dtype=torch.float64)
    seen = []

    def mv(v):
        seen.append(v.shape)
        return A @ v

    x, info = conjugate_gradient(mv, b, max_iter=30, residual_tol=1e-22)
    assert x.shape == (n,) and all(s == (n,) for s in seen)
    assert all(t.dim() == 0 for t in info)
    torch.testing.assert_close(x, torch.linalg.solve(A, b))
    # started at the answer: nothing to do
    x2, info2 = conjugate_gradient(mv, b, max_iter=3, residual_tol=1e-18, x0=x)
    assert info2.converged and info2.iterations == 0
    torch.testing.assert_close(x2, x)
    # started elsewhere: the same answer
    x3, _ = conjugate_gradient(mv, b, max_iter=30, residual_tol=1e-22, x0=torch.randn(n, dtype=torch.float64))
    torch.testing.assert_close(x3, x)


def test_identity_operator_returning_its_input(path):
    b = torch.randn(3, 7, dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: v, b, max_iter=4)
    torch.testing.assert_close(x, b, rtol=0, atol=1e-15)
    assert info.converged.all() and (info.iterations == 1).all()


def test_indefinite_and_singular_systems_break_down_finitely(path):
    n = 3
    A = torch.zeros(4, n, n, dtype=torch.float64)
    A[0] = torch.diag(torch.tensor([1.0, -2.0, 1.0]))  # p^T A p = 1 - 2 + 1 = 0 at b = 1
    A[1] = torch.diag(torch.tensor([1.0, -3.0, 1.0]))  # negative curvature on the first step
    A[2] = 0.0  # singular: zero curvature
    A[3] = torch.diag(torch.tensor([1.0, 2.0, 3.0]))  # a healthy neighbour
    b = torch.ones(4, n, dtype=torch.float64)
    x, info = conjugate_gradient(_bmv(A), b, max_iter=10)
    assert torch.isfinite(x).all()
    assert info.breakdown.tolist() == [True, True, True, False]
    assert info.iterations.tolist()[:3] == [0, 0, 0]
    assert (x[:3] == 0).all()  # frozen at x0
    assert info.converged.tolist() == [False, False, False, True]
    torch.testing.assert_close(x[3], torch.tensor([1.0, 1 / 2, 1 / 3], dtype=torch.float64))


def test_breakdown_mid_solve_keeps_last_good_iterate(path):
    # positive curvature on the first step, negative later
    A = torch.diag(torch.tensor([4.0, 1.0, -0.5], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0, 0.9], dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: A @ v, b, max_iter=10)
    assert info.breakdown and not info.converged
    k = int(info.iterations)
    assert k >= 1
    assert torch.isfinite(x).all()
    # the frozen x is exactly the iterate after k good steps
    x_k, info_k = conjugate_gradient(lambda v: A @ v, b, max_iter=k)
    assert not info_k.breakdown
    torch.testing.assert_close(x, x_k, rtol=0, atol=0)


def test_non_finite_matvec_breaks_down_that_system_only(path):
    A = _low_rank_spd(5, [5, 5], [1.0, 1.0], torch.float64, "cpu")

    def mv(v):
        out = _bmv(A)(v)
        return torch.cat([out[:1], torch.full_like(out[1:], float("nan"))])

    b = torch.randn(2, 5, dtype=torch.float64)
    x, info = conjugate_gradient(mv, b, max_iter=20, residual_tol=1e-20)
    assert info.breakdown.tolist() == [False, True]
    assert torch.isfinite(x).all() and (x[1] == 0).all()
    torch.testing.assert_close(x[0], torch.linalg.solve(A[0], b[0]))


@pytest.mark.parametrize("use_op", [True, False])
def test_sync_free(monkeypatch, use_op):
    """Solver and both Fisher-vector products run with every host read-back disabled."""
    if use_op and not HAS_OP:
        pytest.skip("trpo_torchrl._C (cg_step) is not built")
    monkeypatch.setenv("TRPO_TORCHRL_FORCE_REFERENCE", "0" if use_op else "1")
    from trpo_torchrl.fisher import gauss_newton_fisher_vector_product, kl_fisher_vector_product

    n = 12
    A = _low_rank_spd(n, [3, n], [1.0, 0.1], torch.float64, "cpu")
    b = torch.randn(2, n, dtype=torch.float64)
    obs = torch.randn(6, 4, dtype=torch.float64)
    theta = torch.randn(20, dtype=torch.float64)

    def logits_fn(th):
        return obs @ th.view(4, 5)

    p_old = torch.softmax(logits_fn(theta), -1)

    def kl_fn(th):
        return (p_old * (torch.log(p_old) - torch.log_softmax(logits_fn(th), -1))).sum(-1).mean()

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the solver")

    for name in ("item", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    x, info = conjugate_gradient(_bmv(A), b, max_iter=15, residual_tol=1e-20)
    fvp_a = kl_fisher_vector_product(kl_fn, theta, damping=0.1)
    fvp_b = gauss_newton_fisher_vector_product(logits_fn, theta, "categorical", damping=0.1)
    g = torch.randn(20, dtype=torch.float64)
    sa, _ = conjugate_gradient(fvp_a, g, max_iter=5)
    sb, _ = conjugate_gradient(fvp_b, torch.stack([g, g]), max_iter=5)
    fvp_c = gauss_newton_fisher_vector_product(logits_fn, theta, "categorical", damping=0.1, use_linearize=False)
    sc, _ = conjugate_gradient(fvp_c, g, max_iter=5)
    monkeypatch.undo()
    torch.testing.assert_close(sc, sa)
    assert bool(info.converged.all())
    torch.testing.assert_close(x, torch.linalg.solve(A, b))
    torch.testing.assert_close(sa, sb[0])
    torch.testing.assert_close(sb[0], sb[1])


def _random_step_inputs(B, n, dtype, device="cpu"):
    x = torch.randn(B, n, dtype=dtype, device=device)
    r = torch.randn(B, n, dtype=dtype, device=device)
    # some systems almost solved, so the convergence test fires for them
    r[::3] *= 1e-5
    p = torch.randn(B, n, dtype=dtype, device=device)
    # Ap = p scaled by a per-system factor: mostly positive curvature, some negative, one NaN
    scale = torch.rand(B, 1, dtype=dtype, device=device) + 0.5
    scale[1::4] = -1.0
    Ap = p * scale + 0.01 * torch.randn(B, n, dtype=dtype, device=device)
    if B > 2 and n > 0:
        Ap[2, 0] = float("nan")
    rdotr = (r * r).sum(-1)
    iterations = torch.randint(0, 5, (B,), device=device)
    converged = torch.rand(B, device=device) < 0.2
    breakdown = (torch.rand(B, device=device) < 0.2) & ~converged
    return [x, r, p, Ap, rdotr, iterations, converged, breakdown]


@needs_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,n", [(1, 1), (3, 7), (17, 33), (8, 1000), (0, 5), (4, 0)])
def test_op_matches_reference_step(dtype, B, n):
    args = _random_step_inputs(B, n, dtype)
    tol = 1e-6 * n if n else 1e-6
    ours = [a.clone() for a in args]
    ref = [a.clone() for a in args]
    torch.ops.trpo_torchrl.cg_step(*ours, tol)
    reference.cg_step(*ref, tol)
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-12, 1e-12)
    for name, o, e in zip(["x", "r", "p", "Ap", "rdotr", "iterations", "converged", "breakdown"], ours, ref):
        torch.testing.assert_close(o, e, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{name}: {m}")
    if B > 3 and n > 1:  # the sample really exercised every branch
        assert ref[7].any() and ref[6].any() and (ref[5] > args[5]).any()


@needs_op
def test_op_opcheck():
    for dtype in (torch.float32, torch.float64):
        for B, n in [(5, 9), (1, 300)]:
            args = _random_step_inputs(B, n, dtype)
            torch.library.opcheck(torch.ops.trpo_torchrl.cg_step, (*args, 1e-8))


@needs_op
def test_op_rejects_bad_arguments():
    args = _random_step_inputs(3, 4, torch.float64)
    bad = list(args)
    bad[3] = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="Ap has shape"):
        torch.ops.trpo_torchrl.cg_step(*bad, 1e-8)
    bad = list(args)
    bad[4] = bad[4].float()
    with pytest.raises(RuntimeError, match="rdotr must have dtype"):
        torch.ops.trpo_torchrl.cg_step(*bad, 1e-8)
    bad = list(args)
    bad[2] = torch.randn(4, 3, dtype=torch.float64).T
    with pytest.raises(RuntimeError, match="p must be contiguous"):
        torch.ops.trpo_torchrl.cg_step(*bad, 1e-8)


def test_argument_errors():
    A = torch.eye(4, dtype=torch.float64)
    mv = lambda v: v @ A  # noqa: E731
    with pytest.raises(ValueError, match="1-D \\[n\\] or 2-D"):
        conjugate_gradient(mv, torch.ones(2, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="float32 or float64"):
        conjugate_gradient(mv, torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="max_iter"):
        conjugate_gradient(mv, torch.ones(4, dtype=torch.float64), max_iter=0)
    with pytest.raises(ValueError, match="residual_tol"):
        conjugate_gradient(mv, torch.ones(4, dtype=torch.float64), residual_tol=-1.0)
    with pytest.raises(ValueError, match="matvec returned shape"):
        conjugate_gradient(lambda v: v[..., :3], torch.ones(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="matvec returned"):
        conjugate_gradient(lambda v: v.float(), torch.ones(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="x0"):
        conjugate_gradient(mv, torch.ones(4, dtype=torch.float64), x0=torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="b must be a torch.Tensor"):
        conjugate_gradient(mv, [1.0, 2.0])


@needs_op
@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,n", [(1, 5000), (8, 70_001), (64, 3), (3, 1)])
def test_cuda_step_matches_cpu(dtype, B, n):
    assert has_kernel("cg_step", torch.device("cuda"))
    args = _random_step_inputs(B, n, dtype)
    tol = 1e-6 * n
    cpu = [a.clone() for a in args]
    gpu = [a.cuda() for a in args]
    torch.ops.trpo_torchrl.cg_step(*cpu, tol)
    torch.ops.trpo_torchrl.cg_step(*gpu, tol)
    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (1e-10, 1e-12)
    for o, e in zip(gpu, cpu):
        torch.testing.assert_close(o.cpu(), e, rtol=rtol, atol=atol, equal_nan=True)


@needs_op
@needs_cuda
@pytest.mark.cuda
def test_cuda_solver_in_a_cuda_graph():
    """No host sync means the whole solve can be captured and replayed."""
    n, B = 300, 8
    A = _low_rank_spd(n, [n] * B, [1.0] * B, torch.float32, "cuda")
    b = torch.randn(B, n, device="cuda")
    mv = _bmv(A)
    conjugate_gradient(mv, b, max_iter=2)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x, info = conjugate_gradient(mv, b, max_iter=20)
    b.copy_(torch.randn(B, n, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    x_eager, _ = conjugate_gradient(mv, b, max_iter=20)
    torch.testing.assert_close(x, x_eager)


def test_reference_path_warns_when_the_library_is_missing(monkeypatch):
    monkeypatch.setattr(_extension, "_LOAD_ERROR", ImportError("no _C"))
    monkeypatch.setattr(_extension, "_warned", False)
    monkeypatch.delenv("TRPO_TORCHRL_FORCE_REFERENCE", raising=False)
    b = torch.ones(2, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="conjugate_gradient and the other ops run on their pure-PyTorch"):
        x, info = conjugate_gradient(lambda v: 2 * v, b, max_iter=2)
    torch.testing.assert_close(x, b / 2)
