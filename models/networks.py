"""The networks of Bartunov et al. 2018, Table 3.

tanh after every hidden layer, no pooling, zero "same" padding (output =
ceil(input / stride)), Glorot init. The convolutional net is the LC stack with
shared weights. Specs are keyed by input family: ``mnist`` (1x28x28, also
Fashion-MNIST), ``cifar10`` (3x32x32) and ``imagenet`` (3x224x224).
"""
import math

from torch import nn

from .inputs import INPUT_SHAPES
from .layers import Conv2d, Linear
from .lc import LocallyConnected2d

# (kernel, out_channels, stride) per spatial layer, then hidden FC widths.
SPATIAL_STACKS = {
    "mnist": ([(3, 32, 2), (3, 64, 2)], [1024]),
    "cifar10": ([(5, 64, 2), (5, 128, 2), (3, 256, 1)], [1024]),
    "imagenet": ([(9, 48, 4), (3, 48, 2), (5, 96, 1), (3, 96, 2), (3, 192, 1), (3, 192, 2),
                  (3, 384, 1)], []),
}
FC_WIDTHS = {"mnist": [256] * 5, "cifar10": [1024] * 3}

def same_padding(size, kernel, stride):
    """Symmetric zero padding giving output ceil(size / stride). The paper's
    "same" padding may put the odd pixel on one side only; the output size,
    and therefore the parameter count, is identical."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    pad = (total + 1) // 2
    if (size + 2 * pad - kernel) // stride + 1 != out:
        raise ValueError(f"no symmetric same padding for size {size}, kernel {kernel}, stride {stride}")
    return pad


def _check_family(arch, family, specs):
    if family not in specs:
        raise ValueError(f"architecture {arch!r} is not defined for {family} inputs "
                         f"{'x'.join(map(str, INPUT_SHAPES[family]))}; the paper defines it for: "
                         f"{', '.join(specs)}")


def _head(layers, in_features, widths, num_classes):
    for width in widths:
        layers += [Linear(in_features, width), nn.Tanh()]
        in_features = width
    layers.append(Linear(in_features, num_classes))
    return layers


def _spatial_net(arch, family, num_classes, local):
    _check_family(arch, family, SPATIAL_STACKS)
    channels, height, width = INPUT_SHAPES[family]
    stack, widths = SPATIAL_STACKS[family]
    layers = []
    for kernel, out_channels, stride in stack:
        pad_h, pad_w = same_padding(height, kernel, stride), same_padding(width, kernel, stride)
        if local:
            layer = LocallyConnected2d(channels, out_channels, height, width, kernel, stride,
                                       (pad_h, pad_w))
        else:
            layer = Conv2d(channels, out_channels, kernel, stride, (pad_h, pad_w))
        layers += [layer, nn.Tanh()]
        channels, height, width = out_channels, math.ceil(height / stride), math.ceil(width / stride)
    layers.append(nn.Flatten())
    return nn.Sequential(*_head(layers, channels * height * width, widths, num_classes))


def fully_connected(family, num_classes):
    _check_family("fc", family, FC_WIDTHS)
    layers = [nn.Flatten()]
    return nn.Sequential(*_head(layers, math.prod(INPUT_SHAPES[family]), FC_WIDTHS[family], num_classes))


def locally_connected(family, num_classes):
    return _spatial_net("lc", family, num_classes, local=True)


def convolutional(family, num_classes):
    return _spatial_net("conv", family, num_classes, local=False)


def parameter_counts(model, rule=None):
    """Per learnable layer: forward parameters (weights + biases) and stored
    feedback values, computed from the modules themselves. ``feedback_total``
    also counts DFA's feedback at transformer blocks' outputs (its
    ``placement="block"``), which belongs to no layer: ``block_feedback``."""
    from .blocks import block_feedback_points
    from .layers import feedback_layers
    rows = []
    for index, layer in enumerate(feedback_layers(model)):
        weight = layer.weight.numel()
        bias = layer.bias.numel() if layer.bias is not None else 0
        feedback = rule.feedback_count(layer) if rule is not None else 0
        rows.append({"layer": index, "kind": type(layer).__name__, "weight": weight, "bias": bias,
                     "forward": weight + bias, "feedback": feedback,
                     "shape": list(layer.weight.shape)})
    # Parameters no rule reaches (BatchNorm, ...) count as forward parameters too.
    exact = sum(p.numel() for p in model.parameters()) - sum(r["forward"] for r in rows)
    at_blocks = sum(point.feedback_weight.numel() for point in block_feedback_points(model)) \
        if rule is not None else 0
    counts = {"forward_total": sum(r["forward"] for r in rows) + exact,
              "feedback_total": sum(r["feedback"] for r in rows) + at_blocks, "per_layer": rows}
    if exact:
        counts["exact_gradient_params"] = exact
    if at_blocks:
        counts["block_feedback"] = at_blocks
    return counts
