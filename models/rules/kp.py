import torch

from .base import LearningRule, uniform_like_weight


class KolenPollack(LearningRule):
    """Kolen & Pollack 1994; Akrout et al. 2019. B starts random and receives
    exactly the update W receives, and both decay by the same factor, so
    B - W shrinks geometrically and B converges to W without weight transport.

    Option ``decay``: multiplicative weight decay per step on W and B alike.
    """

    name = "kp"
    title = "Kolen-Pollack"
    citation_keys = ("kolen1994", "akrout2019")
    defaults = {"decay": 1e-4}
    has_step_hooks = True

    def init_layer(self, layer, generator):
        layer.register_buffer("feedback_weight", uniform_like_weight(layer, generator))

    def backward_operand(self, layer, weight):
        return layer.feedback_weight, None

    def alignment_matrix(self, layer):
        return getattr(layer, "feedback_weight", None)

    def _pairs(self):
        return [(layer.weight, layer.feedback_weight) for layer in self.layers[1:]]

    def before_step(self):
        self._previous = [w.detach().clone() for w, _ in self._pairs()]

    @torch.no_grad()
    def after_step(self):
        pairs = self._pairs()
        weights = [w for w, _ in pairs]
        feedback = [b for _, b in pairs]
        torch._foreach_add_(feedback, weights)
        torch._foreach_sub_(feedback, self._previous)
        self._previous = None
        keep = 1.0 - self.options["decay"]
        if keep != 1.0:
            torch._foreach_mul_(feedback, keep)
            torch._foreach_mul_([layer.weight for layer in self.layers], keep)
