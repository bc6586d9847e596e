"""A network seen as a chain of segments, for the rules that run their own
passes (target propagation, predictive coding, equilibrium propagation,
PEPITA, Forward-Forward).

Segment ``l`` is learnable layer ``l`` and the modules after it up to the next
learnable layer, so ``h_l = f_l(h_{l-1})``; ``h_0`` is the input after any
leading modules (the prefix, e.g. a Flatten) and ``h_L`` the logits.
"""
from torch import nn

from .layers import FeedbackLayer

RESHAPES = (nn.Flatten, nn.Unflatten)
# Elementwise maps and reshapes: what every chain rule accepts between layers.
ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Softplus, nn.Identity) + RESHAPES


class Segment:
    """A learnable layer and the modules after it, up to the next learnable layer."""

    def __init__(self, layer):
        self.layer = layer
        self.rest = []

    def __call__(self, h):
        h = self.layer(h)
        for module in self.rest:
            h = module(h)
        return h

    def activation(self, h):
        """The segment's modules after its layer, its reshapes left out."""
        for module in self.rest:
            if not isinstance(module, RESHAPES):
                h = module(h)
        return h


def split_chain(model, rule_name, allowed=ELEMENTWISE, minimum=2, verb="take"):
    """``(prefix modules, segments)`` of an ``nn.Sequential`` network whose
    modules between learnable layers are all instances of ``allowed``;
    otherwise one line naming the first module ``rule_name`` cannot take."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"{rule_name} needs an nn.Sequential network, got {type(model).__name__}: it runs its own "
                         f"passes segment by segment along a chain of layers and elementwise modules, which "
                         f"residual connections, attention and other branches are not")
    prefix, segments = [], []
    for index, module in enumerate(model):
        if isinstance(module, FeedbackLayer):
            segments.append(Segment(module))
        elif segments:
            if not isinstance(module, allowed):
                names = ", ".join(kind.__name__ for kind in allowed)
                raise ValueError(f"{rule_name} cannot {verb} module {index} ({type(module).__name__}) of the chain: "
                                 f"between learnable layers it takes {names}")
            segments[-1].rest.append(module)
        else:
            prefix.append(module)
    if len(segments) < minimum:
        raise ValueError(f"{rule_name} needs at least {minimum} learnable layers, the model has {len(segments)}")
    return prefix, segments


def run_prefix(prefix, x):
    for module in prefix:
        x = module(x)
    return x
