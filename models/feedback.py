"""The one autograd Function behind every learning rule.

A learnable layer computes ``y = op(x, W) + b``. Backprop sends the error down
through ``W``; the feedback-alignment family sends it through another matrix
``B`` (or, for DFA, straight from the network's output). Every rule therefore
differs from BP only in the *input* gradient, so one Function serves them all:

* forward with ``W``;
* weight and bias gradients exactly as BP computes them from the layer's own
  error signal;
* input gradient from ``B`` through the layer's own adjoint op ("matrix"
  route: BP with ``B = W``, FA, sign symmetry, Kolen-Pollack), or from the
  network output error ``e`` as ``e @ B`` ("direct" route: DFA).

The per-layer-kind maths lives in small ``*Ops`` objects (Linear and Conv2d
here, the locally connected layer in ``models.lc``).
"""
import torch
import torch.nn.functional as F

from .errors import ConfigError


class LinearOps:
    """y = x W^T + b over the last dimension."""

    def forward(self, x, weight, bias):
        return F.linear(x, weight, bias), x

    def backward(self, grad_out, x, weight, backward_weight, mask):
        grad_in = grad_w = grad_b = None
        if mask[0]:
            grad_in = grad_out.matmul(backward_weight)
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        if mask[1]:
            grad_w = g2.t().mm(x.reshape(-1, x.shape[-1]))
        if mask[2]:
            grad_b = g2.sum(0)
        return grad_in, grad_w, grad_b


class Conv2dOps:
    """A shared-weight 2-D convolution."""

    def __init__(self, stride, padding, dilation=(1, 1), groups=1):
        self.stride, self.padding = list(stride), list(padding)
        self.dilation, self.groups = list(dilation), groups

    def forward(self, x, weight, bias):
        out = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return out, x

    def backward(self, grad_out, x, weight, backward_weight, mask):
        # aten's fused convolution backward reads ``weight`` only for the input
        # gradient, so passing B there gives the asymmetric backward in one call.
        kernel = backward_weight if mask[0] else weight
        return torch.ops.aten.convolution_backward(
            grad_out, x, kernel, [weight.shape[0]] if mask[2] else None,
            self.stride, self.padding, self.dilation, False, [0, 0], self.groups, list(mask))


class DirectRoute:
    """DFA: the input gradient is the network's output error ``e`` sent through
    a fixed random ``B`` (classes x input size). The output layer captures
    ``e`` (its own error signal) on the way down; the backward pass reaches the
    layers below it only afterwards, so ``e`` is always there when needed."""

    def __init__(self, holder, captures_error, label, input_shape):
        self.holder = holder
        self.captures_error = captures_error
        self.label = label  # the layer, as messages name it
        self.input_shape = tuple(input_shape)  # per sample, what B was sized for

    def check_input(self, x):
        """Refuse, at the forward, an input B was not sized for (the backward's
        matrix product would fail with shapes that name no layer)."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(f"{self.label} gets inputs of shape {tuple(x.shape[1:])}, but its direct feedback "
                              f"was sized for {self.input_shape}; convert the model again with this data's "
                              f"input_shape")

    def input_grad(self, grad_out, backward_weight, input_shape):
        if self.captures_error:
            self.holder.error = grad_out.reshape(grad_out.shape[0], -1)
        error = self.holder.error
        if error is None:
            raise RuntimeError(self.holder.missing)
        return error.mm(backward_weight).view(input_shape)


class ErrorHolder:
    """Where the DFA output layer leaves ``e`` for the layers below."""

    def __init__(self):
        self.error = None
        self.missing = "DFA: the output error was not captured before a hidden layer's backward"


class FeedbackFunction(torch.autograd.Function):
    """forward(x, W, b, B, ops, route): ``ops.forward`` with W; backward: the
    input gradient through B (by the layer's adjoint op, or by ``route`` when
    one is given), weight and bias gradients as BP."""

    @staticmethod
    def forward(ctx, x, weight, bias, backward_weight, ops, route):
        out, saved = ops.forward(x, weight, bias)
        ctx.ops, ctx.route = ops, route
        ctx.input_shape = x.shape
        ctx.save_for_backward(saved, weight, backward_weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        saved, weight, backward_weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        by_ops_input = need_input and ctx.route is None
        grad_in, grad_w, grad_b = ctx.ops.backward(
            grad_out, saved, weight, backward_weight, (by_ops_input, need_weight, need_bias))
        if need_input and ctx.route is not None:
            grad_in = ctx.route.input_grad(grad_out, backward_weight, ctx.input_shape)
        return grad_in, grad_w, grad_b, None, None, None


def apply_feedback(x, weight, bias, backward_weight, ops, route=None):
    if route is not None:
        route.check_input(x)
    return FeedbackFunction.apply(x, weight, bias, backward_weight, ops, route)
