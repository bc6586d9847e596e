from ..layers import feedback_layers
from .base import LearningRule


class Backprop(LearningRule):
    """Exact gradients: every layer keeps its native (BP) backward."""

    name = "bp"
    title = "Backpropagation"
    citation_keys = ("rumelhart1986",)

    def attach(self, model, generator, input_shape=None):
        # Nothing to add: layers without a rule run exactly.
        self.layers = feedback_layers(model)
        return self

    def describe(self):
        return {"name": self.name, "options": {}, "output_layer": "exact gradient"}
