"""trpo_torchrl::mlp_fit_adam (the fused critic fit): the op against its reference, the reference
against torch.optim.Adam on an nn.Sequential, CriticFit's fused path against its eager loop, and
the op's member dimension (M critics in one call) against M separate calls."""

import copy

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

import trpo_torchrl.ops.mlp_fit as mlp_fit_module
from tests._support import cpu_and_cuda, needs_cuda
from tests._trpo_batches import OBS_DIM, collect, make_actor
from trpo_torchrl import CriticFit, TRPOLoss
from trpo_torchrl.ops import extension_loaded, mlp_fit_adam, reference

needs_op = pytest.mark.skipif(not extension_loaded(), reason="compiled ops not built")


def _mlp(sizes, activation, dtype, device="cpu"):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh() if activation == "tanh" else nn.ReLU())
    return nn.Sequential(*layers).to(dtype=dtype, device=device)


def _problem(sizes, activation, dtype, n, epochs, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    net = _mlp(sizes, activation, dtype, device)
    x = torch.randn(n, sizes[0], generator=g, dtype=dtype).to(device)
    y = (x[:, :1].sin() * 3 + 0.1 * torch.randn(n, 1, generator=g, dtype=dtype).to(device)).reshape(-1)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(epochs)]).to(device)
    return net, x, y, order


def _state(net, step_state=None):
    params = [p.detach().clone() for p in net.parameters()]
    if step_state is None:
        return params, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    m, v = step_state
    return params, [t.clone() for t in m], [t.clone() for t in v]


