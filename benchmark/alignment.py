"""How far a rule's weight updates are from backprop's, per layer and epoch.

For every learnable layer, on one fixed probe batch: the angle between W and
the rule's backward matrix B, the angle between the rule's weight update and
the exact BP gradient, |B| / |W|, and any metrics of the rule's own (target
propagation: inverse reconstruction error, target distance).
"""
import math

import torch
import torch.nn.functional as F

from models import feedback_layers
from models.layers import detached_rules


def angle_degrees(a, b):
    """Degrees between two tensors seen as vectors; None when either is zero."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    denom = a.norm() * b.norm()
    if denom == 0:
        return None
    return math.degrees(math.acos(float((a @ b / denom).clamp(-1, 1))))


def exact_gradients(model, x, y, rule=None):
    """BP's weight gradients of the mean cross-entropy of what the network
    computes at test time: the feed-forward pass with every rule detached, or,
    for a rule whose prediction is a relaxation (EP), backprop through its
    steps (``differentiable_forward``), not the feed-forward net it never runs."""
    weights = [layer.weight for layer in feedback_layers(model)]
    if hasattr(rule, "differentiable_forward"):
        # fewer steps than layers leave the lowest weights out of the read-out: gradient 0
        grads = torch.autograd.grad(F.cross_entropy(rule.differentiable_forward(x, weights=True), y), weights,
                                    allow_unused=True)
        return [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]
    with detached_rules(model):
        return torch.autograd.grad(F.cross_entropy(model(x), y), weights)


def alignment_metrics(model, rule, x, y):
    """One row per learnable layer (see the module's docstring) on the batch ``(x, y)``."""
    layers = feedback_layers(model)
    rule_updates = rule.weight_updates(model, x, y)
    bp_grads = exact_gradients(model, x, y, rule)
    extra = rule.layer_metrics(model, x, y) or [{} for _ in layers]
    rows = []
    with torch.no_grad():
        for index, (layer, g_rule, g_bp) in enumerate(zip(layers, rule_updates, bp_grads)):
            backward = rule.alignment_matrix(layer)
            rows.append({
                "layer": index,
                "wb_angle": angle_degrees(layer.weight, backward) if backward is not None else None,
                "update_angle": angle_degrees(g_rule, g_bp),
                "norm_ratio": (float(backward.norm() / layer.weight.norm())
                               if backward is not None else None),
                **extra[index],
            })
    return rows
