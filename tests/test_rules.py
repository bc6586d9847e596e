"""Learning rules: gradients against hand-written references."""
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.alignment import alignment_metrics
from models import RULES, build_network, make_rule
from models.layers import Conv2d, Linear, feedback_layers
from models.lc import LocallyConnected2d
from models.rules.base import LearningRule, uniform_like_weight


@pytest.fixture(autouse=True, scope="module")
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


LAYERS = {
    "linear": (lambda: Linear(7, 5), (4, 7)),
    "linear-square": (lambda: Linear(6, 6), (4, 6)),  # like the real 256x256 and 1024x1024 layers
    "linear-wide": (lambda: Linear(5, 8), (4, 5)),
    "conv": (lambda: Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 9, 8)),
    "lc": (lambda: LocallyConnected2d(3, 4, 9, 8, 3, stride=2, padding=1), (2, 3, 9, 8)),
}


def with_rule(layer, name, feedback=None):
    """Attach rule ``name`` to a lone layer (normally the first layer gets none)."""
    rule = make_rule(name)
    rule.layers = [layer]
    rule.output_layer = layer
    rule.init_layer(layer, torch.Generator().manual_seed(5))
    if feedback is not None:
        with torch.no_grad():
            layer.feedback_weight.copy_(feedback)
    layer.rule = rule
    return rule


def reference_forward(layer, x, weight, bias):
    """The layer's forward in plain torch ops (F.linear, F.conv2d, F.unfold +
    einsum for LC), independent of the project's *Ops, so autograd through it
    gives independent BP gradients."""
    if isinstance(layer, LocallyConnected2d):
        g = layer.geometry
        cols = F.unfold(x, g.kernel, padding=g.padding, stride=g.stride)  # [N, C*K*K, L]
        out = torch.einsum("ocl,ncl->nol", weight, cols) + bias
        return out.reshape(x.shape[0], g.out_channels, g.out_height, g.out_width)
    if isinstance(layer, Conv2d):
        return F.conv2d(x, weight, bias, layer.stride, layer.padding)
    return F.linear(x, weight, bias)


def reference_grads(layer, x, grad_out):
    x = x.detach().clone().requires_grad_()
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    reference_forward(layer, x, weight, bias).backward(grad_out)
    return x.grad, weight.grad, bias.grad


def grads(layer, x, grad_out):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad()
    layer(x).backward(grad_out)
    return x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("rule", ["fa", "kp"])
def test_feedback_equal_to_w_gives_bp_gradients(kind, rule):
    torch.manual_seed(0)
    make, shape = LAYERS[kind]
    layer = make()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(shape)
    grad_out = torch.randn_like(layer(x))
    expected = reference_grads(layer, x, grad_out)
    with_rule(layer, rule, feedback=layer.weight.detach())
    for got, want in zip(grads(layer, x, grad_out), expected):
        torch.testing.assert_close(got, want)


