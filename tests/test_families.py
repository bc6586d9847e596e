"""Predictive coding, DRTP, PEPITA and Forward-Forward: updates against theory
and hand computations (float64), bad options, exact resume."""
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from benchmark.alignment import exact_gradients
from cli import cli
from models import feedback_layers, make_rule
from models.layers import Conv2d, Linear
from models.lc import LocallyConnected2d

pytestmark = pytest.mark.usefixtures("float64")


def small_net(kind):
    """A 4-layer chain: two spatial (or dense) tanh layers, a dense tanh layer, the read-out."""
    if kind == "fc":
        return nn.Sequential(nn.Flatten(), Linear(32, 9), nn.Tanh(), Linear(9, 8), nn.Tanh(), Linear(8, 7),
                             nn.Tanh(), Linear(7, 3)), (2, 4, 4)
    spatial = {"conv": lambda c, o, s: Conv2d(c, o, 3, stride=s, padding=1),
               "lc": lambda c, o, s: LocallyConnected2d(c, o, 6 // (1 if c == 2 else 2), 6 // (1 if c == 2 else 2),
                                                        3, s, 1)}[kind]
    return nn.Sequential(spatial(2, 3, 2), nn.Tanh(), spatial(3, 4, 1), nn.Tanh(), nn.Flatten(), Linear(36, 7),
                         nn.Tanh(), Linear(7, 3)), (2, 6, 6)


def attached(name, kind, seed=0, **options):
    torch.manual_seed(seed)
    model, shape = small_net(kind)
    rule = make_rule(name, **options).attach(model, torch.Generator().manual_seed(1), shape)
    x, y = torch.randn((5,) + shape), torch.tensor([0, 1, 2, 1, 0])
    return model, rule, x, y


def max_relative_error(got, expected):
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, expected))


# predictive coding -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fc", "conv", "lc"])
def test_pc_under_the_fixed_prediction_assumption_relaxed_to_equilibrium_gives_bp_gradients(kind):
    """Millidge et al. 2022, Rosenbaum 2022: with predictions and Jacobians
    frozen at the feed-forward pass, rate 1 and L - 1 = 3 steps, the errors
    reach backprop's and so do the weight gradients."""
    model, rule, x, y = attached("pc", kind, mode="fpa", inference_rate=1.0, inference_steps=3)
    assert max_relative_error(rule.weight_updates(model, x, y), exact_gradients(model, x, y, rule)) < 1e-12


def test_pc_fpa_with_too_few_steps_has_not_reached_the_first_layer():
    model, rule, x, y = attached("pc", "fc", mode="fpa", inference_rate=1.0, inference_steps=2)
    got, bp = rule.weight_updates(model, x, y), exact_gradients(model, x, y, rule)
    assert got[0].abs().max() == 0 and max_relative_error(got[1:], bp[1:]) < 1e-12


def test_pc_fpa_at_a_small_rate_converges_to_bp_gradients():
    model, rule, x, y = attached("pc", "fc", mode="fpa", inference_rate=0.2, inference_steps=200)
    assert max_relative_error(rule.weight_updates(model, x, y), exact_gradients(model, x, y, rule)) < 1e-9


def torch2pc_fixed_prediction_updates(rule, x, y, eta, n):
    """Torch2PC's ``PCInfer(ErrType="FixedPred", eta, n)`` (Rosenbaum 2022,
    ``TorchSeq2PC.py``: ``FixedPredPCPredErrs`` then ``SetPCGrads``),
    transcribed onto the rule's segments with each sample's cross-entropy at
    the top: each sweep down the layers takes every error from the nodes
    before that sweep's update, so the errors it returns lag its n updates by one."""
    vhat = [rule.prefix[0](x) if rule.prefix else x]
    for segment in rule.segments:
        vhat.append(segment(vhat[-1]).detach())
    top = torch.softmax(vhat[-1], 1) - F.one_hot(y, vhat[-1].shape[1])  # dL/dy of the summed cross-entropy
    v, epsilon = [h.clone() for h in vhat], [None] * (len(vhat) - 1) + [top]
    for _ in range(n):
        for layer in reversed(range(len(rule.segments))):
            epsilon[layer] = vhat[layer] - v[layer]
            _, sent = torch.autograd.functional.vjp(rule.segments[layer], vhat[layer], epsilon[layer + 1])
            v[layer] = v[layer] + eta * (epsilon[layer] - sent)
    return [torch.autograd.grad(segment(vhat[level]), segment.layer.weight, epsilon[level + 1])[0] / len(y)
            for level, segment in enumerate(rule.segments)]


