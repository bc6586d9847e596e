import torch

from .fa import FeedbackAlignment


class KolenPollack(FeedbackAlignment):
    """Kolen & Pollack 1994; Akrout et al. 2019. B starts random and receives
    exactly the update W receives, including the run's weight decay
    (``--weight-decay``), so B - W shrinks by ``(1 - weight_decay)`` per step
    and B converges to W without weight transport. Without weight decay B - W
    never shrinks, which is why KP's default weight decay is 1e-4 per step
    (Akrout et al.), not 0; compare it with BP at the same decay.
    """

    name = "kp"
    title = "Kolen-Pollack"
    citation_keys = ("kolen1994", "akrout2019")
    default_weight_decay = 1e-4
    has_step_hooks = True

    def _pairs(self):
        return [(layer.weight, layer.feedback_weight) for layer in self.layers[1:]]

    @torch.no_grad()
    def before_step(self):
        # B - W before the step; the step adds the same delta to W and B and
        # decays both alike, so afterwards B = W_new + (1 - decay) (B - W_old).
        pairs = self._pairs()
        if getattr(self, "_difference", None) is None:
            self._difference = [torch.empty_like(b) for _, b in pairs]
        for (weight, feedback), difference in zip(pairs, self._difference):
            torch.sub(feedback, weight, out=difference)

    @torch.no_grad()
    def after_step(self):
        keep = 1.0 - self.weight_decay
        for (weight, feedback), difference in zip(self._pairs(), self._difference):
            torch.add(weight, difference, alpha=keep, out=feedback)