@needs_op
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(
    "sizes,activation,n,minibatch,dtype",
    [
        ((17, 64, 64, 1), "tanh", 300, 64, torch.float64),  # last minibatch shorter (300 = 4·64 + 44)
        ((5, 8, 1), "relu", 128, 128, torch.float64),
        ((3, 1), "tanh", 50, 7, torch.float64),  # a linear critic: no hidden layer
        ((11, 32, 16, 8, 1), "relu", 257, 32, torch.float32),
        ((17, 64, 64, 1), "tanh", 512, 128, torch.float32),
        # too big for one CUDA block's shared memory: the CUDA op takes the ATen-composed kernel
        ((17, 256, 256, 1), "tanh", 600, 256, torch.float32),
    ],
)
def test_op_matches_the_reference(device, sizes, activation, n, minibatch, dtype):
    net, x, y, order = _problem(sizes, activation, dtype, n, epochs=3, device=device)
    # start from a non-zero Adam state some steps in, as the second batch of a run would
    warm = [torch.rand_like(p) * 1e-2 for p in net.parameters()], [torch.rand_like(p) * 1e-4 for p in net.parameters()]
    options = dict(
        minibatch_size=minibatch, activation=activation, coeff=0.5, lr=3e-3, betas=(0.9, 0.99), eps=1e-6, step=7
    )
    ours = _state(net, warm)
    ref = _state(net, warm)
    losses = mlp_fit_adam(*ours, x, y, order, **options)
    ref_losses = reference.mlp_fit_adam(*ref, x, y, order, minibatch, activation, 0.5, 3e-3, 0.9, 0.99, 1e-6, 7)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    assert losses.shape == (3 * -(-n // minibatch),)
    torch.testing.assert_close(losses, ref_losses, **tol)
    for a, b in zip(ours[0] + ours[1] + ours[2], ref[0] + ref[1] + ref[2]):
        torch.testing.assert_close(a, b, **tol)
    assert not torch.equal(ours[0][0], net[0].weight.detach())  # it really trained


@needs_op
def test_op_tells_autograd_the_parameters_changed():
    # a graph that saved the old weights must refuse to backpropagate after the fit, as it would
    # after any in-place update of them
    net, x, y, order = _problem((4, 8, 1), "tanh", torch.float32, 32, epochs=1)
    out = net(x).sum()
    params = [p.detach() for p in net.parameters()]  # what CriticFit passes: views sharing the version
    mlp_fit_adam(
        params,
        [torch.zeros_like(p) for p in params],
        [torch.zeros_like(p) for p in params],
        x,
        y,
        order,
        minibatch_size=8,
    )
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_reference_is_torch_optim_adam_on_an_nn_sequential(activation):
    net, x, y, order = _problem((6, 16, 16, 1), activation, torch.float64, 200, epochs=2)
    eager = copy.deepcopy(net)
    opt = torch.optim.Adam(eager.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-7)
    expected = []
    for perm in order:
        for start in range(0, 200, 48):
            idx = perm[start : start + 48]
            loss = 2.0 * (eager(x[idx]).reshape(-1) - y[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            expected.append(loss.detach())
    params, m, v = _state(net)
    losses = reference.mlp_fit_adam(params, m, v, x, y, order, 48, activation, 2.0, 1e-2, 0.8, 0.95, 1e-7, 0)
    torch.testing.assert_close(losses, torch.stack(expected), rtol=1e-12, atol=1e-14)
    for a, b in zip(params, eager.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)


def test_reference_takes_its_own_gradients_under_no_grad():
    net, x, y, order = _problem((4, 8, 1), "tanh", torch.float64, 40, epochs=2)
    plain, quiet = _state(net), _state(net)
    expected = reference.mlp_fit_adam(*plain, x, y, order, 16, "tanh", 1.0, 1e-2, 0.9, 0.999, 1e-8, 0)
    with torch.no_grad():
        losses = reference.mlp_fit_adam(*quiet, x, y, order, 16, "tanh", 1.0, 1e-2, 0.9, 0.999, 1e-8, 0)
    assert torch.equal(losses, expected)
    for a, b in zip(plain[0], quiet[0]):
        assert torch.equal(a, b)
    assert not torch.equal(plain[0][0], net[0].weight.detach())


@needs_op
def test_op_refuses_bad_arguments_with_a_message():
    net, x, y, order = _problem((4, 8, 1), "tanh", torch.float32, 32, epochs=1)

    def call(params=None, inputs=x, targets=y, order_=order, **kw):
        p, m, v = _state(net)
        kw = {"minibatch_size": 8, **kw}
        return mlp_fit_adam(params if params is not None else p, m, v, inputs, targets, order_, **kw)

    with pytest.raises(RuntimeError, match="inputs must be \\[N, features\\]"):
        call(inputs=x[:, 0])
    with pytest.raises(RuntimeError, match="targets must be \\[N\\]"):
        call(targets=y[:5])
    with pytest.raises(RuntimeError, match="order must be int64"):
        call(order_=order.int())
    with pytest.raises(RuntimeError, match="weight 0 must be"):
        call(inputs=torch.randn(32, 5))
    with pytest.raises(RuntimeError, match="one output"):
        wide = _mlp((4, 8, 2), "tanh", torch.float32)
        call(params=[p.detach().clone() for p in wide.parameters()])
    with pytest.raises(RuntimeError, match="all must match the inputs"):
        call(inputs=x.double(), targets=y.double())
    with pytest.raises(ValueError, match="activation"):
        call(activation="gelu")
    with pytest.raises(ValueError, match="minibatch_size"):
        call(minibatch_size=0)
    for index in (32, -1):  # a gather past the states: an error, never a read out of bounds
        bad = order.clone()
        bad[0, 5] = index
        with pytest.raises(RuntimeError, match="order holds indices outside \\[0, 32\\)"):
            call(order_=bad)
    bad = order.clone()
    bad[0, 0] = 40  # the pure-PyTorch reference (the fallback) refuses it alike
    with pytest.raises(RuntimeError, match="order holds indices outside \\[0, 32\\)"):
        p, m, v = _state(net)
        mlp_fit_module._check_reference_args(p, m, v, x, y, bad)
    for kw, name in (
        ({"lr": -1.0}, "lr"),
        ({"eps": float("nan")}, "eps"),
        ({"betas": (2.0, 0.999)}, "betas\\[0\\]"),
        ({"betas": (0.9, -1.0)}, "betas\\[1\\]"),
    ):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            call(**kw)


def _critic(dtype=torch.float64, activation=nn.Tanh, prefix=()):
    torch.manual_seed(3)
    body = nn.Sequential(nn.Linear(OBS_DIM, 32), activation(), nn.Linear(32, 32), activation(), nn.Linear(32, 1))
    return TensorDictModule(nn.Sequential(*prefix, body), in_keys=["observation"], out_keys=["state_value"]).to(dtype)


class _Shift(nn.Module):
    """Parameter-free preprocessing with a buffer, like an observation normaliser."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.full((OBS_DIM,), 0.5))

    def forward(self, x):
        return (x - self.mean).clamp(-3, 3)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_critic_fit_fused_equals_the_eager_loop(activation):
    # two calls in a row (Adam's state carries over), with a preprocessing module in front
    actor = make_actor("gaussian", dtype=torch.float64)
    batches = [collect(actor, num_states=300, seed=s, dtype=torch.float64) for s in (2, 3)]
    results = []
    for fused in (True, False):
        critic = _critic(activation=activation, prefix=(_Shift(),))
        fit = CriticFit(
            TRPOLoss(actor, critic),
            lr=1e-2,
            epochs=3,
            minibatch_size=64,
            generator=torch.Generator().manual_seed(1),
            fused=fused,
        )
        metrics = [fit(td) for td in batches]
        results.append((critic, fit, metrics))
    (fused_critic, fused_fit, fused_metrics), (eager_critic, eager_fit, eager_metrics) = results
    for a, b in zip(fused_critic.parameters(), eager_critic.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(fused_metrics, eager_metrics):
        torch.testing.assert_close(a["loss_critic"], b["loss_critic"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a["explained_variance"], b["explained_variance"], rtol=1e-10, atol=1e-12)
    # the optimiser state is torch.optim.Adam's own: same steps, same moments
    for p, q in zip(fused_fit.parameters, eager_fit.parameters):
        s, t = fused_fit.optimizer.state[p], eager_fit.optimizer.state[q]
        assert float(s["step"]) == float(t["step"]) == 2 * 3 * 5
        torch.testing.assert_close(s["exp_avg_sq"], t["exp_avg_sq"], rtol=1e-10, atol=1e-14)


def test_critic_fit_can_switch_paths_between_calls():
    # fused first, then eager on the same optimiser: the same as eager throughout
    actor = make_actor("gaussian", dtype=torch.float64)
    batches = [collect(actor, num_states=128, seed=s, dtype=torch.float64) for s in (2, 3)]
    finals = []
    for first in (True, False):
        critic = _critic()
        fit = CriticFit(
            TRPOLoss(actor, critic), epochs=2, minibatch_size=32, generator=torch.Generator().manual_seed(4)
        )
        fit.fused = first
        fit(batches[0])
        fit.fused = False
        fit(batches[1])
        finals.append([p.detach().clone() for p in critic.parameters()])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_true_says_why_it_does_not_apply():
    actor = make_actor("gaussian")
    cases = [
        (dict(critic=_critic(torch.float32, prefix=(nn.Dropout(0.1),))), "Dropout"),
        (dict(critic=_critic(torch.float32, activation=nn.GELU)), "Tanh or all ReLU"),
        (dict(critic=_critic(torch.float32), max_grad_norm=1.0), "clip"),
        (dict(critic=_critic(torch.float32), loss_critic_type="l1"), "l2"),
    ]
    td = collect(actor, num_states=64)
    for options, reason in cases:
        critic = options.pop("critic")
        loss = TRPOLoss(actor, critic, loss_critic_type=options.pop("loss_critic_type", "l2"))
        with pytest.raises(ValueError, match=reason):
            CriticFit(loss, fused=True, **options)(td)
        CriticFit(loss, **options)(td)  # the default falls back to the eager loop
    with pytest.raises(ValueError, match="fused"):
        CriticFit(TRPOLoss(actor, _critic(torch.float32)), fused="yes")


def test_fused_fit_lowers_the_loss_on_a_real_batch():
    actor = make_actor("gaussian")
    critic = _critic(torch.float32)
    loss = TRPOLoss(actor, critic)
    td = collect(actor, num_states=512)
    before = loss(td)["loss_critic"]
    metrics = CriticFit(loss, lr=1e-2, epochs=10, minibatch_size=64, fused=True)(td)
    assert loss(td)["loss_critic"] < 0.3 * before
    assert metrics["explained_variance"] > 0.7
    assert isinstance(metrics, TensorDict)


def test_half_precision_critics_take_the_eager_loop():
    actor = make_actor("gaussian")
    critic = _critic(torch.float32).to(torch.bfloat16)
    td = collect(actor, num_states=64)
    td["observation"] = td["observation"].to(torch.bfloat16)
    td["value_target"] = td["value_target"].to(torch.bfloat16)
    loss = TRPOLoss(actor, critic)
    with pytest.raises(ValueError, match="float32 or float64"):
        CriticFit(loss, fused=True)(td)
    before = [p.detach().clone() for p in critic.parameters()]
    CriticFit(loss, epochs=1, minibatch_size=32)(td)  # the default falls back and trains
    assert any(not torch.equal(a, b) for a, b in zip(before, critic.parameters()))


@needs_op
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    # the schema's mutation annotations, the fake kernel and the composite registration
    net, x, y, order = _problem((3, 8, 1), "tanh", torch.float32, 20, epochs=2, device=device)
    params, m, v = _state(net)
    args = (params, m, v, x, y, order, 8, "tanh", 1.0, 1e-3, 0.9, 0.999, 1e-8, 0)
    torch.library.opcheck(torch.ops.trpo_torchrl.mlp_fit_adam.default, args)


@needs_op
@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("sizes,minibatch,fused", [((17, 64, 64, 1), 128, True), ((17, 256, 256, 1), 256, False)])
def test_cuda_fit_is_one_kernel_launch_when_the_network_fits_a_block(sizes, minibatch, fused):
    from torch.profiler import ProfilerActivity, profile

    net, x, y, order = _problem(sizes, "tanh", torch.float32, 1024, epochs=4, device="cuda")
    state = _state(net)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        mlp_fit_adam(*state, x, y, order, minibatch_size=minibatch)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    launches = [n for n in names if n.startswith("cudaLaunchKernel") or n == "cuLaunchKernel"]
    ours = [n for n in names if "fit_kernel" in n]
    if fused:
        assert len(ours) == 1 and len(launches) == 1, names
    else:
        assert not ours and len(launches) > 4 * 4 * 10, names  # dozens of launches per Adam step


# ------------------------------------------------------------------ the member dimension


def _members(sizes, activation, dtype, n, epochs, members, device="cpu"):
    """M distinct problems (networks, states, targets, orders, warm Adam states), each as the
    single-critic op takes it: a list of (params, exp_avgs, exp_avg_sqs, inputs, targets, order)."""
    problems = []
    for m in range(members):
        torch.manual_seed(10 + m)
        net, x, y, order = _problem(sizes, activation, dtype, n, epochs, device=device, seed=m)
        g = torch.Generator().manual_seed(100 + m)
        warm = (
            [(torch.rand(p.shape, generator=g, dtype=dtype) * 1e-2).to(device) for p in net.parameters()],
            [(torch.rand(p.shape, generator=g, dtype=dtype) * 1e-4).to(device) for p in net.parameters()],
        )
        problems.append((*_state(net, warm), x, y, order))
    return problems


def _stack(problems):
    """The members' problems stacked along a leading member dimension (fresh tensors)."""
    groups = [[torch.stack([p[i][j] for p in problems]) for j in range(len(problems[0][i]))] for i in range(3)]
    return (*groups, *(torch.stack([p[i] for p in problems]) for i in (3, 4, 5)))


_MEMBER_OPTIONS = dict(coeff=0.5, lr=3e-3, betas=(0.9, 0.99), eps=1e-6, step=7)


@needs_op
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(
    "sizes,activation,n,minibatch,dtype",
    [
        ((17, 64, 64, 1), "tanh", 300, 64, torch.float64),  # last minibatch shorter
        ((5, 8, 1), "relu", 128, 128, torch.float64),
        ((3, 1), "tanh", 50, 7, torch.float64),
        ((11, 32, 16, 8, 1), "relu", 257, 32, torch.float32),
        ((17, 64, 64, 1), "tanh", 512, 128, torch.float32),
        ((17, 256, 256, 1), "tanh", 300, 256, torch.float32),  # CUDA: the ATen-composed kernel
    ],
)
def test_stacked_op_is_m_separate_fits(device, sizes, activation, n, minibatch, dtype):
    # M critics in one call against (a) M calls of the op, one per member, and (b) the reference
    members = 3
    problems = _members(sizes, activation, dtype, n, 2, members, device)
    separate = [copy.deepcopy(p) for p in problems]
    stacked = _stack(problems)
    ref = _stack(problems)
    options = dict(minibatch_size=minibatch, activation=activation, **_MEMBER_OPTIONS)
    losses = mlp_fit_adam(*stacked, **options)
    assert losses.shape == (members, 2 * -(-n // minibatch))
    ref_losses = reference.mlp_fit_adam(*ref, minibatch, activation, 0.5, 3e-3, 0.9, 0.99, 1e-6, 7)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(losses, ref_losses, **tol)
    for a, b in zip(stacked[0] + stacked[1] + stacked[2], ref[0] + ref[1] + ref[2]):
        torch.testing.assert_close(a, b, **tol)
    for m, p in enumerate(separate):
        one = mlp_fit_adam(*p, **options)
        torch.testing.assert_close(losses[m], one, **tol)
        for a, b in zip(stacked[0] + stacked[1] + stacked[2], p[0] + p[1] + p[2]):
            torch.testing.assert_close(a[m], b, **tol)
    # the members really are different fits, and each moved
    assert not torch.equal(stacked[0][0][0], stacked[0][0][1])
    assert not torch.equal(stacked[0][0][0], problems[0][0][0])


@needs_op
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", ["device", "composite"])
def test_one_stacked_member_is_the_single_fit_bit_for_bit(device, dtype, kernel):
    (problem,) = _members((7, 32, 32, 1), "tanh", dtype, 200, 3, 1, device)
    single = copy.deepcopy(problem)
    stacked = _stack([problem])
    hyper = (48, "tanh", 0.5, 3e-3, 0.9, 0.99, 1e-6, 7)
    if kernel == "device":
        run = torch.ops.trpo_torchrl.mlp_fit_adam.default
    else:  # the ATen-composed kernel, as the CUDA kernel falls back to it
        keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
        op = torch.ops.trpo_torchrl.mlp_fit_adam.default

        def run(*args):
            return op.redispatch(keys, *args)

    losses = run(*stacked, *hyper)
    single_losses = run(*single, *hyper)
    assert losses.shape == (1, *single_losses.shape)
    assert torch.equal(losses[0], single_losses)
    for a, b in zip(stacked[0] + stacked[1] + stacked[2], single[0] + single[1] + single[2]):
        assert torch.equal(a[0], b)


@needs_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_composite_kernel_fits_members_as_the_reference(dtype):
    # the ATen-composed kernel (every device but CPU; CUDA's fallback), here on the CPU
    problems = _members((6, 16, 16, 1), "relu", dtype, 150, 2, 3)
    stacked, ref = _stack(problems), _stack(problems)
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    hyper = (32, "relu", 0.5, 3e-3, 0.9, 0.99, 1e-6, 7)
    losses = torch.ops.trpo_torchrl.mlp_fit_adam.default.redispatch(keys, *stacked, *hyper)
    ref_losses = reference.mlp_fit_adam(*ref, *hyper)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(losses, ref_losses, **tol)
    for a, b in zip(stacked[0] + stacked[1] + stacked[2], ref[0] + ref[1] + ref[2]):
        torch.testing.assert_close(a, b, **tol)


@needs_op
def test_stacked_op_takes_non_contiguous_states_targets_and_orders():
    problems = _members((5, 16, 1), "tanh", torch.float64, 60, 2, 3)
    dense = _stack(problems)
    strided = _stack(problems)
    # the same values, laid out member-minor: [N, M, ·] storage seen as [M, N, ·]
    x, y, order = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in strided[3:])
    assert not (x.is_contiguous() or y.is_contiguous() or order.is_contiguous())
    expected = mlp_fit_adam(*dense, minibatch_size=16)
    losses = mlp_fit_adam(*strided[:3], x, y, order, minibatch_size=16)
    assert torch.equal(losses, expected)
    for a, b in zip(dense[0] + dense[1] + dense[2], strided[0] + strided[1] + strided[2]):
        assert torch.equal(a, b)


@needs_op
def test_no_members_is_an_empty_fit():
    problems = _members((4, 8, 1), "tanh", torch.float64, 20, 2, 1)
    stacked = [t[:0] if isinstance(t, torch.Tensor) else [u[:0] for u in t] for t in _stack(problems)]
    losses = mlp_fit_adam(*stacked, minibatch_size=8)
    assert losses.shape == (0, 2 * 3)
    assert reference.mlp_fit_adam(*stacked, 8, "tanh", 1.0, 1e-3, 0.9, 0.999, 1e-8, 0).shape == (0, 6)


def _bad_member_cases(stacked):
    """(arguments, message) pairs: member-stacked calls whose shapes disagree."""
    params, m, v, x, y, order = stacked
    return [
        (([params[0][:2], *params[1:]], m, v, x, y, order), r"weight 0 must be \[M, out, 4\] \(M = 3 members"),
        (([params[0], params[1][:2], *params[2:]], m, v, x, y, order), r"bias 0 must be \[M, 8\]"),
        (([params[0][0], *params[1:]], m, v, x, y, order), r"weight 0 must be \[M, out, 4\]"),
        ((params, [m[0][:2], *m[1:]], v, x, y, order), "Adam state of parameter 0"),
        ((params, m, v, x, y[:2], order), r"targets must be \[M, N\] \(M = 3 members, N = 20 states"),
        ((params, m, v, x, y, order[:2]), r"order must be int64 \[M, epochs, N\]"),
        ((params, m, v, x, y, order[0]), r"order must be int64 \[M, epochs, N\]"),
        ((params, m, v, x, y[0], order), r"targets must be \[M, N\]"),
        (([p[0] for p in params], [t[0] for t in m], [t[0] for t in v], x, y, order), "weight 0 must be"),
        (
            (params, m, v, x.unsqueeze(0), y, order),
            r"inputs must be \[N, features\] \(one critic\) or \[M, N, features\]",
        ),
    ]


@needs_op
def test_stacked_op_refuses_mismatched_members_with_a_message():
    stacked = _stack(_members((4, 8, 1), "tanh", torch.float32, 20, 2, 3))
    for args, message in _bad_member_cases(stacked):
        with pytest.raises(RuntimeError, match=message):
            mlp_fit_adam(*args, minibatch_size=8)
        # the pure-PyTorch path (the fallback) refuses them alike
        with pytest.raises(ValueError, match=message):
            mlp_fit_module._check_reference_args(*args)
    bad = stacked[5].clone()
    bad[2, 1, 3] = 20  # a member's order past its states
    for check in (
        lambda o: mlp_fit_adam(*stacked[:5], o, minibatch_size=8),
        lambda o: mlp_fit_module._check_reference_args(*stacked[:5], o),
    ):
        with pytest.raises(RuntimeError, match=r"order holds indices outside \[0, 20\)"):
            check(bad)


@needs_op
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck_with_members(device):
    stacked = _stack(_members((3, 8, 1), "tanh", torch.float32, 20, 2, 2, device))
    args = (*stacked, 8, "tanh", 1.0, 1e-3, 0.9, 0.999, 1e-8, 0)
    torch.library.opcheck(torch.ops.trpo_torchrl.mlp_fit_adam.default, args)


@needs_op
@pytest.mark.cuda
@needs_cuda
def test_cuda_fits_members_in_one_kernel_launch():
    from torch.profiler import ProfilerActivity, profile

    stacked = _stack(_members((17, 64, 64, 1), "tanh", torch.float32, 1024, 4, 8, "cuda"))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        mlp_fit_adam(*stacked, minibatch_size=128)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    assert len([n for n in names if "fit_kernel" in n]) == 1, names  # one launch, eight blocks
