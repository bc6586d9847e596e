"""Target propagation: inverses, targets and losses against hand computations,
schedules, L-DRL's feedback loss, and exact resume of an alternating run."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import Conv2d, Linear, LocallyConnected2d, make_rule
from models.inverses import ConvInverse, LCInverse
from models.lc import lc_transpose
from models.rules.tp import squared_error

DOUBLE = torch.float64


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DOUBLE)
    yield
    torch.set_default_dtype(previous)


def attach(name, model, input_shape, seed=0, **options):
    rule = make_rule(name, **options).attach(model, torch.Generator().manual_seed(seed), input_shape)
    rule.moved_to("cpu")
    return rule


def tiny_tanh_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(Linear(4, 3), nn.Tanh(), Linear(3, 3), nn.Tanh(), Linear(3, 2)).double()


def tiny_lc_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(LocallyConnected2d(1, 2, 6, 6, 3, 2, 1), nn.Tanh(),
                         LocallyConnected2d(2, 3, 3, 3, 3, 1, 1), nn.Tanh(), nn.Flatten(),
                         Linear(27, 4)).double()


def fixed_noise(rule, seed=3):
    """Replace the rule's noise by draws we can repeat by hand."""
    draws = []

    def noise(h):
        value = rule.options["sigma"] * torch.randn(h.shape, generator=torch.Generator().manual_seed(seed + len(draws)))
        draws.append(value)
        return value
    rule.noise_like = noise
    return draws


# --- the inverses of each layer kind ------------------------------------------------
def lc_transpose_loop(y, weight, c_in, height, width, kernel, stride, padding):
    """fold(A^T y) by an explicit loop over output positions and channels."""
    n, c_out, oh, ow = y.shape
    out = torch.zeros(n, c_in, height + 2 * padding, width + 2 * padding)
    for i in range(oh):
        for j in range(ow):
            filters = weight[:, :, i * ow + j].reshape(c_out, c_in, kernel, kernel)
            for o in range(c_out):
                out[:, :, i * stride:i * stride + kernel, j * stride:j * stride + kernel] += \
                    y[:, o, i, j].reshape(n, 1, 1, 1) * filters[o]
    return out[:, :, padding:padding + height, padding:padding + width]


@pytest.mark.parametrize("c_in,c_out,h,w,k,s,p", [(2, 3, 5, 6, 3, 2, 1), (1, 2, 7, 7, 3, 1, 1),
                                                  (3, 2, 8, 6, 5, 2, 2)])
def test_lc_transpose_matches_a_per_position_loop_and_is_the_adjoint(c_in, c_out, h, w, k, s, p):
    layer = LocallyConnected2d(c_in, c_out, h, w, k, s, p, bias=False).double()
    weight = torch.randn(layer.param_shapes[0])
    y = torch.randn(3, c_out, layer.out_height, layer.out_width)
    got = lc_transpose(y, weight, layer.geometry)
    torch.testing.assert_close(got, lc_transpose_loop(y, weight, c_in, h, w, k, s, p))
    # adjoint: <LC_A(x), y> == <x, LC_A^T(y)>
    x = torch.randn(3, c_in, h, w)
    torch.testing.assert_close((layer(x, weights=[weight]) * y).sum(), (x * got).sum())


def test_lc_transpose_gradcheck():
    layer = LocallyConnected2d(2, 3, 5, 5, 3, 2, 1, bias=False)
    weight = torch.randn(layer.param_shapes[0], requires_grad=True)
    y = torch.randn(2, 3, layer.out_height, layer.out_width, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: lc_transpose(a, b, layer.geometry), (y, weight))


def test_lc_inverse_has_the_forward_shape_plus_one_bias_per_input_unit():
    layer = LocallyConnected2d(2, 3, 6, 6, 3, 2, 1)
    inverse = LCInverse(layer, torch.Generator().manual_seed(0))
    assert inverse.weight.shape == layer.weight.shape
    assert inverse.bias.shape == (2, 6, 6)
    with torch.no_grad():
        inverse.bias.normal_()
    y = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(inverse(y), lc_transpose_loop(y, inverse.weight, 2, 6, 6, 3, 2, 1) + inverse.bias)


@pytest.mark.parametrize("size,k,s,p", [(28, 3, 2, 1), (7, 3, 1, 1), (32, 5, 2, 2), (9, 5, 2, 2)])
def test_conv_inverse_is_conv_transpose2d_back_to_the_input_size(size, k, s, p):
    layer = Conv2d(2, 3, k, s, p).double()
    inverse = ConvInverse(layer, (2, size, size), torch.Generator().manual_seed(0)).double()
    x = torch.randn(2, 2, size, size)
    y = torch.randn_like(layer(x))
    got = inverse(y)
    assert got.shape == x.shape
    pad = inverse.output_padding
    torch.testing.assert_close(got, F.conv_transpose2d(y, inverse.weight, inverse.bias, s, p, pad))
    # adjoint of the conv with the inverse's weights
    conv = F.conv2d(x, inverse.weight, None, s, p)
    torch.testing.assert_close((conv * y).sum(), (x * (got - inverse.bias.view(1, -1, 1, 1))).sum())


