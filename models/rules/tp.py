"""Target propagation: DTP, SDTP and AO-SDTP (Lee et al. 2015; Bartunov et al. 2018).

Notation (``../shared/reference/target-propagation.md``): the network is a
chain of *segments*, segment ``l`` = learnable layer ``l`` and the modules
after it up to the next learnable layer, so ``h_l = f_l(h_{l-1})``
(``h_0`` = the input after any leading reshapes, ``h_L`` the logits). Every
layer but the first has a learned inverse ``g_l`` mapping ``h_l`` back to
``h_{l-1}``: the layer kind's transposed op (``models.inverses``) followed by
the activation that produced ``h_{l-1}`` (L-DRL's default inverse and step
order are Ernoult et al.'s instead: ``models/rules/ldrl.py``).

One training step (Bartunov et al., Algorithm 1): forward pass; targets top
down, ``t_{l-1} = h_{l-1} + g_l(t_l) - g_l(h_l)`` (difference correction)
from the variant's penultimate target; inverse updates; forward updates on
the layer-local losses ``||f_l(h_{l-1}) - t_l||^2`` (inputs and targets are
constants), the output layer on the task loss.

Losses: every squared error is **summed over units and averaged over the
batch** (no 1/2), so a layer's learning rate is per sample, not per unit.

The inverses are the rule's parameters, never the model's: they live in
``self.feedback`` (with AO-SDTP's fixed auxiliary weights), have their own
Adam optimiser and are saved through ``state_dict``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..chain import split_chain
from ..inverses import LinearInverse, make_inverse
from ..layers import Linear, glorot_bound
from ..optim import adam
from .base import BARTUNOV2018, LearningRule

# Works this module's rules cite (BibTeX fields).
LEE2015 = {"type": "inproceedings",
           "author": "Lee, Dong-Hyun and Zhang, Saizheng and Fischer, Asja and Bengio, Yoshua",
           "title": "Difference Target Propagation",
           "booktitle": "Machine Learning and Knowledge Discovery in Databases (ECML PKDD 2015)",
           "series": "Lecture Notes in Computer Science", "volume": "9284", "pages": "498--515",
           "year": "2015", "doi": "10.1007/978-3-319-23528-8_31"}


def squared_error(difference):
    """Sum over units, mean over the batch."""
    return difference.flatten(1).pow(2).sum(1).mean()


class TargetPropagation(LearningRule):
    """Difference target propagation with a learned inverse per layer.

    Subclasses set the variant (``penultimate_target``, ``denoise``,
    ``output_inverse``) and the ``schedule``: ``parallel`` (inverse and
    forward updates on every minibatch) or ``alternating`` (an epoch of
    inverse updates, then an epoch of forward updates, starting with the
    inverses).
    """
    needs_chain = True
    schedule = "parallel"
    weight_transport = "no: targets go down through learned inverses g_l (their own weights)"
    denoise = False  # SDTP's inverse loss reconstructs the clean input
    output_inverse = False  # SDTP and AO-SDTP learn g_L from the output distribution
    output_on_task_loss = True  # the output layer learns from the task loss, not a target
    target_loss_scale = 1.0
    citations = {"lee2015": LEE2015, "bartunov2018": BARTUNOV2018}
    defaults = {"sigma": 0.36, "inverse_lr": 7.7e-4, "inverse_beta2": 0.999, "inverse_eps": 1e-8}
    option_sources = {"sigma": "Bartunov et al. Table 5, MNIST FC DTP parallel (Lee et al. 2015 also use 0.36)",
                      "inverse_lr": "Bartunov et al. Table 5, MNIST FC DTP parallel",
                      "inverse_beta2": "Adam's default (inside Bartunov et al.'s search space)",
                      "inverse_eps": "Adam's default (inside Bartunov et al.'s search space)"}
    positive_options = ("sigma", "inverse_lr", "inverse_eps")
    # What ``cli.py search`` draws besides the optimiser settings (Bartunov et
    # al.'s ranges for sigma; the inverse learning rate like the forward one).
    search_space = {"inverse_lr": "log:1e-5:3e-3", "sigma": "uniform:0.01:0.3"}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The alternating schedule starts with an inverse-only epoch.
        cls.first_forward_epoch = 2 if cls.schedule == "alternating" else 1

    def __init__(self, **options):
        super().__init__(**options)
        if not 0 <= self.options["inverse_beta2"] < 1:
            raise ValueError(f"rule {self.name!r} option inverse_beta2={self.options['inverse_beta2']!r} "
                             f"must be in [0, 1)")
        self.epochs_done = 0
        self.phase = "parallel" if self.schedule == "parallel" else "inverse"
        self._optimizer = None

    # set-up ------------------------------------------------------------------------
    def attach(self, model, generator, input_shape=None):
        if input_shape is None:
            raise ValueError(f"{self.name} needs the model's input shape to build its inverses")
        self.prefix, self.segments = split_chain(model, "target propagation", verb="invert")
        self.layers = [s.layer for s in self.segments]
        self.output_layer = self.layers[-1]
        self._record_shapes(model, input_shape)
        self.feedback = nn.Module()
        self.feedback.inverses = nn.ModuleDict()
        self.inverse_inputs = {}  # layer number -> per-sample shape the inverse reads
        top = len(self.segments)
        for level in self.inverse_layers():
            seg = self.segments[level - 1]
            if level == top and self.output_inverse:
                if not isinstance(seg.layer, Linear):
                    raise ValueError(f"{self.name} needs a Linear output layer, got {type(seg.layer).__name__}")
                code = seg.layer.out_features + self.auxiliary_units()
                self.feedback.inverses[str(level)] = LinearInverse(code, seg.layer.in_features, generator)
                self.inverse_inputs[level] = (code,)
            else:
                self.feedback.inverses[str(level)] = make_inverse(seg.layer, seg.in_shape, generator)
                self.inverse_inputs[level] = seg.layer_out_shape
        self.init_auxiliary(generator)
        self.make_generator(generator, self.layers[0].weight.device)
        return self

    def _record_shapes(self, model, input_shape):
        param = next(model.parameters())
        with torch.no_grad():
            h = torch.zeros((1,) + tuple(input_shape), dtype=param.dtype, device=param.device)
            for module in self.prefix:
                h = module(h)
            for seg in self.segments:
                seg.in_shape = tuple(h.shape[1:])
                out = seg.layer(h)
                seg.layer_out_shape = tuple(out.shape[1:])
                for module in seg.rest:
                    out = module(out)
                seg.out_shape = tuple(out.shape[1:])
                h = out

    def inverse_layers(self):
        """Layer numbers (1-based) that have a learned inverse."""
        top = len(self.segments) + (1 if self.output_inverse else 0)
        return range(2, top)

    def auxiliary_units(self):
        return 0

    def init_auxiliary(self, generator):
        """AO-SDTP's fixed random output units (none here)."""

    def moved_to(self, device):
        super().moved_to(device)
        self.feedback.to(self.layers[0].weight)

    @property
    def inverse_optimizer(self):
        if self._optimizer is None:
            o = self.options
            self._optimizer = adam(self.feedback.parameters(), lr=o["inverse_lr"],
                                   betas=(0.9, o["inverse_beta2"]), eps=o["inverse_eps"])
        return self._optimizer

    # the maps --------------------------------------------------------------------
    def forward_pass(self, x, grad):
        """``[h_0, ..., h_L]``; with ``grad``, ``h_l`` carries a graph through
        layer ``l`` only (its input is detached), so one backward of the sum of
        local losses gives every layer its own local gradient."""
        with torch.set_grad_enabled(grad):
            h = x
            for module in self.prefix:
                h = module(h)
            hs = [h]
            for seg in self.segments:
                hs.append(seg(hs[-1].detach()))
        return hs

    def layer_map(self, level, h):
        return self.segments[level - 1](h)

    def inverse_input(self, level, below, above):
        """What ``g_l`` reads: ``h_l``, or for SDTP's output inverse the output code."""
        if level == len(self.segments) and self.output_inverse:
            return self.output_code(below, F.softmax(above, dim=1))
        return above

    def output_code(self, penultimate, distribution):
        return distribution

    def inverse(self, level, v):
        """The inverse of layer ``l`` applied to ``v`` (shaped like ``g_l``'s input)."""
        out = self.feedback.inverses[str(level)](v.reshape((-1,) + self.inverse_inputs[level]))
        return self.segments[level - 2].activation(out)

    # targets and losses ------------------------------------------------------------
    def penultimate_target(self, hs, y):
        """``(level, target)`` where the difference chain starts."""
        raise NotImplementedError

    def targets(self, hs, y):
        """``{l: t_l}`` for every layer trained on a target (``hs`` detached)."""
        top, target = self.penultimate_target(hs, y)
        targets = {top: target}
        for level in range(top, 1, -1):
            targets[level - 1] = hs[level - 1] + self.inverse(level, targets[level]) - self.inverse(level, hs[level])
        return targets

    def forward_loss(self, hs, targets, y):
        loss = F.cross_entropy(hs[-1], y) if self.output_on_task_loss else hs[-1].new_zeros(())
        for level, target in targets.items():
            loss = loss + self.target_loss_scale * squared_error(hs[level] - target)
        return loss

    def noise_like(self, h):
        return self.options["sigma"] * torch.randn(h.shape, generator=self.generator, device=h.device,
                                                   dtype=h.dtype)

    def reconstruction_loss(self, level, clean):
        """DTP: ``||h~ - g(f(h~))||^2``; SDTP (``denoise``): ``||h - g(f(h~))||^2``,
        with ``h~ = h + N(0, sigma^2)``; gradients reach g_l only."""
        noisy = clean + self.noise_like(clean)
        with torch.no_grad():
            code = self.inverse_input(level, noisy, self.layer_map(level, noisy))
        reference = clean if self.denoise else noisy
        return squared_error(self.inverse(level, code) - reference)

    def inverse_loss(self, hs, y):
        return sum(self.reconstruction_loss(level, hs[level - 1]) for level in self.inverse_layers())

    def inverse_step(self, hs, y):
        optimizer = self.inverse_optimizer
        optimizer.zero_grad(set_to_none=True)
        self.inverse_loss(hs, y).backward()
        optimizer.step()

    def inverses_before_targets(self):
        """Whether a batch's inverse updates come before its targets are built
        (Bartunov et al.'s Algorithm 1 builds the targets first)."""
        return False

    # the trainer's hooks ---------------------------------------------------------
    def start_epoch(self):
        if self.schedule == "alternating":
            self.phase = "inverse" if self.epochs_done % 2 == 0 else "forward"

    def end_epoch(self):
        self.epochs_done += 1

    def epoch_info(self):
        return {"phase": self.phase}

    def train_step(self, model, x, y, optimizer):
        forward_phase = self.phase in ("parallel", "forward")
        inverse_phase = self.phase in ("parallel", "inverse")
        hs = self.forward_pass(x, grad=forward_phase)
        detached = [h.detach() for h in hs]
        inverses_first = inverse_phase and self.inverses_before_targets()
        if inverses_first:
            self.inverse_step(detached, y)  # touches no forward weight, so hs stays valid
        if forward_phase:
            with torch.no_grad():
                targets = self.targets(detached, y)
            local_loss = self.forward_loss(hs, targets, y)
        if inverse_phase and not inverses_first:
            self.inverse_step(detached, y)
        if forward_phase:
            optimizer.zero_grad(set_to_none=True)
            local_loss.backward()
            optimizer.step()
            self.decay_weights()
        logits = detached[-1]
        return F.cross_entropy(logits, y), logits

    def weight_updates(self, model, x, y):
        hs = self.forward_pass(x, grad=True)
        with torch.no_grad():
            targets = self.targets([h.detach() for h in hs], y)
        return torch.autograd.grad(self.forward_loss(hs, targets, y), [layer.weight for layer in self.layers])

    @torch.no_grad()
    def layer_metrics(self, model, x, y):
        """Per layer: the inverse's clean reconstruction error ``||h_{l-1} -
        g_l(f_l(h_{l-1}))||^2`` and the mean distance ``||t_l - h_l||``."""
        hs = self.forward_pass(x, grad=False)
        targets = self.targets(hs, y)
        inverses = set(self.inverse_layers())
        rows = []
        for level in range(1, len(self.segments) + 1):
            below, above = hs[level - 1], hs[level]
            rows.append({
                "reconstruction_error": (float(squared_error(
                    self.inverse(level, self.inverse_input(level, below, above)) - below))
                    if level in inverses else None),
                "target_distance": (float((targets[level] - hs[level]).flatten(1).norm(dim=1).mean())
                                    if level in targets else None),
            })
        return rows

    # state --------------------------------------------------------------------------
    def state_dict(self):
        return {"feedback": self.feedback.state_dict(), "optimizer": self.inverse_optimizer.state_dict(),
                "epochs_done": self.epochs_done, "phase": self.phase}

    def load_state_dict(self, state):
        self.feedback.load_state_dict(state["feedback"])
        self.inverse_optimizer.load_state_dict(state["optimizer"])
        self.epochs_done, self.phase = state["epochs_done"], state["phase"]

    def feedback_count(self, layer):
        level = self.layers.index(layer) + 1
        count = 0
        if str(level) in self.feedback.inverses:
            count += sum(p.numel() for p in self.feedback.inverses[str(level)].parameters())
        if layer is self.output_layer:
            count += sum(b.numel() for b in self.feedback.buffers(recurse=False))
        return count

    def describe(self):
        return {"name": self.name, "options": dict(self.options), "schedule": self.schedule,
                "first_layer": "trained on its target; has no inverse (sends no target down)",
                "output_layer": self.output_description(),
                "feedback": "learned inverse parameters (their own Adam optimiser); counted as feedback",
                "loss_reduction": "squared errors summed over units, averaged over the batch"}

    def output_description(self):
        return "trained on the task loss (cross-entropy)"