@pytest.mark.parametrize("steps", [3, 6])  # at least L - 1 = 3: every layer has an error
def test_pc_fpa_inference_steps_k_are_torch2pcs_n_equal_to_k_plus_1(steps):
    """docs/rules.md states the convention: the same errors after k steps here
    as after n = k + 1 sweeps of Torch2PC, whose default n = 20 is 19 here."""
    model, rule, x, y = attached("pc", "fc", mode="fpa", inference_rate=0.3, inference_steps=steps)
    ours = rule.weight_updates(model, x, y)
    assert max_relative_error(ours, torch2pc_fixed_prediction_updates(rule, x, y, 0.3, steps + 1)) < 1e-12
    assert max_relative_error(torch2pc_fixed_prediction_updates(rule, x, y, 0.3, steps), ours) > 1e-2


@pytest.mark.parametrize("kind", ["fc", "lc"])
def test_pc_with_random_feedback_under_fpa_gives_fa_gradients(kind):
    model, rule, x, y = attached("pc-rf", kind, mode="fpa", inference_rate=1.0, inference_steps=3)
    fa_model, fa_rule, _, _ = attached("fa", kind)
    for mine, theirs in zip(feedback_layers(model), feedback_layers(fa_model)):
        torch.testing.assert_close(mine.weight, theirs.weight)
        if hasattr(theirs, "feedback_weight"):
            torch.testing.assert_close(mine.feedback_weight, theirs.feedback_weight)
    fa = torch.autograd.grad(F.cross_entropy(fa_model(x), y), [layer.weight for layer in feedback_layers(fa_model)])
    assert max_relative_error(rule.weight_updates(model, x, y), fa) < 1e-12
    assert max_relative_error(fa, exact_gradients(model, x, y, rule)) > 1e-2  # B is not W


def test_strict_pc_inference_and_update_equal_a_hand_computation():
    """Two strict inference steps on a 3-layer dense net written with explicit
    matrices: v_l -= rate (eps_l - J_{l+1}^T eps_{l+1}), Jacobians at the
    current nodes; then error times presynaptic activity."""
    torch.manual_seed(3)
    model = nn.Sequential(Linear(6, 5), nn.Tanh(), Linear(5, 4), nn.Tanh(), Linear(4, 3))
    rule = make_rule("pc", inference_steps=2, inference_rate=0.3).attach(model, torch.Generator().manual_seed(1),
                                                                          (6,))
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    (w1, b1), (w2, b2), (w3, b3) = [(layer.weight.detach().clone(), layer.bias.detach().clone())
                                    for layer in feedback_layers(model)]
    t = F.one_hot(y, 3).double()
    v1 = torch.tanh(x @ w1.t() + b1)
    v2 = torch.tanh(v1 @ w2.t() + b2)
    for _ in range(2):
        mu1, a2 = torch.tanh(x @ w1.t() + b1), v1 @ w2.t() + b2
        e1, e2 = v1 - mu1, v2 - torch.tanh(a2)
        e3 = t - torch.softmax(v2 @ w3.t() + b3, 1)
        v1, v2 = (v1 - 0.3 * (e1 - (e2 * (1 - torch.tanh(a2) ** 2)) @ w2),
                  v2 - 0.3 * (e2 - e3 @ w3))
    a1, a2 = x @ w1.t() + b1, v1 @ w2.t() + b2
    e1, e2 = v1 - torch.tanh(a1), v2 - torch.tanh(a2)
    e3 = t - torch.softmax(v2 @ w3.t() + b3, 1)
    expected = [-((e1 * (1 - torch.tanh(a1) ** 2)).t() @ x) / 5, -((e2 * (1 - torch.tanh(a2) ** 2)).t() @ v1) / 5,
                -(e3.t() @ v2) / 5]
    for got, want in zip(rule.weight_updates(model, x, y), expected):
        torch.testing.assert_close(got, want)
    metrics = rule.layer_metrics(model, x, y)
    assert metrics[0]["energy_before"] == 0 and metrics[0]["energy_after"] > 0
    assert metrics[-1]["energy_after"] < metrics[-1]["energy_before"]


