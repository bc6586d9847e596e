"""Equilibrium propagation: the estimate against the implicit gradient of the
loss at the free fixed point (beta -> 0, with the order of its bias), one
update against a hand computation, random-sign nudging, the per-layer metrics,
evaluation at the free fixed point, the alternating order's energy descent,
random feedback, option and model errors, and exact resume of a random-sign run."""
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from cli import cli
from helpers import comparable, records_in
from models import Conv2d, Linear, LocallyConnected2d, build_network, make_rule
from models.layers import detached_rules


@pytest.fixture(autouse=True)
def _float64_one_thread(request):
    """Every test here compares to rounding in float64, but the CLI run (the suite's float32); one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add waits, 10x the time on a busy machine
    if "tiny_root" in request.fixturenames:
        yield
    else:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        yield
        torch.set_default_dtype(previous)
    torch.set_num_threads(threads)


def attach(model, **options):
    rule = make_rule("ep", **options).attach(model, torch.Generator().manual_seed(0), None)
    rule.moved_to("cpu")
    return rule


def scaled(model, scale, seed=0):
    """Weights shrunk by ``scale`` (so the dynamics contract) and random biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(scale)
    return model


def ep_gradients(model, x, y, **options):
    """The gradients one training step of the rule writes (an SGD step of lr 0 keeps them readable)."""
    rule = attach(model, **options)
    rule.train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.0))
    return torch.cat([p.grad.flatten() for p in model.parameters()])


# 1. theory: the limit beta -> 0 -----------------------------------------------------------------------
def lc_map(x, weight, bias, kernel, stride, padding, out_shape):
    """A locally connected layer from F.unfold: per position its own filter."""
    cols = F.unfold(x, kernel, padding=padding, stride=stride)  # [N, C*K*K, L]
    return (torch.einsum("okl,nkl->nol", weight, cols) + bias).reshape(x.shape[0], *out_shape)


def reference_maps(model):
    """The network's hidden maps and read-out, written here with torch.nn.functional."""
    maps = []
    for module in model:
        if isinstance(module, Conv2d):
            maps.append(lambda h, m=module: F.conv2d(h, m.weight, m.bias, m.stride, m.padding))
        elif isinstance(module, LocallyConnected2d):
            g = module.geometry
            maps.append(lambda h, m=module, g=g: lc_map(h, m.weight, m.bias, g.kernel, g.stride, g.padding,
                                                       (g.out_channels, g.out_height, g.out_width)))
        elif isinstance(module, Linear):
            maps.append(lambda h, m=module: F.linear(h.flatten(1), m.weight, m.bias))
    return maps[:-1], maps[-1]


def implicit_gradient(model, x, y, steps=150):
    """d loss(s*(theta)) / d theta by the implicit function theorem: s* = G(s*)
    with G(s) = tanh(dPhi/ds); (I - dG/ds)^T lam = dl/ds; grad = lam^T dG/dtheta
    + dl/dtheta (the read-out's direct term)."""
    hidden, readout = reference_maps(model)
    params = list(model.parameters())
    with torch.no_grad():
        shapes, h = [], x
        for layer_map in hidden:
            h = layer_map(h)
            shapes.append(h.shape)
    sizes = [s.numel() for s in shapes]

    def split(flat):
        return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes)]

    def fixed_point_map(flat):
        states = split(flat)
        phi = sum((s * layer_map(h)).sum() for layer_map, h, s in zip(hidden, [x] + states[:-1], states))
        grads = torch.autograd.grad(phi, states, create_graph=True)
        return torch.cat([torch.tanh(g).flatten() for g in grads])

    def loss(flat):
        return F.cross_entropy(readout(split(flat)[-1]), y)

    s = torch.zeros(sum(sizes), requires_grad=True)
    for _ in range(steps):
        s = fixed_point_map(s).detach().requires_grad_(True)
    assert (fixed_point_map(s) - s).abs().max() < 1e-13  # converged
    jacobian = torch.autograd.functional.jacobian(fixed_point_map, s)
    (dl_ds,) = torch.autograd.grad(loss(s), s)
    lam = torch.linalg.solve((torch.eye(len(s)) - jacobian).t(), dl_ds)
    through_states = torch.autograd.grad(fixed_point_map(s), params, grad_outputs=lam, allow_unused=True)
    direct = torch.autograd.grad(loss(s), params, allow_unused=True)
    return torch.cat([sum(g for g in pair if g is not None).flatten() for pair in zip(through_states, direct)])


