"""biobench models: layers, learning rules and the Bartunov et al. 2018 networks."""
from .lc import LocallyConnected2d
from .layers import Conv2d, Linear, feedback_layers
from .networks import ARCHS, build_network, parameter_counts
from .rules import RULES, make_rule

__all__ = ["LocallyConnected2d", "Conv2d", "Linear", "feedback_layers", "ARCHS",
           "build_network", "parameter_counts", "RULES", "make_rule"]
