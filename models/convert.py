"""``convert``: any PyTorch model, trained by any rule of the feedback-alignment
family (or BP), with its own parameters.

Every ``nn.Linear`` and ``nn.Conv2d`` of the model becomes biobench's layer of
that kind *holding the same Parameter objects* under the same names, so the
values, the optimiser's view and the ``state_dict`` keys of the plain model
stay as they were (the rule adds its feedback as buffers named ``feedback_*``,
drawn from a seed; a plain model's checkpoint loads into the converted one,
which keeps its drawn feedback, and :func:`plain_state_dict` gives back
exactly the plain model's keys). ``LocallyConnected2d`` layers are already
biobench's. The forward code is untouched, so residual connections,
BatchNorm, pooling, dropout and ``torch.flatten`` work as written; modules
with parameters of other kinds (BatchNorm, LayerNorm, embeddings, recurrent
layers) keep exact gradients, and convert says which in one line (``strict``
refuses them instead).
"""
import sys

import torch
from torch import nn

from .layers import Conv2d, FeedbackLayer, Linear, feedback_layers
from .rules import RULES, make_rule

# Rules convert supports on any graph; target propagation needs a chain (see below).
GRAPH_RULES = ("bp", "fa", "dfa", "usf", "brsf", "frsf", "kp")


def _swapped(module):
    """biobench's layer for ``module`` (sharing its Parameters), or None when
    it is not a kind biobench converts."""
    if isinstance(module, FeedbackLayer):
        return None
    if type(module) is nn.Linear:
        with torch.device("meta"):  # no second copy of the weights, even briefly
            layer = Linear(module.in_features, module.out_features, bias=module.bias is not None)
    elif type(module) is nn.Conv2d:
        with torch.device("meta"):
            layer = Conv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                           padding=module.padding, bias=module.bias is not None, dilation=module.dilation,
                           groups=module.groups, padding_mode=module.padding_mode)
    else:
        return None
    layer.weight = module.weight
    layer.bias = module.bias
    layer.train(module.training)
    return layer


def swap_layers(model):
    """Replace, in place, every ``nn.Linear``/``nn.Conv2d`` of ``model`` by
    biobench's layer with the same Parameters; returns ``model`` (which may
    itself be swapped when it is a bare layer)."""
    root = _swapped(model)
    if root is not None:
        return root
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            layer = _swapped(child)
            if layer is not None:
                setattr(parent, name, layer)
    return model


def exact_modules(model):
    """``{type name: count}`` of the modules with parameters of their own that
    no rule reaches (they keep exact gradients)."""
    counts = {}
    for module in model.modules():
        if isinstance(module, FeedbackLayer) or not any(True for _ in module.parameters(recurse=False)):
            continue
        name = type(module).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


def detach_rule(model):
    """Undo a previous conversion's rule: no rule on any layer, no feedback buffers."""
    for layer in feedback_layers(model):
        layer.rule = None
        for name in [n for n, _ in layer.named_buffers(recurse=False) if n.startswith("feedback_")]:
            delattr(layer, name)
        if hasattr(layer, "feedback_route"):  # DFA's
            del layer.feedback_route


def _forgive_missing_feedback(module, incompatible):
    """A plain model's checkpoint has no feedback: keep the drawn one."""
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if ".feedback_" not in f".{k}"]


def convert(model, rule, *, seed=0, input_shape=None, strict=False, init_weights="keep", quiet=False,
            **rule_options):
    """``model`` trained by ``rule`` (a name, e.g. "fa"; its options as keywords,
    e.g. ``feedback_init="kaiming"``), converted in place and returned.

    - ``seed`` draws the feedback weights (the same seed, the same B).
    - ``input_shape`` (one sample's, e.g. ``(3, 32, 32)``) is needed by DFA to
      size its matrices, and by target propagation.
    - ``init_weights``: "keep" (default: the model's W as it is, trained or
      freshly initialised by its own code, so converting a pretrained model
      does not throw its training away) or "xavier" (redraw every converted W
      in its Glorot range and zero its bias, as biobench's own nets start).
    - ``strict``: refuse a model with parameters no rule reaches, instead of
      leaving them exact and saying so.

    Converting again replaces the rule (the feedback is drawn anew); the
    feedback follows each layer's device and dtype."""
    from benchmark.errors import ConfigError
    if not isinstance(model, nn.Module):
        raise ConfigError(f"convert() takes an nn.Module, got {type(model).__name__}")
    if rule not in RULES:
        raise ConfigError(f"convert: unknown learning rule {rule!r}; allowed: {', '.join(RULES.names())}")
    if init_weights not in ("keep", "xavier"):
        raise ConfigError(f"convert: init_weights={init_weights!r} is not one of keep, xavier")
    try:
        learning_rule = make_rule(rule, **rule_options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    model = swap_layers(model)
    layers = feedback_layers(model)
    if not layers:
        raise ConfigError(f"convert: {type(model).__name__} has no Linear, Conv2d or LocallyConnected2d layer "
                          f"for a rule to train")
    exact = exact_modules(model)
    if exact and strict:
        raise ConfigError("convert(strict=True): no rule reaches " + ", ".join(f"{n} ({c})" for n, c in exact.items()))
    if init_weights == "xavier":
        for layer in layers:
            layer.reset_parameters()
    detach_rule(model)
    generator = torch.Generator().manual_seed(seed)
    try:
        learning_rule.attach(model, generator, input_shape)
    except ValueError as exc:
        raise ConfigError(f"convert: {exc}") from None
    for layer in layers:
        if not getattr(layer, "_forgives_missing_feedback", False):
            layer.register_load_state_dict_post_hook(_forgive_missing_feedback)
            layer._forgives_missing_feedback = True
    model.biobench_rule = learning_rule
    if not quiet:
        kinds = {}
        for layer in layers:
            kinds[type(layer).__name__] = kinds.get(type(layer).__name__, 0) + 1
        kept = ", ".join(f"{n} ({c})" for n, c in exact.items()) or "none"
        sys.stderr.write(f"convert: {rule} on {len(layers)} layers ("
                         + ", ".join(f"{n} {c}" for n, c in kinds.items()) + f"); exact gradients kept: {kept}\n")
    return model


def plain_state_dict(model):
    """``model.state_dict()`` without the feedback buffers: the keys of the model before conversion."""
    return {k: v for k, v in model.state_dict().items() if not k.rsplit(".", 1)[-1].startswith("feedback_")}
