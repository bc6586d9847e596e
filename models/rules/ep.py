"""Equilibrium propagation (Scellier & Bengio 2017) in the discrete-time form
of Laborieux et al. 2021, with a cross-entropy read-out.

The network is a chain of segments (``models.chain``). States ``s_1..s_N`` are
the outputs, after the activation, of the hidden segments; ``s_0`` is the input
after the prefix (clamped). The primitive function is

    Phi(x, s) = sum_n < s_n , layer_n(reshape(s_{n-1})) >

(``layer_n``'s linear map with its bias; ``reshape`` is the Flatten of the
segment below, where it has one). The last learnable layer is the read-out,
outside Phi: ``logits = W_out(s_N)``, ``l = cross-entropy(logits, y)`` summed
over the batch, and the nudged function is ``Phi^beta = Phi - beta * l``.

Dynamics: ``s_n <- sigma_n(dPhi^beta/ds_n)``, sigma_n the segment's
activation, all layers at once (``update_order="synchronous"``, Laborieux et
al.) or odd layers, then even ones (``"alternating"``). Both have the same
fixed points; with symmetric feedback, alternating free-phase half-steps
minimise the energy
``F = sum_i G(s_i) - Phi`` (``G' = atanh`` for tanh) over their layers exactly,
so F only decreases and no 2-cycle can form, while synchronous steps of a
symmetric net can fall into one (they did on the MNIST FC net after an epoch).
dPhi/ds comes from autograd, so each layer kind's transpose (Linear, Conv2d,
the LC adjoint) is its own backward, and ``feedback="random"`` swaps in a
fixed random B through ``backward_operand``:
``s_n = sigma(W_n s_{n-1} + B_{n+1}^T s_{n+1} + b_n)``, the nudge reaching
``s_N`` through ``B_out``. Free phase: ``free_steps`` steps with beta = 0 from
zero states (see ``initial_states``); nudged phases: ``nudged_steps`` steps
from the free fixed point with +beta (and -beta for symmetric nudging).

Update, written into ``p.grad`` for the optimiser and averaged over the batch:
symmetric ``-(1/2beta) d/dtheta [Phi^{+beta}(s^{+beta}) - Phi^{-beta}(s^{-beta})]``,
one-sided ``-(1/beta) d/dtheta [Phi^beta(s^beta) - Phi^0(s^0)]``, random-sign
the one-sided one with the sign of beta drawn per batch. The read-out gets
``(1/2)(dl/dW_out at s^{+beta} + at s^{-beta})`` (``dl/dW_out at s^beta`` one-sided)
from the same formula. As beta -> 0 the update tends to the gradient of the loss
at the free fixed point, with an O(beta^2) bias when symmetric, O(beta) otherwise.

Prediction: the read-out of the free fixed point, in training (the logits
``train_step`` returns) and in evaluation: in eval mode, ``model(x)`` relaxes
to the free fixed point too (a forward hook), so test errors are EP's. In
training mode ``model(x)`` stays the feed-forward net (what the BP gradient of
the alignment records is taken on).
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..chain import RESHAPES, run_prefix, split_chain
from ..layers import detached_rules, frozen_parameters
from .base import LearningRule, uniform_like_weight

# Works this module's rules cite (BibTeX fields).
SCELLIER2017 = {"type": "article", "author": "Scellier, Benjamin and Bengio, Yoshua",
                "title": "Equilibrium Propagation: Bridging the Gap between Energy-Based Models and Backpropagation",
                "journal": "Frontiers in Computational Neuroscience", "volume": "11", "pages": "24",
                "year": "2017", "doi": "10.3389/fncom.2017.00024"}

LABORIEUX2021 = {"type": "article",
                 "author": "Laborieux, Axel and Ernoult, Maxence and Scellier, Benjamin and Bengio, Yoshua and "
                           "Grollier, Julie and Querlioz, Damien",
                 "title": "Scaling Equilibrium Propagation to Deep ConvNets by Drastically Reducing Its "
                          "Gradient Estimator Bias",
                 "journal": "Frontiers in Neuroscience", "volume": "15", "pages": "633674", "year": "2021",
                 "doi": "10.3389/fnins.2021.633674"}

NUDGINGS = ("symmetric", "one-sided", "random-sign")
FEEDBACKS = ("symmetric", "random")
UPDATE_ORDERS = ("synchronous", "alternating")


def reshape(segment, s):
    """A hidden state as the next layer reads it (the segment's reshapes)."""
    for module in segment.rest:
        if isinstance(module, RESHAPES):
            s = module(s)
    return s


def mean_distance(a, b):
    """Mean over the batch of the per-sample distance."""
    return float((a - b).flatten(1).norm(dim=1).mean())


class EquilibriumPropagation(LearningRule):
    """Equilibrium propagation, discrete time, CE read-out (Laborieux et al. 2021)."""
    needs_chain = True
    name = "ep"
    title = "Equilibrium propagation"
    colour = "#1b9e77"
    citations = {"scellier2017": SCELLIER2017, "laborieux2021": LABORIEUX2021}
    weight_transport = ("feedback=symmetric (default): yes, s_{n+1} acts on s_n through W^T (symmetric "
                        "connections); feedback=random: no, through a fixed random B")
    defaults = {"free_steps": 30, "nudged_steps": 10, "beta": 0.1, "nudging": "symmetric", "feedback": "symmetric",
                "update_order": "synchronous"}
    choices = {"nudging": NUDGINGS, "feedback": FEEDBACKS, "update_order": UPDATE_ORDERS}
    option_sources = {
        "free_steps": ("Laborieux et al. 2021 code, check/train_mnist.sh (T1 30, for a one-hidden-layer 784-512-10 "
                       "net, one-sided, MSE loss; their conv script check/train_mnist_cnn.sh: T1 200)"),
        "nudged_steps": "Laborieux et al. 2021 code, check/train_mnist.sh (T2 10)",
        "beta": "Laborieux et al. 2021 code, check/train_mnist.sh (beta 0.1; their conv script: 0.4)",
        "nudging": "Laborieux et al. 2021 (symmetric +-beta with the CE read-out, as their CIFAR-10 nets)",
        "feedback": "Laborieux et al. 2021 (W^T, the energy-based form); random: ours, EP without weight symmetry",
        "update_order": "Laborieux et al. 2021 (synchronous); alternating: ours, block coordinate descent on F",
    }
    search_space = {"beta": "log:0.01:1.0"}

    positive_options = ("beta",)
    count_options = ("free_steps", "nudged_steps")

    # set-up ------------------------------------------------------------------------
    def attach(self, model, generator, input_shape=None):
        self.prefix, self.segments = split_chain(model, "equilibrium propagation")
        self.hidden, self.readout = self.segments[:-1], self.segments[-1]
        super().attach(model, generator, input_shape)
        self.model_parameters = list(model.parameters())
        if self.options["nudging"] == "random-sign":
            self.make_generator(generator, "cpu")
        model.register_forward_hook(self._evaluate)
        return self

    def moved_to(self, device):
        """The sign generator stays on the CPU: the sign is a Python number,
        drawn without waiting for the device."""

    def init_layer(self, layer, generator):
        if self.options["feedback"] == "random":
            layer.register_buffer("feedback_weight", uniform_like_weight(layer, generator))

    def backward_operand(self, layer, weight):
        if self.options["feedback"] == "random":
            return layer.feedback_weight, None
        return weight, None

    def alignment_matrix(self, layer):
        return getattr(layer, "feedback_weight", None)

    # the dynamics ------------------------------------------------------------------
    @contextmanager
    def dynamics(self, weights=False):
        """Autograd on (even under no_grad, in evaluation), parameters frozen
        unless ``weights``: the states' gradients then cost no weight gradients."""
        with torch.enable_grad(), frozen_parameters(() if weights else self.model_parameters):
            yield

    def phi(self, s0, states, beta=0.0, y=None, drive=None):
        """Phi^beta summed over the batch; ``drive``: layer 1's output on s_0 where already known."""
        inputs = [reshape(seg, s) for seg, s in zip(self.hidden, states)]
        drives = [self.hidden[0].layer(s0) if drive is None else drive]
        drives += [seg.layer(h) for seg, h in zip(self.hidden[1:], inputs[:-1])]
        total = sum((s * d).sum() for s, d in zip(states, drives))
        if beta:
            total = total - beta * F.cross_entropy(self.readout(inputs[-1]), y, reduction="sum")
        return total

    def relax(self, s0, states, steps, beta=0.0, y=None, order=None):
        """``steps`` steps of ``s <- sigma(dPhi^beta/ds)`` from ``states``, in
        ``order`` (default: the ``update_order`` option)."""
        count = len(states)
        if (order or self.options["update_order"]) == "synchronous":
            groups = [range(count)]
        else:  # s_1, s_3, ... then s_2, s_4, ... from the new odd states
            groups = [range(0, count, 2), range(1, count, 2)]
        with self.dynamics():
            # s_0 and the weights are constant while the states move: layer 1 runs once
            # (on the FC net it holds 43% of the weights).
            drive = self.hidden[0].layer(s0)
            for _ in range(steps):
                for group in groups:
                    states = [s.detach().requires_grad_(i in group) for i, s in enumerate(states)]
                    grads = torch.autograd.grad(self.phi(s0, states, beta, y, drive), [states[i] for i in group])
                    for i, g in zip(group, grads):
                        states[i] = self.hidden[i].activation(g)
        return [s.detach() for s in states]

    def initial_states(self, s0):
        """Zero states (Laborieux et al.), shaped by a feed-forward pass. Not the
        feed-forward states themselves: synchronous steps of a layered net run two
        interleaved chains (odd layers at even steps with even layers at odd
        steps, and the converse), and on the Glorot-initialised MNIST FC net the
        feed-forward start, which sets the chains apart, fell into a 2-cycle at
        once (one-step residual 4.7 growing to 7 over 60 steps) where the zero
        start converged, slowly."""
        states, h = [], s0
        with torch.no_grad():
            for seg in self.hidden:
                h = seg.activation(seg.layer(h))
                states.append(torch.zeros_like(h))
                h = reshape(seg, h)
        return states

    def free_phase(self, x):
        """``(s_0, the free phase's states)`` for the input batch ``x``."""
        with torch.no_grad():
            s0 = run_prefix(self.prefix, x)
        return s0, self.relax(s0, self.initial_states(s0), self.options["free_steps"])

    def read_out(self, states):
        with torch.no_grad():
            return self.readout(reshape(self.hidden[-1], states[-1]))

    def nudged_phases(self, s0, free, y, sign=1.0):
        """``((beta_1, s^{beta_1}), (beta_2, s^{beta_2}))``, the two ends of the contrast."""
        beta, steps = sign * self.options["beta"], self.options["nudged_steps"]
        first = (beta, self.relax(s0, free, steps, beta, y))
        if self.options["nudging"] == "symmetric":
            return first, (-beta, self.relax(s0, free, steps, -beta, y))
        return first, (0.0, free)

    def contrast(self, s0, phases, y):
        """The scalar whose parameter gradient is EP's update (states constant)."""
        (beta_1, s_1), (beta_2, s_2) = phases
        scale = -1.0 / ((beta_1 - beta_2) * y.shape[0])
        return scale * (self.phi(s0, s_1, beta_1, y) - self.phi(s0, s_2, beta_2, y))

    def draw_sign(self):
        if self.options["nudging"] != "random-sign":
            return 1.0
        return 1.0 if int(torch.randint(0, 2, (1,), generator=self.generator)) else -1.0

    # the trainer's hooks -----------------------------------------------------------
    def train_step(self, model, x, y, optimizer):
        s0, free = self.free_phase(x)
        logits = self.read_out(free)  # before the step, like backprop's
        phases = self.nudged_phases(s0, free, y, self.draw_sign())
        optimizer.zero_grad(set_to_none=True)
        self.contrast(s0, phases, y).backward()
        optimizer.step()
        self.decay_weights()
        return F.cross_entropy(logits, y), logits

    def _evaluate(self, model, args, output):
        """In eval mode the model's output is the free fixed point's read-out."""
        if model.training or self.output_layer.rule is not self:  # a rule attached since owns the model
            return None
        return self.read_out(self.free_phase(args[0])[1])

    def weight_updates(self, model, x, y):
        """EP's update of each weight; random-sign nudging shows its +beta draw."""
        s0, free = self.free_phase(x)
        return torch.autograd.grad(self.contrast(s0, self.nudged_phases(s0, free, y), y),
                                   [layer.weight for layer in self.layers])

    def layer_metrics(self, model, x, y):
        """Per hidden layer: the mean distance between the +beta nudged and the
        free fixed points, and the free phase's residual at its end (how far
        from a fixed point it stopped): the larger move of the layer's state
        in the next two synchronous steps. Two, because from zero states with
        zero biases the synchronous dynamics run as two interleaved chains, one
        a step behind the other, so one step can leave every other layer
        exactly where it is although it has not converged; None at the read-out."""
        s0, free = self.free_phase(x)
        (_, nudged), _ = self.nudged_phases(s0, free, y)
        once = self.relax(s0, free, 1, order="synchronous")  # sigma(dPhi/ds), whatever the order
        twice = self.relax(s0, once, 1, order="synchronous")
        rows = [{"nudge_distance": mean_distance(n, f),
                 "free_residual": max(mean_distance(a, f), mean_distance(b, a))}
                for n, f, a, b in zip(nudged, free, once, twice)]
        return rows + [{"nudge_distance": None, "free_residual": None}]

    # adversarial attacks (benchmark.robustness) ----------------------------------------
    # The eval-mode prediction is computed without a graph (relax detaches every
    # step), so an attack cannot differentiate model(x). These two methods give
    # it the exact input gradient of that prediction and EP's own estimate of it.
    def _exact_drive(self, index, states, s0):
        """Layer ``index``'s drive from below, by the layer's exact op (its
        derivative is then the true one; the value is the same)."""
        below = s0 if index == 0 else reshape(self.hidden[index - 1], states[index - 1])
        with detached_rules([self.hidden[index].layer]):
            return self.hidden[index].layer(below)

    def _pull_back(self, segment_layers, state, cotangent, create_graph):
        """``cotangent`` sent down through ``segment_layers`` by the rule's
        backward (W^T or B^T), as the state below sees it: dPhi/ds's term from
        above, or the nudge's. Linear in ``cotangent``, with its graph kept
        when ``create_graph``."""
        below = state.detach().requires_grad_()
        with torch.enable_grad():
            out = segment_layers(below)
            (pulled,) = torch.autograd.grad(out, below, cotangent, create_graph=create_graph)
        return pulled

    def unrolled_relax(self, s0, states, steps, beta=0.0, cotangent=None, differentiable=False, weights=False):
        """:meth:`relax` written out step by step: ``s_n <- sigma(drive_n +
        feedback_n)``, the drive by the layer's exact op, the feedback from
        s_{n+1} through the rule's backward operand, and for ``beta`` the nudge
        of the linear cost ``<cotangent, logits>`` on s_N (through the
        read-out's backward, as the CE nudge in ``phi``). With
        ``differentiable`` the graph from ``s0`` through every step is kept, and
        with ``weights`` also from the weights (backprop through time)."""
        count = len(states)
        if self.options["update_order"] == "synchronous":
            groups = [range(count)]
        else:
            groups = [range(0, count, 2), range(1, count, 2)]
        with self.dynamics(weights):
            drive0 = self._exact_drive(0, states, s0)
            for _ in range(steps):
                for group in groups:
                    new = list(states)
                    for i in group:
                        pre = drive0 if i == 0 else self._exact_drive(i, states, s0)
                        if i + 1 < count:
                            above = self.hidden[i + 1].layer
                            below = reshape(self.hidden[i], states[i])
                            pre = pre + self._pull_back(above, below, states[i + 1], differentiable).view_as(pre)
                        elif beta:
                            below = reshape(self.hidden[i], states[i])
                            nudge = self._pull_back(self.readout, below, cotangent, differentiable)
                            pre = pre - beta * nudge.view_as(pre)
                        new[i] = self.hidden[i].activation(pre)
                    states = new if differentiable else [s.detach() for s in new]
        return states

    def differentiable_forward(self, model, x, weights=False):
        """The eval-mode logits of ``x`` (free phase from zero states, then the
        read-out; ``model`` runs as the rule's segments) with autograd's graph
        kept from ``x``, and with ``weights`` from the weights too: its
        gradients are the exact gradients of what the network computes at
        test time (backprop through the free phase's steps, which EP's update
        approximates)."""
        s0 = run_prefix(self.prefix, x)
        states = self.unrolled_relax(s0, self.initial_states(s0), self.options["free_steps"], differentiable=True,
                                     weights=weights)
        with detached_rules([self.readout.layer]):
            return self.readout(reshape(self.hidden[-1], states[-1]))

    def estimate_input_gradient(self, x, cotangent):
        """EP's own estimate of ``cotangent``^T d logits / dx: the input treated
        like a parameter of Phi (it enters only layer 1's drive), so
        dC/ds_0 ~ -(Phi_{s_0}(s^{b1}) - Phi_{s_0}(s^{b2})) / (b1 - b2) with the
        linear cost C = <cotangent, logits> nudging the read-out (both phases
        as the rule's nudging option says; random-sign: +beta, one-sided)."""
        with torch.no_grad():
            s0 = run_prefix(self.prefix, x)
        free = self.unrolled_relax(s0, self.initial_states(s0), self.options["free_steps"])
        beta, steps = self.options["beta"], self.options["nudged_steps"]
        first = self.unrolled_relax(s0, free, steps, beta, cotangent)
        if self.options["nudging"] == "symmetric":
            second, beta_2 = self.unrolled_relax(s0, free, steps, -beta, cotangent), -beta
        else:
            second, beta_2 = free, 0.0
        # dPhi/ds_0 = layer 1's backward (exact: it has no rule) applied to s_1
        grad_s0 = self._pull_back(self.hidden[0].layer, s0, first[0] - second[0], False) / -(beta - beta_2)
        inputs = x.detach().requires_grad_()
        with torch.enable_grad():
            (grad_x,) = torch.autograd.grad(run_prefix(self.prefix, inputs), inputs, grad_s0)
        return grad_x

    def describe(self):
        return {"name": self.name, "options": dict(self.options),
                "first_layer": "EP update; s_0 (the input) is clamped",
                "output_layer": ("read-out outside the dynamics: dLoss/dW_out at the nudged fixed point "
                                 "(mean over +-beta when symmetric)"),
                "prediction": "read-out of the free fixed point, in training and in evaluation (eval-mode forward)"}

