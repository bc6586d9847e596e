"""Transformer blocks, and DFA's feedback point at a block's output (its
``placement="block"``, Launay et al. 2020's "macro" DFA).

A block is an ``nn.TransformerEncoderLayer``, torchvision's ViT
``EncoderBlock`` or a module whose class sets ``dfa_block = True`` (biobench's
own ``vit``); only the outermost of nested blocks counts. A block's output is batch first unless the block (or, for
PyTorch's encoder layer, its ``self_attn``) says ``batch_first = False``.
"""
import math
import sys

import torch
from torch import nn

from .errors import ConfigError
from .layers import FeedbackPoint


def is_block(module):
    return (isinstance(module, nn.TransformerEncoderLayer) or getattr(type(module), "dfa_block", False)
            or _is_torchvision_encoder_block(module))


def _is_torchvision_encoder_block(module):
    # Looked up, not imported: no instance exists unless torchvision's ViT module was imported.
    vision_transformer = sys.modules.get("torchvision.models.vision_transformer")
    return vision_transformer is not None and isinstance(module, vision_transformer.EncoderBlock)


def transformer_blocks(model):
    """``{qualified name: block}`` of the model's outermost blocks, in registration order."""
    blocks = {}
    for name, module in model.named_modules():
        if any(not outer or name.startswith(outer + ".") for outer in blocks):  # inside one found
            continue
        if is_block(module):
            blocks[name] = module
    return blocks


def block_batch_dim(block):
    """0 for a batch-first block, 1 for a sequence-first one."""
    attention = getattr(block, "self_attn", None)
    return 0 if getattr(block, "batch_first", getattr(attention, "batch_first", True)) else 1


class BlockFeedback(FeedbackPoint):
    """DFA's feedback point at a block's output, a child ``dfa_feedback`` of the
    block: the gradient there becomes ``e @ B`` (``feedback_weight``: classes x
    the output's width) on every token, divided by sqrt(tokens), whatever
    reached it from above; BP inside the block carries it down. TinyDFA
    (Launay et al.'s ``dfa.py``, ``DFABackend.backward``) broadcasts a
    per-sample signal over a per-token feedback point the same way: repeated
    over the extra rows and divided by the square root of their count, so the
    signal's norm per sample does not grow with the sequence length. Off
    inside ``detached_rules`` (BP's reference of the update angle, the true
    gradient of the robustness attacks)."""

    def __init__(self, feedback_weight, holder, label, batch_dim):
        super().__init__()
        self.register_buffer("feedback_weight", feedback_weight)
        self.holder, self.label, self.batch_dim = holder, label, batch_dim

    def attach_to(self, block):
        block.dfa_feedback = self
        # A bound method: a deep copy of the model hooks its own point.
        block.register_forward_hook(self.hook_output)

    def hook_output(self, block, args, output):
        if not (self.enabled and torch.is_grad_enabled() and isinstance(output, torch.Tensor)
                and output.requires_grad):
            return
        if output.dim() < 2 or self.batch_dim >= output.dim() - 1:
            raise ConfigError(f"DFA placement='block': {self.label} gives an output of shape {tuple(output.shape)}, "
                              f"not (batch, tokens, width) with the batch in dimension {self.batch_dim}")
        output.register_hook(self.output_gradient)

    def output_gradient(self, grad):
        error = self.holder.error
        if error is None:
            raise RuntimeError(self.holder.missing)
        if error.shape[0] != grad.shape[self.batch_dim]:
            raise ConfigError(f"DFA placement='block': {self.label} has a batch of {grad.shape[self.batch_dim]} "
                              f"but the network's output error {error.shape[0]} rows")
        signal = error.mm(self.feedback_weight)  # (batch, width)
        shape = [1] * grad.dim()
        shape[self.batch_dim], shape[-1] = signal.shape
        tokens = grad.numel() // signal.numel()
        return (signal / math.sqrt(tokens)).view(shape).expand_as(grad).contiguous()


def block_feedback_points(model):
    return [module for module in model.modules() if isinstance(module, BlockFeedback)]


def remove_block_feedback(model):
    """Undo DFA's block placement: no feedback point, no hook."""
    for block in [m for m in model.modules() if isinstance(m._modules.get("dfa_feedback"), BlockFeedback)]:
        point = block.dfa_feedback
        for key, hook in list(block._forward_hooks.items()):
            if getattr(hook, "__self__", None) is point:
                del block._forward_hooks[key]
        del block.dfa_feedback
