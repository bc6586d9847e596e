import torch

from .fa import FeedbackAlignment

# Works this module's rules cite (BibTeX fields).
KOLEN1994 = {"type": "inproceedings", "author": "Kolen, John F. and Pollack, Jordan B.",
             "title": "Backpropagation without weight transport",
             "booktitle": "Proceedings of the 1994 IEEE International Conference on Neural Networks (ICNN'94)",
             "volume": "3", "pages": "1375--1380", "year": "1994", "doi": "10.1109/ICNN.1994.374486"}

AKROUT2019 = {"type": "inproceedings",
              "author": "Akrout, Mohamed and Wilson, Collin and Humphreys, Peter C. and Lillicrap, Timothy and "
                        "Tweed, Douglas",
              "title": "Deep Learning without Weight Transport",
              "booktitle": "Advances in Neural Information Processing Systems 32 (NeurIPS)", "year": "2019",
              "eprint": "1904.05391", "archiveprefix": "arXiv"}


class KolenPollack(FeedbackAlignment):
    """Kolen & Pollack 1994; Akrout et al. 2019. B starts random and receives
    exactly the update W receives, including the run's weight decay
    (``--weight-decay``), so B - W shrinks by ``(1 - weight_decay)`` per step
    and B converges to W without weight transport. Without weight decay B - W
    never shrinks, which is why KP's default weight decay is 1e-4 per step
    (Akrout et al.), not 0; compare it with BP at the same decay.
    """

    name = "kp"
    weight_transport = "no: B is learned by W's own local update plus decay, and comes to equal W"
    colour = "#ff7f0e"
    title = "Kolen-Pollack"
    citations = {"kolen1994": KOLEN1994, "akrout2019": AKROUT2019}
    default_weight_decay = 1e-4
    learned_feedback = True  # a first-layer B would have come to equal W_1

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
