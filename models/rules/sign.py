"""Sign-symmetry rules: B = sign(W) * M, differing only in the magnitudes M."""
import math

import torch

from .base import LearningRule, uniform_like_weight


class _SignSymmetry(LearningRule):
    citation_keys = ("liao2016", "moskovitz2018")

    def magnitudes(self, layer):
        raise NotImplementedError

    def backward_operand(self, layer, weight):
        # copysign(M, W) == sign(W) * M for every non-zero W, in one pass.
        return torch.copysign(self.magnitudes(layer).expand_as(weight), weight.detach()), None

    def alignment_matrix(self, layer):
        if layer.rule is not self:
            return None
        return self.backward_operand(layer, layer.weight)[0]


class UniformSignSymmetry(_SignSymmetry):
    """uSF: sign(W) times one fixed scale per layer, the std of its init."""

    name = "usf"
    title = "Sign symmetry (uSF)"
    citation_keys = ("liao2016", "xiao2018")

    def init_layer(self, layer, generator):
        std = layer.init_bound() / math.sqrt(3.0)  # std of U(-b, b)
        layer.register_buffer("feedback_scale", torch.tensor(std))

    def magnitudes(self, layer):
        return layer.feedback_scale


class FixedRandomSignSymmetry(_SignSymmetry):
    """frSF: sign(W) with fixed random magnitudes |R|, R drawn like W."""

    name = "frsf"
    title = "Sign symmetry, fixed random magnitudes (frSF)"

    def init_layer(self, layer, generator):
        layer.register_buffer("feedback_magnitude", uniform_like_weight(layer, generator).abs_())

    def magnitudes(self, layer):
        return layer.feedback_magnitude


class BatchRandomSignSymmetry(_SignSymmetry):
    """brSF: sign(W) with magnitudes |R| redrawn for every training step."""

    name = "brsf"
    title = "Sign symmetry, batchwise random magnitudes (brSF)"

    def attach(self, model, generator, input_shape=None):
        super().attach(model, generator, input_shape)
        self.make_generator(generator, self.layers[0].weight.device)
        return self

    def magnitudes(self, layer):
        bound = layer.init_bound()
        return torch.empty_like(layer.weight.detach()).uniform_(0.0, bound, generator=self.generator)