def tiny_fc():
    torch.manual_seed(0)
    return scaled(nn.Sequential(Linear(6, 5), nn.Tanh(), Linear(5, 4), nn.Tanh(), Linear(4, 3)).double(), 0.4)


def tiny_conv():
    torch.manual_seed(1)
    return scaled(nn.Sequential(Conv2d(1, 2, 3, 1, 1), nn.Tanh(), nn.Flatten(), Linear(2 * 5 * 5, 4), nn.Tanh(),
                                Linear(4, 3)).double(), 0.4)


def tiny_lc():
    torch.manual_seed(2)
    return scaled(nn.Sequential(LocallyConnected2d(1, 2, 5, 5, 3, 2, 1), nn.Tanh(), nn.Flatten(),
                                Linear(2 * 3 * 3, 4), nn.Tanh(), Linear(4, 3)).double(), 0.4)


def relative_error(estimate, exact):
    return float((estimate - exact).norm() / exact.norm())


CONVERGED = {"free_steps": 120, "nudged_steps": 120}  # about twice what reaches 1e-13 at weight scale 0.4


def fc_batch():
    torch.manual_seed(3)
    return torch.randn(4, 6), torch.tensor([0, 2, 1, 2])


def estimate(make, x, y, beta, nudging, order="synchronous"):
    return ep_gradients(make(), x, y, beta=beta, nudging=nudging, update_order=order, **CONVERGED)


def test_symmetric_bias_shrinks_like_beta_squared_one_sided_like_beta():
    x, y = fc_batch()
    exact = implicit_gradient(tiny_fc(), x, y)
    errors = {(nudging, beta): relative_error(estimate(tiny_fc, x, y, beta, nudging), exact)
              for nudging in ("symmetric", "one-sided") for beta in (0.04, 0.02)}
    assert 3.6 < errors["symmetric", 0.04] / errors["symmetric", 0.02] < 4.4
    assert 1.8 < errors["one-sided", 0.04] / errors["one-sided", 0.02] < 2.2
    assert errors["symmetric", 0.02] < errors["one-sided", 0.02] / 10
    assert relative_error(estimate(tiny_fc, x, y, 1e-3, "symmetric"), exact) < 2e-6


@pytest.mark.parametrize("make, shape, order", [(tiny_conv, (2, 1, 5, 5), "synchronous"),
                                               (tiny_lc, (2, 1, 5, 5), "synchronous"),
                                               (tiny_fc, (2, 6), "alternating")])
def test_small_beta_estimate_is_the_gradient_on_conv_and_lc_nets_and_alternating_steps(make, shape, order):
    torch.manual_seed(4)
    x, y = torch.randn(shape), torch.tensor([1, 2])
    exact = implicit_gradient(make(), x, y)
    assert relative_error(estimate(make, x, y, 1e-3, "symmetric", order), exact) < 2e-6


