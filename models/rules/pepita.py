"""PEPITA: error-driven input modulation (Dellaferrera & Kreiman 2022)."""
import math

import torch
import torch.nn.functional as F

from ..chain import run_prefix
from .base import LearningRule
from .ff import ForwardForward

# Works this module's rules cite (BibTeX fields).
DELLAFERRERA2022 = {"type": "inproceedings", "author": "Dellaferrera, Giorgia and Kreiman, Gabriel",
                    "title": "Error-driven Input Modulation: Solving the Credit Assignment Problem without a "
                             "Backward Pass",
                    "booktitle": "Proceedings of the 39th International Conference on Machine Learning (ICML)",
                    "series": "Proceedings of Machine Learning Research", "volume": "162", "pages": "4937--4955",
                    "year": "2022", "eprint": "2201.11665", "archiveprefix": "arXiv"}
SRINIVASAN2023 = {"type": "misc",
                  "author": "Srinivasan, Ravi Francesco and Mignacco, Francesca and Sorbaro, Martino and "
                            "Refinetti, Maria and Cooper, Avi and Kreiman, Gabriel and Dellaferrera, Giorgia",
                  "title": "Forward Learning with Top-Down Feedback: Empirical and Analytical Characterization",
                  "year": "2023", "eprint": "2302.05440", "archiveprefix": "arXiv"}


class Pepita(LearningRule):
    """Two forward passes, no backward pass. Pass 1 gives the error
    ``e = softmax(h_L) - y*``; pass 2 runs on the input modulated by it,
    ``x~ = x + e F`` (``F``: fixed random, classes x input size). Each hidden
    layer learns from the difference of its two activities (after the
    activation, no derivative): gradient ``(h_l - h~_l)`` through the layer's
    weight map at its pass-2 input (``h~_{l-1}``, ``x~`` for the first layer),
    i.e. ``(h_l - h~_l) h~_{l-1}^T`` for a dense layer; the output layer from
    ``e~ = softmax(h~_L) - y*`` (``error_pass=second``, Dellaferrera & Kreiman's
    code) or ``e`` (``first``, Srinivasan et al.'s). Averaged over the batch.
    Conv layers sum over output positions (their weight map's adjoint, where
    Dellaferrera & Kreiman divide by the number of positions: a scale only),
    LC layers keep each position's own outer product (our reading; not
    published). Biases learn the same signal (the paper's nets have none).

    ``dropout=p`` drops each hidden unit with probability ``p`` (inverted
    dropout, kept units scaled by ``1 / (1 - p)``) with one mask per hidden
    layer shared by both passes, as both reference codes do (Dellaferrera &
    Kreiman: ``p = 0.1``); the masks come from the rule's own checkpointed
    stream, the probe batch's from a fixed one. Evaluation never drops."""
    needs_chain = True
    name = "pepita"
    colour = "#8c6d31"
    title = "PEPITA (error-driven input modulation)"
    citations = {"dellaferrera2022": DELLAFERRERA2022, "srinivasan2023": SRINIVASAN2023}
    weight_transport = "no: the error reaches the input through a fixed random F; every layer learns forward"
    defaults = {"feedback_scale": 0.05, "error_pass": "second", "dropout": 0.0}
    choices = {"error_pass": ("second", "first")}
    option_sources = {"feedback_scale": "Dellaferrera & Kreiman 2022 code (Bstd 0.05 x the He-uniform bound "
                                        "sqrt(6 / input size))",
                      "error_pass": "Dellaferrera & Kreiman 2022 code (the output learns from pass 2's error)",
                      "dropout": "ours: none, the committed results' setting (both reference codes use dropout, "
                                 "one mask shared by both passes; Dellaferrera & Kreiman 0.1)"}
    search_space = {"feedback_scale": "log:0.01:0.5"}

    positive_options = ("feedback_scale",)
    probe_generator = ForwardForward.probe_generator

    def __init__(self, **options):
        super().__init__(**options)
        dropout = self.options["dropout"]
        if not (math.isfinite(dropout) and 0 <= dropout < 1):
            raise ValueError(f"rule {self.name!r} option dropout={dropout!r} must be in [0, 1)")

    def attach(self, model, generator, input_shape=None):
        if input_shape is None:
            raise ValueError("pepita needs the model's input shape to size its input feedback")
        self.attach_chain(model)
        first = self.layers[0]
        param = first.weight
        size = self.input_size(input_shape)
        classes = self.output_layer.weight.shape[0]
        bound = self.options["feedback_scale"] * math.sqrt(6.0 / size)
        drawn = torch.empty(classes, size, dtype=param.dtype).uniform_(-bound, bound, generator=generator)
        # F lives on the first layer, whose input it modulates (counted as its feedback).
        first.register_buffer("feedback_weight", drawn.to(param.device))
        if self.options["dropout"]:  # without dropout nothing is drawn: the run's other streams stay as they were
            self.make_generator(generator, param.device)
        return self

    def passes(self, x, y, masks_from=None):
        """``(h, layer outputs of pass 2 with graphs to their weights,
        cotangents)``; dropout masks from ``masks_from`` (a generator), else
        the rule's own stream."""
        keep = 1.0 - self.options["dropout"]
        masks = []  # one per hidden layer, for both passes
        with torch.no_grad():
            h = [run_prefix(self.prefix, x)]
            for level, segment in enumerate(self.segments, start=1):
                h.append(segment(h[-1]))
                if keep < 1 and level < len(self.segments):
                    drawn = torch.empty_like(h[-1]).bernoulli_(keep, generator=masks_from or self.generator)
                    masks.append(drawn / keep)
                    h[-1] = h[-1] * masks[-1]
            onehot = F.one_hot(y, h[-1].shape[1]).to(h[-1].dtype)
            error = F.softmax(h[-1], dim=1) - onehot
            modulated = h[0] + (error @ self.layers[0].feedback_weight).view_as(h[0])
        outputs, cotangents, below = [], [], modulated
        for level, segment in enumerate(self.segments, start=1):
            out = segment.layer(below.detach())
            with torch.no_grad():
                above = segment.activation(out).reshape(h[level].shape)
                if level <= len(masks):
                    above = above * masks[level - 1]
                if level < len(self.segments):
                    signal = h[level] - above
                else:
                    signal = (F.softmax(above, dim=1) - onehot) if self.options["error_pass"] == "second" else error
            outputs.append(out)
            cotangents.append(signal.reshape(out.shape) / len(y))
            below = above
        return h, outputs, cotangents

    def train_step(self, model, x, y, optimizer):
        h, outputs, cotangents = self.passes(x, y)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(outputs, cotangents)
        optimizer.step()
        self.decay_weights()
        return F.cross_entropy(h[-1], y), h[-1]

    def weight_updates(self, model, x, y):
        _, outputs, cotangents = self.passes(x, y, self.probe_generator(x.device))
        weights = [layer.weight for layer in self.layers]
        return [torch.autograd.grad(out, weight, cot)[0] for out, weight, cot in zip(outputs, weights, cotangents)]

    def alignment_matrix(self, layer):
        return None

    def describe(self):
        info = super().describe()
        info.update(first_layer="learns from h_1 - h~_1 at the modulated input x~",
                    output_layer=f"learns from the error of pass {1 if self.options['error_pass'] == 'first' else 2}",
                    feedback="F (classes x input size) on the first layer, fixed random")
        return info