# DRTP ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fc", "conv"])
def test_drtp_updates_equal_dfa_route_carrying_the_one_hot_target(kind):
    model, rule, x, y = attached("drtp", kind)
    layers = feedback_layers(model)
    updates = rule.weight_updates(model, x, y)
    with torch.no_grad():
        h, outs = x, []
        for module in model:
            h = module(h)
            outs.append(h)
    target = F.one_hot(y, 3).double() / 5
    acts = [o for o, m in zip(outs, model) if isinstance(m, nn.Tanh)]
    inputs = [x] + acts
    for index, layer in enumerate(layers[:-1]):
        delta = (target @ layers[index + 1].feedback_weight).view_as(acts[index]) * (1 - acts[index] ** 2)
        below = inputs[index]
        below = below.flatten(1) if isinstance(layer, Linear) else below
        expected = torch.autograd.grad((layer(below.requires_grad_()) * delta).sum(), layer.weight)[0] \
            if not isinstance(layer, Linear) else delta.t() @ below
        torch.testing.assert_close(updates[index], expected)
    error = (torch.softmax(model(x), 1) - F.one_hot(y, 3)) / 5
    torch.testing.assert_close(updates[-1], error.t() @ acts[-1])


# PEPITA --------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"dropout": 0.0}])
@pytest.mark.parametrize("error_pass", ["second", "first"])
def test_pepita_updates_equal_a_hand_computation_of_its_two_forward_passes(error_pass, options):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), Linear(6, 5), nn.Tanh(), Linear(5, 4), nn.Tanh(), Linear(4, 3))
    rule = make_rule("pepita", error_pass=error_pass, **options).attach(model, torch.Generator().manual_seed(1),
                                                                        (6,))
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    (w1, b1), (w2, b2), (w3, b3) = [(layer.weight.detach().clone(), layer.bias.detach().clone())
                                    for layer in feedback_layers(model)]
    feedback = feedback_layers(model)[0].feedback_weight
    assert feedback.shape == (3, 6) and feedback.abs().max() <= 0.05
    wide = nn.Sequential(nn.Flatten(), Linear(24, 5), nn.Tanh(), Linear(5, 3))
    make_rule("pepita").attach(wide, torch.Generator().manual_seed(1), (24,))
    bound = 0.05 * (6 / 24) ** 0.5  # the scale times sqrt(6 / input size)
    drawn = feedback_layers(wide)[0].feedback_weight.abs().max()
    assert 0.9 * bound < drawn <= bound
    t = F.one_hot(y, 3).double()
    h1 = torch.tanh(x @ w1.t() + b1)
    h2 = torch.tanh(h1 @ w2.t() + b2)
    e = torch.softmax(h2 @ w3.t() + b3, 1) - t
    xm = x + e @ feedback
    m1 = torch.tanh(xm @ w1.t() + b1)
    m2 = torch.tanh(m1 @ w2.t() + b2)
    em = torch.softmax(m2 @ w3.t() + b3, 1) - t
    out_error = em if error_pass == "second" else e
    expected = [(h1 - m1).t() @ xm / 5, (h2 - m2).t() @ m1 / 5, out_error.t() @ m2 / 5]
    for got, want in zip(rule.weight_updates(model, x, y), expected):
        torch.testing.assert_close(got, want)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    rule.train_step(model, x, y, optimizer)
    torch.testing.assert_close(feedback_layers(model)[0].bias.detach(), b1 - (h1 - m1).mean(0))