def lc_input_grad_loop(layer, grad_out, backward):
    """Input gradient of an LC layer through B, by a plain loop over positions."""
    g = layer.geometry
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
    n = grad_out.shape[0]
    padded = torch.zeros(n, g.in_channels, g.in_height + 2 * ph, g.in_width + 2 * pw)
    for i in range(g.out_height):
        for j in range(g.out_width):
            patch = grad_out[:, :, i, j] @ backward[:, :, i * g.out_width + j]
            padded[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += patch.view(n, g.in_channels, kh, kw)
    return padded[:, :, ph:ph + g.in_height, pw:pw + g.in_width]


@pytest.mark.parametrize("kind", LAYERS)
def test_fa_input_gradient_matches_hand_formula(kind):
    torch.manual_seed(1)
    make, shape = LAYERS[kind]
    layer = make()
    with_rule(layer, "fa")
    x = torch.randn(shape)
    grad_out = torch.randn_like(layer(x))
    grad_in, grad_w, _ = grads(layer, x, grad_out)
    B = layer.feedback_weight
    if kind.startswith("linear"):
        expected = grad_out @ B
    elif kind == "conv":
        expected = torch.nn.grad.conv2d_input(x.shape, B, grad_out, stride=2, padding=1)
    else:
        expected = lc_input_grad_loop(layer, grad_out, B)
    torch.testing.assert_close(grad_in, expected)
    # The weight gradient is still the true one.
    torch.testing.assert_close(reference_grads(layer, x, grad_out)[1], grad_w)


@pytest.mark.parametrize("name", ["usf", "frsf", "brsf"])
def test_sign_rules_use_sign_of_w_with_their_magnitudes(name):
    torch.manual_seed(2)
    layer = Linear(6, 4)
    rule = with_rule(layer, name)
    if name == "brsf":
        rule.generator = torch.Generator().manual_seed(0)
    first = rule.backward_operand(layer, layer.weight)[0]
    second = rule.backward_operand(layer, layer.weight)[0]
    assert torch.equal(first.sign(), layer.weight.detach().sign())
    bound = layer.init_bound()
    if name == "usf":
        torch.testing.assert_close(first.abs(), torch.full_like(first, bound / 3 ** 0.5))
    elif name == "frsf":
        torch.testing.assert_close(first.abs(), layer.feedback_magnitude)
        assert torch.equal(first, second)
    else:
        assert not torch.equal(first.abs(), second.abs())
        assert float(first.abs().max()) <= bound
    # and the backward pass really uses it
    x = torch.randn(3, 6)
    grad_out = torch.randn(3, 4)
    if name == "brsf":
        rule.generator.manual_seed(7)
        expected = grad_out @ rule.backward_operand(layer, layer.weight)[0]
        rule.generator.manual_seed(7)
    else:
        expected = grad_out @ first
    torch.testing.assert_close(grads(layer, x, grad_out)[0], expected)


def test_brsf_redraws_magnitudes_every_step_frsf_does_not():
    torch.manual_seed(3)
    for name, changes in (("brsf", True), ("frsf", False)):
        model = build_network("fc", "mnist", 10)
        make_rule(name).attach(model, torch.Generator().manual_seed(0), (1, 28, 28))
        layer = feedback_layers(model)[2]
        seen = []
        layer.register_full_backward_hook(lambda m, gi, go: seen.append(gi[0].clone()))
        x, grad = torch.randn(4, 1, 28, 28), torch.randn(4, 10)
        for _ in range(2):
            model(x).backward(grad)
        assert (not torch.equal(seen[0], seen[1])) == changes


def test_dfa_hidden_updates_match_hand_computation():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), Linear(12, 8), nn.Tanh(), Linear(8, 6), nn.Tanh(), Linear(6, 3))
    make_rule("dfa").attach(model, torch.Generator().manual_seed(0), (12,))
    l1, l2, l3 = feedback_layers(model)
    x, y = torch.randn(5, 12), torch.tensor([0, 1, 2, 1, 0])
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        h1 = torch.tanh(l1(x))
        h2 = torch.tanh(l2(h1))
        logits = l3(h2)
        e = (logits.softmax(1) - F.one_hot(y, 3)) / 5
        d2 = (e @ l3.feedback_weight) * (1 - h2 ** 2)
        d1 = (e @ l2.feedback_weight) * (1 - h1 ** 2)
    assert l2.feedback_weight.shape == (3, 8) and l3.feedback_weight.shape == (3, 6)
    torch.testing.assert_close(l3.weight.grad, e.t() @ h2)
    torch.testing.assert_close(l2.weight.grad, d2.t() @ h1)
    torch.testing.assert_close(l1.weight.grad, d1.t() @ x)
    torch.testing.assert_close(l1.bias.grad, d1.sum(0))


