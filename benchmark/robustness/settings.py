"""What a robustness evaluation is asked to do: options, defaults, checks.

This module imports no torch, and it is the one module of the package that
``cli.py`` imports: the command's defaults and help come from here, and so
does every check of what the user gave (a bad value is one ConfigError line
naming it and what is allowed).
"""
import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..records import ROBUSTNESS_STATES as STATES
from .attacks import ATTACKS, check_libraries
from .corruptions import CORRUPTIONS

GRADIENTS = ("true", "rule", "transfer")
# Datasets whose images are 8-bit pixels (bounds [0, 1] after /255), with their
# default eps lists and PGD settings. MNIST: Madry et al. 2018's eps 0.3, 40
# steps of 0.01 with a random start; CIFAR-10: their step 2/255 with 10 steps
# (they trained with 7 and attacked with 20), eps up to 16/255.
MNIST_DEFAULTS = {"eps": [0.0, 0.05, 0.1, 0.2, 0.3], "pgd_steps": 40, "pgd_step": 0.01}
CIFAR_DEFAULTS = {"eps": [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255], "pgd_steps": 10, "pgd_step": 2 / 255}
PIXEL_DATASETS = {"mnist": MNIST_DEFAULTS, "fashion-mnist": MNIST_DEFAULTS, "cifar10": CIFAR_DEFAULTS,
                  "cifar10-jpeg": CIFAR_DEFAULTS,
                  "imagefolder": {"eps": [0.0, 1 / 255, 2 / 255, 4 / 255], "pgd_steps": 10, "pgd_step": 1 / 255}}


def attack_help():
    """--attacks' help: each attack's name and what it says of itself."""
    return ", ".join(name + (f" ({ATTACKS.get(name).help})" if ATTACKS.get(name).help else "")
                     for name in ATTACKS.registered()) + "."


def parse_eps(text):
    """``"0,0.1,8/255"`` -> sorted distinct floats in [0, 1]; ConfigError naming a bad one."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            top, _, bottom = part.partition("/")
            value = float(top) / (float(bottom) if bottom else 1.0)
        except (ValueError, ZeroDivisionError):
            value = math.nan
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConfigError(f"--eps {part!r} is not allowed: each eps must be a number in [0, 1] (pixel units, "
                              f"e.g. 0.1 or 8/255)")
        values.append(value)
    return sorted(set(values))


def parse_names(text, allowed, flag):
    """A comma-separated subset of ``allowed`` (``none``: empty); ConfigError naming a bad one."""
    if str(text).strip() == "none":
        return ()
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    for name in names:
        if name not in allowed:
            raise ConfigError(f"{flag} {name!r} is not known; allowed: {', '.join(allowed)} (comma-separated)")
    return tuple(dict.fromkeys(names))


@dataclass
class Settings:
    """What the user chose; :meth:`resolved` fills the dataset's defaults."""
    eps: list = None  # None: the dataset's
    attacks: tuple = tuple(ATTACKS.registered())
    gradients: tuple = GRADIENTS
    corruptions: tuple = tuple(CORRUPTIONS.registered())
    pgd_steps: int = None
    pgd_step: float = None
    random_start: bool = True
    test_subset: int = 500  # 0: the whole test set
    batch_size: int = 1000  # images per attack batch
    states: tuple = ("final",)  # "best" too doubles the time
    rules: tuple = ()  # evaluate only runs of these rules (empty: all)
    skip_rules: tuple = ()  # and none of these

    def __post_init__(self):
        if not (self.attacks and self.gradients) and not self.corruptions:
            raise ConfigError("nothing to evaluate: give --attacks and --gradients, or --corruptions, other than "
                              "'none'")
        if not self.states:
            raise ConfigError(f"--states 'none' is not allowed; allowed: {', '.join(STATES)}")

    @classmethod
    def from_options(cls, eps, attacks, gradients, corruptions, states, algos, skip_algos, **numbers):
        """The settings of the command line's texts (comma-separated lists,
        ``eps`` None for the dataset's, ``algos``/``skip_algos`` None for no
        selection), each checked in that order; ``numbers``: the other fields."""
        from models import RULES
        return cls(eps=parse_eps(eps) if eps is not None else None,
                   attacks=parse_names(attacks, tuple(ATTACKS.registered()), "--attacks"),
                   gradients=parse_names(gradients, GRADIENTS, "--gradients"),
                   corruptions=parse_names(corruptions, tuple(CORRUPTIONS.registered()), "--corruptions"),
                   states=parse_names(states, STATES, "--states"),
                   rules=parse_names(algos, tuple(RULES.names()), "--algos") if algos else (),
                   skip_rules=parse_names(skip_algos, tuple(RULES.names()), "--skip-algos") if skip_algos else (),
                   **numbers)

    def check_libraries(self):
        """ConfigError (one line) unless the chosen attacks' libraries import."""
        check_libraries(self.attacks)

    def resolved(self, dataset):
        """The settings a run of ``dataset`` is evaluated with (what robustness.json records)."""
        if dataset not in PIXEL_DATASETS:
            raise ConfigError(f"dataset {dataset!r} has no known pixel bounds, so eps means nothing for it; "
                              f"robustness knows: {', '.join(PIXEL_DATASETS)}")
        defaults = PIXEL_DATASETS[dataset]
        eps = self.eps if self.eps is not None else defaults["eps"]
        return {"norm": "Linf", "pixel_range": [0.0, 1.0], "eps": [float(e) for e in eps],
                "attacks": list(self.attacks), "gradients": list(self.gradients),
                "pgd": {"steps": self.pgd_steps or defaults["pgd_steps"],
                        "step_size": self.pgd_step or defaults["pgd_step"], "random_start": self.random_start},
                "corruptions": {name: list(CORRUPTIONS.get(name).levels) for name in self.corruptions},
                "test_subset": self.test_subset, "subset_seed": 0, "batch_size": self.batch_size,
                "states": list(self.states)}
