"""Base class of a learning rule: how each layer's backward operand is chosen."""
import torch

from ..layers import feedback_layers


class LearningRule:
    """A learning rule decides what each layer sends down in the backward pass.

    ``attach(model, ...)`` gives every learnable layer except the first (whose
    input needs no gradient, so it never sends an error down) its feedback
    state as *buffers* (never parameters: the optimiser does not see them and
    parameter counts stay honest) and points the layer at the rule. The
    output layer follows the rule like any other layer, as in the papers.
    """

    name = ""
    title = ""
    citation_keys = ()
    defaults = {}
    # Per-step hooks are only called for rules that define them.
    has_step_hooks = False

    def __init__(self, **options):
        unknown = set(options) - set(self.defaults)
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} for rule "
                             f"{self.name!r}; allowed: {allowed}")
        typed = {}
        for key, value in options.items():
            try:
                typed[key] = type(self.defaults[key])(value)
            except (TypeError, ValueError):
                raise ValueError(f"rule {self.name!r} option {key}={value!r} is not a "
                                 f"{type(self.defaults[key]).__name__}") from None
        self.options = {**self.defaults, **typed}
        self.layers = []

    # set-up ------------------------------------------------------------------
    def attach(self, model, generator, input_shape=None):
        """Register feedback buffers (drawn from ``generator``) and hook the rule in."""
        layers = feedback_layers(model)
        if not layers:
            raise ValueError("the model has no learnable feedback layers to attach a rule to")
        self.layers = layers
        self.output_layer = layers[-1]
        for layer in layers[1:]:
            self.init_layer(layer, generator)
            layer.rule = self
        return self

    def init_layer(self, layer, generator):
        """Create this rule's buffers on ``layer``."""

    # training ------------------------------------------------------------------
    def backward_operand(self, layer, weight):
        """Return ``(B, route)`` for the layer's next backward pass."""
        raise NotImplementedError

    def before_step(self):
        """Called before every optimiser step (rules with ``has_step_hooks``)."""

    def after_step(self):
        """Called after every optimiser step (rules with ``has_step_hooks``)."""

    # reporting -----------------------------------------------------------------
    def alignment_matrix(self, layer):
        """The matrix used in place of W (same shape as W), for the W-B angle;
        None where the rule has none (BP, DFA, the first layer)."""
        return None

    def feedback_count(self, layer):
        """Number of stored feedback values on ``layer`` (its feedback buffers)."""
        return sum(b.numel() for name, b in layer.named_buffers(recurse=False)
                   if name.startswith("feedback_"))

    def describe(self):
        return {"name": self.name, "options": dict(self.options),
                "first_layer": "exact weight gradient; sends no error down",
                "output_layer": "follows the rule"}


def uniform_like_weight(layer, generator):
    """Uniform in the layer's own Glorot range, independent of W, with W's
    shape and memory layout (so LC feedback keeps the LC locality)."""
    bound = layer.init_bound()
    return torch.empty_like(layer.weight.detach()).uniform_(-bound, bound, generator=generator)