# --- targets and losses against hand computations -----------------------------------------
def hand_inverse(rule, k):
    inv = rule.feedback.inverses[str(k)]
    return lambda v: torch.tanh(v @ inv.weight.t() + inv.bias)


def hidden(model, x):
    h1 = torch.tanh(model[0](x))
    h2 = torch.tanh(model[2](h1))
    return h1, h2, model[4](h2)


def test_dtp_targets_match_hand_computation():
    model = tiny_tanh_net()
    rule = attach("dtp-par", model, (4,), alpha=0.2)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    h1, h2, h3 = hidden(model, x)
    # per-sample loss gradient at h2, through the output layer: W3^T (softmax - onehot)
    grad_h2 = (F.softmax(h3, 1) - F.one_hot(y, 2)) @ model[4].weight
    t2 = h2 - 0.2 * grad_h2
    g2 = hand_inverse(rule, 2)
    t1 = h1 + g2(t2) - g2(h2)
    hs = [h.detach() for h in rule.forward_pass(x, grad=False)]
    targets = rule.targets(hs, y)
    assert set(targets) == {1, 2}
    torch.testing.assert_close(targets[2], t2.detach())
    torch.testing.assert_close(targets[1], t1.detach())
    # DTP has no inverse of the output layer
    assert sorted(rule.feedback.inverses) == ["2"]


def test_sdtp_penultimate_target_comes_from_the_label():
    model = tiny_tanh_net()
    rule = attach("sdtp-par", model, (4,))
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    h1, h2, h3 = hidden(model, x)
    g3, g2 = hand_inverse(rule, 3), hand_inverse(rule, 2)
    t2 = h2 - g3(F.softmax(h3, 1)) + g3(F.one_hot(y, 2).double())
    t1 = h1 + g2(t2) - g2(h2)
    targets = rule.targets([h.detach() for h in rule.forward_pass(x, grad=False)], y)
    torch.testing.assert_close(targets[2], t2.detach())
    torch.testing.assert_close(targets[1], t1.detach())


def test_aosdtp_target_uses_the_same_auxiliary_units_in_both_inverse_calls():
    model = tiny_tanh_net()
    rule = attach("aosdtp-alt", model, (4,), aux_units=6)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    _, h2, h3 = hidden(model, x)
    z = torch.tanh(h2 @ rule.feedback.aux_weight.t())
    g3 = hand_inverse(rule, 3)
    t2 = h2 - g3(torch.cat([F.softmax(h3, 1), z], 1)) + g3(torch.cat([F.one_hot(y, 2).double(), z], 1))
    targets = rule.targets([h.detach() for h in rule.forward_pass(x, grad=False)], y)
    torch.testing.assert_close(targets[2], t2.detach())
    assert rule.feedback.inverses["3"].weight.shape == (3, 2 + 6)
    # the auxiliary weights are fixed: not trained, not forward parameters
    assert all(p is not rule.feedback.aux_weight for p in rule.feedback.parameters())


@pytest.mark.parametrize("name,denoise", [("dtp-par", False), ("sdtp-par", True)])
def test_inverse_loss_is_noise_preserving_for_dtp_and_denoising_for_sdtp(name, denoise):
    model = tiny_tanh_net()
    rule = attach(name, model, (4,))
    x = torch.randn(5, 4)
    h1, _, _ = hidden(model, x)
    h1 = h1.detach()
    draws = fixed_noise(rule)
    got = rule.reconstruction_loss(2, h1)
    noisy = h1 + draws[0]
    reconstructed = hand_inverse(rule, 2)(torch.tanh(model[2](noisy)))
    reference = h1 if denoise else noisy
    expected = ((reconstructed - reference) ** 2).sum(1).mean()
    torch.testing.assert_close(got, expected)