class DifferenceTargetPropagation(TargetPropagation):
    """DTP: the penultimate target is one gradient step on the per-sample loss,
    ``h_{L-1} - alpha * dLoss/dh_{L-1}`` through the output layer; inverses
    (layers 2..L-1) reconstruct the noisy input."""

    defaults = {**TargetPropagation.defaults, "alpha": 0.15}
    option_sources = {**TargetPropagation.option_sources, "alpha": "Bartunov et al. Table 5, MNIST FC DTP parallel"}
    search_space = {**TargetPropagation.search_space, "alpha": "uniform:0.01:0.2"}
    positive_options = TargetPropagation.positive_options + ("alpha",)

    def penultimate_target(self, hs, y):
        top = len(self.segments)
        with torch.enable_grad():
            below = hs[top - 1].detach().requires_grad_(True)
            loss = F.cross_entropy(self.layer_map(top, below), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, below)
        return top - 1, hs[top - 1] - self.options["alpha"] * grad


class SimplifiedDTP(TargetPropagation):
    """SDTP: no gradient at all. ``g_L`` is learned from the output
    distribution and the penultimate target is ``h_{L-1} - g_L(softmax(h_L))
    + g_L(onehot(y))``; inverses learn to de-noise."""

    denoise = True
    output_inverse = True
    citations = {"bartunov2018": BARTUNOV2018}
    defaults = {**TargetPropagation.defaults, "sigma": 0.3}
    # Table 5's MNIST SDTP sigmas (FC 0.214 parallel, 0.118 alternating; LC 0.062,
    # 0.135) differ per net and schedule; 0.3 stays: the committed results used it.
    option_sources = {**TargetPropagation.option_sources,
                      "sigma": "Bartunov et al. Table 5, CIFAR-10 LC SDTP parallel (0.30), not its MNIST values"}

    def penultimate_target(self, hs, y):
        top = len(self.segments)
        below = hs[top - 1]
        onehot = F.one_hot(y, hs[top].shape[1]).to(below.dtype)
        actual = self.inverse(top, self.output_code(below, F.softmax(hs[top], dim=1)))
        wanted = self.inverse(top, self.output_code(below, onehot))
        return top - 1, below - actual + wanted


