"""The attacks, by name: a registry of attack classes, as rules are one.

Each attack works on pixels in [0, 1] (the attacked module applies the
suite's normalisation inside, :mod:`.gradients`) under an L-infinity budget
``eps``, one batch at a time. A class declares its name (its ``register``
line), the library it calls (checked before anything runs, its version
written into robustness.json) and whether it follows the attacked module's
gradient (a score-based attack, which reads only the outputs, would repeat
the true-gradient column along the rule's, so it gets no rule column).

Adding an attack is one class and one line::

    @ATTACKS.register("my-attack")
    class MyAttack(Attack):
        help = "what it is, for --help"

        def perturb(self, module, pixels, labels):
            ...  # adversarial pixels for this batch, within eps of ``pixels``

This module imports no torch: ``cli.py`` lists the names.
"""
import importlib

from models.registry import Registry

from ..errors import ConfigError


class Attack:
    """One attack at one ``eps``; ``pgd`` holds the iterative attacks' settings
    (``steps``, ``step_size``, ``random_start``: robustness.json's
    ``settings.pgd``)."""
    library = "torchattacks"  # imported only when attacking
    install = 'pip install -e ".[robustness]"'  # how to get the library
    follows_gradient = True  # False: reads only the outputs, so no rule-gradient column
    help = ""  # what --attacks says of it, after its name

    def __init__(self, eps, pgd):
        self.eps, self.pgd = eps, pgd

    def perturb(self, module, pixels, labels):
        """Adversarial pixels for one batch (``module.labels`` is ``labels``)."""
        raise NotImplementedError


ATTACKS: Registry[type[Attack]] = Registry("attack")  # registration order: --attacks' default and tables' order


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """Goodfellow et al. 2015: one signed step of eps up the cross-entropy."""

    def perturb(self, module, pixels, labels):
        import torchattacks
        return torchattacks.FGSM(module, eps=self.eps)(pixels, labels)


@ATTACKS.register("pgd")
class PGD(Attack):
    """Madry et al. 2018: signed steps up the cross-entropy, projected on the eps ball, from a random start."""
    help = "cross-entropy"

    def perturb(self, module, pixels, labels):
        import torchattacks
        pgd = self.pgd
        return torchattacks.PGD(module, eps=self.eps, alpha=pgd["step_size"], steps=pgd["steps"],
                                random_start=pgd["random_start"])(pixels, labels)


@ATTACKS.register("apgd-dlr")
class APGDDLR(Attack):
    """Croce & Hein 2020: APGD on the DLR loss, a ratio of logit differences
    that no rescaling of the logits changes, so a saturated softmax does not
    mask it; PGD's iteration budget, its own step sizes and random start."""
    help = "APGD on the scale-free DLR loss: not masked by a saturated softmax"

    def perturb(self, module, pixels, labels):
        import torch
        import torchattacks
        # APGD attacks only the images the model gets right and leaves the
        # others as they are; handing it just those keeps the batch it
        # differentiates equal to ``module.labels`` (DRTP's target needs them).
        with torch.no_grad():
            correct = module(pixels).argmax(1) == labels
        adv = pixels.clone()
        if correct.any():
            module.labels = labels[correct]
            # It reseeds the global stream with ``seed``, so the seed comes
            # from that stream: the unit's reseed still decides every number.
            attack = torchattacks.APGD(module, norm="Linf", eps=self.eps, steps=self.pgd["steps"], n_restarts=1,
                                       loss="dlr", seed=int(torch.randint(0, 2 ** 31 - 1, (1,))))
            adv[correct] = attack(pixels[correct], labels[correct])
        return adv


def check_libraries(names):
    """ConfigError (one line) unless every library the attacks ``names`` call imports."""
    for name in names:
        attack = ATTACKS.get(name)
        try:
            importlib.import_module(attack.library)
        except ImportError:
            raise ConfigError(f"robustness needs {attack.library}: {attack.install}") from None


def library_versions(names):
    """``{library: version}`` of the libraries the attacks ``names`` call."""
    found = {}
    for library in dict.fromkeys(ATTACKS.get(name).library for name in names):
        module = importlib.import_module(library)
        found[library] = getattr(module, "__version__", None)
    return found


def adversarial(module, pixels, labels, attack, eps, pgd, batch_size):
    """Adversarial pixels of ``attack`` for every image, ``batch_size`` at a
    time; the images themselves at eps 0 (what every attack returns there)."""
    import torch
    if eps == 0:
        return pixels.clone()
    method = ATTACKS.get(attack)(eps, pgd)
    out = []
    for start in range(0, len(labels), batch_size):
        x, y = pixels[start:start + batch_size], labels[start:start + batch_size]
        module.labels = y
        out.append(method.perturb(module, x, y))
    return torch.cat(out)
