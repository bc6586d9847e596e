"""Forward-Forward (Hinton 2022): layer-local goodness on positive and negative data."""

import torch
import torch.nn.functional as F

from ..chain import run_prefix
from .base import LearningRule

# Works this module's rules cite (BibTeX fields).
HINTON2022 = {"type": "misc", "author": "Hinton, Geoffrey",
              "title": "The Forward-Forward Algorithm: Some Preliminary Investigations",
              "year": "2022", "eprint": "2212.13345", "archiveprefix": "arXiv"}


def mean_square(h):
    return h.flatten(1).pow(2).mean(1)


class ForwardForward(LearningRule):
    """Every hidden layer ``l`` learns to tell positive data (the image with
    its own label written into its first ``C`` input values) from negative
    data (the image with a wrong label): goodness ``G_l = sum_j h_{l,j}^2``,
    loss ``softplus(theta_l - G_l(x+)) + softplus(G_l(x-) - theta_l)`` with
    ``theta_l = threshold * units_l``, averaged over the batch and summed over
    layers. Each layer reads the previous one divided by its root mean square
    (its length, i.e. its goodness, removed) and detached: no gradient
    crosses a layer. The network's output layer is the softmax read-out of
    Hinton's second prediction method: it reads the last hidden layer of a
    pass with the neutral label (``label_scale / C`` in every label value,
    the class labels' mean) and learns from cross-entropy, its gradient
    stopping there. Prediction is that
    read-out, so the trained model is evaluated by a plain forward pass (the
    rule installs the label writing and the normalisation as forward
    pre-hooks on the layers).

    The nets here use tanh, whose square is at most 1 where Hinton's ReLU
    layers aimed at a mean square of 1 (``theta = units``), so ``threshold``
    (mean square) defaults to 0.5. Conv layers take the goodness over the
    whole feature map (our extension: Hinton's image nets were locally
    connected, which is defined the same way)."""
    needs_chain = True
    name = "ff"
    colour = "#7b4173"
    title = "Forward-Forward"
    citations = {"hinton2022": HINTON2022}
    weight_transport = "no: no error or target travels between layers; each layer has a local loss"
    defaults = {"threshold": 0.5, "negatives": "hard", "label_scale": 1.0}
    choices = {"negatives": ("hard", "random")}
    option_sources = {"threshold": "ours: half of tanh's largest mean square (Hinton 2022: 1 for ReLU layers)",
                      "negatives": "Hinton 2022 code: a wrong label drawn from the model's own prediction "
                                   "(hard); random: uniform over the wrong labels",
                      "label_scale": "Hinton 2022 code (labelstrength): one-hot label values of 1; the neutral "
                                     "label is label_scale / C in every label value"}
    search_space = {"threshold": "uniform:0.1:0.9"}

    positive_options = ("threshold", "label_scale")

    def __init__(self, **options):
        super().__init__(**options)
        self.label_code = None  # None: the neutral label

    def attach(self, model, generator, input_shape=None):
        if input_shape is None:
            raise ValueError("ff needs the model's input shape to write labels into it")
        self.attach_chain(model)
        self.classes = self.output_layer.weight.shape[0]
        if self.input_size(input_shape) < self.classes:
            raise ValueError(f"ff writes {self.classes} label values into the input, which has only "
                             f"{self.input_size(input_shape)}")
        self.hooks = [self.layers[0].register_forward_pre_hook(self.write_label)]
        self.hooks += [layer.register_forward_pre_hook(normalise_input) for layer in self.layers[1:]]
        self.make_generator(generator, self.layers[0].weight.device)
        return self

    # the forward pre-hooks ---------------------------------------------------------
    def write_label(self, layer, args):
        x = args[0]
        code = self.label_code
        if code is None:  # the neutral label: the mean of the class labels, on their scale (Hinton's code)
            code = x.new_full((x.shape[0], self.classes), self.options["label_scale"] / self.classes)
        x = x.clone()
        x.view(x.shape[0], -1)[:, :self.classes] = code
        return (x,) + args[1:]

    def one_hot(self, labels, like):
        return F.one_hot(labels, self.classes).to(like.dtype) * self.options["label_scale"]

    # passes -----------------------------------------------------------------------------
    def hidden_pass(self, x, labels):
        """Hidden activities ``[h_1, ..., h_{L-1}]`` with ``labels`` written in
        (None: neutral), each computed from the detached layer below."""
        self.label_code = None if labels is None else self.one_hot(labels, x)
        try:
            h, hidden = run_prefix(self.prefix, x), []
            for segment in self.segments[:-1]:
                h = segment(h.detach())
                hidden.append(h)
        finally:
            self.label_code = None
        return hidden

    def wrong_labels(self, y, logits):
        if self.options["negatives"] == "hard":
            weights = (F.softmax(logits.detach(), dim=1) + 1e-12).scatter(1, y[:, None], 0.0)
            return torch.multinomial(weights, 1, generator=self.generator)[:, 0]
        shift = torch.randint(1, self.classes, y.shape, generator=self.generator, device=y.device)
        return (y + shift) % self.classes

    def thresholds(self, hidden):
        return [self.options["threshold"] * h[0].numel() for h in hidden]

    def losses(self, x, y, negatives_from=None):
        """``(layer-local losses, read-out loss, logits)``; the negatives'
        labels come from ``negatives_from`` (a generator), else the rule's own."""
        neutral = self.hidden_pass(x, None)
        logits = self.output_layer(neutral[-1].detach())
        stream, self.generator = self.generator, negatives_from or self.generator
        try:
            wrong = self.wrong_labels(y, logits)
        finally:
            self.generator = stream
        positive, negative = self.hidden_pass(x, y), self.hidden_pass(x, wrong)
        local = []
        for pos, neg, theta in zip(positive, negative, self.thresholds(positive)):
            good_pos, good_neg = pos.flatten(1).pow(2).sum(1), neg.flatten(1).pow(2).sum(1)
            local.append((F.softplus(theta - good_pos) + F.softplus(good_neg - theta)).mean())
        return local, F.cross_entropy(logits, y), logits

    def train_step(self, model, x, y, optimizer):
        local, readout, logits = self.losses(x, y)
        optimizer.zero_grad(set_to_none=True)
        (sum(local) + readout).backward()
        optimizer.step()
        self.decay_weights()
        return readout.detach(), logits.detach()

    def probe_generator(self, device):
        # The probe batch must not draw from the training stream (resumed runs stay exact).
        return torch.Generator(device=device).manual_seed(0)

    def weight_updates(self, model, x, y):
        local, readout, _ = self.losses(x, y, self.probe_generator(x.device))
        return torch.autograd.grad(sum(local) + readout, [layer.weight for layer in self.layers])

    @torch.no_grad()
    def layer_metrics(self, model, x, y):
        """Per hidden layer: mean square activity (goodness / units) of positive
        and of negative data (wrong labels drawn as the ``negatives`` option
        says, by default the hard ones from the model's own prediction; a
        fixed probe stream)."""
        stream, self.generator = self.generator, self.probe_generator(x.device)
        try:
            wrong = self.wrong_labels(y, self.output_layer(self.hidden_pass(x, None)[-1]))
        finally:
            self.generator = stream
        rows = [{"goodness_positive": float(mean_square(p).mean()), "goodness_negative": float(mean_square(n).mean())}
                for p, n in zip(self.hidden_pass(x, y), self.hidden_pass(x, wrong))]
        return rows + [{"goodness_positive": None, "goodness_negative": None}]

    def describe(self):
        info = super().describe()
        info.update(first_layer="layer-local goodness loss; the label is written into its input",
                    output_layer="softmax read-out of the neutral-label pass; its gradient stops at its input")
        return info


def normalise_input(layer, args):
    """Divide each sample by its root mean square: the next layer sees only
    the direction of the activity below, not its goodness."""
    h = args[0]
    rms = h.flatten(1).pow(2).mean(1).add(1e-8).sqrt()
    return (h / rms.view((-1,) + (1,) * (h.dim() - 1)),) + args[1:]