@pytest.mark.parametrize("make, shape", [(tiny_fc, (3, 6)), (tiny_conv, (3, 1, 5, 5)), (tiny_lc, (3, 1, 5, 5))])
def test_the_alignment_reference_is_the_gradient_of_the_relaxed_prediction(make, shape):
    """EP's update-vs-BP angle is measured against the exact gradient of what
    EP predicts (backprop through its free phase, converged here: the implicit
    gradient), not of a feed-forward pass it never runs; EP's own update at
    small beta then lies along it."""
    from benchmark.alignment import angle_degrees, exact_gradients
    torch.manual_seed(6)
    x, y = torch.randn(shape), torch.tensor([0, 2, 1])
    model = make()
    rule = attach(model, beta=1e-3, **CONVERGED)
    model.eval()
    weights = [layer.weight for layer in rule.layers]
    flat = implicit_gradient(make(), x, y).split([p.numel() for p in model.parameters()])
    implicit = [g for g, p in zip(flat, model.parameters()) if any(p is w for w in weights)]
    reference = exact_gradients(model, x, y, rule)
    for got, expected in zip(reference, implicit):
        assert relative_error(got.flatten(), expected) < 1e-9
    with detached_rules(model):  # the feed-forward net's gradient is another vector
        model.train()
        feed_forward = torch.autograd.grad(F.cross_entropy(model(x), y), weights)
    assert max(angle_degrees(a, b) for a, b in zip(feed_forward, reference)) > 1.0
    for update, expected in zip(rule.weight_updates(model, x, y), reference):
        assert angle_degrees(update, expected) < 0.01


# 2. one update by hand ------------------------------------------------------------------------------
def two_hidden_net():
    torch.manual_seed(5)
    return scaled(nn.Sequential(nn.Flatten(), Linear(6, 5), nn.Tanh(), Linear(5, 4), nn.Tanh(), Linear(4, 3)).double(),
                  1.5)


def hand_step(x, y, W1, b1, W2, b2, W3, b3, s1, s2, beta, B2=None, B3=None, order="synchronous"):
    """One step of s = tanh(dPhi^beta/ds), feedback matrices written out (alternating: s2 from the new s1)."""
    B2 = W2 if B2 is None else B2
    B3 = W3 if B3 is None else B3
    error = F.softmax(s2 @ W3.t() + b3, dim=1) - F.one_hot(y, 3)  # d(per-sample CE)/d(logits)
    new1 = torch.tanh(x @ W1.t() + b1 + s2 @ B2)
    below = new1 if order == "alternating" else s1
    return new1, torch.tanh(below @ W2.t() + b2 - beta * error @ B3)


def hand_relax(x, y, weights, states, steps, beta, order="synchronous"):
    for _ in range(steps):
        states = hand_step(x, y, *weights, *states, beta, order=order)
    return states


def hand_update(weights, x, y, free_steps, nudged_steps, beta, nudging, order="synchronous"):
    """EP's gradients (W1, b1, W2, b2, W3, b3) and the free states, by hand; one-sided with ``beta`` of either sign."""
    W1, b1, W2, b2, W3, b3 = weights
    n = x.shape[0]
    free = hand_relax(x, y, weights, (torch.zeros(n, 5), torch.zeros(n, 4)), free_steps, 0.0, order)
    plus = hand_relax(x, y, weights, free, nudged_steps, beta, order)
    if nudging == "symmetric":
        minus, beta_minus = hand_relax(x, y, weights, free, nudged_steps, -beta, order), -beta
    else:
        minus, beta_minus = free, 0.0
    scale = -1.0 / ((beta - beta_minus) * n)

    def readout_grads(s2):  # d(mean CE)/d(W3, b3) at s2
        error = F.softmax(s2 @ W3.t() + b3, dim=1) - F.one_hot(y, 3)
        return error.t() @ s2 / n, error.sum(0) / n

    (p1, p2), (m1, m2) = plus, minus
    grads = [scale * (p1.t() - m1.t()) @ x, scale * (p1 - m1).sum(0),
             scale * (p2.t() @ p1 - m2.t() @ m1), scale * (p2 - m2).sum(0)]
    top_plus = readout_grads(p2)
    top_minus = readout_grads(m2) if nudging == "symmetric" else top_plus
    return grads + [(a + b) / 2 for a, b in zip(top_plus, top_minus)], free