@pytest.mark.parametrize("kind", ["conv", "lc"])
def test_dfa_updates_of_spatial_layers_match_hand_computation(kind):
    """A spatial layer under DFA: its error is e @ B reshaped to its output,
    times tanh'; its weight gradient is that error through the layer's own
    (independent reference) weight gradient."""
    torch.manual_seed(5)
    first = Conv2d(2, 3, 3, stride=2, padding=1) if kind == "conv" else LocallyConnected2d(2, 3, 6, 6, 3, 2, 1)
    model = nn.Sequential(first, nn.Tanh(), Conv2d(3, 4, 3, stride=1, padding=1) if kind == "conv"
                          else LocallyConnected2d(3, 4, 3, 3, 3, 1, 1), nn.Tanh(), nn.Flatten(), Linear(36, 3))
    make_rule("dfa").attach(model, torch.Generator().manual_seed(0), (2, 6, 6))
    l1, l2, l3 = feedback_layers(model)
    x, y = torch.randn(5, 2, 6, 6), torch.tensor([0, 1, 2, 1, 0])
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        h1 = torch.tanh(reference_forward(l1, x, l1.weight, l1.bias))
        h2 = torch.tanh(reference_forward(l2, h1, l2.weight, l2.bias))
        e = (l3(h2.flatten(1)).softmax(1) - F.one_hot(y, 3)) / 5
        d2 = (e @ l3.feedback_weight).view_as(h2) * (1 - h2 ** 2)
        d1 = (e @ l2.feedback_weight).view_as(h1) * (1 - h1 ** 2)
    assert l2.feedback_weight.shape == (3, 3 * 3 * 3) and l3.feedback_weight.shape == (3, 36)
    for layer, inputs, delta in ((l2, h1, d2), (l1, x, d1)):
        _, grad_w, grad_b = reference_grads(layer, inputs, delta)
        torch.testing.assert_close(layer.weight.grad, grad_w)
        torch.testing.assert_close(layer.bias.grad, grad_b)


@pytest.mark.parametrize("where", ["double", "double-after-attach"])
def test_dfa_feedback_follows_the_layer_dtype(where):
    torch.manual_seed(5)
    model = build_network("lc", "mnist", 10).float()
    if where == "double":
        model = model.double()
    rule = make_rule("dfa").attach(model, torch.Generator().manual_seed(0), (1, 28, 28))
    if where == "double-after-attach":
        model = model.double()  # buffers move with the model
    for layer in rule.layers[1:]:
        assert layer.feedback_weight.dtype == layer.weight.dtype == torch.float64
    F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([1, 2])).backward()


def test_update_angle_equals_a_hand_computation():
    """FA on a 2-layer net with known B: the rule's weight gradient of the
    first layer is (e B) * tanh' outer x, BP's (e W) * tanh' outer x; the
    record's angle is the angle between them."""
    torch.manual_seed(8)
    model = nn.Sequential(Linear(4, 5), nn.Tanh(), Linear(5, 3))
    rule = make_rule("fa").attach(model, torch.Generator().manual_seed(2), (4,))
    l1, l2 = feedback_layers(model)
    x, y = torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    with torch.no_grad():
        h = torch.tanh(l1(x))
        e = (l2(h).softmax(1) - F.one_hot(y, 3)) / 7
        fa = ((e @ l2.feedback_weight) * (1 - h ** 2)).t() @ x
        bp = ((e @ l2.weight) * (1 - h ** 2)).t() @ x
        cos = (fa * bp).sum() / (fa.norm() * bp.norm())
        expected = torch.rad2deg(torch.acos(cos)).item()
        wb = torch.rad2deg(torch.acos((l2.weight * l2.feedback_weight).sum()
                                      / (l2.weight.norm() * l2.feedback_weight.norm()))).item()
    rows = alignment_metrics(model, rule, x, y)
    assert expected > 20  # a real angle, not a degenerate 0
    assert rows[0]["update_angle"] == pytest.approx(expected, abs=1e-6)
    assert rows[1]["update_angle"] == pytest.approx(0.0, abs=1e-5)  # the output layer's own error is exact
    assert rows[1]["wb_angle"] == pytest.approx(wb, abs=1e-6) and rows[0]["wb_angle"] is None