def test_pepita_without_dropout_draws_no_random_number():
    """dropout=0 (the default, the committed results' setting): F is the only
    draw from the run's generator and a step draws nothing, so every stream
    after it is what it was before dropout existed."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), Linear(6, 5), nn.Tanh(), Linear(5, 3))
    generator = torch.Generator().manual_seed(1)
    rule = make_rule("pepita", dropout=0.0).attach(model, generator, (6,))
    only_f = torch.Generator().manual_seed(1)
    torch.empty(3, 6).uniform_(generator=only_f)
    assert torch.equal(generator.get_state(), only_f.get_state()) and rule.generator is None
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    state = torch.get_rng_state()
    rule.train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.1))
    rule.weight_updates(model, x, y)
    assert torch.equal(torch.get_rng_state(), state)


def test_pepita_dropout_shares_one_mask_per_hidden_layer_between_its_two_passes():
    """Dellaferrera & Kreiman's code: inverted dropout after each hidden
    activation, the same mask in the modulated pass; the training step draws
    the masks from the rule's stream, the probe batch from a fixed one."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), Linear(6, 5), nn.Tanh(), Linear(5, 4), nn.Tanh(), Linear(4, 3))
    rule = make_rule("pepita", dropout=0.5).attach(model, torch.Generator().manual_seed(1), (6,))
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    (w1, b1), (w2, b2), (w3, b3) = [(layer.weight.detach().clone(), layer.bias.detach().clone())
                                    for layer in feedback_layers(model)]
    feedback, t = feedback_layers(model)[0].feedback_weight, F.one_hot(y, 3).double()

    def expected_updates(masks_from):
        m1 = torch.empty(5, 5).bernoulli_(0.5, generator=masks_from) / 0.5
        h1 = torch.tanh(x @ w1.t() + b1) * m1
        m2 = torch.empty(5, 4).bernoulli_(0.5, generator=masks_from) / 0.5
        h2 = torch.tanh(h1 @ w2.t() + b2) * m2
        assert (m1 == 0).any() and (m2 == 0).any() and (m1 != 0).any() and (m2 != 0).any()
        xm = x + (torch.softmax(h2 @ w3.t() + b3, 1) - t) @ feedback
        n1 = torch.tanh(xm @ w1.t() + b1) * m1  # pass 2: the same masks
        n2 = torch.tanh(n1 @ w2.t() + b2) * m2
        em = torch.softmax(n2 @ w3.t() + b3, 1) - t
        return [(h1 - n1).t() @ xm / 5, (h2 - n2).t() @ n1 / 5, em.t() @ n2 / 5], (h1 - n1).mean(0)

    stream = rule.generator.get_state()
    expected, _ = expected_updates(rule.probe_generator(x.device))
    for got, want in zip(rule.weight_updates(model, x, y), expected):
        torch.testing.assert_close(got, want)
    assert torch.equal(rule.generator.get_state(), stream)  # the probe left the training stream alone
    _, bias_step = expected_updates(torch.Generator().set_state(stream))
    rule.train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=1.0))
    torch.testing.assert_close(feedback_layers(model)[0].bias.detach(), b1 - bias_step)
    model.eval()  # evaluation never drops: the plain forward
    torch.testing.assert_close(model(x), model[5](torch.tanh(model[3](torch.tanh(model[1](x))))))


# Forward-Forward -------------------------------------------------------------------------------
def ff_setup(**options):
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), Linear(12, 6), nn.Tanh(), Linear(6, 5), nn.Tanh(), Linear(5, 3))
    rule = make_rule("ff", **{"negatives": "random", **options}).attach(model, torch.Generator().manual_seed(1),
                                                                         (12,))
    return model, rule, torch.randn(4, 12), torch.tensor([0, 1, 2, 1])