@pytest.mark.parametrize("nudging, order", [("symmetric", "synchronous"), ("one-sided", "synchronous"),
                                            ("symmetric", "alternating")])
def test_one_update_equals_a_hand_computation(nudging, order):
    model = two_hidden_net()
    x, y = torch.randn(3, 2, 3), torch.tensor([0, 2, 2])
    weights = [p.detach().clone() for p in model.parameters()]
    grads, free = hand_update(weights, x.flatten(1), y, 7, 4, 0.3, nudging, order)
    rule = attach(model, free_steps=7, nudged_steps=4, beta=0.3, nudging=nudging, update_order=order)
    for got, want in zip(rule.weight_updates(model, x, y), grads[::2]):
        torch.testing.assert_close(got, want)
    loss, logits = rule.train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.5))
    for p, before, grad in zip(model.parameters(), weights, grads):
        torch.testing.assert_close(p.detach(), before - 0.5 * grad)
    free_logits = free[1] @ weights[4].t() + weights[5]
    torch.testing.assert_close(logits, free_logits)  # the prediction is the free fixed point's read-out
    torch.testing.assert_close(loss, F.cross_entropy(free_logits, y))


def test_random_sign_is_one_sided_with_a_drawn_sign():
    model = two_hidden_net()
    x, y = torch.randn(3, 2, 3), torch.tensor([0, 2, 2])
    weights = [p.detach().clone() for p in model.parameters()]
    sided = {sign: torch.cat([g.flatten() for g in hand_update(weights, x.flatten(1), y, 5, 3, sign * 0.3,
                                                                "one-sided")[0]])
             for sign in (1, -1)}
    rule = attach(model, free_steps=5, nudged_steps=3, beta=0.3, nudging="random-sign")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    signs = []
    for _ in range(12):
        rule.train_step(model, x, y, optimizer)
        got = torch.cat([p.grad.flatten() for p in model.parameters()])
        sign = min(sided, key=lambda s: float((sided[s] - got).norm()))
        torch.testing.assert_close(got, sided[sign])
        signs.append(sign)
    assert set(signs) == {1, -1}


def test_layer_metrics_are_the_phase_distance_and_the_free_residual():
    model = two_hidden_net()
    x, y = torch.randn(3, 2, 3), torch.tensor([0, 2, 2])
    weights = [p.detach().clone() for p in model.parameters()]
    flat = x.flatten(1)
    free = hand_relax(flat, y, weights, (torch.zeros(3, 5), torch.zeros(3, 4)), 6, 0.0)
    nudged = hand_relax(flat, y, weights, free, 3, 0.2)
    once = hand_step(flat, y, *weights, *free, 0.0)
    twice = hand_step(flat, y, *weights, *once, 0.0)
    rule = attach(model, free_steps=6, nudged_steps=3, beta=0.2)
    rows = rule.layer_metrics(model, x, y)
    assert rows[-1] == {"nudge_distance": None, "free_residual": None}
    def moved(a, b):
        return float((a - b).norm(dim=1).mean())
    for row, f, n, a, b in zip(rows, free, nudged, once, twice):
        assert row["nudge_distance"] == pytest.approx(moved(n, f), rel=1e-12)
        assert row["free_residual"] == pytest.approx(max(moved(a, f), moved(b, a)), rel=1e-12)
        assert row["free_residual"] > 1e-4  # six steps do not converge this net: the metric sees it


def test_the_free_residual_sees_a_layer_that_one_synchronous_step_leaves_in_place():
    """Zero biases and zero states: the synchronous dynamics split into two
    chains a step apart, so after an even number of steps one step moves only
    every other layer. The residual must still be non-zero for every layer
    of an unconverged phase."""
    model = two_hidden_net()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    x, y = torch.randn(3, 2, 3), torch.tensor([0, 2, 2])
    weights = [p.detach().clone() for p in model.parameters()]
    flat = x.flatten(1)
    free = hand_relax(flat, y, weights, (torch.zeros(3, 5), torch.zeros(3, 4)), 2, 0.0)
    once = hand_step(flat, y, *weights, *free, 0.0)
    assert any(float((a - f).abs().max()) == 0.0 for a, f in zip(once, free))  # the trap the metric avoids
    rows = attach(model, free_steps=2, nudged_steps=1, beta=0.2).layer_metrics(model, x, y)
    assert all(row["free_residual"] > 1e-3 for row in rows[:-1])


