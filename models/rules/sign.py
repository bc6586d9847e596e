"""Sign-symmetry rules: B = sign(W) * M, differing only in the magnitudes M."""
import math

import torch

from .base import FEEDBACK_INITS, LearningRule, uniform_like_weight

# Works this module's rules cite (BibTeX fields).
LIAO2016 = {"type": "inproceedings", "author": "Liao, Qianli and Leibo, Joel Z. and Poggio, Tomaso",
            "title": "How Important Is Weight Symmetry in Backpropagation?",
            "booktitle": "Proceedings of the Thirtieth AAAI Conference on Artificial Intelligence",
            "year": "2016", "eprint": "1510.05067", "archiveprefix": "arXiv"}

XIAO2018 = {"type": "misc", "author": "Xiao, Will and Chen, Honglin and Liao, Qianli and Poggio, Tomaso",
            "title": "Biologically-plausible learning algorithms can scale to large datasets",
            "year": "2018", "eprint": "1811.03567", "archiveprefix": "arXiv"}

MOSKOVITZ2018 = {"type": "misc", "author": "Moskovitz, Theodore H. and Litwin-Kumar, Ashok and Abbott, L. F.",
                 "title": "Feedback alignment in deep convolutional networks", "year": "2018",
                 "eprint": "1812.06488", "archiveprefix": "arXiv"}


class _SignSymmetry(LearningRule):
    weight_transport = "in part: the signs of W go backwards, not their magnitudes"
    citations = {"liao2016": LIAO2016, "moskovitz2018": MOSKOVITZ2018}

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
    colour = "#2ca02c"
    title = "Sign symmetry (uSF)"
    citations = {"liao2016": LIAO2016, "xiao2018": XIAO2018}

    def init_layer(self, layer, generator):
        std = layer.init_bound() / math.sqrt(3.0)  # std of U(-b, b)
        weight = layer.weight
        layer.register_buffer("feedback_scale", torch.tensor(std, dtype=weight.dtype, device=weight.device))

    def magnitudes(self, layer):
        return layer.feedback_scale


class FixedRandomSignSymmetry(_SignSymmetry):
    """frSF: sign(W) with fixed random magnitudes |R|, R drawn like W."""

    name = "frsf"
    colour = "#9467bd"
    defaults = {"feedback_init": "xavier"}
    choices = {"feedback_init": FEEDBACK_INITS}
    title = "Sign symmetry, fixed random magnitudes (frSF)"

    def init_layer(self, layer, generator):
        scheme = self.options["feedback_init"]
        layer.register_buffer("feedback_magnitude", uniform_like_weight(layer, generator, scheme).abs_())

    def magnitudes(self, layer):
        return layer.feedback_magnitude


class BatchRandomSignSymmetry(_SignSymmetry):
    """brSF: sign(W) with magnitudes |R| redrawn for every training step."""

    name = "brsf"
    colour = "#8c564b"
    title = "Sign symmetry, batchwise random magnitudes (brSF)"

    def attach(self, model, generator, input_shape=None):
        super().attach(model, generator, input_shape)
        self.make_generator(generator, self.layers[0].weight.device)
        return self

    def magnitudes(self, layer):
        bound = layer.init_bound()
        return torch.empty_like(layer.weight.detach()).uniform_(0.0, bound, generator=self.generator)
