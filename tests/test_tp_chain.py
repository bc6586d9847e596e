"""Target propagation on a deep net: every layer's target against an
independent hand computation (so the difference chain is checked past its
first step), and L-DRL's number of inverse steps per batch."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import attach_tp_rule, chain_batch
from models import Linear

# Different activations per hidden layer, so using the wrong layer's
# activation inside an inverse changes the numbers.
ACTIVATIONS = [(nn.Tanh, torch.tanh), (nn.Sigmoid, torch.sigmoid), (nn.Tanh, torch.tanh),
               (nn.Sigmoid, torch.sigmoid)]
WIDTHS = [5, 4, 4, 4, 4]  # equal hidden widths: an off-by-one inverse gives wrong values, not a shape error
CLASSES = 3


# Exact comparisons need float64 (the fixture restores the default afterwards).
pytestmark = pytest.mark.usefixtures("float64")


def deep_net(seed=0):
    """Linear + activation x4, then a Linear output: five learnable layers."""
    torch.manual_seed(seed)
    modules = []
    for (fan_in, fan_out), (module, _) in zip(zip(WIDTHS, WIDTHS[1:]), ACTIVATIONS):
        modules += [Linear(fan_in, fan_out), module()]
    modules.append(Linear(WIDTHS[-1], CLASSES))
    model = nn.Sequential(*modules)
    with torch.no_grad():
        for layer in model[::2]:
            layer.bias.normal_()  # non-zero biases, so a dropped bias shows
    return model


def attach(name, model, seed=1, **options):
    return attach_tp_rule(name, model, WIDTHS[0], seed, **options)


def batch():
    return chain_batch(WIDTHS[0])


def weights(model):
    """``{l: (W_l, b_l)}`` of the learnable layers, 1-based."""
    return {k: (layer.weight.detach(), layer.bias.detach()) for k, layer in enumerate(model[::2], start=1)}


def hand_forward(model, x):
    """``[h_0, ..., h_5]`` with explicit matrices."""
    w = weights(model)
    hs = [x]
    for k in range(1, 5):
        hs.append(ACTIVATIONS[k - 1][1](hs[-1] @ w[k][0].t() + w[k][1]))
    hs.append(hs[-1] @ w[5][0].t() + w[5][1])
    return hs


def hand_inverse(rule, k):
    """g_l(v) = act_{l-1}(v V_l^T + c_l): the inverse's matrices, then the
    activation that produced h_{l-1}."""
    inverse = rule.feedback.inverses[str(k)]
    v_matrix, c = inverse.weight.detach(), inverse.bias.detach()
    activation = ACTIVATIONS[k - 2][1]
    return lambda v: activation(v @ v_matrix.t() + c)


def hand_paper_inverse(rule, k):
    """L-DRL's default (Ernoult et al.): g_l(v) = act_l(v) V_l^T + c_l, the
    activation that produced h_l first; the output layer's is linear."""
    inverse = rule.feedback.inverses[str(k)]
    v_matrix, c = inverse.weight.detach(), inverse.bias.detach()
    activation = ACTIVATIONS[k - 1][1] if k <= len(ACTIVATIONS) else (lambda v: v)
    return lambda v: activation(v) @ v_matrix.t() + c


def hand_chain(rule, hs, top, top_target, inverse=hand_inverse):
    """t_{l-1} = h_{l-1} + g_l(t_l) - g_l(h_l), from ``top`` down to layer 1."""
    targets = {top: top_target}
    for k in range(top, 1, -1):
        g = inverse(rule, k)
        targets[k - 1] = hs[k - 1] + g(targets[k]) - g(hs[k])
    return targets


def rule_targets(rule, x, y):
    hs = [h.detach() for h in rule.forward_pass(x, grad=False)]
    return rule.targets(hs, y)


def assert_every_target(got, expected, hs):
    assert sorted(got) == sorted(expected)
    for k in sorted(expected):
        # every target is away from its activity, so a dropped correction would show
        assert (expected[k] - hs[k]).abs().max() > 1e-3, k
        torch.testing.assert_close(got[k], expected[k], msg=f"target of layer {k}")