def test_evaluation_relaxes_to_the_free_fixed_point():
    model = two_hidden_net()
    x, y = torch.randn(3, 2, 3), torch.tensor([0, 2, 2])
    weights = [p.detach().clone() for p in model.parameters()]
    feed_forward = model(x).detach()
    attach(model, free_steps=5)
    torch.testing.assert_close(model(x), feed_forward)  # training mode: the feed-forward net
    free = hand_relax(x.flatten(1), y, weights, (torch.zeros(3, 5), torch.zeros(3, 4)), 5, 0.0)
    model.eval()
    with torch.no_grad():  # as the trainer evaluates
        out = model(x)
    torch.testing.assert_close(out, free[1] @ weights[4].t() + weights[5])
    assert (out - feed_forward).abs().max() > 1e-3
    assert all(p.requires_grad for p in model.parameters())  # the dynamics froze them only while they ran


def test_alternating_steps_descend_the_energy_where_synchronous_steps_cycle():
    model = scaled(two_hidden_net(), 2.0)  # strong symmetric couplings
    torch.manual_seed(0)
    x = torch.randn(3, 2, 3)
    W1, b1, W2, b2 = [p.detach() for p in list(model.parameters())[:4]]
    flat = x.flatten(1)

    def energy(s1, s2):  # F = sum G(s) - Phi with G' = atanh: G(s) = ((1+s)log(1+s) + (1-s)log(1-s)) / 2
        g = sum((torch.special.xlogy(1 + s, 1 + s) + torch.special.xlogy(1 - s, 1 - s)).sum() / 2 for s in (s1, s2))
        return float(g - (s1 * (flat @ W1.t() + b1)).sum() - (s2 * (s1 @ W2.t() + b2)).sum())

    def largest(a, b):
        return max(float((p - q).abs().max()) for p, q in zip(a, b))

    synchronous = attach(model, update_order="synchronous")
    s0, _ = synchronous.free_phase(x)
    late = synchronous.relax(s0, synchronous.initial_states(s0), 200)
    one, two = synchronous.relax(s0, late, 1), synchronous.relax(s0, late, 2)
    assert largest(one, late) > 0.5 and largest(two, late) < 1e-9  # a 2-cycle
    alternating = attach(model, update_order="alternating")
    states, energies = alternating.initial_states(s0), []
    for _ in range(60):
        states = alternating.relax(s0, states, 1)
        energies.append(energy(*states))
    assert all(later <= earlier + 1e-12 for earlier, later in zip(energies, energies[1:]))
    assert energy(*late) > energies[-1] + 1  # the synchronous cycle sits higher in F
    s1, s2 = states
    torch.testing.assert_close(s1, torch.tanh(flat @ W1.t() + b1 + s2 @ W2), rtol=0, atol=1e-10)
    torch.testing.assert_close(s2, torch.tanh(s1 @ W2.t() + b2), rtol=0, atol=1e-10)