def test_forward_forward_loss_and_update_equal_a_hand_computation():
    model, rule, x, y = ff_setup(threshold=0.4)
    (w1, b1), (w2, b2), (w3, b3) = [(layer.weight.detach().clone().requires_grad_(), layer.bias.detach())
                                    for layer in feedback_layers(model)]
    probe = rule.probe_generator(x.device)
    wrong = (y + torch.randint(1, 3, y.shape, generator=probe)) % 3
    assert (wrong != y).all()

    def with_label(labels):
        z = x.clone()
        z[:, :3] = F.one_hot(labels, 3).double() if labels is not None else 1 / 3
        return z

    def rms_normalised(h):
        return h / h.pow(2).mean(1, keepdim=True).add(1e-8).sqrt()

    def layer_loss(pos, neg, units):
        return (F.softplus(0.4 * units - pos.pow(2).sum(1)) + F.softplus(neg.pow(2).sum(1) - 0.4 * units)).mean()

    p1, n1 = torch.tanh(with_label(y) @ w1.t() + b1), torch.tanh(with_label(wrong) @ w1.t() + b1)
    p2 = torch.tanh(rms_normalised(p1.detach()) @ w2.t() + b2)
    n2 = torch.tanh(rms_normalised(n1.detach()) @ w2.t() + b2)
    neutral = torch.tanh(rms_normalised(torch.tanh(with_label(None) @ w1.t() + b1)) @ w2.t() + b2)
    logits = rms_normalised(neutral.detach()) @ w3.t() + b3
    total = layer_loss(p1, n1, 6) + layer_loss(p2, n2, 5) + F.cross_entropy(logits, y)
    expected = torch.autograd.grad(total, [w1, w2, w3])
    for got, want in zip(rule.weight_updates(model, x, y), expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(model(x), logits.detach())  # prediction: the neutral-label read-out


def test_forward_forward_neutral_label_is_on_the_scale_of_the_written_labels():
    """Hinton's code writes ``labelstrength / C`` into every label value of the
    neutral pass: the read-out reads the layers with a label of the same total
    as the one-hot labels they were trained with."""
    model, rule, x, y = ff_setup(label_scale=2.5)
    seen = []
    hook = feedback_layers(model)[0].register_forward_hook(lambda m, args, out: seen.append(args[0][:, :3].clone()))
    model(x)  # the prediction: the neutral-label pass
    rule.hidden_pass(x, y)
    hook.remove()
    neutral, labelled = seen
    torch.testing.assert_close(labelled, 2.5 * F.one_hot(y, 3).double())
    torch.testing.assert_close(neutral, torch.full_like(neutral, 2.5 / 3))


@pytest.mark.parametrize("negatives", ["hard", "random"])
def test_forward_forward_negatives_never_carry_the_true_label(negatives):
    """Even where the model is all but certain of the true label (hard
    negatives are drawn from its prediction), every negative's label is
    wrong, and every wrong label is drawn."""
    _, rule, _, _ = ff_setup(negatives=negatives)
    y = torch.arange(3).repeat(400)
    confident = 60.0 * F.one_hot(y, 3).double()  # softmax of the true label: 1 - 2e-26
    wrong = rule.wrong_labels(y, confident)
    assert (wrong != y).all()
    assert {(int(a), int(b)) for a, b in zip(y, wrong)} == {(a, b) for a in range(3) for b in range(3) if a != b}


def test_forward_forward_no_gradient_crosses_a_layer():
    """Layer 1's update depends on layer 1 only: changing every later layer's
    weights leaves it unchanged; and the read-out's loss sends nothing down."""
    model, rule, x, y = ff_setup()
    first = rule.weight_updates(model, x, y)[0]
    with torch.no_grad():
        for layer in feedback_layers(model)[1:]:
            layer.weight.mul_(-3.0).add_(0.1)
    torch.testing.assert_close(rule.weight_updates(model, x, y)[0], first)
    local, readout, _ = rule.losses(x, y, rule.probe_generator(x.device))
    layers = feedback_layers(model)
    grads = torch.autograd.grad(readout, [layer.weight for layer in layers[:-1]], allow_unused=True)
    assert all(g is None for g in grads)
    grads = torch.autograd.grad(local[1], [layers[0].weight, layers[2].weight], allow_unused=True)
    assert all(g is None for g in grads)


# bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options,message", [
    ("pc", {"inference_steps": 0}, "inference_steps=0 must be >= 1"),
    ("pc", {"inference_rate": 1.5}, "inference_rate=1.5 must be in (0, 1]"),
    ("pc", {"mode": "exact"}, "mode='exact' is not one of strict, fpa"),
    ("pepita", {"feedback_scale": -1}, "feedback_scale=-1.0 must be finite and > 0"),
    ("pepita", {"dropout": 1}, "dropout=1.0 must be in [0, 1)"),
    ("pepita", {"dropout": -0.1}, "dropout=-0.1 must be in [0, 1)"),
    ("ff", {"threshold": 0}, "threshold=0.0 must be finite and > 0"),
    ("ff", {"negatives": "easy"}, "negatives='easy' is not one of hard, random"),
])
def test_out_of_range_options_are_one_line_errors(name, options, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        make_rule(name, **options)


class NotAChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = Linear(4, 4), Linear(4, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) + x)


@pytest.mark.parametrize("name", ["pc", "pc-rf", "pepita", "ff"])
def test_rules_with_their_own_passes_refuse_a_model_that_is_not_a_chain(name):
    with pytest.raises(ValueError, match=f"{name} needs an nn.Sequential network, got NotAChain"):
        make_rule(name).attach(NotAChain(), torch.Generator().manual_seed(0), (4,))
    pooled = nn.Sequential(Conv2d(1, 2, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), Linear(8, 3))
    with pytest.raises(ValueError, match=r"cannot take module 2 \(MaxPool2d\)"):
        make_rule(name).attach(pooled, torch.Generator().manual_seed(0), (1, 6, 6))


def test_cli_refuses_a_bad_option_in_one_line_with_exit_code_2(tiny_root, tmp_path):
    result = CliRunner().invoke(cli, ["run", "--arch", "fc", "--algo", "pc", "--rule-opt", "inference_steps=0",
                                      "--epochs", "1", "--data-dir", tiny_root, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "inference_steps=0 must be >= 1" in result.output
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
