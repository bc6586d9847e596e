"""Predictive coding (Whittington & Bogacz 2017; Millidge et al. 2022; Rosenbaum 2022)."""
import math

import torch
import torch.nn.functional as F

from ..chain import run_prefix, split_chain
from ..layers import frozen_parameters
from .base import LearningRule
from .fa import FeedbackAlignment

# Works this module's rules cite (BibTeX fields).
WHITTINGTON2017 = {"type": "article", "author": "Whittington, James C. R. and Bogacz, Rafal",
                   "title": "An Approximation of the Error Backpropagation Algorithm in a Predictive Coding "
                            "Network with Local Hebbian Synaptic Plasticity",
                   "journal": "Neural Computation", "volume": "29", "number": "5", "pages": "1229--1262",
                   "year": "2017", "doi": "10.1162/NECO_a_00949"}
MILLIDGE2022 = {"type": "article", "author": "Millidge, Beren and Tschantz, Alexander and Buckley, Christopher L.",
                "title": "Predictive Coding Approximates Backprop Along Arbitrary Computation Graphs",
                "journal": "Neural Computation", "volume": "34", "number": "6", "pages": "1329--1368",
                "year": "2022", "doi": "10.1162/neco_a_01497"}
ROSENBAUM2022 = {"type": "article", "author": "Rosenbaum, Robert",
                 "title": "On the relationship between predictive coding and backpropagation",
                 "journal": "PLOS ONE", "volume": "17", "number": "3", "pages": "e0266102", "year": "2022",
                 "doi": "10.1371/journal.pone.0266102"}


