"""describe_mlp: which networks are plain MLPs (every fast path relies on it), and the reason given
for those that are not."""

import pytest
import torch
from tensordict.nn import AddStateIndependentNormalScale, NormalParamExtractor
from torch import nn
from torchrl.modules import MLP

from trpo_torchrl.modules import (
    MLPDescription,
    NotPlain,
    ScaleHead,
    describe_mlp,
    describe_scale_head,
    gaussian_heads,
    has_forward_hooks,
    sequential_leaves,
)
from trpo_torchrl.policies import StateIndependentScale


class _Shift(nn.Module):
    """Parameter-free preprocessing with a buffer, like an observation normaliser."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.full((5,), 0.5))

    def forward(self, x):
        return x - self.mean


class _Doubled(nn.Sequential):
    """A Sequential whose forward is not the plain composition of its children."""

    def forward(self, x):
        return 2 * super().forward(x)


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(5))

    def forward(self, x):
        return self.gain * x


def _body():
    return [nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)]


def test_a_plain_mlp_is_described_layer_by_layer():
    shift, body, head = _Shift(), _body(), StateIndependentScale(3)
    net = nn.Sequential(shift, nn.Sequential(*body[:2]), *body[2:], head)
    description = describe_mlp(net, head_types=(StateIndependentScale,))
    assert isinstance(description, MLPDescription) and description
    assert description.prefix == (shift,)
    assert description.linears == (body[0], body[2], body[4])
    assert description.activations == ("tanh", "relu")
    assert description.head is head
    assert description.shapes == ((8, 5), (8, 8), (3, 8))
    assert description.parameters == tuple(p for m in description.linears for p in (m.weight, m.bias))
    assert description.leaves == (shift, *body, head)
    assert (
        str(description)
        == "_Shift -> Linear(5, 8) -> tanh -> Linear(8, 8) -> relu -> Linear(8, 3) -> StateIndependentScale"
    )
    # a head is only taken when the caller names its type
    assert not describe_mlp(net)


def test_torchrl_mlp_and_a_lone_linear_are_plain():
    net = MLP(in_features=5, out_features=2, num_cells=[16, 16], activation_class=nn.ReLU)
    description = describe_mlp(net)
    assert description.shapes == ((16, 5), (16, 16), (2, 16))
    assert description.activations == ("relu", "relu")
    linear = nn.Linear(5, 1)
    assert describe_mlp(linear).linears == (linear,)
    assert describe_mlp(linear).activations == ()


def _with_instance_forward():
    net = nn.Sequential(*_body())
    net.forward = lambda x: x  # replaced on this one instance
    return net


def _with_hook():
    net = nn.Sequential(*_body())
    net[2].register_forward_hook(lambda module, args, out: 2 * out)
    return net


def _with_instance_forward_on_a_layer():
    net = nn.Sequential(*_body())
    layer = net[0]
    layer.forward = lambda x: 2 * nn.functional.linear(x, layer.weight, layer.bias)
    return net


class _TanhSubclass(nn.Tanh):
    pass


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: _Doubled(*_body()), "_Doubled subclasses Sequential with its own forward"),
        (lambda: nn.Sequential(_Shift(), _Doubled(*_body())), "_Doubled subclasses Sequential with its own forward"),
        (lambda: MLP(in_features=5, out_features=(2, 3), num_cells=[8]), "MLP subclasses Sequential"),
        (_with_instance_forward, "forward set on the instance"),
        (_with_instance_forward_on_a_layer, "Linear has a forward set on the instance"),
        (_with_hook, "forward hooks"),
        (lambda: nn.Sequential(nn.Dropout(0.1), *_body()), "Dropout before the first Linear is random"),
        (lambda: nn.Sequential(nn.BatchNorm1d(5, affine=False), *_body()), "BatchNorm1d before the first Linear"),
        (lambda: nn.Sequential(_Scaled(), *_body()), "_Scaled before the first Linear has parameters"),
        (lambda: nn.Sequential(*_body()[:3], nn.GELU(), nn.Linear(8, 3)), "GELU after Linear 1"),
        (lambda: nn.Sequential(*_body()[:3], _TanhSubclass(), nn.Linear(8, 3)), "_TanhSubclass after Linear 1"),
        (lambda: nn.Sequential(*_body(), nn.Tanh()), "ends in Tanh"),
        (lambda: nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 3)), "Linear after Linear 0"),
        (lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Tanh(), nn.Linear(8, 3)), "Tanh where a Linear belongs"),
        (lambda: nn.Sequential(nn.Linear(5, 8, bias=False), nn.Tanh(), nn.Linear(8, 3)), "Linear 0 has no bias"),
        (lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(7, 3)), "Linear 1 takes 7 features"),
        (lambda: nn.Sequential(_Shift(), nn.Tanh()), "no Linear layer"),
        (lambda: nn.Sequential(nn.Bilinear(5, 5, 3)), "no Linear layer"),
    ],
)
def test_what_is_not_a_plain_mlp_and_why(make, reason):
    description = describe_mlp(make())
    assert isinstance(description, NotPlain) and not description
    assert reason in description.reason, description.reason
    assert str(description) == description.reason


def test_global_hooks_make_every_module_opaque():
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: out)
    try:
        assert "forward hooks" in describe_mlp(nn.Sequential(*_body())).reason
        assert has_forward_hooks(nn.Tanh(), recurse=False)
    finally:
        handle.remove()
    assert describe_mlp(nn.Sequential(*_body()))


def test_hooks_and_leaves():
    inner = nn.Sequential(*_body())
    outer = nn.Sequential(_Shift(), inner)
    assert not has_forward_hooks(outer)
    handle = inner[0].register_forward_pre_hook(lambda module, args: None)
    assert has_forward_hooks(outer) and not has_forward_hooks(outer, recurse=False)
    handle.remove()
    assert not has_forward_hooks(outer)
    doubled = _Doubled(*_body())
    assert list(sequential_leaves(nn.Sequential(doubled, nn.Tanh())))[0] is doubled
    assert list(sequential_leaves(outer))[1:] == list(inner)


def test_the_opened_modules_compute_the_described_function():
    # the description's promise, checked on the numbers: prefix, then Linear/activation in turn
    torch.manual_seed(0)
    net = nn.Sequential(_Shift(), MLP(in_features=5, out_features=3, num_cells=[8, 8], activation_class=nn.Tanh))
    description = describe_mlp(net)
    x = torch.randn(4, 5)
    h = x
    for m in description.prefix:
        h = m(h)
    for i, linear in enumerate(description.linears):
        h = linear(h)
        if i < len(description.activations):
            h = {"tanh": torch.tanh, "relu": torch.relu}[description.activations[i]](h)
    torch.testing.assert_close(h, net(x), rtol=0, atol=0)


def test_a_tensordict_module_is_plain_when_its_class_adds_only_defaults():
    from tensordict.nn import TensorDictModule
    from torchrl.modules import ValueOperator

    from trpo_torchrl.modules import plain_tensordict_module

    class OwnForward(ValueOperator):
        def forward(self, tensordict):
            return super().forward(tensordict)

    class OwnWrite(TensorDictModule):
        def _write_to_tensordict(self, *args, **kwargs):
            return super()._write_to_tensordict(*args, **kwargs)

    class OwnKeys(TensorDictModule):
        out_keys = property(lambda self: ["other"], lambda self, value: None)

    net = MLP(in_features=5, out_features=1, num_cells=[8])
    assert plain_tensordict_module(TensorDictModule(net, ["observation"], ["state_value"]))
    assert plain_tensordict_module(ValueOperator(net))
    assert "OwnForward overrides forward" in plain_tensordict_module(OwnForward(net)).reason
    assert "OwnWrite overrides _write_to_tensordict" in plain_tensordict_module(OwnWrite(net, ["x"], ["y"])).reason
    assert "OwnKeys overrides out_keys" in plain_tensordict_module(OwnKeys(net, ["x"], ["y"])).reason
    replaced = ValueOperator(net)
    replaced.forward = lambda td: td
    assert "forward set on the instance" in plain_tensordict_module(replaced).reason
    assert "not a TensorDictModule" in plain_tensordict_module(net).reason


def test_torchrl_mlp_defaults_are_a_tanh_mlp_and_its_variants_are_named():
    # MLP(out_features=1, num_cells=[64, 64]): Linear/Tanh/Linear/Tanh/Linear, every Linear biased
    description = describe_mlp(MLP(in_features=5, out_features=1, num_cells=[64, 64]))
    assert description.activations == ("tanh", "tanh")
    assert description.shapes == ((64, 5), (64, 64), (1, 64))
    assert (
        "ends in Tanh"
        in describe_mlp(MLP(in_features=5, out_features=1, num_cells=[8], activate_last_layer=True)).reason
    )
    assert (
        "Linear 1 has no bias"
        in describe_mlp(MLP(in_features=5, out_features=1, num_cells=[8], bias_last_layer=False)).reason
    )
    assert "Dropout" in describe_mlp(MLP(in_features=5, out_features=1, num_cells=[8], dropout=0.1)).reason
    assert (
        "LayerNorm"
        in describe_mlp(
            MLP(
                in_features=5,
                out_features=1,
                num_cells=[8],
                norm_class=nn.LayerNorm,
                norm_kwargs={"normalized_shape": 8},
            )
        ).reason
    )
    assert not describe_mlp(MLP(out_features=1, num_cells=[8]))  # lazy: its shapes are not known yet


MAPPINGS = ["exp", "softplus", "relu", "biased_softplus", "biased_softplus_1.0", "biased_softplus_0.5_0.05"]


def _mapping_inputs():
    # both sides of the lower bound, relu's kink, and softplus's threshold (torch returns x above 20)
    x = torch.linspace(-6.0, 25.0, 311, dtype=torch.float64)
    return torch.cat([x, torch.tensor([0.0, 19.99, 20.0, 20.01], dtype=torch.float64)])


@pytest.mark.parametrize("name", MAPPINGS)
def test_a_state_dependent_head_is_tensordicts_extractor_exactly(name):
    extractor = NormalParamExtractor(scale_mapping=name, scale_lb=0.3)
    head = describe_scale_head(extractor)
    assert isinstance(head, ScaleHead) and head.kind == "state_dependent" and head.lower_bound == 0.3
    x = _mapping_inputs().requires_grad_(True)
    loc, scale = extractor(torch.cat([torch.zeros_like(x), x]))
    assert torch.equal(head.scale(x.detach()), scale.detach())  # the same operations, bit for bit
    held = scale.detach() == 0.3
    assert held.any() and not held.all()
    (slope,) = torch.autograd.grad(scale.sum(), x)  # the oracle: torch's own derivative
    torch.testing.assert_close(head.slope(x.detach()), slope, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", MAPPINGS)
def test_a_state_independent_head_is_tensordicts_exactly(name):
    values = _mapping_inputs()
    module = AddStateIndependentNormalScale(values.numel(), scale_mapping=name, scale_lb=0.3).double()
    with torch.no_grad():
        module.state_independent_scale.copy_(values)
    head = describe_scale_head(module)
    assert head.kind == "state_independent" and head.parameter is module.state_independent_scale
    loc, scale = module(torch.zeros(3, values.numel(), dtype=torch.float64))
    # the same operations bit for bit, on the layout the module maps: tensordict maps the parameter
    # before or after expanding it to the batch (versions differ), and a vectorised kernel on a
    # contiguous input and the loop on a stride-0 one may round a softplus differently
    held = scale.detach()
    expanded = values.expand_as(held)
    assert torch.equal(head.scale(expanded), held) or torch.equal(head.scale(values).expand_as(held), held)
    (slope,) = torch.autograd.grad(scale[0].sum(), module.state_independent_scale)
    torch.testing.assert_close(head.slope(values), slope, rtol=1e-14, atol=0)


def test_our_scale_is_a_log_std_head():
    scale = StateIndependentScale(3)
    head = describe_scale_head(scale)
    assert head.kind == "log_std" and head.parameter is scale.log_std
    assert StateIndependentScale in gaussian_heads()


def _instance_forward_softplus():
    extractor = NormalParamExtractor()
    extractor.scale_mapping.forward = lambda x: x
    return extractor


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: NormalParamExtractor(scale_mapping="expln"), "NormalParamExtractor's scale_mapping expln is not one"),
        (lambda: NormalParamExtractor(scale_mapping="none"), "scale_mapping <lambda> is not one"),
        (lambda: NormalParamExtractor(scale_lb=torch.tensor(0.1)), "scale_lb is a Tensor, not a number"),
        (_instance_forward_softplus, "biased_softplus has its own forward"),
        (lambda: AddStateIndependentNormalScale(2, scale_mapping="expln"), "scale_mapping expln is not one"),
        (lambda: AddStateIndependentNormalScale(2, scale_mapping="nope"), "'nope' is not one of tensordict's"),
        (lambda: nn.Tanh(), "Tanh is not a scale head the fast paths know"),
    ],
)
def test_scale_heads_the_fast_paths_cannot_compute_and_why(make, reason):
    head = describe_scale_head(make())
    assert isinstance(head, NotPlain) and reason in head.reason, head


def test_torchrl_heads_end_a_described_mlp():
    body = MLP(in_features=5, out_features=4, num_cells=[8], activation_class=nn.Tanh)
    extractor = NormalParamExtractor()
    description = describe_mlp(nn.Sequential(body, extractor), head_types=gaussian_heads())
    assert description.head is extractor and description.shapes == ((8, 5), (4, 8))
    added = AddStateIndependentNormalScale(4)
    assert describe_mlp(nn.Sequential(body, added), head_types=gaussian_heads()).head is added
