"""Learnable layers whose backward pass a learning rule can change.

Each layer is a standard module plus ``ops`` (its functional core, see
``models.feedback``) and a ``rule`` slot. With no rule, or with gradients off,
it runs the exact (BP) computation; with a rule attached, the rule supplies
the backward operand ``B`` (or the DFA route) for every training forward.
"""
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .feedback import Conv2dOps, LinearOps, apply_feedback


def glorot_bound(fan_in, fan_out):
    """Half-width of the Glorot (Xavier) uniform distribution."""
    return math.sqrt(6.0 / (fan_in + fan_out))


class FeedbackLayer:
    """Mixin for the learnable layers of a benchmark network."""

    rule = None  # set by LearningRule.attach

    def run(self, x, weight, bias):
        if self.rule is not None and torch.is_grad_enabled():
            backward_weight, route = self.rule.backward_operand(self, weight)
            return apply_feedback(x, weight, bias, backward_weight, self.ops, route)
        return self.exact(x, weight, bias)

    def init_bound(self):
        return glorot_bound(*self.fan_in_out())

    def reset_parameters(self):
        """Glorot uniform weights (the paper's choice), zero biases."""
        with torch.no_grad():
            bound = self.init_bound()
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x):
        return self.run(x, self.weight, self.bias)


class Linear(FeedbackLayer, nn.Linear):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)
        self.ops = LinearOps()

    def fan_in_out(self):
        return self.in_features, self.out_features

    def exact(self, x, weight, bias):
        return F.linear(x, weight, bias)


class Conv2d(FeedbackLayer, nn.Conv2d):
    """nn.Conv2d (any stride, dilation, groups, padding mode) whose backward a rule can change."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, dilation=1,
                 groups=1, padding_mode="zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias,
                         dilation=dilation, groups=groups, padding_mode=padding_mode)
        self.ops = Conv2dOps(self.stride, self.op_padding(), self.dilation, self.groups)

    def op_padding(self):
        """The padding the convolution itself applies: none when the input is
        padded beforehand (a padding mode other than zeros, or asymmetric 'same')."""
        if self.pre_padding() is not None:
            return (0, 0)
        if isinstance(self.padding, str):  # 'valid', or a symmetric 'same'
            return tuple(side // 2 for side in self._same_totals()) if self.padding == "same" else (0, 0)
        return self.padding

    def _same_totals(self):
        return [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]

    def pre_padding(self):
        """``(left, right, top, bottom)`` for F.pad, or None when the convolution pads by itself."""
        if self.padding == "same" and any(total % 2 for total in self._same_totals()):
            (total_h, total_w) = self._same_totals()
            pads = (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
        elif self.padding_mode != "zeros":
            pads = self._reversed_padding_repeated_twice
        else:
            return None
        return tuple(pads)

    def fan_in_out(self):
        k = self.kernel_size[0] * self.kernel_size[1]
        return self.in_channels // self.groups * k, self.out_channels // self.groups * k

    def forward(self, x):
        pads = self.pre_padding()
        if pads is not None:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, pads, mode=mode)
        return self.run(x, self.weight, self.bias)

    def exact(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.op_padding(), self.dilation, self.groups)


def feedback_layers(model):
    """The model's learnable layers in forward order: the order of a traced
    forward pass where ``convert`` recorded one (``model.biobench_layer_order``),
    else module registration order (biobench's own networks register theirs
    in forward order)."""
    registered = [m for m in model.modules() if isinstance(m, FeedbackLayer)]
    traced = getattr(model, "biobench_layer_order", None)
    if traced is not None and len(traced) == len(registered) and set(traced) == set(registered):
        return list(traced)
    return registered  # no trace, or the model's layers changed since


def layer_label(model, layer):
    """How a message names ``layer`` of ``model``: its qualified name and kind."""
    name = next(n for n, m in model.named_modules() if m is layer)
    return f"layer {name!r} ({type(layer).__name__})" if name else f"the model ({type(layer).__name__})"


def traced_layer_inputs(model, input_shape):
    """``{layer: its per-sample input shape}`` of the model's learnable layers,
    in the order one dry forward pass of a zero input of ``input_shape`` (one
    sample's) first calls them (layers the pass never calls are left out)."""
    layers = [m for m in model.modules() if isinstance(m, FeedbackLayer)]
    shapes = {}

    def record(module, args):
        shapes.setdefault(module, tuple(args[0].shape[1:]))

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    training = [(m, m.training) for m in model.modules()]
    model.eval()  # the dry pass must not move BatchNorm's running statistics
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros((1,) + tuple(input_shape), dtype=param.dtype, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in training:
            module.train(mode)
    return shapes


@contextmanager
def frozen_parameters(params):
    """``params`` out of the graph inside the block (their flags restored
    after): relaxation steps that need only the states' gradients then cost
    no weight gradients."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class FeedbackPoint(nn.Module):
    """A rule's feedback that acts at some module's output rather than in a
    layer (DFA's point at a transformer block's output, ``models.blocks``);
    it acts only while ``enabled``."""

    enabled = True


@contextmanager
def detached_rules(model):
    """Every learnable layer of ``model`` (a module, or a list of layers) runs
    exactly (BP's forward and backward) inside the block, whatever rule is
    attached, and a module's feedback points (:class:`FeedbackPoint`) are
    off; restored after."""
    layers = feedback_layers(model) if isinstance(model, nn.Module) else list(model)
    points = [m for m in model.modules() if isinstance(m, FeedbackPoint)] if isinstance(model, nn.Module) else []
    saved = [layer.rule for layer in layers]
    for layer in layers:
        layer.rule = None
    for point in points:
        point.enabled = False
    try:
        yield
    finally:
        for layer, previous in zip(layers, saved):
            layer.rule = previous
        for point in points:
            point.enabled = True