def test_dtp_targets_of_every_layer_of_a_deep_net_match_the_hand_chain():
    model = deep_net()
    rule = attach("dtp-par", model, alpha=0.3)
    x, y = batch()
    hs = hand_forward(model, x)
    w5 = weights(model)[5][0]
    # one gradient step on the summed cross-entropy at h_4, through the output layer
    t4 = hs[4] - 0.3 * (F.softmax(hs[5], dim=1) - F.one_hot(y, CLASSES)) @ w5
    expected = hand_chain(rule, hs, 4, t4)
    assert sorted(expected) == [1, 2, 3, 4]
    assert sorted(rule.feedback.inverses) == ["2", "3", "4"]  # no output inverse in DTP
    assert_every_target(rule_targets(rule, x, y), expected, hs)


def test_sdtp_targets_of_every_layer_of_a_deep_net_start_from_the_label():
    model = deep_net()
    rule = attach("sdtp-par", model)
    x, y = batch()
    hs = hand_forward(model, x)
    g5 = hand_inverse(rule, 5)  # reads the output distribution
    t4 = hs[4] - g5(F.softmax(hs[5], dim=1)) + g5(F.one_hot(y, CLASSES).double())
    expected = hand_chain(rule, hs, 4, t4)
    assert sorted(rule.feedback.inverses) == ["2", "3", "4", "5"]
    assert_every_target(rule_targets(rule, x, y), expected, hs)


@pytest.mark.parametrize("form,inverse", [("paper", hand_paper_inverse), ("tanh", hand_inverse)])
def test_ldrl_targets_of_every_layer_of_a_deep_net_start_from_the_output(form, inverse):
    model = deep_net()
    rule = attach("ldrl", model, beta=0.4, inverse_form=form)
    x, y = batch()
    hs = hand_forward(model, x)
    t5 = hs[5] - 0.4 * (F.softmax(hs[5], dim=1) - F.one_hot(y, CLASSES))
    expected = hand_chain(rule, hs, 5, t5, inverse)  # g_5 reads the logits
    assert sorted(expected) == [1, 2, 3, 4, 5]
    assert_every_target(rule_targets(rule, x, y), expected, hs)


# --- L-DRL: feedback_steps inverse steps per batch ------------------------------------------
def count_steps(optimizer):
    """Wrap ``optimizer.step`` to count its calls."""
    calls = []
    step = optimizer.step

    def counted(*args, **kwargs):
        calls.append(1)
        return step(*args, **kwargs)
    optimizer.step = counted
    return calls


@pytest.mark.parametrize("steps", [1, 3])
def test_ldrl_takes_exactly_feedback_steps_inverse_steps_per_batch(steps):
    model = deep_net()
    rule = attach("ldrl", model, feedback_steps=steps)
    inverse_calls = count_steps(rule.inverse_optimizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    forward_calls = count_steps(optimizer)
    x, y = batch()
    rule.start_epoch()
    for _ in range(2):
        rule.train_step(model, x, y, optimizer)
    assert (len(inverse_calls), len(forward_calls)) == (2 * steps, 2)


@pytest.mark.parametrize("steps", [1, 3])
def test_ldrl_inverse_step_equals_feedback_steps_hand_run_steps_with_fresh_noise(steps):
    x, y = batch()
    rules = [attach("ldrl", deep_net(), feedback_steps=steps) for _ in range(3)]
    hs = [h.detach() for h in rules[0].forward_pass(x, grad=False)]
    rules[0].inverse_step(hs, y)
    # by hand: zero the gradients, one backward of the loss (new noise each time), one Adam step
    for rule, count in ((rules[1], steps), (rules[2], steps + 1)):
        for _ in range(count):
            rule.inverse_optimizer.zero_grad(set_to_none=True)
            rule.inverse_loss(hs, y).backward()
            rule.inverse_optimizer.step()
    got = list(rules[0].feedback.parameters())
    for p, q in zip(got, rules[1].feedback.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # one more step gives other numbers, so the comparison can tell the counts apart
    assert all(not torch.equal(p, q) for p, q in zip(got, rules[2].feedback.parameters()))
