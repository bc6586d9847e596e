"""L-DRL: difference target propagation whose inverses learn backprop's
targets (Ernoult et al. 2022; the DRL idea of Meulemans et al. 2020).

Each inverse ``G_l`` (layers 2..L, the output layer's reading the logits)
is trained on the layer-local difference-reconstruction loss, with
``x = h_{l-1}``, ``y = f_l(x)`` and ``dx, dy ~ N(0, sigma^2 I)``:

    L_fb = ( -2 <dx, G(f(x + dx)) - G(y)> + ||G(y + dy) - G(y)||^2 ) / sigma^2

whose minimum puts G's Jacobian at f's transpose, so the difference targets
approximate backprop's. The 1/sigma^2 keeps the loss O(1) whatever sigma
(it does not move the minimum). Targets: ``t_L = h_L - beta * dLoss/dh_L``
(per-sample cross-entropy) and ``t_{l-1} = h_{l-1} + G_l(t_l) - G_l(h_l)``;
one forward step on ``0.5 ||h_l - t_l||^2`` for every layer, output
included. Squared errors are summed over units and averaged over the batch.

``inverse_form``:

* ``paper`` (Ernoult et al.'s code): ``G_l(v) = V_l act_l(v) + c_l``, the
  activation of layer l's own segment applied *before* the transposed op and
  nothing after, so the output layer (logits, no activation) is inverted by
  a plain linear map. Its Jacobian ``V_l diag(act_l'(v))`` has its diagonal
  on the side backprop's ``W_l^T diag(act_l'(a_l))`` has it, but taken at
  ``v = h_l = act_l(a_l)``, not at ``a_l`` (as in Ernoult et al.'s code): for
  tanh within [0.42, 1], where backprop's ``1 - h_l^2`` reaches 0 for a
  saturated unit.
* ``tanh``: the other TP rules' inverse, ``G_l(v) = act_{l-1}(V_l v + c_l)``
  (tanh in the built-in nets). Its Jacobian ``diag(act_{l-1}') V_l`` cannot
  equal ``W_l^T`` or ``W_l^T diag(...)``, which limits how close the targets
  get to backprop's.

``order`` within one batch:

* ``feedback_first`` (Ernoult et al.): the ``feedback_steps`` inverse steps
  (fresh noise each), then the targets from the updated inverses, then the
  forward step.
* ``targets_first`` (Bartunov et al.'s Algorithm 1): the targets from the
  inverses as they were, then the inverse steps, then the forward step.
"""
import torch
import torch.nn.functional as F

from .tp import LEE2015, TargetPropagation, squared_error

# Works this module's rules cite (BibTeX fields).
MEULEMANS2020 = {"type": "inproceedings",
                 "author": "Meulemans, Alexander and Carzaniga, Francesco S. and Suykens, Johan A. K. and "
                           "Sacramento, Jo{\\~a}o and Grewe, Benjamin F.",
                 "title": "A Theoretical Framework for Target Propagation",
                 "booktitle": "Advances in Neural Information Processing Systems 33 (NeurIPS)", "year": "2020",
                 "eprint": "2006.14331", "archiveprefix": "arXiv"}

ERNOULT2022 = {"type": "inproceedings",
               "author": "Ernoult, Maxence and Normandin, Fabrice and Moudgil, Abhinav and Spinney, Sean and "
                         "Belilovsky, Eugene and Rish, Irina and Richards, Blake and Bengio, Yoshua",
               "title": "Towards Scaling Difference Target Propagation by Learning Backprop Targets",
               "booktitle": "Proceedings of the 39th International Conference on Machine Learning (ICML)",
               "series": "Proceedings of Machine Learning Research", "volume": "162", "year": "2022",
               "eprint": "2201.13415", "archiveprefix": "arXiv"}


class LayerwiseDRL(TargetPropagation):
    """L-DRL (Ernoult et al. 2022): DTP with layer-local difference-reconstruction inverse training."""

    name = "ldrl"
    colour = "#5254a3"
    title = "L-DRL (DTP with difference-reconstruction feedback)"
    citations = {"ernoult2022": ERNOULT2022, "meulemans2020": MEULEMANS2020, "lee2015": LEE2015}
    defaults = {"beta": 0.7, "sigma": 0.1, "feedback_steps": 3, "inverse_lr": 3e-4,
                "inverse_beta2": 0.999, "inverse_eps": 1e-8, "inverse_form": "paper", "order": "feedback_first"}
    choices = {"inverse_form": ("paper", "tanh"), "order": ("feedback_first", "targets_first")}
    option_sources = {
        "beta": "Ernoult et al. 2022 (scalingDTP: DTP.HParams.beta)",
        "sigma": "ours: small, for a finite-difference Jacobian (Ernoult et al.: 0.08-0.4 per layer, CIFAR-10)",
        "feedback_steps": "ours: CPU-affordable (Ernoult et al.: 20-55 per layer and batch, CIFAR-10)",
        "inverse_lr": "ours: the suite's forward Adam lr (Ernoult et al.: SGD with momentum, per-layer lrs)",
        "inverse_beta2": "Adam's default", "inverse_eps": "Adam's default",
        "inverse_form": "Ernoult et al. 2022 (scalingDTP: target_prop/backward_layers.py, legacy/models.py)",
        "order": "Ernoult et al. 2022 (scalingDTP: DTP.shared_step, legacy/tools.py train_batch)",
    }
    positive_options = TargetPropagation.positive_options + ("beta",)
    search_space = {"inverse_lr": "log:1e-5:3e-3", "sigma": "log:0.01:0.3"}
    output_on_task_loss = False
    target_loss_scale = 0.5

    def __init__(self, **options):
        super().__init__(**options)
        if self.options["feedback_steps"] < 1:
            raise ValueError(f"rule {self.name!r} option feedback_steps={self.options['feedback_steps']!r} "
                             f"must be >= 1")

    def inverse_layers(self):
        return range(2, len(self.segments) + 1)

    def penultimate_target(self, hs, y):
        top = len(self.segments)
        logits = hs[top]
        # d(per-sample cross-entropy)/d(logits) = softmax - onehot
        grad = F.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)
        return top, logits - self.options["beta"] * grad

    def feedback_loss(self, level, x, y):
        dx = self.noise_like(x)
        dy = self.noise_like(y)
        with torch.no_grad():
            y_moved = self.layer_map(level, x + dx)
        base = self.inverse(level, y)
        along = -2.0 * (dx * (self.inverse(level, y_moved) - base)).flatten(1).sum(1).mean()
        spread = squared_error(self.inverse(level, y + dy) - base)
        return (along + spread) / self.options["sigma"] ** 2

    def inverse_loss(self, hs, y):
        return sum(self.feedback_loss(level, hs[level - 1], hs[level]) for level in self.inverse_layers())

    def inverse_step(self, hs, y):
        for _ in range(self.options["feedback_steps"]):
            super().inverse_step(hs, y)

    def inverses_before_targets(self):
        return self.options["order"] == "feedback_first"

    def inverse(self, level, v):
        if self.options["inverse_form"] == "tanh":
            return super().inverse(level, v)
        # Ernoult et al.: this segment's activation, then the transposed op, nothing after
        read = self.segments[level - 1].activation(v)
        return self.feedback.inverses[str(level)](read.reshape((-1,) + self.inverse_inputs[level]))

    def output_description(self):
        inverse = ("a plain linear map" if self.options["inverse_form"] == "paper"
                   else "linear, then the activation below")
        return (f"trained on its target logits - beta * dLoss/dlogits (beta {self.options['beta']}); "
                f"its inverse is {inverse}")
