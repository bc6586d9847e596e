"""Base class of a learning rule: how each layer's backward operand is chosen."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..chain import run_prefix, split_chain
from ..layers import detached_rules, feedback_layers

if TYPE_CHECKING:
    from torch import nn

    from ..feedback import DirectRoute
    from ..layers import FeedbackLayer

# Works this module's rules cite (BibTeX fields).
BARTUNOV2018 = {"type": "inproceedings",
                "author": "Bartunov, Sergey and Santoro, Adam and Richards, Blake A. and Marris, Luke and "
                          "Hinton, Geoffrey E. and Lillicrap, Timothy",
                "title": "Assessing the Scalability of Biologically-Motivated Deep Learning Algorithms "
                         "and Architectures",
                "booktitle": "Advances in Neural Information Processing Systems 31 (NeurIPS)",
                "year": "2018", "eprint": "1807.04587", "archiveprefix": "arXiv"}


class LearningRule:
    """A learning rule decides what each layer sends down in the backward pass.

    ``attach(model, ...)`` gives every learnable layer except the first (whose
    input needs no gradient, so it never sends an error down) its feedback
    state as *buffers* (never parameters: the optimiser does not see them and
    parameter counts stay honest) and points the layer at the rule. The
    output layer follows the rule like any other layer, as in the papers.
    """

    name = ""
    title = ""
    # Metadata beside the rule, for built-ins and plug-ins alike: the colour
    # of its lines and bars in every plot, and the works it cites, in order,
    # as ``{key: BibTeX fields}`` (``cli.py cite`` prints them).
    colour = "#7f7f7f"
    citations = {}
    defaults = {}
    choices = {}  # option -> its allowed values, for options that are names
    # Options ``cli.py search`` draws, as ``{name: "log:LOW:HIGH" | "uniform:LOW:HIGH"
    # | "int:LOW:HIGH" | "choice:A,B"}`` (names from ``defaults``).
    search_space = {}
    # Weight decay of a run that does not set --weight-decay (0, as in
    # Bartunov et al.; Kolen-Pollack needs some to align B with W).
    default_weight_decay = 0.0
    weight_decay = 0.0  # the run's, set by the trainer
    # The first epoch (1-based) that changes the forward weights; a search
    # cannot judge a trial on fewer epochs (alternating TP starts with an
    # inverse-only epoch).
    first_forward_epoch = 1
    # Whether the rule moves W^T (or the forward Jacobian) backwards: one line
    # for ``cli.py rules`` and the README, the question this suite asks.
    weight_transport = ""
    # Layer kinds (class names) the rule is defined for; None: every kind.
    layer_kinds = None
    # Where each default in ``defaults`` comes from (paper, code, or "ours").
    option_sources = {}
    # Options that must be finite and > 0, and counts that must be >= 1.
    positive_options = ()
    count_options = ()
    # Whether one ``loss.backward()`` and optimiser step is the rule's whole
    # update (BP and the feedback-alignment family, whose layers change only
    # the backward operand), so that ``convert``'s users' own loop trains it.
    # A class that leaves it unset gets False when it overrides train_step,
    # before_step or after_step: its update needs its own step.
    learns_by_backward = True
    # Whether the rule estimates input gradients itself (EP), which the
    # robustness attacks then follow along the rule's path. A class that
    # leaves it unset gets True when it defines estimate_input_gradient.
    has_input_gradient_estimate = False
    # Whether robustness has a rule-gradient column for the rule: its layers
    # send a signal of its own down (a backward operand other than W) or it
    # estimates input gradients itself. A class that leaves it unset gets True
    # when it defines backward_operand or estimate_input_gradient; one whose
    # operand is W itself sets False.
    has_rule_gradient = False
    # Whether training alternates epochs between the feedback path and the
    # forward weights ("alternating", TP's -alt rules) or trains both in every
    # epoch ("parallel"); ``benchmark.perf`` times the parallel rules only.
    schedule = "parallel"
    # Whether the rule runs passes of its own along the network as a chain of
    # layers and elementwise modules (``models.chain``): it cannot take nets
    # with branches (residual connections, attention); ``cli.py rules`` says
    # so (attaching refuses such nets, and grids try that before training).
    needs_chain = False
    # The rule's own random stream (``make_generator``), None where it draws
    # nothing; checkpointed, and reseeded per unit of robustness work.
    generator = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "learns_by_backward" not in cls.__dict__:
            cls.learns_by_backward = not cls._defines("train_step", "before_step", "after_step")
        if "has_input_gradient_estimate" not in cls.__dict__:
            cls.has_input_gradient_estimate = cls._defines("estimate_input_gradient")
        if "has_rule_gradient" not in cls.__dict__:
            cls.has_rule_gradient = cls._defines("backward_operand", "estimate_input_gradient")

    @classmethod
    def _defines(cls, *hooks):
        """Whether the class has its own version of any of ``hooks``."""
        return any(getattr(cls, hook) is not getattr(LearningRule, hook) for hook in hooks)

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.defaults)
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} for rule "
                             f"{self.name!r}; allowed: {allowed}")
        typed = {}
        for key, value in options.items():
            try:
                typed[key] = type(self.defaults[key])(value)
            except (TypeError, ValueError):
                raise ValueError(f"rule {self.name!r} option {key}={value!r} is not a "
                                 f"{type(self.defaults[key]).__name__}") from None
        for key, allowed in self.choices.items():
            if key in typed and typed[key] not in allowed:
                raise ValueError(f"rule {self.name!r} option {key}={typed[key]!r} is not one of "
                                 f"{', '.join(allowed)}")
        self.options = {**self.defaults, **typed}
        for key in self.positive_options:
            value = self.options[key]
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"rule {self.name!r} option {key}={value!r} must be finite and > 0")
        for key in self.count_options:
            if self.options[key] < 1:
                raise ValueError(f"rule {self.name!r} option {key}={self.options[key]!r} must be >= 1")
        self.layers = []

    # set-up ------------------------------------------------------------------
    def attach(self, model: nn.Module, generator: torch.Generator,
               input_shape: Sequence[int] | None = None) -> LearningRule:
        """Register feedback buffers (drawn from ``generator``) and hook the rule in."""
        layers = feedback_layers(model)
        if not layers:
            raise ValueError("the model has no learnable feedback layers to attach a rule to")
        self.check_layer_kinds(layers)
        self.layers = layers
        self.output_layer = layers[-1]
        for layer in layers[1:]:
            self.init_layer(layer, generator)
            layer.rule = self
        return self

    def attach_chain(self, model: nn.Module) -> None:
        """For a rule with passes of its own: the network as segments
        (``models.chain``), its layers, their kinds checked."""
        self.prefix, self.segments = split_chain(model, self.name)
        self.layers = [segment.layer for segment in self.segments]
        self.check_layer_kinds(self.layers)
        self.output_layer = self.layers[-1]

    def input_size(self, input_shape: Sequence[int]) -> int:
        """Values per sample that the first learnable layer reads."""
        with torch.no_grad():
            h0 = run_prefix(self.prefix, torch.zeros((1,) + tuple(input_shape), dtype=self.layers[0].weight.dtype))
        return h0[0].numel()

    def check_layer_kinds(self, layers: Sequence[FeedbackLayer]) -> None:
        if self.layer_kinds is None:
            return
        for layer in layers:
            if type(layer).__name__ not in self.layer_kinds:
                raise ValueError(f"rule {self.name!r} is not defined for {type(layer).__name__} layers; "
                                 f"it is for: {', '.join(self.layer_kinds)}")

    def init_layer(self, layer: FeedbackLayer, generator: torch.Generator) -> None:
        """Create this rule's buffers on ``layer``."""

    # Whether B is learned (KP): a first layer's B would have been learned too.
    learned_feedback = False

    def input_feedback(self, layer: FeedbackLayer, generator: torch.Generator) -> bool:
        """Give ``layer``, the network's first, which training never asks for
        an input gradient and so leaves without a rule, the feedback this rule
        gives the other layers, drawn from ``generator``: an attack that
        follows the rule's backward path then reaches the pixels by the rule
        too, as Akrout et al. (2019) attack FA networks and as BioTorch
        converts every layer. For ``benchmark.robustness`` only. Returns False
        where that feedback would have been learned (the layer keeps W^T)."""
        if self.learned_feedback:
            return False
        self.init_layer(layer, generator)
        layer.rule = self
        return True

    def make_generator(self, generator: torch.Generator, device: str | torch.device) -> None:
        """``self.generator``: the rule's own random stream (seeded from
        ``generator``); the trainer checkpoints it, so resumed runs are exact."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def moved_to(self, device: str | torch.device) -> None:
        """Called once the model is on its training device."""
        generator = self.generator
        if generator is not None and generator.device != torch.device(device):
            # Re-home the stream before its first use (same seed, same draws).
            self.generator = torch.Generator(device=device).manual_seed(generator.initial_seed())

    # training ------------------------------------------------------------------
    def backward_operand(self, layer: FeedbackLayer, weight: torch.Tensor) -> tuple[torch.Tensor, DirectRoute | None]:
        """Return ``(B, route)`` for the layer's next backward pass."""
        raise NotImplementedError

    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        """One whole update on the batch ``(x, y)``; ``optimizer`` holds the
        model's parameters. Returns ``(loss, logits)``, both detached.

        The default is the backprop step, which is also every
        feedback-alignment rule's (their layers change only the backward
        operand): cross-entropy, backward, optimiser step, weight decay, with
        ``before_step``/``after_step`` around the step. Rules with a step of
        their own (target propagation) override it."""
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.before_step()
        optimizer.step()
        self.decay_weights()
        self.after_step()
        return loss.detach(), logits.detach()

    def before_step(self) -> None:
        """Called by the default step before the optimiser step."""

    @torch.no_grad()
    def decay_weights(self) -> None:
        """Weight decay, called right after every forward optimiser step:
        every forward weight W (not the biases) is multiplied by
        ``1 - weight_decay``, the same for every rule."""
        if self.weight_decay:
            torch._foreach_mul_([layer.weight for layer in self.layers], 1.0 - self.weight_decay)

    def after_step(self) -> None:
        """Called by the default step after the optimiser step and weight decay."""

    def start_epoch(self) -> None:
        """Called before every training epoch."""

    def end_epoch(self) -> None:
        """Called after every training epoch, before the checkpoint."""

    def epoch_info(self) -> dict[str, Any]:
        """Extra per-epoch facts for the record (e.g. a schedule's phase)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The rule's trained state beyond the model's buffers (checkpointed)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # reporting -----------------------------------------------------------------
    def weight_updates(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Sequence[torch.Tensor]:
        """The update direction this rule gives each layer's weight on ``(x, y)``
        (the descent direction's negative, like a gradient)."""
        weights = [layer.weight for layer in feedback_layers(model)]
        return torch.autograd.grad(F.cross_entropy(model(x), y), weights)

    def layer_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, float | None]] | None:
        """Per layer, extra rule-specific metrics (dicts), or None."""
        return None

    def alignment_matrix(self, layer: FeedbackLayer) -> torch.Tensor | None:
        """The matrix used in place of W (same shape as W), for the W-B angle;
        None where the rule has none (BP, DFA, the first layer)."""
        return None

    def feedback_count(self, layer: FeedbackLayer) -> int:
        """Number of stored feedback values on ``layer`` (its feedback buffers)."""
        return sum(b.numel() for name, b in layer.named_buffers(recurse=False)
                   if name.startswith("feedback_"))

    # robustness and the update angle -------------------------------------------
    def differentiable_forward(self, model: nn.Module, x: torch.Tensor, weights: bool = False) -> torch.Tensor:
        """The logits ``model`` gives ``x`` at test time, with autograd's graph
        from ``x`` (and, where ``weights``, from the weights): the true input
        gradient of the robustness attacks and the BP reference of the
        update angle differentiate it. The default is the feed-forward pass
        with every rule detached (exact backward, W^T); a rule whose
        prediction is a relaxation (EP) unrolls its own steps instead."""
        with detached_rules(model):
            return model(x)

    def estimate_input_gradient(self, x: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
        """The rule's own estimate of ``cotangent``^T d logits / dx, which the
        rule-gradient attacks follow in place of autograd through the rule's
        backward operands (``has_input_gradient_estimate``); the default has none and raises."""
        raise NotImplementedError(f"rule {self.name!r} has no input-gradient estimate of its own")

    def project_target(self, y: torch.Tensor, logits: torch.Tensor) -> None:
        """Hand the batch's labels ``y`` to a rule whose hidden layers learn
        from the target, not the error (DRTP), before backward; the
        rule-gradient attacks call it on every batch. By default nothing:
        the error is what travels."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options),
                "first_layer": "exact weight gradient; sends no error down",
                "output_layer": "follows the rule"}


# How random feedback B is drawn (``feedback_init``), uniform in [-bound, bound]:
# "xavier" (default): the layer's own Glorot bound, as its W was drawn (Bartunov
# et al.'s nets); "kaiming": sqrt(6 / fan_in), He et al.'s for ReLU nets;
# "like_weight": the spread of W as it is (sqrt(3) std(W)), for a converted,
# possibly trained model whose W no longer has its initial scale. Sanfiz and
# Akrout 2021 found B's scale matters; the default keeps |B| ~ |W| at init.
FEEDBACK_INITS = ("xavier", "kaiming", "like_weight")


def feedback_bound(layer, scheme="xavier"):
    if scheme == "kaiming":
        return math.sqrt(6.0 / layer.fan_in_out()[0])
    if scheme == "like_weight":
        return math.sqrt(3.0) * float(layer.weight.detach().double().std())
    return layer.init_bound()


def uniform_like_weight(layer, generator, scheme="xavier"):
    """Uniform in ``scheme``'s bound (``FEEDBACK_INITS``), independent of W,
    with W's shape, memory layout (so LC feedback keeps the LC locality),
    dtype and device; drawn on the CPU ``generator`` so a seed means the same
    B on every device."""
    bound = feedback_bound(layer, scheme)
    weight = layer.weight.detach()
    drawn = torch.empty_like(weight, device="cpu").uniform_(-bound, bound, generator=generator)
    return drawn.to(weight.device)
