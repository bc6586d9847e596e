from .base import LearningRule


class Backprop(LearningRule):
    """Exact gradients: every layer keeps its native (BP) backward."""

    name = "bp"
    title = "Backpropagation"
    citation_keys = ("rumelhart1986",)

    def attach(self, model, generator, input_shape=None):
        return self  # nothing to add: layers without a rule run exactly

    def describe(self):
        return {"name": self.name, "options": {}, "output_layer": "exact gradient"}
