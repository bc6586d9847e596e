"""Base class of a learning rule: how each layer's backward operand is chosen."""
import math

import torch
import torch.nn.functional as F

from ..chain import run_prefix, split_chain
from ..layers import feedback_layers

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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "learns_by_backward" not in cls.__dict__:
            cls.learns_by_backward = all(getattr(cls, step) is getattr(LearningRule, step)
                                         for step in ("train_step", "before_step", "after_step"))

    def __init__(self, **options):
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
    def attach(self, model, generator, input_shape=None):
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

    def attach_chain(self, model):
        """For a rule with passes of its own: the network as segments
        (``models.chain``), its layers, their kinds checked."""
        self.prefix, self.segments = split_chain(model, self.name)
        self.layers = [segment.layer for segment in self.segments]
        self.check_layer_kinds(self.layers)
        self.output_layer = self.layers[-1]

    def input_size(self, input_shape):
        """Values per sample that the first learnable layer reads."""
        with torch.no_grad():
            h0 = run_prefix(self.prefix, torch.zeros((1,) + tuple(input_shape), dtype=self.layers[0].weight.dtype))
        return h0[0].numel()

    def check_layer_kinds(self, layers):
        if self.layer_kinds is None:
            return
        for layer in layers:
            if type(layer).__name__ not in self.layer_kinds:
                raise ValueError(f"rule {self.name!r} is not defined for {type(layer).__name__} layers; "
                                 f"it is for: {', '.join(self.layer_kinds)}")

    def init_layer(self, layer, generator):
        """Create this rule's buffers on ``layer``."""

    # Whether B is learned (KP): a first layer's B would have been learned too.
    learned_feedback = False

    def input_feedback(self, layer, generator):
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

    def make_generator(self, generator, device):
        """``self.generator``: the rule's own random stream (seeded from
        ``generator``); the trainer checkpoints it, so resumed runs are exact."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def moved_to(self, device):
        """Called once the model is on its training device."""
        generator = getattr(self, "generator", None)
        if generator is not None and generator.device != torch.device(device):
            # Re-home the stream before its first use (same seed, same draws).
            self.generator = torch.Generator(device=device).manual_seed(generator.initial_seed())

    # training ------------------------------------------------------------------
    def backward_operand(self, layer, weight):
        """Return ``(B, route)`` for the layer's next backward pass."""
        raise NotImplementedError

    def train_step(self, model, x, y, optimizer):
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

    def before_step(self):
        """Called by the default step before the optimiser step."""

    @torch.no_grad()
    def decay_weights(self):
        """Weight decay, called right after every forward optimiser step:
        every forward weight W (not the biases) is multiplied by
        ``1 - weight_decay``, the same for every rule."""
        if self.weight_decay:
            torch._foreach_mul_([layer.weight for layer in self.layers], 1.0 - self.weight_decay)

    def after_step(self):
        """Called by the default step after the optimiser step and weight decay."""

    def start_epoch(self):
        """Called before every training epoch."""

    def end_epoch(self):
        """Called after every training epoch, before the checkpoint."""

    def epoch_info(self):
        """Extra per-epoch facts for the record (e.g. a schedule's phase)."""
        return {}

    def state_dict(self):
        """The rule's trained state beyond the model's buffers (checkpointed)."""
        return {}

    def load_state_dict(self, state):
        pass

    # reporting -----------------------------------------------------------------
    def weight_updates(self, model, x, y):
        """The update direction this rule gives each layer's weight on ``(x, y)``
        (the descent direction's negative, like a gradient)."""
        weights = [layer.weight for layer in feedback_layers(model)]
        return torch.autograd.grad(F.cross_entropy(model(x), y), weights)

    def layer_metrics(self, model, x, y):
        """Per layer, extra rule-specific metrics (dicts), or None."""
        return None

    def alignment_matrix(self, layer):
        """The matrix used in place of W (same shape as W), for the W-B angle;
        None where the rule has none (BP, DFA, the first layer)."""
        return None

    def feedback_count(self, layer):
        """Number of stored feedback values on ``layer`` (its feedback buffers)."""
        return sum(b.numel() for name, b in layer.named_buffers(recurse=False)
                   if name.startswith("feedback_"))

    def describe(self):
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
