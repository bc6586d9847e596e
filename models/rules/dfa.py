import math

import torch

from ..blocks import BlockFeedback, block_batch_dim, transformer_blocks
from ..errors import ConfigError
from ..feedback import DirectRoute, ErrorHolder
from ..layers import FeedbackLayer, glorot_bound, layer_label, traced_layer_inputs
from .base import LearningRule

# Works this module's rules cite (BibTeX fields).
NOKLAND2016 = {"type": "inproceedings", "author": "N{\\o}kland, Arild",
               "title": "Direct Feedback Alignment Provides Learning in Deep Neural Networks",
               "booktitle": "Advances in Neural Information Processing Systems 29 (NIPS)", "year": "2016",
               "eprint": "1609.01596", "archiveprefix": "arXiv"}

LAUNAY2020 = {"type": "inproceedings",
              "author": "Launay, Julien and Poli, Iacopo and Boniface, François and Krzakala, Florent",
              "title": "Direct Feedback Alignment Scales to Modern Deep Learning Tasks and Architectures",
              "booktitle": "Advances in Neural Information Processing Systems 33 (NeurIPS)", "year": "2020",
              "eprint": "2006.12878", "archiveprefix": "arXiv"}


class DirectFeedbackAlignment(LearningRule):
    """Nokland 2016: the output error e reaches every hidden layer directly
    through a fixed random B_l (classes x layer size); the layer's activation
    derivative is applied by autograd as usual. The output layer captures e,
    and no layer computes the true input gradient.

    ``placement="block"`` (Launay et al. 2020, for transformers) puts the
    feedback at each transformer block's output instead (``models.blocks``):
    e @ B_b on every token, BP inside the block; layers outside blocks keep
    their own B_l."""

    name = "dfa"
    weight_transport = "no: the output error reaches each layer through a fixed random B_l"
    colour = "#d62728"
    title = "Direct feedback alignment"
    citations = {"nokland2016": NOKLAND2016, "launay2020": LAUNAY2020}
    defaults = {"placement": "layer"}
    choices = {"placement": ("layer", "block")}
    option_sources = {"placement": "layer: Nokland 2016 (every layer gets e through its own B_l); block: Launay "
                                   "et al. 2020, code (transformer.py, run_experiments.sh: --dfa simple, one "
                                   "feedback point per encoder block's output, BP inside the block)"}

    def attach(self, model, generator, input_shape=None):
        if input_shape is None:
            raise ValueError("DFA needs the model's input shape to size its feedback matrices")
        blocks = transformer_blocks(model)
        by_block = self.placement() == "block"
        if by_block and not blocks:
            raise ConfigError(f"DFA placement='block' sends the error to each transformer block's output, but "
                              f"{type(model).__name__} has none (a block: nn.TransformerEncoderLayer, torchvision's "
                              f"ViT EncoderBlock, or a module whose class sets dfa_block = True); use "
                              f"placement='layer'")
        if not by_block:
            _refuse_sequence_first_layers(blocks)
        super().attach(model, generator, input_shape)
        self.holder = ErrorHolder()
        self.labels = {layer: layer_label(model, layer) for layer in self.layers}
        outputs = {}
        hooks = [block.register_forward_hook(lambda block, args, out: outputs.setdefault(block, out))
                 for block in blocks.values()] if by_block else []
        try:
            traced = traced_layer_inputs(model, input_shape)
        finally:
            for hook in hooks:
                hook.remove()
        never_run = [self.labels[layer] for layer in self.layers if layer not in traced]
        never_run += [f"block {name!r}" for name, block in blocks.items() if by_block and block not in outputs]
        if never_run:
            raise ValueError(f"DFA sizes each layer's feedback by a forward pass of input_shape "
                             f"{tuple(input_shape)}, which never runs {never_run[0]}")
        self.input_shapes = [traced[layer] for layer in self.layers]
        inside = {m for block in blocks.values() for m in block.modules() if isinstance(m, FeedbackLayer)} \
            if by_block else set()
        if self.output_layer in inside:
            raise ConfigError(f"DFA placement='block' needs the output layer outside the blocks, but "
                              f"{self.labels[self.output_layer]} is inside one; use placement='layer'")
        for layer, shape in zip(self.layers[1:], self.input_shapes[1:]):
            if layer in inside:
                layer.rule = None  # BP inside a block, from the error at its output
            else:
                self._direct_feedback(layer, shape, generator)
        for name, block in blocks.items() if by_block else ():
            self._block_feedback(name, block, outputs[block], generator)
        return self

    def placement(self):
        """Where the error arrives; "layer" for a subclass without the option (DRTP)."""
        return self.options.get("placement", "layer")

    def _drawn(self, size, like, generator):
        """A fixed random B (classes x size) in its Glorot bound, drawn on the CPU
        generator, then given ``like``'s dtype and device."""
        classes = self.output_layer.weight.shape[0]
        bound = glorot_bound(classes, size)
        drawn = torch.empty(classes, size, dtype=like.dtype).uniform_(-bound, bound, generator=generator)
        return drawn.to(like.device)

    def _direct_feedback(self, layer, shape, generator):
        """B_l (classes x the layer's input size) and the route that sends e @ B_l down."""
        layer.register_buffer("feedback_weight", self._drawn(math.prod(shape), layer.weight.detach(), generator))
        layer.feedback_route = DirectRoute(self.holder, layer is self.output_layer, self.labels[layer], shape)

    def _block_feedback(self, name, block, output, generator):
        """B_b (classes x the block output's width) at the block's output."""
        label = f"block {name!r} ({type(block).__name__})"
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"DFA placement='block': {label} returns a {type(output).__name__}, not a tensor")
        drawn = self._drawn(output.shape[-1], output, generator)
        BlockFeedback(drawn, self.holder, label, block_batch_dim(block)).attach_to(block)

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
        if self.placement() == "block":
            info["blocks"] = "e @ B_b at each transformer block's output, on every token / sqrt(tokens); BP inside"
        return info


def _refuse_sequence_first_layers(blocks):
    """The layer placement's e @ B_l is per sample, batch first: a sequence-first
    block's own layers would get it along the wrong dimension."""
    for name, block in blocks.items():
        inner = [m for m in block.modules() if isinstance(m, FeedbackLayer)]
        if block_batch_dim(block) != 0 and inner:
            raise ConfigError(f"DFA placement='layer' sends e @ B_l to each layer's input with the batch first, "
                              f"but {name!r} ({type(block).__name__}) runs its layers sequence first; build it "
                              f"with batch_first=True or use placement='block'")