class PredictiveCoding(LearningRule):
    """Value nodes ``v_l`` (one per hidden layer, after its activation) are
    initialised by a feed-forward pass and relaxed for ``inference_steps``
    steps of size ``inference_rate`` down the energy

        E = sum_{l<L} 1/2 ||v_l - f_l(v_{l-1})||^2 + CE(f_L(v_{L-1}), y)

    (``v_0`` = the input, the output clamped to the label through the
    cross-entropy), i.e. ``v_l -= rate * (eps_l - J_{l+1}^T eps_{l+1})`` with
    ``eps_l = v_l - f_l(v_{l-1})``. Then every layer takes the local gradient
    of its own term at the relaxed nodes: error times presynaptic activity.
    Per sample; the weight gradients are averaged over the batch.

    ``mode=strict`` (standard PC): predictions and Jacobians at the current
    nodes. ``mode=fpa`` (fixed prediction assumption, Millidge et al.;
    Rosenbaum): both frozen at the feed-forward pass; with rate 1 and at least
    L - 1 steps the errors are backprop's and so are the weight gradients.
    Transposed Jacobians ``J^T`` come from each layer's own adjoint (LC
    included) through autograd, so the error propagation uses W^T: weight
    transport. ``pc-rf`` replaces it by fixed random B.

    Torch2PC (Rosenbaum's code, where the defaults come from) sweeps down the
    layers taking each error from the nodes before that sweep's update, so
    the errors it returns lag its ``n`` node updates by one: under fpa ``k``
    steps here are its ``n = k + 1``; under strict it pairs the errors from
    before its last update with the updated nodes, where this rule takes the
    errors at the final nodes (docs/rules.md gives the sizes)."""
    needs_chain = True
    name = "pc"
    colour = "#637939"
    title = "Predictive coding"
    citations = {"whittington2017": WHITTINGTON2017, "millidge2022": MILLIDGE2022, "rosenbaum2022": ROSENBAUM2022}
    weight_transport = "yes: errors go down through J^T = W^T diag(phi') during inference (pc-rf: fixed random B)"
    defaults = {"inference_steps": 20, "inference_rate": 0.1, "mode": "strict"}
    choices = {"mode": ("strict", "fpa")}
    option_sources = {"inference_steps": ("Rosenbaum 2022, Torch2PC PCInfer default (n = 20), counted our way: "
                                          "Torch2PC returns the errors from before its last node update, so k "
                                          "steps here are its n = k + 1 under fpa (20 here = its n = 21; at its "
                                          "n = 20 the updates differ by 4e-2), and under strict it keeps those "
                                          "errors where we recompute them at the final nodes (2e-2; "
                                          "docs/rules.md)"),
                      "inference_rate": ("Rosenbaum 2022, Torch2PC PCInfer default (eta = 0.1; there with the "
                                         "batch-mean loss, here each sample's own cross-entropy at the top)"),
                      "mode": "strict: standard PC (Whittington & Bogacz 2017); fpa: Millidge et al. 2022"}
    search_space = {"inference_rate": "log:0.01:1"}

    count_options = ("inference_steps",)
    # Its backward operand is W itself, so an attack along the rule is the
    # true-gradient one (pc-rf, whose operand is B, has the column).
    has_rule_gradient = False

    def __init__(self, **options):
        super().__init__(**options)
        rate = self.options["inference_rate"]
        if not (math.isfinite(rate) and 0 < rate <= 1):
            raise ValueError(f"rule {self.name!r} option inference_rate={rate!r} must be in (0, 1]")

    def attach(self, model, generator, input_shape=None):
        self.prefix, self.segments = split_chain(model, self.name)
        super().attach(model, generator, input_shape)
        return self

    def backward_operand(self, layer, weight):
        return weight, None

    # inference ------------------------------------------------------------------
    def feed_forward(self, x):
        h = [run_prefix(self.prefix, x)]
        for segment in self.segments:
            h.append(segment(h[-1]))
        return h

    def energy_terms(self, v, y):
        """Per layer, the energy summed over the batch (nodes ``v`` = [v_0, ..., v_{L-1}])."""
        terms = [0.5 * (v[level] - segment(v[level - 1])).pow(2).sum()
                 for level, segment in enumerate(self.segments[:-1], start=1)]
        return terms + [F.cross_entropy(self.segments[-1](v[-1]), y, reduction="sum")]

    def relax_strict(self, x, y):
        """``(relaxed nodes [v_0, ..., v_{L-1}], feed-forward logits)``."""
        with torch.no_grad():
            *v, logits = self.feed_forward(x)
        rate = self.options["inference_rate"]
        with frozen_parameters(p for layer in self.layers for p in (layer.weight, layer.bias) if p is not None):
            for _ in range(self.options["inference_steps"]):
                hidden = [node.detach().requires_grad_() for node in v[1:]]
                grads = torch.autograd.grad(sum(self.energy_terms([v[0]] + hidden, y)), hidden)
                v = [v[0]] + [node.detach() - rate * grad for node, grad in zip(hidden, grads)]
        return v, logits

    def fpa_errors(self, x, y):
        """``(layer outputs with graphs from their detached inputs, errors)``:
        the errors after the inference steps with predictions and Jacobians
        frozen at the feed-forward pass."""
        inputs, outputs = [run_prefix(self.prefix, x).detach()], []
        for segment in self.segments:
            inputs[-1].requires_grad_()
            outputs.append(segment(inputs[-1]))
            inputs.append(outputs[-1].detach())
        logits = outputs[-1]
        top = F.one_hot(y, logits.shape[1]).to(logits.dtype) - F.softmax(logits.detach(), dim=1)
        errors = [torch.zeros_like(out) for out in outputs[:-1]] + [top]
        rate = self.options["inference_rate"]
        for _ in range(self.options["inference_steps"]):
            sent = [torch.autograd.grad(outputs[level], inputs[level], errors[level], retain_graph=True)[0]
                    for level in range(1, len(outputs))]
            errors = [error - rate * (error - down) for error, down in zip(errors[:-1], sent)] + [top]
        return outputs, errors

    # the step -------------------------------------------------------------------------
    def local_losses(self, x, y):
        """A scalar whose gradient is each layer's local PC update (mean over
        the batch), and the feed-forward logits."""
        if self.options["mode"] == "fpa":
            outputs, errors = self.fpa_errors(x, y)
            # dE/dW_l = -(d f_l / d W_l)^T eps_l at the frozen feed-forward pass.
            local = sum(-(out * error).sum() for out, error in zip(outputs, errors)) / len(y)
            return local, outputs[-1].detach()
        v, logits = self.relax_strict(x, y)
        return sum(self.energy_terms(v, y)) / len(y), logits

    def train_step(self, model, x, y, optimizer):
        local, logits = self.local_losses(x, y)
        optimizer.zero_grad(set_to_none=True)
        local.backward()
        optimizer.step()
        self.decay_weights()
        return F.cross_entropy(logits, y), logits

    def weight_updates(self, model, x, y):
        local, _ = self.local_losses(x, y)
        return torch.autograd.grad(local, [layer.weight for layer in self.layers])

    def layer_metrics(self, model, x, y):
        """Per layer: its energy term (mean over the batch) at the feed-forward
        pass and after inference (strict mode's nodes; under fpa the errors')."""
        with torch.no_grad():
            before = [float(t) / len(y) for t in self.energy_terms(self.feed_forward(x)[:-1], y)]
        if self.options["mode"] == "fpa":
            outputs, errors = self.fpa_errors(x, y)
            after = [float(0.5 * e.pow(2).sum()) / len(y) for e in errors[:-1]] + [before[-1]]
        else:
            nodes = self.relax_strict(x, y)[0]
            with torch.no_grad():
                after = [float(t) / len(y) for t in self.energy_terms(nodes, y)]
        return [{"energy_before": b, "energy_after": a} for b, a in zip(before, after)]

    def describe(self):
        info = super().describe()
        info.update(first_layer="local error times the input", output_layer="cross-entropy at the relaxed nodes")
        return info


class PredictiveCodingRandomFeedback(PredictiveCoding):
    """Predictive coding whose inference sends errors down through fixed random
    B (FA's matrices, same shape as W) in place of W^T: no weight transport.
    Under ``mode=fpa`` with rate 1 and L - 1 steps its updates are FA's."""

    name = "pc-rf"
    colour = "#b5cf6b"
    title = "Predictive coding, random feedback"
    weight_transport = "no: errors go down through fixed random B in place of W^T"
    defaults = {**PredictiveCoding.defaults, **FeedbackAlignment.defaults}
    choices = {**PredictiveCoding.choices, **FeedbackAlignment.choices}
    option_sources = {**PredictiveCoding.option_sources,
                      "feedback_init": "as fa: the layer's own Glorot bound (Bartunov et al.'s nets)"}
    init_layer = FeedbackAlignment.init_layer
    backward_operand = FeedbackAlignment.backward_operand
    alignment_matrix = FeedbackAlignment.alignment_matrix