def toy_problem(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    teacher = torch.randn(20, 4, generator=g)
    return x, (x @ teacher).argmax(1)


def train_small(rule_name, steps=300, weight_decay=None, **options):
    torch.manual_seed(6)
    model = nn.Sequential(Linear(20, 32), nn.Tanh(), Linear(32, 32), nn.Tanh(), Linear(32, 4))
    rule = make_rule(rule_name, **options).attach(model, torch.Generator().manual_seed(1), (20,))
    rule.weight_decay = rule.default_weight_decay if weight_decay is None else weight_decay
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = toy_problem()
    for _ in range(steps):
        rule.train_step(model, x, y, opt)
    return model, rule


def wb_angles(model, rule):
    x, y = toy_problem()
    return [row["wb_angle"] for row in alignment_metrics(model, rule, x[:64], y[:64])[1:]]


def test_kolen_pollack_aligns_b_with_w_and_fa_does_not():
    # Both start near 90 degrees (independent random B). Under FA, W drifts
    # partly towards B (that is the "alignment"); under KP, B - W decays by
    # (1 - weight decay) per step, here 0.99**300 ~ 0.05, so B becomes W.
    model, rule = train_small("kp", weight_decay=1e-2)
    kp_angles = wb_angles(model, rule)
    model, rule = train_small("fa")
    fa_angles = wb_angles(model, rule)
    assert max(kp_angles) < 15, kp_angles
    assert min(fa_angles) > 45, fa_angles


def differences(model):
    return [layer.feedback_weight - layer.weight.detach() for layer in feedback_layers(model)[1:]]


@pytest.mark.parametrize("steps", [1, 40])
def test_kp_at_its_default_decay_shrinks_b_minus_w_by_exactly_that_factor(steps):
    assert make_rule("kp").default_weight_decay == 1e-4
    model, rule = train_small("kp", steps=1)
    start = differences(model)
    rest_model, rest_rule = model, rule
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = toy_problem()
    for _ in range(steps):
        rest_rule.train_step(rest_model, x, y, opt)
    for before, after in zip(start, differences(model)):
        torch.testing.assert_close(after, before * (1 - 1e-4) ** steps)


def test_kp_feedback_gets_exactly_the_update_of_w_and_its_decay():
    model, rule = train_small("kp", steps=1)
    layer = feedback_layers(model)[1]
    before_w, before_b = layer.weight.detach().clone(), layer.feedback_weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = toy_problem()
    rule.train_step(model, x, y, opt)
    keep = 1 - rule.weight_decay
    delta_w = layer.weight.detach() / keep - before_w
    assert delta_w.abs().max() > 1e-4  # the step moved W
    torch.testing.assert_close(layer.feedback_weight / keep - before_b, delta_w)


@pytest.mark.parametrize("name", RULES.names())
def test_feedback_is_buffers_not_parameters_and_survives_save_load(name):
    torch.manual_seed(7)
    model = build_network("lc", "mnist", 10)
    n_params = sum(p.numel() for p in model.parameters())
    rule = make_rule(name).attach(model, torch.Generator().manual_seed(0), (1, 28, 28))
    assert sum(p.numel() for p in model.parameters()) == n_params
    param_ids = {id(p) for p in model.parameters()}
    assert not any(id(b) in param_ids for b in model.buffers())
    if name in ("fa", "dfa", "kp", "frsf"):
        assert any(n.endswith(("feedback_weight", "feedback_magnitude")) for n, _ in model.named_buffers())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 4])

    def gradients(m, r):
        if r.generator is not None:
            r.generator.manual_seed(11)
        m.zero_grad()
        out = m(x)
        r.project_target(y, out)  # DRTP's hidden layers learn from the target
        F.cross_entropy(out, y).backward()
        return [p.grad.clone() for p in m.parameters()]

    expected = gradients(model, rule)
    torch.manual_seed(99)  # a different init, overwritten by the load
    clone = build_network("lc", "mnist", 10)
    clone_rule = make_rule(name).attach(clone, torch.Generator().manual_seed(123), (1, 28, 28))
    buffer.seek(0)
    clone.load_state_dict(torch.load(buffer))
    for got, want in zip(gradients(clone, clone_rule), expected):
        torch.testing.assert_close(got, want)