def test_forward_loss_gives_each_layer_its_local_gradient_only():
    model = tiny_tanh_net()
    rule = attach("dtp-par", model, (4,))
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    hs = rule.forward_pass(x, grad=True)
    targets = rule.targets([h.detach() for h in hs], y)
    updates = torch.autograd.grad(rule.forward_loss(hs, targets, y), [model[0].weight, model[2].weight])
    # layer 1 alone: d/dW1 sum_units (tanh(W1 x + b1) - t1)^2, batch mean
    w1 = model[0].weight.detach().clone().requires_grad_(True)
    local = ((torch.tanh(x @ w1.t() + model[0].bias.detach()) - targets[1]) ** 2).sum(1).mean()
    torch.testing.assert_close(updates[0], torch.autograd.grad(local, w1)[0])
    # DTP's penultimate update is a rescaled BP gradient: angle 0
    bp = torch.autograd.grad(F.cross_entropy(model(x), y), model[2].weight)[0]
    cos = F.cosine_similarity(updates[1].flatten(), bp.flatten(), dim=0)
    assert float(cos) > 1 - 1e-9


def test_exact_inverses_make_the_difference_correction_invert_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(Linear(4, 4), Linear(4, 4), Linear(4, 3)).double()  # identity activations
    rule = attach("dtp-par", model, (4,), alpha=0.01)
    w2, b2 = model[1].weight.detach(), model[1].bias.detach()
    inverse = rule.feedback.inverses["2"]
    with torch.no_grad():
        inverse.weight.copy_(torch.linalg.inv(w2))
        inverse.bias.copy_(-torch.linalg.inv(w2) @ b2)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    hs = [h.detach() for h in rule.forward_pass(x, grad=False)]
    targets = rule.targets(hs, y)
    torch.testing.assert_close(targets[1], (targets[2] - b2) @ torch.linalg.inv(w2).t())
    # DTP's penultimate target with a small alpha lowers the loss
    assert F.cross_entropy(model[2](targets[2]), y) < F.cross_entropy(hs[3], y)


@pytest.mark.slow
def test_inverse_training_lowers_the_reconstruction_error_on_an_lc_net():
    model = tiny_lc_net()
    rule = attach("sdtp-par", model, (1, 6, 6), sigma=0.05, inverse_lr=3e-3)
    x, y = torch.randn(16, 1, 6, 6), torch.arange(16) % 4
    before = [r["reconstruction_error"] for r in rule.layer_metrics(model, x, y)]
    hs = [h.detach() for h in rule.forward_pass(x, grad=False)]
    for _ in range(200):
        rule.inverse_step(hs, y)
    after = [r["reconstruction_error"] for r in rule.layer_metrics(model, x, y)]
    assert before[0] is None and after[0] is None  # the first layer has no inverse
    assert after[1] < 0.2 * before[1]
    # the output inverse reads 4 class probabilities, too few to rebuild 27 units
    assert after[2] < 0.75 * before[2]


def parameters_of(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(b, p) for b, p in zip(before, module.parameters())]


@pytest.mark.parametrize("arch", ["lc", "conv"])
def test_alternating_schedule_touches_only_inverses_then_only_forward_weights(arch):
    torch.manual_seed(0)
    if arch == "lc":
        model = tiny_lc_net()
    else:
        model = nn.Sequential(Conv2d(1, 2, 3, 2, 1), nn.Tanh(), Conv2d(2, 3, 3, 1, 1), nn.Tanh(), nn.Flatten(),
                              Linear(27, 4)).double()
    rule = attach("dtp-alt", model, (1, 6, 6))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 1, 6, 6), torch.arange(8) % 4
    for epoch, phase in enumerate(["inverse", "forward", "inverse"]):
        rule.start_epoch()
        assert rule.phase == phase and rule.epoch_info() == {"phase": phase}
        forward, inverse = parameters_of(model), parameters_of(rule.feedback)
        for _ in range(3):
            rule.train_step(model, x, y, optimizer)
        rule.end_epoch()
        assert any(changed(forward, model)) == (phase == "forward")
        assert all(changed(forward, model)) == (phase == "forward")
        assert all(changed(inverse, rule.feedback)) == (phase == "inverse")
        assert any(changed(inverse, rule.feedback)) == (phase == "inverse")


