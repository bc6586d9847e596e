"""DRTP: direct random target projection (Frenkel, Lefebvre & Bol 2021)."""
import torch
import torch.nn.functional as F

from .dfa import DirectFeedbackAlignment

# Works this module's rules cite (BibTeX fields).
FRENKEL2021 = {"type": "article", "author": "Frenkel, Charlotte and Lefebvre, Martin and Bol, David",
               "title": "Learning Without Feedback: Fixed Random Learning Signals Allow for Feedforward "
                        "Training of Deep Neural Networks",
               "journal": "Frontiers in Neuroscience", "volume": "15", "pages": "629892", "year": "2021",
               "doi": "10.3389/fnins.2021.629892"}


class DirectRandomTargetProjection(DirectFeedbackAlignment):
    """DFA's route carrying the one-hot target instead of the error: every
    hidden layer gets ``delta_l = (y* B_l) * phi'(a_l)`` (``y*`` divided by the
    batch size, as the mean loss divides the error; Frenkel et al.'s code
    projects the undivided target, so its hidden updates are batch-size
    times larger under SGD), the output layer its own
    cross-entropy gradient. The signal is known before the output is, so no
    error travels back and a layer could update right after its forward step
    (no update locking); computing it in one backward pass is the same maths."""

    name = "drtp"
    colour = "#ad494a"
    title = "Direct random target projection"
    citations = {"frenkel2021": FRENKEL2021}
    # DFA's block placement is not DRTP's: its layers all get the target through their own B_l.
    defaults, choices, option_sources = {}, {}, {}
    weight_transport = "no: the one-hot target reaches each hidden layer through a fixed random B_l; no error goes back"

    def attach(self, model, generator, input_shape=None):
        super().attach(model, generator, input_shape)
        for layer in self.layers[1:]:
            layer.feedback_route.captures_error = False  # the target, not the error, travels
        self.holder.missing = ("drtp: no target to project; train with rule.train_step, or call "
                               "rule.project_target(y, logits) before backward")
        return self

    def project_target(self, y, logits):
        self.holder.error = F.one_hot(y, logits.shape[1]).to(logits.dtype) / len(y)

    def train_step(self, model, x, y, optimizer):
        logits = model(x)
        self.project_target(y, logits)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.decay_weights()
        return loss.detach(), logits.detach()

    def weight_updates(self, model, x, y):
        logits = model(x)
        self.project_target(y, logits)
        return torch.autograd.grad(F.cross_entropy(logits, y), [layer.weight for layer in self.layers])

    def describe(self):
        info = super().describe()
        info["output_layer"] = "its own cross-entropy gradient; sends y* @ B to the last hidden layer"
        return info
