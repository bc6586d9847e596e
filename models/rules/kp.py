import torch

from .fa import FeedbackAlignment


class KolenPollack(FeedbackAlignment):
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

    def _pairs(self):
        return [(layer.weight, layer.feedback_weight) for layer in self.layers[1:]]

    @torch.no_grad()
    def before_step(self):
        # B - W before the step; the step adds the same delta to both, so
        # afterwards B = W_new + (B - W_old), then both decay alike. Three
        # passes over the weights in all, no per-step allocation.
        pairs = self._pairs()
        if getattr(self, "_difference", None) is None:
            self._difference = [torch.empty_like(b) for _, b in pairs]
        for (weight, feedback), difference in zip(pairs, self._difference):
            torch.sub(feedback, weight, out=difference)

    @torch.no_grad()
    def after_step(self):
        keep = 1.0 - self.options["decay"]
        if keep != 1.0:
            torch._foreach_mul_([layer.weight for layer in self.layers], keep)
        for (weight, feedback), difference in zip(self._pairs(), self._difference):
            torch.add(weight, difference, alpha=keep, out=feedback)
