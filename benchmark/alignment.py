"""How far a rule's weight updates are from backprop's, per layer and epoch.

For every learnable layer, on one fixed probe batch: the angle between W and
the rule's backward matrix B, the angle between the rule's weight update and
the exact BP gradient, |B| / |W|, and any metrics of the rule's own (target
propagation: inverse reconstruction error, target distance). For each
transformer block, the same angles and ratio per part: attention's Q, K, V
and output projections and the MLP's two layers.
"""
import math

import torch
import torch.nn.functional as F

from models import feedback_layers
from models.attention import AttentionPart, MultiheadAttention
from models.blocks import transformer_blocks
from models.layers import FeedbackLayer


def angle_degrees(a, b):
    """Degrees between two tensors seen as vectors; None when either is zero."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    denom = a.norm() * b.norm()
    if denom == 0:
        return None
    return math.degrees(math.acos(float((a @ b / denom).clamp(-1, 1))))


def exact_gradients(model, x, y, rule):
    """BP's weight gradients of the mean cross-entropy of what the network
    computes at test time (``rule.differentiable_forward``): the feed-forward
    pass with every rule detached, or, for a rule whose prediction is a
    relaxation (EP), backprop through its steps, not the feed-forward net it
    never runs."""
    weights = [layer.weight for layer in feedback_layers(model)]
    logits = rule.differentiable_forward(model, x, weights=True)
    # EP with fewer steps than layers leaves the lowest weights out of the read-out: gradient 0
    grads = torch.autograd.grad(F.cross_entropy(logits, y), weights, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]


def alignment_metrics(model, rule, x, y):
    """One row per learnable layer (see the module's docstring) on the batch ``(x, y)``."""
    return epoch_alignment(model, rule, x, y)["layers"]


def epoch_alignment(model, rule, x, y):
    """What a record keeps of one epoch's alignment on the batch ``(x, y)``:
    ``layers``, one row per learnable layer, and, for a model with transformer
    blocks, ``parts``: the same angles and ratio on each part of each block
    (:func:`block_parts`), a packed projection's q, k and v being its rows."""
    layers = feedback_layers(model)
    rule_updates = rule.weight_updates(model, x, y)
    bp_grads = exact_gradients(model, x, y, rule)
    extra = rule.layer_metrics(model, x, y) or [{} for _ in layers]
    with torch.no_grad():
        backwards = [rule.alignment_matrix(layer) for layer in layers]
        rows = [{"layer": index, **_angles(layer.weight, backward, g_rule, g_bp), **extra[index]}
                for index, (layer, backward, g_rule, g_bp) in enumerate(zip(layers, backwards, rule_updates,
                                                                             bp_grads))]
        alignment = {"layers": rows}
        parts = block_parts(model)
        if parts:  # only then: records of nets without blocks stay as they were
            where = {layer: index for index, layer in enumerate(layers)}
            alignment["parts"] = []
            for block, name, part in parts:
                index = where[part.layer]
                backward = None if backwards[index] is None else part.of(backwards[index])
                alignment["parts"].append({"block": block, "part": name, "layer": index, **_angles(
                    part.of(part.layer.weight), backward, part.of(rule_updates[index]), part.of(bp_grads[index]))})
    return alignment


def _angles(weight, backward, update, bp_grad):
    """The W-B angle, the update-vs-BP angle and |B| / |W| of one layer, or of the same rows of each."""
    return {"wb_angle": angle_degrees(weight, backward) if backward is not None else None,
            "update_angle": angle_degrees(update, bp_grad),
            "norm_ratio": float(backward.norm() / weight.norm()) if backward is not None else None}


def block_parts(model):
    """``(block index, part name, AttentionPart)`` for each transformer block
    (``models.blocks``), in order: its attention's ``q``, ``k``, ``v``, ``out``
    (``name.q``, ... where a block has several attentions) and its other
    learnable layers: ``mlp_in`` and ``mlp_out`` where there are two (a ViT's
    or nn.TransformerEncoderLayer's MLP), else their names in the block."""
    parts = []
    for block_index, block in enumerate(transformer_blocks(model).values()):
        attentions = {name: m for name, m in block.named_modules() if isinstance(m, MultiheadAttention)}
        in_attention = set()
        for attention_name, attention in attentions.items():
            for name, part in attention.parts().items():
                parts.append((block_index, name if len(attentions) == 1 else f"{attention_name}.{name}", part))
                in_attention.add(part.layer)
        others = {name: m for name, m in block.named_modules()
                  if isinstance(m, FeedbackLayer) and m not in in_attention}
        names = ["mlp_in", "mlp_out"] if len(others) == 2 else list(others)
        parts += [(block_index, name, AttentionPart(layer, None)) for name, layer in zip(names, others.values())]
    return parts