class OwnFeedback(LearningRule):
    """A plug-in's rule that says only how its layers send their signal down."""
    name = "own-feedback"

    def init_layer(self, layer, generator):
        layer.register_buffer("feedback_weight", uniform_like_weight(layer, generator))

    def backward_operand(self, layer, weight):
        return layer.feedback_weight, None


def test_a_rule_gets_every_optional_capability_from_the_base_class_with_its_default(float64):
    """What robustness and the alignment records may ask of a rule is declared
    on LearningRule (docs/extending.md's table), so a rule that implements
    none of it still answers every question."""
    torch.manual_seed(0)
    model = nn.Sequential(Linear(4, 5), nn.Tanh(), Linear(5, 3))
    rule = OwnFeedback().attach(model, torch.Generator().manual_seed(1), (4,))
    assert rule.has_rule_gradient  # its own backward operand carries a signal down
    assert not rule.has_input_gradient_estimate and not rule.learned_feedback and rule.learns_by_backward
    assert rule.generator is None and rule.schedule == "parallel"
    x, y = torch.randn(6, 4, requires_grad=True), torch.tensor([0, 1, 2, 0, 1, 2])
    assert rule.project_target(y, model(x)) is None  # no target to hand over: the error travels
    with pytest.raises(NotImplementedError):
        rule.estimate_input_gradient(x, torch.ones(6, 3))
    # the prediction is the feed-forward net, differentiated exactly (through W, not B)
    (got,) = torch.autograd.grad(rule.differentiable_forward(model, x).sum(), x)
    w1, b1, w2, b2 = (p.detach() for p in model.parameters())
    (expected,) = torch.autograd.grad((torch.tanh(x @ w1.t() + b1) @ w2.t() + b2).sum(), x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    assert all(layer.rule is rule for layer in feedback_layers(model)[1:])  # the rule is back in place
    (along_rule,) = torch.autograd.grad(model(x).sum(), x)
    assert not torch.allclose(along_rule, expected)


def test_capability_flags_follow_the_hooks_a_class_defines():
    class Estimating(OwnFeedback):
        def estimate_input_gradient(self, x, cotangent):
            return torch.zeros_like(x)

    class Exact(LearningRule):
        pass

    class Declared(OwnFeedback):
        has_rule_gradient = False  # e.g. a backward operand that is W itself

    assert Estimating.has_input_gradient_estimate and Estimating.has_rule_gradient
    assert not Exact.has_rule_gradient and not Exact.has_input_gradient_estimate
    assert not Declared.has_rule_gradient


@pytest.mark.parametrize("name", RULES.names())
def test_a_feedback_matrix_a_layer_sends_its_signal_through_is_reported_and_counted(name):
    """Read off each rule's own hooks, not a list of names: a layer whose own
    backward sends its signal down through a B in W's place reports it for
    the W-B angle, and a B the rule keeps between steps (not brSF's redrawn
    one) is counted as feedback."""
    torch.manual_seed(0)
    model = build_network("fc", "mnist", 10)
    rule = make_rule(name).attach(model, torch.Generator().manual_seed(1), (1, 28, 28))
    for layer in feedback_layers(model):
        if layer.rule is not rule:
            continue
        b, route = rule.backward_operand(layer, layer.weight)
        if b is layer.weight:  # W itself (EP's symmetric feedback): nothing of the rule's own
            continue
        if route is None:  # no route of its own (DFA's): B takes W's place
            assert rule.alignment_matrix(layer) is not None
        if torch.equal(b, rule.backward_operand(layer, layer.weight)[0]):
            assert rule.feedback_count(layer) > 0
