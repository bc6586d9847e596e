"""``convert``: any PyTorch model, trained with its own parameters and its
user's own loop by any rule whose whole update is one backward pass (BP and
the feedback-alignment family; rules with a step of their own are refused).

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
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .attention import MultiheadAttention
from .blocks import BlockFeedback, block_feedback_points, remove_block_feedback
from .errors import ConfigError
from .layers import Conv2d, FeedbackLayer, Linear, feedback_layers, layer_label, traced_layer_inputs
from .rules import RULES, make_rule


def backward_rules():
    """The rules convert takes: those whose whole update is one ``loss.backward()``
    and optimiser step (``LearningRule.learns_by_backward``), so the user's own
    training loop is the rule's update."""
    return [name for name in RULES.registered() if RULES.get(name).learns_by_backward]


def _swapped(module):
    """biobench's layer for ``module`` (sharing its Parameters), or None when
    it is not a kind biobench converts."""
    if isinstance(module, FeedbackLayer):
        return None
    if type(module) is nn.MultiheadAttention:
        return MultiheadAttention.converted(module)
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
    no rule reaches (they keep exact gradients). A layer's weight or bias may be
    rows of a Parameter another module holds (attention's packed projection)."""
    reached = {id(tensor if tensor._base is None else tensor._base)
               for layer in model.modules() if isinstance(layer, FeedbackLayer)
               for tensor in (layer.weight, layer.bias) if tensor is not None}
    counts = {}
    for module in model.modules():
        if isinstance(module, FeedbackLayer) or all(id(p) in reached for p in module.parameters(recurse=False)):
            continue
        name = type(module).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


def _refuse_empty_layers(model):
    """A layer without weights (e.g. ``nn.Linear(10, 0)``) has nothing to learn
    and sizes its feedback by zero: one line naming it, not a ZeroDivisionError."""
    for module in model.modules():
        if (type(module) in (nn.Linear, nn.Conv2d) or isinstance(module, FeedbackLayer)) \
                and module.weight.numel() == 0:
            raise ConfigError(f"convert: {layer_label(model, module)} has an empty weight of shape "
                              f"{tuple(module.weight.shape)}; a layer without weights cannot learn")


def record_layer_order(model, input_shape):
    """Store, for ``feedback_layers``, the order in which one forward pass of
    ``input_shape`` runs the layers: which layer is first (it sends no error
    down) and which is the output is the forward pass's, not ``__init__``'s."""
    try:
        traced = list(traced_layer_inputs(model, input_shape))
    except (RuntimeError, ValueError, TypeError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"convert: {type(model).__name__} cannot run one input of input_shape "
                          f"{tuple(input_shape)}: {first_line}") from None
    never_run = [layer for layer in feedback_layers(model) if layer not in traced]
    # Layers this pass skips (say a head used in training mode only) are neither first nor output.
    model.biobench_layer_order = traced[:-1] + never_run + traced[-1:]


class FirstForwardOrderCheck:
    """Without ``input_shape`` convert takes the registration order. The
    model's first forward pass shows whether it runs the first and the output
    layer first and last; where it does not, that and every later forward is
    refused until the model is converted again with ``input_shape``. The hooks
    are bound methods, so a deep copy of the model checks its own layers."""

    def __init__(self, model):
        self.model, self.layers, self.calls = model, feedback_layers(model), []
        self.handles = [layer.register_forward_pre_hook(self.note) for layer in self.layers]
        self.handles += [model.register_forward_pre_hook(self.start), model.register_forward_hook(self.check)]

    def start(self, model, args):
        self.calls.clear()

    def note(self, layer, args):
        self.calls.append(layer)

    def check(self, model, args, output):
        if not self.calls:
            return
        first, last = self.calls[0], self.calls[-1]
        if first is self.layers[0] and last is self.layers[-1]:
            self.remove()
            return
        names = {module: name for name, module in model.named_modules()}
        raise ConfigError(f"convert: {type(model).__name__} runs {names[first]!r} first and {names[last]!r} "
                          f"last but registers {names[self.layers[0]]!r} first and {names[self.layers[-1]]!r} "
                          f"last, and without input_shape convert took the registration order; convert it "
                          f"again with input_shape (one sample's shape) so that it traces the order")

    def remove(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def detach_rule(model):
    """Undo a previous conversion's rule: no rule on any layer, no feedback buffers."""
    remove_block_feedback(model)
    for layer in feedback_layers(model):
        layer.rule = None
        for name in [n for n, _ in layer.named_buffers(recurse=False) if n.startswith("feedback_")]:
            delattr(layer, name)
        if hasattr(layer, "feedback_route"):  # DFA's
            del layer.feedback_route


def feedback_keys(model):
    """The ``state_dict`` keys of the feedback buffers a rule added to the
    model's layers (a user's own ``feedback_*`` names elsewhere are not among them)."""
    return {f"{name}.{buffer}" if name else buffer
            for name, module in model.named_modules() if isinstance(module, (FeedbackLayer, BlockFeedback))
            for buffer, _ in module.named_buffers(recurse=False) if buffer.startswith("feedback_")}


def _keep_drawn_feedback(layer, state_dict, prefix, *args):
    """A plain model's checkpoint has no feedback: the layer keeps the drawn one
    (load_state_dict hands this hook its own copy of the checkpoint)."""
    for name, buffer in layer.named_buffers(recurse=False):
        if name.startswith("feedback_"):
            state_dict.setdefault(prefix + name, buffer)


def convert(model: nn.Module, rule: str, *, seed: int = 0, input_shape: Sequence[int] | None = None,
            strict: bool = False, init_weights: str = "keep", quiet: bool = False, **rule_options: Any) -> nn.Module:
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
    if not learning_rule.learns_by_backward:
        raise ConfigError(f"convert: rule {rule!r} updates the weights in its own train_step, not by "
                          f"loss.backward() and an optimiser step, so a converted model would not learn by "
                          f"{rule}; train it with `cli.py run --algo {rule}` (your network as an architecture "
                          f"plug-in: docs/extending.md); convert takes {', '.join(backward_rules())}")
    _refuse_empty_layers(model)
    model = swap_layers(model)
    layers = feedback_layers(model)
    if not layers:
        raise ConfigError(f"convert: {type(model).__name__} has no Linear, Conv2d or LocallyConnected2d layer "
                          f"for a rule to train")
    previous_check = getattr(model, "biobench_order_check", None)
    if previous_check is not None:
        previous_check.remove()
        del model.biobench_order_check
    if input_shape is not None:
        record_layer_order(model, input_shape)
        layers = feedback_layers(model)
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
    for layer in layers + block_feedback_points(model):
        if not getattr(layer, "_keeps_drawn_feedback", False):
            layer.register_load_state_dict_pre_hook(_keep_drawn_feedback)
            layer._keeps_drawn_feedback = True
    # Registration order stands in for the forward order only until the first forward checks it.
    if getattr(model, "biobench_layer_order", None) is None and any(layer.rule is not None for layer in layers):
        model.biobench_order_check = FirstForwardOrderCheck(model)
    model.biobench_rule = learning_rule
    if not quiet:
        kinds = {}
        for layer in layers:
            kinds[type(layer).__name__] = kinds.get(type(layer).__name__, 0) + 1
        kept = ", ".join(f"{n} ({c})" for n, c in exact.items()) or "none"
        sys.stderr.write(f"convert: {rule} on {len(layers)} layers ("
                         + ", ".join(f"{n} {c}" for n, c in kinds.items()) + f"); exact gradients kept: {kept}\n")
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the feedback buffers: the keys of the model before conversion."""
    added = feedback_keys(model)
    return {k: v for k, v in model.state_dict().items() if k not in added}
