"""Weight decay: after every forward step each forward weight (first layer
included) is multiplied by exactly 1 - weight_decay, biases and inverses are
left alone, and an alternating TP schedule decays only in forward epochs."""
import pytest
import torch
from torch import nn

from models import Linear, make_rule
from models.layers import feedback_layers

DECAY = 0.2
LR = 0.1


# Exact comparisons need float64 (the fixture restores the default afterwards).
pytestmark = pytest.mark.usefixtures("float64")


def small_net():
    torch.manual_seed(0)
    model = nn.Sequential(Linear(5, 4), nn.Tanh(), Linear(4, 4), nn.Tanh(), Linear(4, 3))
    with torch.no_grad():
        for layer in feedback_layers(model):
            layer.bias.normal_()  # a decayed bias must show (biases start at zero)
    return model


def batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(8, 5, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def net_with_rule(name, weight_decay):
    model = small_net()
    rule = make_rule(name).attach(model, torch.Generator().manual_seed(1), (5,))
    rule.moved_to("cpu")
    rule.weight_decay = weight_decay
    return model, rule


def one_step(name, weight_decay):
    """One SGD step (lr > 0) the way the trainer takes it."""
    model, rule = net_with_rule(name, weight_decay)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = batch()
    rule.start_epoch()
    rule.train_step(model, x, y, optimizer)
    return model, rule


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("name", ["bp", "fa", "kp", "dfa", "dtp-par", "ldrl"])
def test_a_step_with_weight_decay_is_the_plain_step_times_one_minus_decay_on_weights_only(name):
    start = feedback_layers(small_net())
    plain, plain_rule = one_step(name, 0.0)
    decayed, decayed_rule = one_step(name, DECAY)
    for k, (before, layer, twin) in enumerate(zip(start, feedback_layers(plain), feedback_layers(decayed))):
        # the step moved both (else decaying before or after it would look alike)
        assert not torch.equal(layer.weight, before.weight) and not torch.equal(layer.bias, before.bias)
        # decay after the step: (1 - d)(W - lr g), not (1 - d)W - lr g
        torch.testing.assert_close(twin.weight, (1 - DECAY) * layer.weight, rtol=0, atol=0, msg=f"layer {k}")
        torch.testing.assert_close(twin.bias, layer.bias, rtol=0, atol=0, msg=f"bias {k}")
    if hasattr(plain_rule, "feedback"):  # target propagation: the inverses are not decayed
        for p, q in zip(plain_rule.feedback.parameters(), decayed_rule.feedback.parameters()):
            torch.testing.assert_close(q, p, rtol=0, atol=0)


def test_decay_weights_scales_set_weights_and_leaves_set_biases():
    model, rule = net_with_rule("fa", DECAY)
    with torch.no_grad():
        for layer in feedback_layers(model):
            layer.weight.fill_(2.0)
            layer.bias.fill_(3.0)
    rule.decay_weights()
    for layer in feedback_layers(model):
        assert torch.all(layer.weight == 2.0 * (1 - DECAY)) and torch.all(layer.bias == 3.0)


def run_epochs(model, rule, epochs, steps=2):
    """Train ``epochs`` epochs of ``steps`` steps; per epoch, its phase and the
    forward and inverse parameters after it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = batch()
    states = []
    for _ in range(epochs):
        rule.start_epoch()
        for _ in range(steps):
            rule.train_step(model, x, y, optimizer)
        rule.end_epoch()
        states.append((rule.phase, snapshot(model), snapshot(rule.feedback)))
    return states


class DecayByHand:
    """A TP rule wrapper that trains without decay, then multiplies the
    forward weights by 1 - d itself after each forward-phase step."""

    def __init__(self, rule):
        self.rule = rule

    def __getattr__(self, name):
        return getattr(self.rule, name)

    def train_step(self, model, x, y, optimizer):
        self.rule.weight_decay = 0.0
        result = self.rule.train_step(model, x, y, optimizer)
        if self.rule.phase == "forward":
            with torch.no_grad():
                for layer in feedback_layers(model):
                    layer.weight.mul_(1 - DECAY)
        return result


def test_alternating_tp_decays_forward_weights_in_forward_epochs_only():
    start = snapshot(small_net())
    decayed = run_epochs(*net_with_rule("dtp-alt", DECAY), epochs=3)
    model, rule = net_with_rule("dtp-alt", DECAY)
    by_hand = run_epochs(model, DecayByHand(rule), epochs=3)
    plain = run_epochs(*net_with_rule("dtp-alt", 0.0), epochs=3)
    assert [phase for phase, _, _ in decayed] == ["inverse", "forward", "inverse"]
    # inverse-only epoch: no forward step, so no decay, even with weight_decay > 0
    for p, q in zip(decayed[0][1], start):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # every epoch: forward weights, biases and inverses as decayed by hand after forward steps only
    for (_, forward, inverse), (_, forward_by_hand, inverse_by_hand) in zip(decayed, by_hand):
        for p, q in zip(forward + inverse, forward_by_hand + inverse_by_hand):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    # and decay did change the forward epoch's weights
    assert not torch.equal(decayed[1][1][0], plain[1][1][0])
