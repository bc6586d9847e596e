from ..layers import feedback_layers
from .base import LearningRule

# Works this module's rules cite (BibTeX fields).
RUMELHART1986 = {"type": "article", "author": "Rumelhart, David E. and Hinton, Geoffrey E. and Williams, Ronald J.",
                 "title": "Learning representations by back-propagating errors", "journal": "Nature",
                 "volume": "323", "pages": "533--536", "year": "1986", "doi": "10.1038/323533a0"}


class Backprop(LearningRule):
    """Exact gradients: every layer keeps its native (BP) backward."""

    name = "bp"
    weight_transport = "yes: the error goes down through W^T (the exact gradient)"
    colour = "#000000"
    title = "Backpropagation"
    citations = {"rumelhart1986": RUMELHART1986}

    def attach(self, model, generator, input_shape=None):
        # Nothing to add: layers without a rule run exactly.
        self.layers = feedback_layers(model)
        return self

    def describe(self):
        return {"name": self.name, "options": {}, "output_layer": "exact gradient"}