def test_parallel_schedule_updates_both_every_step():
    model = tiny_lc_net()
    rule = attach("aosdtp-par", model, (1, 6, 6), aux_units=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    forward, inverse = parameters_of(model), parameters_of(rule.feedback)
    rule.start_epoch()
    rule.train_step(model, torch.randn(8, 1, 6, 6), torch.arange(8) % 4, optimizer)
    assert all(changed(forward, model)) and all(changed(inverse, rule.feedback))


@pytest.mark.parametrize("name", ["dtp-par", "sdtp-alt", "aosdtp-par", "ldrl"])
def test_inverse_counts_follow_the_formula_and_forward_counts_stay(name):
    from models import build_network, parameter_counts
    torch.manual_seed(0)
    model = build_network("lc", "mnist", 10)
    rule = attach(name, model, (1, 28, 28))
    counts = parameter_counts(model, rule)
    assert counts["forward_total"] == 4_191_562  # the forward net alone, as without a rule
    lc2 = 64 * 32 * 9 * 7 * 7 + 32 * 14 * 14  # transposed LC weight + one bias per input unit
    fc = 3136 * 1024 + 3136
    output = {"dtp-par": 0, "sdtp-alt": 10 * 1024 + 1024,
              "aosdtp-par": (10 + 512) * 1024 + 1024 + 512 * 1024,  # inverse + fixed auxiliary weights
              "ldrl": 1024 * 10 + 1024}[name]
    assert [row["feedback"] for row in counts["per_layer"]] == [0, lc2, fc, output]
    assert counts["feedback_total"] == lc2 + fc + output


# --- L-DRL --------------------------------------------------------------------------------
def hand_paper_inverse(rule, k):
    """Ernoult et al.'s form: the layer's own activation (tanh), then the linear map."""
    inv = rule.feedback.inverses[str(k)]
    return lambda v: torch.tanh(v) @ inv.weight.t() + inv.bias


@pytest.mark.parametrize("form,hand", [("paper", hand_paper_inverse), ("tanh", hand_inverse)])
def test_ldrl_feedback_loss_matches_its_formula(form, hand):
    model = tiny_tanh_net()
    rule = attach("ldrl", model, (4,), sigma=0.2, inverse_form=form)
    x = torch.randn(5, 4)
    h1, h2, _ = hidden(model, x)
    h1, h2 = h1.detach(), h2.detach()
    draws = fixed_noise(rule)
    got = rule.feedback_loss(2, h1, h2)
    dx, dy = draws
    g = hand(rule, 2)
    along = -2 * (dx * (g(torch.tanh(model[2](h1 + dx))) - g(h2))).sum(1).mean()
    spread = ((g(h2 + dy) - g(h2)) ** 2).sum(1).mean()
    torch.testing.assert_close(got, (along + spread) / 0.2 ** 2)
    # the output layer's inverse reads the logits and is trained too
    assert sorted(rule.feedback.inverses) == ["2", "3"]


def test_ldrl_output_target_and_local_loss():
    model = tiny_tanh_net()
    rule = attach("ldrl", model, (4,), beta=0.5)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    hs = rule.forward_pass(x, grad=True)
    detached = [h.detach() for h in hs]
    targets = rule.targets(detached, y)
    logits = detached[3]
    t3 = logits - 0.5 * (F.softmax(logits, 1) - F.one_hot(y, 2))
    torch.testing.assert_close(targets[3], t3)
    loss = rule.forward_loss(hs, targets, y)
    expected = sum(0.5 * ((detached[k] - targets[k]) ** 2).sum(1).mean() for k in (1, 2, 3))
    torch.testing.assert_close(loss.detach(), expected)


def angle_between(a, b):
    cos = F.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    return math.degrees(math.acos(float(cos.clamp(-1, 1))))


def test_ldrl_feedback_training_makes_g_jacobian_approach_f_transpose():
    torch.manual_seed(1)
    model = nn.Sequential(Linear(6, 5), Linear(5, 4)).double()  # linear: J_f = W, J_g = V
    rule = attach("ldrl", model, (6,), sigma=0.1, feedback_steps=1, inverse_lr=1e-2)
    x = torch.randn(64, 6)
    hs = [h.detach() for h in rule.forward_pass(x, grad=False)]
    w = model[1].weight.detach()
    start = angle_between(rule.feedback.inverses["2"].weight.detach(), w.t())
    for _ in range(400):
        rule.inverse_step(hs, None)
    end = angle_between(rule.feedback.inverses["2"].weight.detach(), w.t())
    assert start > 60 and end < 10, (start, end)


# --- bad options ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,option", [("dtp-par", "sigma=0"), ("dtp-alt", "alpha=-1"),
                                         ("aosdtp-par", "aux_units=0"), ("ldrl", "feedback_steps=0"),
                                         ("sdtp-par", "inverse_lr=nan"), ("ldrl", "inverse_beta2=1")])
def test_bad_tp_options_are_one_line_errors(name, option):
    key, value = option.split("=")
    with pytest.raises(ValueError, match=key):
        make_rule(name, **{key: value})


@pytest.mark.parametrize("name", ["dtp-par", "dtp-alt", "sdtp-par", "sdtp-alt", "aosdtp-par", "aosdtp-alt", "ldrl"])
def test_every_tp_default_states_where_it_comes_from(name):
    rule = make_rule(name)
    assert sorted(rule.option_sources) == sorted(rule.defaults)


def test_squared_error_sums_units_and_averages_the_batch():
    d = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    assert float(squared_error(d)) == pytest.approx((1 + 4 + 9) / 2)