# 3. random feedback ----------------------------------------------------------------------------------
def test_random_feedback_dynamics_use_b_and_never_read_w_backwards():
    model = scaled(two_hidden_net(), 0.5)
    x, y = torch.randn(3, 2, 3), torch.tensor([0, 2, 2])
    rule = attach(model, feedback="random", free_steps=200, nudged_steps=200, beta=0.5)
    W1, b1, W2, b2, W3, b3 = [p.detach() for p in model.parameters()]
    layers = rule.layers
    B2, B3 = layers[1].feedback_weight, layers[2].feedback_weight
    assert not hasattr(layers[0], "feedback_weight")  # s_0 is clamped: nothing goes down to it

    reads = []  # (W read backwards?) per input gradient a layer computes
    for layer in layers:
        backward = layer.ops.backward

        def spy(grad_out, saved, weight, backward_weight, mask, backward=backward):
            if mask[0]:
                reads.append(backward_weight.data_ptr() == weight.data_ptr())
            return backward(grad_out, saved, weight, backward_weight, mask)
        layer.ops.backward = spy

    flat = x.flatten(1)
    s0, (s1, s2) = rule.free_phase(x)
    torch.testing.assert_close(s1, torch.tanh(flat @ W1.t() + b1 + s2 @ B2), rtol=0, atol=1e-12)
    torch.testing.assert_close(s2, torch.tanh(s1 @ W2.t() + b2), rtol=0, atol=1e-12)
    assert (s1 - torch.tanh(flat @ W1.t() + b1 + s2 @ W2)).abs().max() > 1e-3  # W^T would give another point
    (_, (n1, n2)), _ = rule.nudged_phases(s0, [s1, s2], y)
    error = F.softmax(n2 @ W3.t() + b3, dim=1) - F.one_hot(y, 3)
    torch.testing.assert_close(n2, torch.tanh(n1 @ W2.t() + b2 - 0.5 * error @ B3), rtol=0, atol=1e-12)
    torch.testing.assert_close(n1, torch.tanh(flat @ W1.t() + b1 + n2 @ B2), rtol=0, atol=1e-12)

    rule.train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.1))
    rule.weight_updates(model, x, y)
    rule.layer_metrics(model, x, y)
    model.eval()
    with torch.no_grad():
        model(x)
    assert reads and not any(reads)


# 4. bad options and models -----------------------------------------------------------------------------
@pytest.mark.parametrize("option, value", [("free_steps", 0), ("nudged_steps", -2), ("beta", 0.0), ("beta", -0.1),
                                           ("beta", float("nan")), ("beta", float("inf")),
                                           ("nudging", "two-sided"), ("feedback", "learned"),
                                           ("update_order", "random")])
def test_bad_options_are_one_line_errors_naming_the_value(option, value):
    with pytest.raises(ValueError) as info:
        make_rule("ep", **{option: value})
    message = str(info.value)
    assert f"{option}={value!r}" in message and "\n" not in message


@pytest.mark.parametrize("model, named", [
    (nn.Sequential(Linear(4, 3), nn.Tanh(), nn.MaxPool1d(1), Linear(3, 2)), "MaxPool1d"),
    (build_network("resnet20", "cifar10", 10), "nn.Sequential"),
    (nn.Sequential(nn.Flatten(), Linear(4, 2)), "at least 2 learnable layers"),
])
def test_models_that_are_not_chains_are_refused_in_one_line(model, named):
    with pytest.raises(ValueError) as info:
        attach(model)
    assert named in str(info.value) and "\n" not in str(info.value)


# 5. resume ------------------------------------------------------------------------------------------------
def test_resumed_random_sign_run_equals_the_straight_run(tiny_root, tmp_path):
    def run(out, *extra):
        args = ["run", "--arch", "fc", "--algo", "ep", "--batch-size", "16", "--seed", "3", "--data-dir", tiny_root,
                "--out", str(out), "--quiet", "--rule-opt", "nudging=random-sign", "--rule-opt", "free_steps=4",
                "--rule-opt", "nudged_steps=2", *extra]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    run(tmp_path / "straight", "--epochs", "2")
    run(tmp_path / "resumed", "--epochs", "1")
    run(tmp_path / "resumed", "--epochs", "2", "--resume")
    (straight,) = records_in(str(tmp_path / "straight")).values()
    (resumed,) = records_in(str(tmp_path / "resumed")).values()
    assert comparable(resumed) == comparable(straight)
    assert straight["alignment"][-1]["layers"][0]["free_residual"] > 0
