"""Which gradient an attack follows: the module it differentiates.

What changes between robustness.json's columns is only *which gradient*
the attacks follow:

* ``true``: the network's exact input gradient, whatever rule trained it
  (every layer's rule detached, as :func:`benchmark.alignment.exact_gradients`
  does; for EP, whose eval-mode forward relaxes without a graph, autograd
  through the unrolled free phase);
* ``rule``: the rule's own backward path with the rule attached (FA's B, DFA's
  e @ B_l, sign rules, KP's B, DRTP's projected target, pc-rf's B; EP's
  two-phase estimate), down to the pixels: the first layer, which training
  never asks for an input gradient, gets a feedback drawn as the rule draws
  the others' (Akrout et al. 2019 attack FA networks so; KP, whose B is
  learned and tends to W, keeps W_1^T there). Rules whose layers all send
  the exact gradient down (bp, pc, TP, PEPITA, FF) have no such column;
* ``transfer`` (:mod:`.transfer`): examples made on a BP run's true gradient.

Every unit of work draws its random numbers from a seed of its own
(:func:`unit_seed`), so a resumed evaluation draws what a whole one does.
"""
import zlib


def attacked_model(model, rule, data, path):
    """The module an attack differentiates: pixels in [0, 1] -> logits, the
    suite's normalisation inside (the same arithmetic as ``data.Normalizer``
    on the 8-bit images, so eps = 0 gives the trainer's logits bit for bit),
    and autograd along ``path`` (``true`` or ``rule``)."""
    import torch
    from torch import nn

    class Estimated(torch.autograd.Function):
        """EP's forward (eval mode: the relaxed read-out) with EP's own gradient estimate as backward."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            with torch.no_grad():
                return model(x)

        @staticmethod
        def backward(ctx, grad_logits):
            (x,) = ctx.saved_tensors
            return rule.estimate_input_gradient(x, grad_logits)

    class Attacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("scale", (1.0 / (255.0 * data.std)).view(1, -1, 1, 1).clone())
            self.register_buffer("shift", (data.mean / data.std).view(1, -1, 1, 1).clone())
            self.labels = None  # the batch's labels, for a rule whose signal is the target (DRTP)

        def forward(self, pixels):
            x = torch.addcmul(-self.shift, pixels * 255, self.scale)
            if path == "true":
                return rule.differentiable_forward(self.model, x)
            if rule.has_input_gradient_estimate:
                return Estimated.apply(x)
            logits = self.model(x)
            rule.project_target(self.labels, logits)
            return logits

    device = next(model.parameters()).device
    return Attacked().to(device).eval()


def rule_gradient(model, rule):
    """``(applicable, what it is)`` of the rule-gradient attack on ``model``."""
    from models.layers import feedback_layers
    if rule.has_input_gradient_estimate:
        return True, (f"{rule.name}'s own estimate: the nudged phases' contrast with respect to the input (the "
                      f"input treated as a parameter of Phi), the cost linearised at the free fixed point")
    with_rule = [layer for layer in feedback_layers(model) if layer.rule is not None]
    if not with_rule:
        return False, (f"{rule.name}: every layer's backward is exact (no layer carries a rule signal down), so "
                       f"a rule-gradient attack is the true-gradient one; left out")
    operands = [layer.rule.backward_operand(layer, layer.weight) for layer in with_rule]
    if all(b is layer.weight and route is None for layer, (b, route) in zip(with_rule, operands)):
        return False, f"{rule.name}: its layers send the error down through W itself, as BP; left out"
    return True, (f"autograd with {rule.name} attached: each layer sends its signal down by the rule's backward "
                  f"operand (B, e @ B_l or the projected target)")


def give_input_feedback(model, rule, seed):
    """For the rule-gradient attack: the first layer, which training leaves
    without a rule, gets the feedback the rule gives the others
    (``LearningRule.input_feedback``), drawn from a seed of the run's own, so
    the attack reaches the pixels by the rule (Akrout et al. 2019's attacker).
    Returns the sentence the result file keeps."""
    import torch

    from models.layers import feedback_layers
    first = feedback_layers(model)[0]
    generator = torch.Generator().manual_seed(unit_seed(seed, "input-feedback"))
    if rule.input_feedback(first, generator):
        return (f"the first layer's feedback, which training never uses, is drawn as {rule.name} draws the "
                f"others' (a fixed seed of the run's own), so the rule's signal reaches the pixels")
    return (f"the first layer reaches the pixels through W_1^T: {rule.name}'s feedback is learned and comes to "
            f"equal W, so a first-layer B would have too")


def unit_seed(seed, unit):
    return zlib.crc32(f"{seed}/{unit}".encode())


def reseed(rule, seed):
    """The global stream (PGD's random start, the noise) and the rule's own
    (brSF's magnitudes) start from ``seed``: each unit of work gives the same
    numbers whether it runs first or after a resume."""
    import torch
    torch.manual_seed(seed)
    if rule.generator is not None:
        rule.generator.manual_seed(seed)
