"""Learned inverses (feedback maps) of the learnable layers, for target propagation.

``make_inverse(layer, input_shape, generator)`` returns a module mapping the
layer's *output* (pre-activation shape) back to its *input* shape with its
own, untied weights; each layer kind registers its inverse (a
``functools.singledispatch``), so a new layer kind adds one function:

* Linear ``in -> out``: a Linear ``out -> in``;
* Conv2d: a transposed convolution with the same kernel, stride and padding
  (``output_padding`` restores the input size);
* LocallyConnected2d: a transposed LC (``models.lc.lc_transpose``): the
  adjoint of an LC op with the inverse's weights, so it has the sparsity of
  ``W^T`` without ever forming a dense matrix, plus one bias per input unit.

Weights are Glorot uniform in the forward layer's own range, biases zero.
The target-propagation rules add the activation and reshapes around them.
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d, Linear, glorot_bound
from .lc import LocallyConnected2d, lc_transpose, position_major_parameter


def _uniform(tensor, bound, generator):
    with torch.no_grad():
        # Drawn contiguously then copied, so the values do not depend on the
        # parameter's memory layout.
        tensor.copy_(torch.empty(tensor.shape, dtype=tensor.dtype).uniform_(-bound, bound, generator=generator))
    return tensor


class LinearInverse(nn.Module):
    """``y [N, from] -> y V^T + c [N, to]``."""

    def __init__(self, from_features, to_features, generator):
        super().__init__()
        self.weight = nn.Parameter(_uniform(torch.empty(to_features, from_features),
                                            glorot_bound(from_features, to_features), generator))
        self.bias = nn.Parameter(torch.zeros(to_features))

    def forward(self, y):
        return F.linear(y, self.weight, self.bias)


class ConvInverse(nn.Module):
    """A transposed convolution undoing a Conv2d's geometry, with untied weights."""

    def __init__(self, layer, input_shape, generator):
        super().__init__()
        self.stride, self.padding = layer.stride, layer.padding
        _, height, width = input_shape
        kh, kw = layer.kernel_size
        out_h = (height + 2 * self.padding[0] - kh) // self.stride[0] + 1
        out_w = (width + 2 * self.padding[1] - kw) // self.stride[1] + 1
        self.output_padding = (height - ((out_h - 1) * self.stride[0] - 2 * self.padding[0] + kh),
                               width - ((out_w - 1) * self.stride[1] - 2 * self.padding[1] + kw))
        # conv_transpose2d's weight is [C_in of the transpose = C_out, C_out of it = C_in, K, K]
        self.weight = nn.Parameter(_uniform(torch.empty_like(layer.weight.detach(), device="cpu"),
                                            layer.init_bound(), generator))
        self.bias = nn.Parameter(torch.zeros(layer.in_channels))

    def forward(self, y):
        return F.conv_transpose2d(y, self.weight, self.bias, self.stride, self.padding, self.output_padding)


class LCInverse(nn.Module):
    """A transposed locally connected layer: ``fold(V^T y) + c`` with ``V``
    shaped like the forward LC weight and one bias per input unit."""

    def __init__(self, layer, generator):
        super().__init__()
        g = layer.geometry
        self.geometry = g
        self.weight = position_major_parameter(g.weight_shape, (2, 0, 1))
        _uniform(self.weight, layer.init_bound(), generator)
        self.bias = nn.Parameter(torch.zeros(g.in_channels, g.in_height, g.in_width))

    def forward(self, y):
        return lc_transpose(y, self.weight, self.geometry) + self.bias


@functools.singledispatch
def make_inverse(layer, input_shape, generator):
    """The learned inverse of ``layer`` (whose per-sample input shape is ``input_shape``)."""
    raise ValueError(f"target propagation has no inverse for layer kind {type(layer).__name__}; "
                     f"supported: Linear, Conv2d, LocallyConnected2d")


@make_inverse.register
def _(layer: Linear, input_shape, generator):
    return LinearInverse(layer.out_features, layer.in_features, generator)


@make_inverse.register
def _(layer: Conv2d, input_shape, generator):
    return ConvInverse(layer, input_shape, generator)


@make_inverse.register
def _(layer: LocallyConnected2d, input_shape, generator):
    return LCInverse(layer, generator)