class AuxiliaryOutputSDTP(SimplifiedDTP):
    """AO-SDTP: the output is ``[o, z]`` with ``z = tanh(R h_{L-1})`` from
    fixed random ``R`` (``aux_units`` rows, never trained); ``g_L`` reads
    both, and the target swaps ``o`` for the one-hot label with the same ``z``."""

    defaults = {**SimplifiedDTP.defaults, "aux_units": 512}
    option_sources = {**SimplifiedDTP.option_sources, "aux_units": "Bartunov et al.'s CIFAR-10 setting"}

    def __init__(self, **options):
        super().__init__(**options)
        if self.options["aux_units"] < 1:
            raise ValueError(f"rule {self.name!r} option aux_units={self.options['aux_units']!r} must be >= 1")

    def auxiliary_units(self):
        return self.options["aux_units"]

    def init_auxiliary(self, generator):
        features = self.output_layer.in_features
        units = self.options["aux_units"]
        bound = glorot_bound(features, units)
        self.feedback.register_buffer("aux_weight", torch.empty(units, features).uniform_(-bound, bound,
                                                                                          generator=generator))

    def output_code(self, penultimate, distribution):
        return torch.cat([distribution, torch.tanh(F.linear(penultimate, self.feedback.aux_weight))], dim=1)

    def output_description(self):
        return (f"trained on the task loss; {self.options['aux_units']} fixed random auxiliary units "
                f"(tanh) feed its inverse")


# One registered rule per (variant, schedule), so tables show them as separate rows.
class DTPParallel(DifferenceTargetPropagation):
    name, title, schedule = "dtp-par", "DTP, parallel", "parallel"
    colour = "#17becf"


class DTPAlternating(DifferenceTargetPropagation):
    name, title, schedule = "dtp-alt", "DTP, alternating", "alternating"
    colour = "#0b6f78"


class SDTPParallel(SimplifiedDTP):
    name, title, schedule = "sdtp-par", "SDTP, parallel", "parallel"
    colour = "#bcbd22"


class SDTPAlternating(SimplifiedDTP):
    name, title, schedule = "sdtp-alt", "SDTP, alternating", "alternating"
    colour = "#6b6b00"


class AOSDTPParallel(AuxiliaryOutputSDTP):
    name, title, schedule = "aosdtp-par", "AO-SDTP, parallel", "parallel"
    colour = "#e377c2"


class AOSDTPAlternating(AuxiliaryOutputSDTP):
    name, title, schedule = "aosdtp-alt", "AO-SDTP, alternating", "alternating"
    colour = "#99235f"
