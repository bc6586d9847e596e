import math

import torch

from ..feedback import DirectRoute, ErrorHolder
from ..layers import glorot_bound, layer_label, traced_layer_inputs
from .base import LearningRule

# Works this module's rules cite (BibTeX fields).
NOKLAND2016 = {"type": "inproceedings", "author": "N{\\o}kland, Arild",
               "title": "Direct Feedback Alignment Provides Learning in Deep Neural Networks",
               "booktitle": "Advances in Neural Information Processing Systems 29 (NIPS)", "year": "2016",
               "eprint": "1609.01596", "archiveprefix": "arXiv"}


class DirectFeedbackAlignment(LearningRule):
    """Nokland 2016: the output error e reaches every hidden layer directly
    through a fixed random B_l (classes x layer size); the layer's activation
    derivative is applied by autograd as usual. The output layer captures e,
    and no layer computes the true input gradient."""

    name = "dfa"
    weight_transport = "no: the output error reaches each layer through a fixed random B_l"
    colour = "#d62728"
    title = "Direct feedback alignment"
    citations = {"nokland2016": NOKLAND2016}

    def attach(self, model, generator, input_shape=None):
        if input_shape is None:
            raise ValueError("DFA needs the model's input shape to size its feedback matrices")
        super().attach(model, generator, input_shape)
        self.holder = ErrorHolder()
        self.labels = {layer: layer_label(model, layer) for layer in self.layers}
        traced = traced_layer_inputs(model, input_shape)
        for layer in self.layers:
            if layer not in traced:
                raise ValueError(f"DFA sizes each layer's feedback by a forward pass of input_shape "
                                 f"{tuple(input_shape)}, which never runs {self.labels[layer]}")
        self.input_shapes = [traced[layer] for layer in self.layers]
        for layer, shape in zip(self.layers[1:], self.input_shapes[1:]):
            self._direct_feedback(layer, shape, generator)
        return self

    def _direct_feedback(self, layer, shape, generator):
        """B_l (classes x the layer's input size) and the route that sends e @ B_l down."""
        classes = self.output_layer.weight.shape[0]
        size = math.prod(shape)
        bound = glorot_bound(classes, size)
        weight = layer.weight.detach()
        # Drawn on the CPU generator, then given the layer weight's dtype and device.
        drawn = torch.empty(classes, size, dtype=weight.dtype).uniform_(-bound, bound, generator=generator)
        layer.register_buffer("feedback_weight", drawn.to(weight.device))
        layer.feedback_route = DirectRoute(self.holder, layer is self.output_layer, self.labels[layer], shape)

    def input_feedback(self, layer, generator):
        """The pixels get e @ B_0, B_0 drawn like every other B_l."""
        self._direct_feedback(layer, self.input_shapes[0], generator)
        layer.rule = self
        return True

    def backward_operand(self, layer, weight):
        return layer.feedback_weight, layer.feedback_route

    def describe(self):
        info = super().describe()
        info["output_layer"] = "captures e; sends e @ B to the last hidden layer (as FA)"
        return info
